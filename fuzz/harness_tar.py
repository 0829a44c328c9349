#!/usr/bin/env python3
"""Fuzz one layer blob through everything a layer meets: decompression (gzip, zstd, plain), the tar walk, the
digest checks, the merge (whiteouts and links against a base layer and against itself), `ls`, the size and
linkage analysers and every report format.

The first input byte picks the wrapping of the rest: 0 stored as is, 1 gzip, 2 zstd, 3 two gzip members,
4 two zstd frames with a skippable frame between. Invariants: a blob always verifies against its own digest,
size and diff_id; the scan is deterministic; nothing but ImgauditError escapes.

    python fuzz/harness_tar.py CORPUS_DIR [SEED_DIR] -max_total_time=60 -timeout=5
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

from fuzz.harness_common import INSTRUMENT, Broken, check_report, fake_image, fuzz

with atheris.instrument_imports(include=INSTRUMENT):
    import zstandard

    from imgaudit import listing, users
    from imgaudit.audit import Loaded, audit
    from imgaudit.checks import linkage, size  # noqa: F401 - imported here to be instrumented
    from imgaudit.elf import ElfFacts
    from imgaudit.layers import LayerScan, scan_layer, verify
    from imgaudit.rootfs import RootFS


def wrap(data: bytes) -> bytes:
    if not data:
        return b""
    mode, body = data[0] % 8, data[1:]
    half = len(body) // 2
    if mode == 1:
        return gzip.compress(body, compresslevel=1, mtime=0)
    if mode == 2:
        return zstandard.ZstdCompressor(level=1).compress(body)
    if mode == 3:
        return gzip.compress(body[:half], 1, mtime=0) + gzip.compress(body[half:], 1, mtime=0)
    if mode == 4:
        z = zstandard.ZstdCompressor(level=1)
        return z.compress(body[:half]) + b"\x50\x2a\x4d\x18\x02\x00\x00\x00hi" + z.compress(body[half:])
    return body


def fake_elf(path: str, data: bytes) -> ElfFacts:
    """ELF facts read from fixed offsets of the fuzzed bytes, so the loader emulation meets hostile names:
    byte 16 picks the interpreter, bytes 24.. hold NUL-separated DT_NEEDED and RPATH strings."""
    del path
    words = data[24:400].split(b"\0")
    names = tuple(w.decode("utf-8", "surrogateescape") for w in words[:8] if w)
    interpreters = (None, "/lib/ld-musl-x86_64.so.1", "/lib64/ld-linux-x86-64.so.2", names[0] if names else "/x")
    pick = data[16] % 4 if len(data) > 16 else 0
    return ElfFacts(elf_class=64, endian="little", machine="x86_64", elf_type="pie" if pick else "dyn",
                    interpreter=interpreters[pick], needed=names[1:], rpath=names[:1], runpath=names[2:3],
                    has_dynamic=True, libc="musl" if pick == 1 else "glibc" if pick == 2 else "unknown")


def _base() -> LayerScan:
    """A small runtime under the fuzzed layer: a musl loader, libc, links, a dir the fuzzed layer may hide."""
    from fuzz.hostile import base_members, member, tar_of

    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00" + b"\x01" * 8 + b"libc.musl-x86_64.so.1\0"
    blob = tar_of(*base_members(), member("lib/", typeflag=b"5"), member("lib/ld-musl-x86_64.so.1", elf),
                  member("lib/libc.musl-x86_64.so.1", typeflag=b"2", linkname="ld-musl-x86_64.so.1"),
                  member("usr/", typeflag=b"5"), member("usr/lib", typeflag=b"2", linkname="/lib"),
                  member("etc/ld-musl-x86_64.path", b"/lib\n/usr/lib\n../../x\n"),
                  member("link", typeflag=b"2", linkname="/etc"), member("var/run", typeflag=b"2", linkname="/run"))
    return scan_layer(io.BytesIO(blob), label="layer 1/3 base", elf_reader=fake_elf)


BASE = _base()
# Looking up every node of a 2 000-deep chain (PATH_MAX allows it) costs the harness seconds under instrumentation,
# while imgaudit itself lists and audits such a tree in well under a second (tests/unit/test_hostile.py #83).
MAX_LOOKUP_DEPTH = 64
MAX_AUDIT_DEPTH = 256


def test(data: bytes) -> None:
    blob = wrap(data)
    label = "layer 2/3 sha256:fuzz"
    scan = scan_layer(io.BytesIO(blob), label=label, elf_reader=fake_elf)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    try:
        verify(scan, label=label, digest=digest, diff_id=scan.diff_id, size=len(blob))
    except Exception as err:
        raise Broken(f"a blob does not verify against its own digest: {err}") from err
    again = scan_layer(io.BytesIO(blob), label=label, elf_reader=fake_elf)
    if again != scan:
        raise Broken("two scans of the same bytes differ")
    scans = (BASE, scan, scan)
    fs = RootFS.build(scans)
    for node in fs.walk():
        if node.path.count("/") <= MAX_LOOKUP_DEPTH:  # this loop alone is O(nodes x depth): bound the harness
            fs.get(node.path)
            fs.get(node.path, follow=False)
    listing.final_rows(fs, "/")
    listing.layer_rows(fs, 1, "/")
    if max((e.path.count("/") for e in scan.entries), default=0) > MAX_AUDIT_DEPTH:
        return  # under instrumentation the analysers of a 2 000-deep tree take seconds; test #83 runs it for real
    loaded = Loaded(fake_image(scans), scans, fs)  # type: ignore[arg-type]
    check_report(audit(loaded))
    _users(fs)


def _users(fs: RootFS) -> None:
    """USER specs made of the fields of the layer's own /etc/passwd and /etc/group (names and numbers as written),
    resolved as dockerd would: a refusal is UserNotFound, anything else a crash."""
    specs = {""}
    for path in ("/etc/passwd", "/etc/group"):
        for line in (fs.read(path) or b"").decode("utf-8", "surrogateescape").split("\n")[:8]:
            fields = line.split(":")
            specs.update(fields[:4])
            specs.add(":".join(fields[:2]))
    for spec in sorted(specs)[:32]:
        with contextlib.suppress(users.UserNotFound):
            users.resolve_user(fs, spec)


if __name__ == "__main__":
    fuzz(test)
