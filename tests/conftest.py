"""Shared pytest options and fixtures: `--update-golden`, the public schemas directory, golden-file comparison."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="Rewrite tests/golden/ files from the current output instead of comparing.")


@pytest.fixture(scope="session")
def schemas_dir() -> Path:
    """Public schemas (SARIF, JUnit) live in ../shared/schemas, never copied into the repository."""
    path = Path(os.environ.get("IMGAUDIT_SCHEMAS") or REPO.parent / "shared" / "schemas")
    if not path.is_dir():
        pytest.fail(f"schemas directory {path} not found; set IMGAUDIT_SCHEMAS")
    return path


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`golden(name, text)`: compare `text` with tests/golden/NAME, or rewrite it under `--update-golden`."""
    update = request.config.getoption("--update-golden")

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return
        if not path.exists():
            pytest.fail(f"no golden file {path}; run pytest --update-golden and review the diff")
        assert text == path.read_text(encoding="utf-8"), f"{name} differs; pytest --update-golden to accept"

    return check


@pytest.fixture(autouse=True)
def _private_scan_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own layer scan cache: never the user's, and no hit carried between tests
    (a cache hit skips reading the blob, which would hide the corruption a test planted)."""
    monkeypatch.setenv("IMGAUDIT_CACHE_DIR", str(tmp_path_factory.mktemp("scan-cache")))
    monkeypatch.delenv("IMGAUDIT_CACHE", raising=False)


@pytest.fixture(autouse=True)
def _scan_resources_given_back() -> Iterator[None]:
    """Every scan, finished or failed, gives back what it took from the process: the bytes it reserved for the ELF
    parser (a test that released bytes it never reserved left the budget at -536, and a 96 MiB file in a later
    test waited without end), the shared parsers' slots, and its helper threads. All are process-wide: a leak
    makes a later scan, of another image in a library user's process, wait forever or pile up threads."""
    yield
    layers = sys.modules.get("imgaudit.layers")
    if layers is not None:
        assert layers._ELF_BUDGET.used == 0, f"ELF byte budget left at {layers._ELF_BUDGET.used}"
    elf = sys.modules.get("imgaudit.elf")
    if elf is not None:
        held = [(len(r._free), r.users) for r in elf._readers if len(r._free) != elf.SLOTS or r.users]
        assert not held, f"shared ELF parsers left with (free slots, users) {held}"
    helpers = [t.name for t in threading.enumerate() if t.name.startswith("imgaudit-")]
    assert not helpers, f"scan helper threads still running: {helpers}"
