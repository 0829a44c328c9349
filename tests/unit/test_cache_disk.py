"""RELIABILITY.md #86: the scan cache on real filesystems that refuse writes — a full 1 MB tmpfs, a read-only
mount, and a cache directory on another filesystem than $TMPDIR — through `python -m imgaudit inspect`.

Mounting needs root (as here and in CI); elsewhere the tests skip and say why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from imgaudit.cache import SUFFIX
from tests.builders import ImageSpec, d, f, make_layer, sha, write_oci_layout
from tests.unit.cache_entries import verify_entry

REPO = Path(__file__).resolve().parents[2]
# 12 000 files: a scan entry of ~1.48 MB (each file keeps its path and content digest), over the 1 MB tmpfs.
BIG = make_layer([d("data")] + [f(f"data/file-{i:06d}.txt", b"x") for i in range(12_000)])
SMALL = make_layer([d("etc"), f("etc/os-release", "ID=test\n")])
SPEC = ImageSpec([SMALL, BIG])
# Cache entries are named by the stored (gzip) blob's digest.
SMALL_BLOB, BIG_BLOB = (sha(blob)[7:] for blob, _ in SPEC.blobs()[1])
Mount = Callable[[str], Path]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = write_oci_layout(tmp_path_factory.mktemp("img") / "layout", {"big:1": SPEC})
    return f"oci:{root}"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """`mount("size=1m")` mounts a fresh tmpfs and returns its directory; every mount is undone at teardown."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt-{uuid.uuid4().hex[:8]}"
        where.mkdir()
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
        if run.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {run.stderr.strip()}")
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def inspect(ref: str, cache_dir: Path | None, tmpdir: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """The JSON report of `python -m imgaudit inspect` and its stderr lines; the run must succeed."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cache_dir is None:
        env["IMGAUDIT_CACHE"] = "off"
    else:
        env["IMGAUDIT_CACHE_DIR"] = str(cache_dir)
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    run = subprocess.run([sys.executable, "-m", "imgaudit", "inspect", "--format", "json", "--fail-on", "never", ref],
                         capture_output=True, cwd=REPO, env=env, timeout=120, check=False)
    stderr = run.stderr.decode(errors="replace")
    assert run.returncode == 0 and "Traceback" not in stderr, stderr
    return json.loads(run.stdout), stderr.splitlines()


@pytest.fixture(scope="module")
def expected(layout: str) -> dict[str, Any]:
    report, lines = inspect(layout, None)
    assert lines == [] and report["complete"] and report["size"]["file_count"] == 12_001
    return report


def entries(cache_dir: Path) -> dict[str, bytes]:
    """Every file in the cache directory that is not a temp file, with its bytes."""
    return {p.name: p.read_bytes() for p in cache_dir.iterdir() if not p.name.startswith(".tmp-")}


def assert_whole(found: dict[str, bytes]) -> None:
    """Each entry under a digest name is complete and verified (a torn one would fail its sha256)."""
    for name, blob in found.items():
        verify_entry(name, blob)


def cache_warning(lines: list[str]) -> str:
    warnings = [line for line in lines if line.startswith("imgaudit: warning: ")]
    assert len(warnings) == 1 and len(lines) == 1, lines
    assert "not used" in warnings[0] and "continuing without it" in warnings[0], warnings[0]
    return warnings[0]


def test_86_a_full_disk_gives_one_warning_the_right_report_and_no_torn_entry(
        tmpfs: Mount, layout: str, expected: dict[str, Any]) -> None:
    cache_dir = tmpfs("size=1m,mode=0700")
    for _ in range(2):  # the second run meets the same full disk
        report, lines = inspect(layout, cache_dir)
        assert report == expected
        assert "No space left on device" in cache_warning(lines)
        found = entries(cache_dir)
        assert_whole(found)
        assert not any(BIG_BLOB in name for name in found)  # never a digest name for the entry that did not fit
        # the big layer goes first (biggest first) and, once it failed, nothing else is tried
        assert not any(SMALL_BLOB in name for name in found)


def test_86_a_read_only_cache_gives_one_warning_and_a_warm_one_still_serves(
        tmpfs: Mount, layout: str, expected: dict[str, Any]) -> None:
    cold = tmpfs("size=64m,mode=0700")
    remount_read_only(cold)
    report, lines = inspect(layout, cold)
    assert report == expected and "Read-only file system" in cache_warning(lines)
    assert list(cold.iterdir()) == []

    warm = tmpfs("size=64m,mode=0700")
    assert inspect(layout, warm) == (expected, [])
    before = entries(warm)
    remount_read_only(warm)
    assert inspect(layout, warm) == (expected, [])  # answered from the cache: nothing to write, nothing to say
    assert entries(warm) == before


def test_86_a_cache_on_another_filesystem_than_tmpdir_is_written_in_place(
        tmpfs: Mount, tmp_path: Path, layout: str, expected: dict[str, Any]) -> None:
    """Temp files go in the cache directory itself, so the rename to the digest name never crosses a
    filesystem (a rename from $TMPDIR would fail with EXDEV and the warning would show)."""
    cache_dir = tmpfs("size=64m,mode=0700")
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    assert cache_dir.stat().st_dev != tmpdir.stat().st_dev
    assert inspect(layout, cache_dir, tmpdir) == (expected, [])
    found = entries(cache_dir)
    assert_whole(found)
    assert sum(name.endswith(SUFFIX) for name in found) == 2 and sum(name.endswith(".report") for name in found) == 1
    assert [p.name for p in cache_dir.iterdir() if p.name.startswith(".tmp-")] == []
    assert list(tmpdir.iterdir()) == []
