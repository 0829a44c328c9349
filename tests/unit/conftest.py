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


@pytest.fixture(scope="module")
def reader() -> Iterator[ElfReader]:
    with ElfReader() as shared:
        yield shared
