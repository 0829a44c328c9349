#!/usr/bin/env python3
"""Fuzz whole image archives through the file sources: a `docker save` archive (random access), the same
gzip-compressed (one streamed pass, as the daemon's save stream is read), an oci-archive, and an OCI layout
directory unpacked from the input (symlinks, FIFOs and hard links included: the source must refuse them,
never follow or block on them). Each loaded image is merged and listed.

The first input byte picks the source; the rest is a tar archive.

    python fuzz/harness_archive.py CORPUS_DIR [SEED_DIR] -max_total_time=60 -timeout=5
"""

from __future__ import annotations

import atexit
import gzip
import io
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

from fuzz.harness_common import INSTRUMENT, fuzz

with atheris.instrument_imports(include=INSTRUMENT):
    from imgaudit import listing
    from imgaudit.reference import parse_reference
    from imgaudit.rootfs import RootFS
    from imgaudit.scanner import Scanner
    from imgaudit.sources import archive, load_image, oci  # noqa: F401 - imported here to be instrumented

WORK = Path(tempfile.mkdtemp(prefix="imgaudit-fuzz-archive-"))
atexit.register(shutil.rmtree, WORK, True)
MAX_FILE = 4 << 20


def unpack(data: bytes, root: Path) -> None:
    """A layout directory from a tar, written without ever following a link: parents are checked with
    lstat, files are created O_EXCL|O_NOFOLLOW, names that climb out are dropped."""
    root.mkdir()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for count, member in enumerate(tar):
                if count > 200:
                    break
                _place(tar, member, root)
    except (tarfile.TarError, EOFError, ValueError, OverflowError, OSError, RecursionError):
        pass  # what was unpacked so far is the layout


def _place(tar: tarfile.TarFile, member: tarfile.TarInfo, root: Path) -> None:
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts or any("\0" in p or len(p) > 200 for p in parts) or len(parts) > 8:
        return
    parent = root
    for part in parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            return
        parent.mkdir(exist_ok=True)
    target = parent / parts[-1]
    if target.exists() or target.is_symlink():
        return
    if member.isdir():
        target.mkdir()
    elif member.issym():
        target.symlink_to(member.linkname)
    elif member.isfifo():
        os.mkfifo(target)
    elif member.islnk():
        source = root / member.linkname
        if ".." not in member.linkname.split("/") and source.is_file() and not source.is_symlink():
            os.link(source, target)
    elif member.isreg() and member.size <= MAX_FILE:
        fobj = tar.extractfile(member)
        content = fobj.read() if fobj is not None else b""
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(content)


def test(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % 5, data[1:]
    case = WORK / "case"
    if case.exists() or case.is_symlink():
        shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    if kind == 3:
        unpack(body, case / "layout")
        reference = f"oci:{case / 'layout'}"
    else:
        path = case / "image.tar"
        path.write_bytes(gzip.compress(body, 1, mtime=0) if kind == 1 else body)
        reference = f"{'oci-archive' if kind in (2, 4) else 'docker-archive'}:{path}"
        if kind == 4:
            path.write_bytes(gzip.compress(body, 1, mtime=0))
    scanner = Scanner(elf_reader=None, cache=None)
    image, scans = load_image(parse_reference(reference), platform=None, scanner=scanner)
    assert len(scans) == len(image.layers)
    fs = RootFS.build(scans)
    listing.final_rows(fs, "/")


if __name__ == "__main__":
    fuzz(test)
