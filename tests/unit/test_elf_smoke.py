"""RELIABILITY.md #95: a smoke parse per architecture. Every ELF file of the real Alpine 3.20.3 minirootfs, x86_64
and aarch64 (the tarballs the official `alpine` images are built from, $IMGAUDIT_CORPUS), goes through the real
LIEF worker of the pinned release, once through the reader API and once through `python -m imgaudit inspect` on an
image whose one layer is the tarball. A LIEF release that crashes or misreads a whole architecture (LIEF #1146)
fails here, in the suite CI runs.

The worker's exit status is judged apart from its answers (LIEF #1149 aborts at interpreter exit): answers are read
before it exits, and a worker that dies after answering is replaced without touching them — see also
test_elf.py::test_worker_killed_between_files_is_replaced_silently and
::test_worker_crash_is_reported_and_the_next_file_parses.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from imgaudit.elf import ElfReader
from tests.builders import ImageSpec, write_oci_layout

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus")
# arch → (tarball, OCI architecture, e_machine: EM_X86_64, EM_AARCH64)
ARCHES = {
    "x86_64": ("alpine/alpine-minirootfs-3.20.3-x86_64.tar.gz", "amd64", 62),
    "aarch64": ("alpine/alpine-minirootfs-3.20.3-aarch64.tar.gz", "arm64", 183),
}
# OpenSSL's engine stubs link nothing (no DT_NEEDED, no interpreter: `readelf -d` agrees), so no libc; padlock
# (VIA's x86 crypto unit) is only a stub on aarch64.
NO_LIBC = {"x86_64": {"/usr/lib/engines-3/capi.so"},
           "aarch64": {"/usr/lib/engines-3/capi.so", "/usr/lib/engines-3/padlock.so"}}


def rootfs(arch: str) -> Path:
    tarball = CORPUS / ARCHES[arch][0]
    if not tarball.exists():
        pytest.skip(f"corpus {tarball} not present (set IMGAUDIT_CORPUS; see its README)")
    return tarball


def elf_members(tarball: Path) -> dict[str, bytes]:
    """Every regular file of the rootfs that starts with the ELF magic, by its absolute path."""
    out = {}
    with tarfile.open(tarball) as tar:
        for member in tar:
            reader = tar.extractfile(member) if member.isreg() else None
            data = reader.read() if reader is not None else b""
            if data[:4] == b"\x7fELF":
                out["/" + member.name.removeprefix("./")] = data
    return out


def expected_libc(arch: str, path: str) -> str:
    return "none" if path in NO_LIBC[arch] else "musl"


@pytest.mark.parametrize("arch", list(ARCHES))
def test_95_every_alpine_elf_file_parses_through_the_worker(arch: str) -> None:
    files = elf_members(rootfs(arch))
    assert len(files) == 17 and {"/bin/busybox", f"/lib/ld-musl-{arch}.so.1", "/lib/libcrypto.so.3"} <= set(files)
    e_machine = ARCHES[arch][2]
    with ElfReader() as reader:
        facts = {path: reader.read(path, data) for path, data in files.items()}
        worker = reader._channel.worker
        assert worker is not None
        for path, got in facts.items():
            assert got.error is None, (path, got.error)
            assert struct.unpack_from("<H", files[path], 18)[0] == e_machine  # the header itself, not LIEF
            assert (got.machine, got.elf_class, got.libc) == (arch, 64, expected_libc(arch, path)), path
        assert facts["/bin/busybox"].interpreter == f"/lib/ld-musl-{arch}.so.1"
        assert facts[f"/lib/ld-musl-{arch}.so.1"].libc_version == "1.2.5"
        # LIEF #1149: the worker aborts once its answers are out. The answers stand; its death is judged on its
        # own (the next file gets a new worker, and no error reaches the caller).
        os.kill(worker.proc.pid, signal.SIGABRT)
        worker.proc.wait(timeout=10)
        assert worker.proc.returncode == -signal.SIGABRT
        again = reader.read("/bin/busybox", files["/bin/busybox"])
        assert again == facts["/bin/busybox"] and reader._channel.worker is not worker


@pytest.mark.parametrize("arch", list(ARCHES))
def test_95_inspect_of_the_alpine_rootfs_as_an_image(arch: str, tmp_path: Path) -> None:
    """The same files through the whole pipeline (layer scan → worker → report) of the CLI."""
    tarball = rootfs(arch)
    platform = ARCHES[arch][1]
    spec = ImageSpec([gzip.decompress(tarball.read_bytes())], cmd=["/bin/sh"], architecture=platform,
                     variant="v8" if platform == "arm64" else None)
    layout = write_oci_layout(tmp_path / "layout", {"alpine": spec})
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "imgaudit", "inspect", "--no-cache", "--format", "json", "--all",
                          "--platform", f"linux/{platform}", f"oci:{layout}"],
                         capture_output=True, cwd=REPO, timeout=120, check=False)
    assert run.returncode == 0 and run.stderr == b"", run.stderr.decode(errors="replace")
    report = json.loads(run.stdout)
    assert report["complete"] and report["incomplete"] == [] and report["findings"] == []
    assert report["runtime"]["libc"] == "musl" and report["runtime"]["libc_version"] == "1.2.5"
    binaries = {b["path"]: b for b in report["binaries"]}
    assert set(binaries) == set(elf_members(tarball))
    for path, binary in binaries.items():
        assert (binary["machine"], binary["libc"], binary["verdict"]) == (arch, expected_libc(arch, path), "ok"), path
    assert report["entrypoint"]["verdict"] == "ok"
    assert time.monotonic() - start < 60
