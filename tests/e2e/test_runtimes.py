"""Sanity checks of the runtime images built by scripts/build-runtimes (the oracle's ground).

They skip without a Docker daemon, and fail instead when IMGAUDIT_E2E=1.
The expected messages are what Docker 20.10 / runc / the image's own loader printed on the
reference machine; they are the oracle the loader emulation is compared with.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    from . import runtimes
except ImportError:  # tests/e2e is not a package: pytest put it on sys.path
    import runtimes  # type: ignore[no-redef,import-not-found]

Files = dict[str, tuple[Path | bytes, int]]
Build = Callable[[str, Files, list[str]], str]

pytestmark = pytest.mark.e2e

FD = "/usr/local/bin/fd"
RG = "/usr/local/bin/rg"


@pytest.fixture(scope="module")
def tags() -> dict[str, str]:
    runtimes.require_docker()
    return runtimes.ensure_runtimes()


@pytest.fixture(scope="module")
def build(tags: dict[str, str]) -> Iterator[Build]:
    """build(base_runtime, {path: (src, mode)}, entrypoint) -> tag; images removed afterwards."""
    made: list[str] = []

    def _build(base: str, files: Files, entrypoint: list[str]) -> str:
        tag = f"imgaudit-e2e/runtimes-{uuid.uuid4().hex[:10]}:latest"
        made.append(runtimes.docker_build(tag, tags[base], files, entrypoint))
        return tag

    yield _build
    if made:
        subprocess.run(["docker", "rmi", "-f", *made], check=False, capture_output=True)


def image_entries(tag: str) -> dict[str, tarfile.TarInfo]:
    """Path -> tar entry of an image's filesystem (docker create + export, nothing is run)."""
    cid = subprocess.run(
        ["docker", "create", tag, "/nonexistent"], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        blob = subprocess.run(["docker", "export", cid], capture_output=True, check=True).stdout
    finally:
        subprocess.run(["docker", "rm", "-f", cid], check=False, capture_output=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        return {m.name.lstrip("./").rstrip("/"): m for m in tf.getmembers()}


@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
def test_slim_has_a_shell(tags: dict[str, str], release: str) -> None:
    code, out = runtimes.docker_run(tags[f"{release}-slim"], ["/bin/sh", "-c", "echo ok"])
    assert (code, out) == (0, "ok\n")


def test_slim_ld_cache_made_by_ldconfig(tags: dict[str, str]) -> None:
    code, out = runtimes.docker_run(tags["bookworm-slim"], ["ldconfig", "-p"])
    assert code == 0
    assert "libc.so.6 (libc6,x86-64) => /lib/x86_64-linux-gnu/libc.so.6" in out


def test_bullseye_rg_runs_on_bullseye_cc(build: Build) -> None:
    tag = build("bullseye-cc", {RG: (runtimes.rust_binary("bullseye"), 0o755)}, [RG, "--version"])
    code, out = runtimes.docker_run(tag)
    assert code == 0, out
    assert out.startswith("ripgrep 12.1.1\n")


def test_bookworm_rg_on_bullseye_cc_misses_pcre2(build: Build) -> None:
    tag = build("bullseye-cc", {RG: (runtimes.rust_binary("bookworm"), 0o755)}, [RG, "--version"])
    code, out = runtimes.docker_run(tag)
    assert code == 127
    assert out == (
        f"{RG}: error while loading shared libraries: libpcre2-8.so.0: "
        "cannot open shared object file: No such file or directory\n"
    )


def test_bookworm_fd_on_bullseye_cc_glibc_too_old(build: Build) -> None:
    tag = build("bullseye-cc", {FD: (runtimes.rust_binary("bookworm", "fd"), 0o755)}, [FD, "--version"])
    code, out = runtimes.docker_run(tag)
    assert code == 1
    # glibc reports every missing version node of the object, one line each
    assert out.splitlines() == [
        f"{FD}: /lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_{v}' not found (required by {FD})"
        for v in ("2.33", "2.32", "2.34")
    ]


def test_fd_on_base_misses_libgcc(build: Build) -> None:
    tag = build("bookworm-base", {FD: (runtimes.rust_binary("bookworm", "fd"), 0o755)}, [FD, "--version"])
    code, out = runtimes.docker_run(tag)
    assert code == 127
    assert out == (
        f"{FD}: error while loading shared libraries: libgcc_s.so.1: "
        "cannot open shared object file: No such file or directory\n"
    )


@pytest.mark.parametrize("base", ["alpine-3.20", "bookworm-static"])
def test_glibc_binary_without_glibc_loader(build: Build, base: str) -> None:
    tag = build(base, {FD: (runtimes.rust_binary("bookworm", "fd"), 0o755)}, [FD, "--version"])
    code, out = runtimes.docker_run(tag)
    assert code == 1
    assert out == f"exec {FD}: no such file or directory\n"


def test_arm64_alpine_is_exec_format_error(tags: dict[str, str]) -> None:
    code, out = runtimes.docker_run(tags["alpine-3.20-arm64"], ["/bin/sh", "-c", "echo hi"])
    assert code == 1
    assert out.splitlines()[-1] == "exec /bin/sh: exec format error"


def test_not_executable_is_permission_denied(build: Build) -> None:
    tag = build("bookworm-cc", {FD: (runtimes.rust_binary("bookworm", "fd"), 0o644)}, [FD])
    code, out = runtimes.docker_run(tag)
    assert code == 126
    assert f'exec: "{FD}": permission denied' in out


def test_missing_entrypoint(tags: dict[str, str]) -> None:
    code, out = runtimes.docker_run(tags["bookworm-static"], ["/bin/sh", "-c", "true"])
    assert code == 127
    assert 'exec: "/bin/sh": stat /bin/sh: no such file or directory' in out


def test_static_has_no_libc(tags: dict[str, str]) -> None:
    for release in ("bullseye", "bookworm", "trixie"):
        entries = image_entries(tags[f"{release}-static"])
        libcs = [p for p in entries if p.rsplit("/", 1)[-1].startswith(("libc.so", "ld-linux"))]
        assert libcs == [], release
        assert entries["etc/passwd"].isfile()
        assert entries["tmp"].mode & 0o7777 == 0o1777
        assert not any(p.startswith("etc/ssl/certs/ca-certificates") for p in entries)


def test_layout_follows_the_release(tags: dict[str, str]) -> None:
    bullseye = image_entries(tags["bullseye-cc"])
    assert bullseye["lib"].isdir()
    assert bullseye["lib/x86_64-linux-gnu/libc.so.6"].issym()
    assert bullseye["var/lib/dpkg/status.d/libc6"].isfile()
    for release in ("bookworm", "trixie"):
        entries = image_entries(tags[f"{release}-cc"])
        for d in ("bin", "sbin", "lib", "lib64"):
            assert entries[d].issym() and entries[d].linkname == f"usr/{d}", (release, d)
        assert entries["usr/lib/x86_64-linux-gnu/libgcc_s.so.1"].isfile()
        assert entries["etc/ssl/certs/ca-certificates.crt"].size > 100_000
        assert "etc/ld.so.cache" not in entries  # distroless never runs ldconfig
    slim = image_entries(tags["bookworm-slim"])
    assert slim["var/lib/dpkg/status"].isfile()
    assert slim["var/lib/dpkg/info/libc6:amd64.list"].isfile()
    assert slim["etc/ld.so.cache"].isfile()


def test_images_carry_their_rootfs_hash(tags: dict[str, str]) -> None:
    script = runtimes._script()
    for name, tag in tags.items():
        label = script.docker_label(tag)
        assert label and len(label) == 64, name


@pytest.mark.parametrize("release", ["bullseye", "bookworm", "trixie"])
def test_rust_binaries_are_elf(release: str) -> None:
    runtimes.require_docker()
    for name in ("rg", "fd"):
        path = runtimes.rust_binary(release, name)
        assert path.read_bytes()[:4] == b"\x7fELF"
        assert path.stat().st_mode & 0o111
