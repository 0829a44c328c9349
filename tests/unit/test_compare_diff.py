"""`compare` and `diff`: pure functions over reports, their renderings, and the CLI on synthetic archives."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgaudit.cli import main
from imgaudit.compare import compare, smallest, to_json
from imgaudit.diff import FileFact, diff_images, file_changes, layer_changes, package_changes
from imgaudit.render.compare import compare_markdown, compare_table, diff_markdown, diff_table
from imgaudit.report import Finding, LayerInfo, PackageSize, Severity
from tests.builders import ImageSpec, f, make_layer, wh, write_docker_archive, write_oci_layout
from tests.unit.reports import report, size_info

STATUS = "Package: {name}\nStatus: install ok installed\nVersion: {version}\nInstalled-Size: {kib}\n\n"


def status(*packages: tuple[str, str, int]) -> str:
    return "".join(STATUS.format(name=n, version=v, kib=k) for n, v, k in packages)


def _layer(index: int, diff_id: str, size: int) -> LayerInfo:
    return LayerInfo(index=index, digest=None, diff_id="sha256:" + diff_id * 64, compressed_bytes=size // 2,
                     uncompressed_bytes=size, created_by=f"step {diff_id}")


def test_layers_are_matched_by_diff_id() -> None:
    old = [_layer(0, "a", 100), _layer(1, "b", 50), _layer(2, "c", 10)]
    new = [_layer(0, "a", 100), _layer(1, "d", 70), _layer(2, "c", 10)]
    changes = layer_changes(old, new)
    assert [(c.change, c.old_index, c.new_index, c.bytes) for c in changes] == [
        ("kept", 0, 0, 100), ("added", None, 1, 70), ("kept", 2, 2, 10), ("removed", 1, None, 50)]


def test_the_same_layer_twice_matches_once_per_use() -> None:
    changes = layer_changes([_layer(0, "a", 1)], [_layer(0, "a", 1), _layer(1, "a", 1)])
    assert [c.change for c in changes] == ["kept", "added"]


def test_file_changes() -> None:
    old = {"/same": FileFact(5, "x"), "/grows": FileFact(5, "a"), "/edit": FileFact(3, "p"), "/gone": FileFact(9, "g")}
    new = {"/same": FileFact(5, "x"), "/grows": FileFact(8, "b"), "/edit": FileFact(3, "q"), "/new": FileFact(1, "n")}
    assert [(c.path, c.change, c.delta) for c in file_changes(old, new)] == [
        ("/edit", "changed", 0), ("/gone", "removed", -9), ("/grows", "grown", 3), ("/new", "added", 1)]


def test_package_changes() -> None:
    old = [PackageSize("libc6", "2.36", 100), PackageSize("curl", "7", 10), PackageSize("zlib", "1", 5)]
    new = [PackageSize("libc6", "2.37", 120), PackageSize("zlib", "1", 6), PackageSize("jq", "1.6", 3)]
    assert [(p.name, p.change) for p in package_changes(old, new)] == [
        ("curl", "removed"), ("jq", "added"), ("libc6", "upgraded"), ("zlib", "grown")]


def test_findings_new_and_fixed() -> None:
    old, new = report(), report(with_findings=False)
    new.findings.append(Finding("apk-cache", Severity.INFO, "cache", path="/var/cache/apk", bytes=1))
    result = diff_images(old, new, {}, {})
    assert {(c.change, c.rule) for c in result.findings} == {
        ("new", "apk-cache"), ("fixed", "missing-interpreter"), ("fixed", "no-ca-certificates"),
        ("fixed", "apt-lists"), ("fixed", "elf-unreadable")}


def test_diff_renderings() -> None:
    old = report(with_findings=False)
    new = report(with_findings=False, size=size_info(final_bytes=150_000_000))
    after = {"/a": FileFact(2_000_010, "y"), "/b|c": FileFact(1, "z")}
    result = diff_images(old, new, {"/a": FileFact(10, "x")}, after)
    md = diff_markdown(result)
    assert "+50.0 MB" in md
    assert "| grown | +2.0 MB | /a |" in md
    assert "/b\\|c" in md  # a pipe in a name cannot break the table
    text = diff_table(result)
    assert "matched by diff_id" in text and "+2.0 MB" in text


def test_compare_columns_and_renderings() -> None:
    small = report(with_findings=False, size=size_info(final_bytes=5_000_000))
    big = report(size=size_info(final_bytes=90_000_000))
    big.image.reference = "registry.example/team/app:fat"
    columns = compare([small, big])
    assert [c.final_bytes for c in columns] == [5_000_000, 90_000_000]
    assert columns[1].errors == 1 and columns[1].warnings == 2
    assert smallest(columns) == "registry.example/team/app:1.2"
    assert to_json(columns)["images"][0]["final_bytes"] == 5_000_000
    assert "| final size | 5.0 MB | 90.0 MB |" in compare_markdown(columns)
    assert "90.0 MB" in compare_table(columns)


# -- the CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_scan_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGAUDIT_CACHE", "off")  # what --no-cache does, undone after each test


def _images(tmp_path: Path) -> tuple[str, str]:
    base = make_layer([f("var/lib/dpkg/status", status(("libc6", "2.36", 100), ("curl", "7.88", 40))),
                       f("etc/os-release", "ID=debian\nVERSION_ID=12\n")])
    old_app = make_layer([f("app", b"v1" * 1000), f("tmp/build.log", b"x" * 5000)])
    new_app = make_layer([f("app", b"v2" * 3000), wh("tmp")])
    write_docker_archive(tmp_path / "old.tar", {"app:1": ImageSpec([base, old_app], cmd=["/app"])})
    write_oci_layout(tmp_path / "new", {"2": ImageSpec([base, new_app], cmd=["/app"])})
    return f"docker-archive:{tmp_path / 'old.tar'}", f"oci:{tmp_path / 'new'}"


def _json(args: list[str]) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_compare_cli_numbers_match_inspect(tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    images = _json(["compare", old, new, "--format", "json"])["images"]
    for ref, column in zip((old, new), images, strict=True):
        full = _json(["inspect", ref, "--format", "json"])
        size = full["size"]
        assert column["reference"] == full["image"]["reference"]
        for key in ("final_bytes", "compressed_bytes", "uncompressed_bytes", "reclaimable_bytes", "wasted_bytes",
                    "efficiency", "file_count", "package_db"):
            assert column[key] == size[key], key
        assert column["layers"] == len(size["layers"])
        assert column["packages"] == len(size["packages"])
        assert column["package_bytes"] == sum(p["bytes"] for p in size["packages"])
        assert column["libc"] == full["runtime"]["libc"]
        assert column["entrypoint_verdict"] == full["entrypoint"]["verdict"]
    markdown = CliRunner().invoke(main, ["compare", old, new, "--format", "markdown"])
    assert markdown.exit_code == 0 and markdown.stdout.startswith("| |")


def test_diff_cli(tmp_path: Path) -> None:
    old, new = _images(tmp_path)
    body = _json(["diff", old, new, "--format", "json"])
    assert [c["change"] for c in body["layers"]] == ["kept", "added", "removed"]
    changes = {c["path"]: c["change"] for c in body["files"]}
    assert changes == {"/app": "grown", "/tmp/build.log": "removed"}
    assert body["new_totals"]["final_bytes"] - body["old_totals"]["final_bytes"] == 6000 - 2000 - 5000
    text = CliRunner().invoke(main, ["diff", old, new])
    assert text.exit_code == 0 and "matched by diff_id" in text.stdout
    md = CliRunner().invoke(main, ["diff", old, new, "--format", "markdown"])
    assert md.stdout.startswith("### Image size:")


def test_compare_needs_a_reference() -> None:
    result = CliRunner().invoke(main, ["compare"])
    assert result.exit_code == 2


def _parser_pids() -> set[int]:
    """The ELF parser processes of this process's shared readers, idle ones included."""
    from imgaudit import elf

    with elf._readers_lock:
        return {r._channel.worker.proc.pid for r in elf._readers if r._channel.worker is not None}


def test_parsers_stop_once_an_image_is_read_unless_more_follow(tmp_path: Path, fixtures: Path) -> None:
    """An idle parser holds ~55 MB of its own (`import lief`) through the merge and the analysis, where an image
    of small ELF files peaks: `load` stops it once the layers are read. `compare` and `diff` read image after
    image and keep it until the last one, so they start one parser, not one per image."""
    from imgaudit import elf
    from imgaudit.audit import Options, load

    program = make_layer([f("app", (fixtures / "glibc" / "hello-dynamic").read_bytes())])
    write_oci_layout(tmp_path / "img", {"1": ImageSpec([program], cmd=["/app"])})
    ref = f"oci:{tmp_path / 'img'}"
    elf.close()
    kept = load(ref, Options(cache=False, keep_parsers=True))
    pids = _parser_pids()
    assert kept.scans[0].entries[0].elf is not None and len(pids) == 1
    load(ref, Options(cache=False))
    assert _parser_pids() == set()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    started = elf.ElfReader.__init__
    readers = []

    def counted(self: elf.ElfReader, *args: object, **kwargs: object) -> None:
        readers.append(self)
        started(self, *args, **kwargs)  # type: ignore[arg-type]

    import unittest.mock

    with unittest.mock.patch.object(elf.ElfReader, "__init__", counted):
        result = CliRunner().invoke(main, ["compare", ref, ref, ref, "--no-cache", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert len(readers) == 1 and _parser_pids() == set()
