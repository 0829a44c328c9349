"""Fixtures shared by the ELF tests: the fixture binaries and a parser."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgaudit.elf import ElfReader

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("IMGAUDIT_FIXTURES_OUT") or REPO / "fixtures" / "build")


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """fixtures/build, built once per session by scripts/build-fixtures."""
    for tool in ("gcc", "musl-gcc", "strip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot build the ELF fixtures")
    run = subprocess.run(
        [str(REPO / "scripts" / "build-fixtures")], capture_output=True, text=True, check=False, timeout=600
    )
    assert run.returncode == 0, f"scripts/build-fixtures failed:\n{run.stdout}\n{run.stderr}"
    return BUILD


@pytest.fixture(scope="session")
def host_glibc() -> dict[str, Path]:
    """This host's glibc loader and libc, by the paths an x86_64 Debian image holds them at."""
    host = {"lib64/ld-linux-x86-64.so.2": Path("/lib64/ld-linux-x86-64.so.2"),
            "lib/x86_64-linux-gnu/libc.so.6": Path("/lib/x86_64-linux-gnu/libc.so.6")}
    if not all(path.exists() for path in host.values()):
        pytest.skip("needs an x86_64 glibc host")
    return host


@pytest.fixture(scope="module")
def reader() -> Iterator[ElfReader]:
    with ElfReader() as shared:
        yield shared
