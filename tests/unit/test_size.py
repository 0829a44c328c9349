"""The size audit on synthetic images: per-layer bytes, final bytes (hard links once), pull bytes (a blob once),
biggest files and directories, duplicates, packages, bloat findings with bytes and fixes, the JSON contract and
the terminal rendering."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import jsonschema
import pytest

from imgaudit.audit import Loaded, audit
from imgaudit.checks import bloat
from imgaudit.checks.size import size_facts, size_info
from imgaudit.image import Image, ImageConfig, Layer, Platform
from imgaudit.layers import EntryType, LayerScan, scan_layer
from imgaudit.render.size_text import bar
from imgaudit.render.table import render_inspect
from imgaudit.report import Finding
from imgaudit.rootfs import RootFS
from tests.builders import Item, d, f, hard, make_layer, wh

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "imgaudit" / "schema" / "report.schema.json").read_text())
MB = 1_000_000


def loaded_from_scans(scans: tuple[LayerScan, ...]) -> Loaded:
    descs = tuple(Layer(i, s.diff_id, s.digest, s.compressed_size, created_by=f"RUN step {i}")
                  for i, s in enumerate(scans))
    image = Image("test:size", "oci", ImageConfig(Platform("linux", "amd64"), cmd=("/app",)), "sha256:" + "1" * 64,
                  descs)
    return Loaded(image, scans, RootFS.build(scans))


def loaded_of(layers: list[list[Item]]) -> Loaded:
    return loaded_from_scans(tuple(scan_layer(io.BytesIO(make_layer(items))) for items in layers))


def blob(n: int, seed: int = 0) -> bytes:
    """n bytes; different seeds give different content."""
    unit = bytes((i * 31 + seed) % 253 for i in range(253))
    return (unit * (n // 253 + 1))[:n]


def info(loaded: Loaded):  # type: ignore[no-untyped-def]
    return size_info(loaded, size_facts(loaded.rootfs, loaded.scans))


def found(loaded: Loaded) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {}
    for finding in bloat.findings(loaded.rootfs, loaded.scans, size_facts(loaded.rootfs, loaded.scans)):
        out.setdefault(finding.rule, []).append(finding)
    return out


def test_layer_bytes_added_modified_removed() -> None:
    loaded = loaded_of([[f("a", blob(100)), f("b", blob(50))], [f("a", blob(30)), f("c", blob(20)), wh("b")]])
    size = info(loaded)
    first, second = size.layers
    assert (first.bytes_added, first.bytes_modified, first.bytes_removed) == (150, 0, 0)
    assert (second.bytes_added, second.bytes_modified, second.bytes_removed) == (20, 30, 50)
    assert second.created_by == "RUN step 1"
    assert size.final_bytes == 50
    assert size.reclaimable_bytes == 150  # old a and b
    assert size.final_bytes + size.reclaimable_bytes == 200  # every regular-file byte of every layer


def test_hard_links_count_once_in_final_bytes() -> None:
    size = info(loaded_of([[f("a", blob(100)), hard("b", "a"), f("c", blob(7))]]))
    assert size.final_bytes == 107
    assert size.file_count == 3
    assert [t.path for t in size.top_files] == ["/a", "/c"]  # the link shows its target's bytes, not its own


def test_a_blob_used_twice_is_pulled_once_but_stacked_twice() -> None:
    scan = scan_layer(io.BytesIO(make_layer([f("x", blob(1000))])))
    size = info(loaded_from_scans((scan, scan)))
    assert size.compressed_bytes == scan.compressed_size
    assert size.uncompressed_bytes == 2 * scan.size


def test_top_dirs_and_duplicates() -> None:
    same = blob(5000, 9)
    loaded = loaded_of([[d("usr"), d("usr/lib"), f("usr/lib/big", blob(9000)), f("usr/lib/one", same),
                         d("opt"), f("opt/two", same), f("opt/three", same), f("tiny", b"x")]])
    size = info(loaded)
    assert [(x.path, x.bytes, x.files) for x in size.top_dirs] == [
        ("/usr", 14000, 2), ("/usr/lib", 14000, 2), ("/opt", 10000, 2)]
    assert size.duplicate_bytes == 10000
    group = size.duplicates[0]
    assert (group.bytes, group.wasted_bytes, group.paths) == (5000, 10000, ["/opt/three", "/opt/two", "/usr/lib/one"])
    assert group.digest.startswith("sha256:")


def test_packages_in_size_info() -> None:
    status = "Package: libc6\nStatus: install ok installed\nVersion: 2.36\nInstalled-Size: 100\n"
    size = info(loaded_of([[f("var/lib/dpkg/status", status)]]))
    assert size.package_db == "dpkg"
    assert [(p.name, p.version, p.bytes) for p in size.packages] == [("libc6", "2.36", 102400)]


def test_leftover_findings_carry_bytes_layer_and_fix() -> None:
    loaded = loaded_of([
        [f("etc/os-release", "ID=debian\n")],
        [f("var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", blob(2 * MB)),
         f("var/cache/apt/archives/curl.deb", blob(MB + 5)), f("var/cache/apk/APKINDEX.tar.gz", blob(MB)),
         f("root/.cache/pip/http/x", blob(MB)), f("home/app/.npm/_cacache/y", blob(MB)),
         f("root/.cargo/registry/cache/z.crate", blob(MB)), f("usr/share/doc/pkg/changelog.gz", blob(MB)),
         f("src/target/release/.fingerprint/app-1/hash", b"1"), f("src/target/release/app", blob(MB))],
    ])
    rules = found(loaded)
    for rule, path in (("apt-lists", "/var/lib/apt/lists"), ("apt-archives", "/var/cache/apt"),
                       ("apk-cache", "/var/cache/apk"), ("pip-cache", "/root/.cache/pip"),
                       ("npm-cache", "/home/app/.npm"), ("cargo-registry", "/root/.cargo/registry"),
                       ("docs-man-locales", "/usr/share/doc"), ("cargo-target", "/src/target")):
        (finding,) = rules[rule]
        assert finding.path == path
        assert finding.layer == 1
        assert finding.bytes is not None and finding.bytes >= MB
        assert finding.fix
        assert finding.severity.value == "info"  # under 10 MB
    assert rules["apt-lists"][0].bytes == 2 * MB


def test_toolchain_findings() -> None:
    loaded = loaded_of([[
        f("usr/local/rustup/toolchains/stable/lib/librustc_driver.so", blob(2 * MB)),
        f("usr/lib/gcc/x86_64-linux-gnu/12/cc1", blob(MB)), f("usr/include/stdio.h", blob(MB)),
        f("usr/lib/x86_64-linux-gnu/libc.a", blob(MB)), f("usr/bin/x86_64-linux-gnu-gcc-12", blob(MB)),
        f("usr/local/bin/app", blob(10)),
    ]])
    rules = found(loaded)
    assert rules["toolchain-rust"][0].path == "/usr/local/rustup"
    assert rules["toolchain-gcc"][0].path == "/usr/lib/gcc"
    assert rules["dev-headers"][0].path == "/usr/include"
    assert rules["static-archives"][0].bytes == MB
    assert rules["toolchain-binaries"][0].path == "/usr/bin/x86_64-linux-gnu-gcc-12"


def test_removed_and_rewritten_later_and_duplicate_content() -> None:
    same = blob(MB, 3)
    loaded = loaded_of([
        [d("build"), f("build/big.tar", blob(3 * MB)), f("app.bin", blob(2 * MB))],
        [wh("build"), f("app.bin", blob(2 * MB), 0o755)],
        [f("copy1", same), f("copy2", same)],
    ])
    rules = found(loaded)
    (removed,) = rules["removed-later"]
    assert (removed.path, removed.bytes, removed.layer) == ("/build", 3 * MB, 0)
    assert "removed in layer 1" in removed.message
    (rewritten,) = rules["rewritten-later"]
    assert (rewritten.path, rewritten.bytes) == ("/app.bin", 2 * MB)
    assert "--chmod" in (rewritten.fix or "")
    (dup,) = rules["duplicate-content"]
    assert dup.bytes == MB


@dataclass(frozen=True)
class FakeRust:
    rustc_version: str = "1.75.0"


@dataclass(frozen=True)
class FakeElf:
    """The three ELF facts the bloat check reads (imgaudit.elf.ElfFacts has them)."""

    debug_bytes: int
    stripped: bool = False
    rust: FakeRust | None = None


def _with_elf(scan: LayerScan, facts: dict[str, FakeElf]) -> LayerScan:
    entries = tuple(replace(e, elf=facts[e.path]) if e.path in facts else e for e in scan.entries)  # type: ignore[arg-type]
    return replace(scan, entries=entries)


def test_unstripped_elf_with_rust_advice() -> None:
    scan = scan_layer(io.BytesIO(make_layer([
        f("usr/local/bin/app", b"\x7fELF" + blob(3 * MB)), f("usr/lib/libx.so", b"\x7fELF" + blob(100)),
        f("usr/lib/liby.so", b"\x7fELF" + blob(100))])))
    scan = _with_elf(scan, {"/usr/local/bin/app": FakeElf(2 * MB, rust=FakeRust()),
                            "/usr/lib/libx.so": FakeElf(600_000), "/usr/lib/liby.so": FakeElf(500_000)})
    rules = found(loaded_from_scans((scan,)))
    big, small = rules["unstripped-elf"]
    assert (big.path, big.bytes) == ("/usr/local/bin/app", 2 * MB)
    assert "strip = true" in (big.fix or "") and "debug = false" in (big.fix or "")
    assert (small.path, small.bytes) == ("/usr/lib", 1_100_000)
    assert "2 ELF files" in small.message


FIXTURES = Path(os.environ.get("IMGAUDIT_FIXTURES_OUT") or Path(__file__).resolve().parents[2] / "fixtures" / "build")


def test_unstripped_rust_fixture_is_found_with_its_debug_bytes() -> None:
    """A real `rustc -O` binary (std's debug info left in) next to its `-C strip=symbols` twin."""
    from imgaudit.elf import read_elf

    gnu, stripped = FIXTURES / "rust" / "hello-svc-gnu", FIXTURES / "rust" / "hello-svc-stripped"
    if not (gnu.exists() and stripped.exists()):
        pytest.skip("ELF fixtures not built (scripts/build-fixtures)")
    layer = make_layer([f("usr/local/bin/svc", gnu.read_bytes(), 0o755),
                        f("usr/local/bin/svc-stripped", stripped.read_bytes(), 0o755)])
    scan = scan_layer(io.BytesIO(layer), elf_reader=read_elf)
    debug = read_elf(str(gnu), gnu.read_bytes()).debug_bytes
    (finding,) = found(loaded_from_scans((scan,)))["unstripped-elf"]
    assert (finding.path, finding.bytes) == ("/usr/local/bin/svc", debug)
    assert debug > MB
    assert "[profile.release] strip = true" in (finding.fix or "")


def test_nothing_to_report_on_a_lean_image() -> None:
    assert found(loaded_of([[f("app", blob(100)), f("etc/passwd", "root:x:0:0::/root:/bin/sh\n")]])) == {}


def test_report_json_validates_against_the_schema() -> None:
    loaded = loaded_of([
        [d("a"), f("a/x", blob(MB)), f("a/y", blob(MB)), f("var/lib/apt/lists/l", blob(MB))],
        [wh("a"), f("dup1", blob(10, 1)), f("dup2", blob(10, 1))],
    ])
    body = audit(loaded).to_dict()
    jsonschema.validate(body, SCHEMA)
    size = body["size"]
    assert size["reclaimable_bytes"] == 2 * MB
    assert size["reclaimable"][0] == {"path": "/a", "bytes": 2 * MB, "files": 2, "layer": 0, "hidden_by": 1,
                                      "reason": "removed"}
    assert size["user_wasted_percent"] == 0.0  # dive: nothing seen twice, 20 user bytes
    assert {f["rule"] for f in body["findings"]} >= {"apt-lists", "removed-later"}


def test_user_wasted_percent_is_null_for_one_layer() -> None:
    body = audit(loaded_of([[f("x", blob(10))]])).to_dict()
    jsonschema.validate(body, SCHEMA)
    assert body["size"]["user_wasted_percent"] is None


def test_inspect_text_has_bars_waste_and_the_convention() -> None:
    loaded = loaded_of([[f("big", blob(2 * MB))], [f("small", blob(1000)), wh("big")]])
    text = render_inspect(audit(loaded))
    assert "█" * 20 in text  # the biggest layer fills the bar
    assert "reclaimable 2.0 MB" in text
    assert "1 MB = 1,000,000 bytes" in text
    assert "/big  removed in layer 1, added in layer 0" in text


def test_bar_is_proportional_and_never_hides_a_small_layer() -> None:
    assert bar(50, 100, 20) == "█" * 10
    assert bar(1, 10**9, 20) == "█"
    assert bar(0, 100, 20) == ""


def test_entry_types_are_counted_as_files_only_when_regular() -> None:
    loaded = loaded_of([[d("dir"), f("dir/file", blob(5)), Item("fifo", "fifo")]])
    size = info(loaded)
    assert size.file_count == 1
    assert [n.type for n in loaded.rootfs.walk()].count(EntryType.FIFO) == 1
