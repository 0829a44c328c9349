"""The layer scan cache: round trip, verification on read, atomic writes, eviction, the Scanner wiring."""

from __future__ import annotations

import io
import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from imgaudit import cache as cache_mod
from imgaudit.cache import ScanCache, decode, default_dir, encode, parse_size
from imgaudit.elf import ElfFacts, RustFacts, Symbol, VersionNeed
from imgaudit.image import Image, ImageConfig, Layer, Platform
from imgaudit.layers import Entry, EntryType, LayerScan, Skipped, scan_layer
from imgaudit.scanner import Scanner
from tests.builders import d, f, gz, make_layer, opaque, sha, sym, wh

FACTS = ElfFacts(
    elf_class=64, endian="little", machine="x86_64", elf_type="pie", interpreter="/lib64/ld-linux-x86-64.so.2",
    needed=("libc.so.6",), runpath=("$ORIGIN",), bind_now=True, has_dynamic=True,
    version_needs=(VersionNeed("libc.so.6", "GLIBC_2.34"), VersionNeed("libc.so.6", "GLIBC_2.2.5", weak=True)),
    imported_symbols=(Symbol("printf", "GLIBC_2.2.5"), Symbol("__gmon_start__", weak=True)),
    exported_symbols=(Symbol("f", "V1", hidden=True),), debug_bytes=7, stripped=True,
    rust=RustFacts("1.75.0", "a" * 40, "gnu"), libc="glibc",
)


def sample_scan(digest: str = "sha256:" + "ab" * 32) -> LayerScan:
    return LayerScan(
        digest=digest, diff_id="sha256:" + "cd" * 32, compressed_size=10, size=20, compression="gzip",
        entries=(
            Entry("/bin", EntryType.DIR, mode=0o755),
            Entry("/bin/app", EntryType.FILE, mode=0o755, uid=1, gid=2, size=300, head=b"\x7fELF\x02",
                  digest="ee" * 32, elf=FACTS),
            Entry("/bin/sh", EntryType.SYMLINK, link="dash"),
            Entry("/gone", EntryType.WHITEOUT),
            Entry("/opq", EntryType.OPAQUE),
            Entry("/etc/os-release", EntryType.FILE, size=10, head=b"ID=debian\n", digest="11" * 32),
        ),
        files={"11" * 32: b"ID=debian\n"},
        skipped=(Skipped("layer 1 entry \"/x\"", "unsupported tar type"),),
        trailing_bytes=3,
    )


@pytest.fixture
def store(tmp_path: Path) -> ScanCache:
    return ScanCache(tmp_path / "cache", max_bytes=1 << 30)


@pytest.mark.parametrize("compress", [False, True])
def test_encode_decode_round_trip_is_equal(compress: bool) -> None:
    scan = sample_scan()
    assert decode(encode(scan, compress=compress)) == scan


def test_put_then_get_and_a_miss(store: ScanCache) -> None:
    scan = sample_scan()
    assert store.get(scan.digest, elf=True) is None
    store.put(scan, elf=True)
    assert store.get(scan.digest, elf=True) == scan
    assert store.get("sha256:" + "00" * 32, elf=True) is None
    assert (store.hits, store.misses) == (1, 2)


def test_a_scan_with_elf_facts_serves_a_listing_but_not_the_reverse(store: ScanCache) -> None:
    scan = sample_scan()
    store.put(scan, elf=True)
    listing = store.get(scan.digest, elf=False)
    assert listing is not None and all(e.elf is None for e in listing.entries)
    assert [e.path for e in listing.entries] == [e.path for e in scan.entries]
    other = sample_scan("sha256:" + "12" * 32)
    store.put(other, elf=False)
    assert store.get(other.digest, elf=True) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "version", "empty"])
def test_a_damaged_entry_is_deleted_and_missed(store: ScanCache, damage: str) -> None:
    scan = sample_scan()
    store.put(scan, elf=True)
    path = store.path(scan.digest, elf=True)
    blob = bytearray(path.read_bytes())
    if damage == "flip":
        blob[-5] ^= 0x01
    elif damage == "truncate":
        blob = blob[: len(blob) * 6 // 10]
    elif damage == "magic":
        blob[0] ^= 0xFF
    elif damage == "version":
        blob[len(cache_mod.MAGIC)] = 99
    else:
        blob = bytearray()
    path.write_bytes(bytes(blob))
    assert store.get(scan.digest, elf=True) is None
    assert not path.exists()


def test_every_cut_of_an_entry_is_caught(store: ScanCache) -> None:
    blob = encode(sample_scan())
    for cut in range(0, len(blob), max(1, len(blob) // 97)):
        with pytest.raises(Exception):  # noqa: B017 - any failure counts, as long as it is not a scan
            decode(blob[:cut])


def test_writes_are_atomic_and_leave_no_temp_files(store: ScanCache) -> None:
    store.put(sample_scan(), elf=True)
    names = os.listdir(store.root)
    assert len(names) == 1 and names[0].endswith(".scan")
    assert (store.root.stat().st_mode & 0o777) == 0o700


def test_eviction_drops_the_least_recently_used(tmp_path: Path) -> None:
    one = len(encode(sample_scan()))
    store = ScanCache(tmp_path, max_bytes=int(one * 2.5))
    digests = ["sha256:" + f"{i:02x}" * 32 for i in range(3)]
    for i, digest in enumerate(digests[:2]):
        store.put(sample_scan(digest), elf=True)
        os.utime(store.path(digest, elf=True), (time.time() - 100 + i, time.time() - 100 + i))
    assert store.get(digests[0], elf=True) is not None  # a hit makes it the most recent
    store.put(sample_scan(digests[2]), elf=True)
    assert store.path(digests[0], elf=True).exists()
    assert not store.path(digests[1], elf=True).exists()
    assert store.path(digests[2], elf=True).exists()


def test_stale_temp_files_are_swept(store: ScanCache) -> None:
    store.root.mkdir(parents=True)
    stale = store.root / ".tmp-dead"
    stale.write_bytes(b"x")
    old = time.time() - 2 * cache_mod.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    fresh = store.root / ".tmp-live"
    fresh.write_bytes(b"x")
    store.put(sample_scan(), elf=True)
    assert not stale.exists() and fresh.exists()


def test_an_unwritable_cache_never_fails_and_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """RELIABILITY.md #86 (the tmpfs cases: test_cache_disk.py): one warning per directory for the whole process,
    however many ScanCache objects share it (a run has two, `compare` one more per image)."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = ScanCache(blocker / "cache")
    store.put(sample_scan(), elf=True)
    assert store.get(sample_scan().digest, elf=True) is None
    other = ScanCache(blocker / "cache")
    other.put(sample_scan("sha256:" + "12" * 32), elf=True)
    other.put_report("k", SimpleNamespace(complete=True))
    warnings = [r.getMessage() for r in caplog.records if r.name == "imgaudit.cache"]
    assert len(warnings) == 1 and "Not a directory" in warnings[0] and not store.usable and not other.usable
    assert ScanCache(tmp_path / "elsewhere").usable


def test_code_changes_change_the_entry_name(store: ScanCache, monkeypatch: pytest.MonkeyPatch) -> None:
    scan = sample_scan()
    store.put(scan, elf=True)
    newer = ScanCache(store.root)
    newer.fingerprint = "0" * 12
    assert newer.get(scan.digest, elf=True) is None


def test_default_dir_and_switches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("IMGAUDIT_CACHE_DIR", raising=False)
    monkeypatch.delenv("IMGAUDIT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "imgaudit"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")  # the XDG spec says: ignore a relative path
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_dir() == tmp_path / "home" / ".cache" / "imgaudit"
    monkeypatch.setenv("IMGAUDIT_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("IMGAUDIT_CACHE_MAX", "3M")
    cache = ScanCache.default()
    assert cache is not None and cache.root == tmp_path / "explicit" and cache.max_bytes == 3 << 20
    monkeypatch.setenv("IMGAUDIT_CACHE", "off")
    assert ScanCache.default() is None


@pytest.mark.parametrize("text,value", [("1024", 1024), ("2K", 2048), ("1.5G", 3 << 29), ("512MiB", 512 << 20)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


# -- the Scanner ----------------------------------------------------------------------------------

LAYERS = [
    make_layer([d("etc"), f("etc/os-release", "ID=debian\n"), d("a"), f("a/x", b"1" * 5000), sym("l", "/a")]),
    make_layer([wh("a/x"), opaque("etc"), f("etc/new", "n")]),
]
BLOBS = [gz(layer) for layer in LAYERS]


def image(opens: list[int], blobs: list[bytes] = BLOBS, diff_ids: list[str] | None = None) -> Image:
    def opener(i: int):  # type: ignore[no-untyped-def]
        def open_blob() -> io.BytesIO:
            opens.append(i)
            return io.BytesIO(blobs[i])
        return open_blob

    ids = diff_ids or [sha(layer) for layer in LAYERS]
    layers = tuple(Layer(i, ids[i], sha(b), len(b), open=opener(i)) for i, b in enumerate(blobs))
    return Image("ref", "oci", ImageConfig(Platform("linux", "amd64"), diff_ids=tuple(ids)), "sha256:cfg", layers)


def test_scanner_scans_each_blob_once_then_only_hashes_it(store: ScanCache, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgaudit import scanner as scanner_mod

    opens: list[int] = []
    first = Scanner(cache=store).scan_image(image(opens))
    assert first[0] == scan_layer(io.BytesIO(BLOBS[0]), label="x")

    def no_scan(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned again")

    monkeypatch.setattr(scanner_mod, "scan_layer", no_scan)
    assert Scanner(cache=store).scan_image(image(opens)) == first
    assert sorted(opens) == [0, 0, 1, 1]  # opened again, to hash the stored bytes


def test_a_blob_changed_under_its_digest_is_caught_despite_the_cache(store: ScanCache) -> None:
    from imgaudit.errors import CorruptImage

    Scanner(cache=store).scan_image(image([]))
    flipped = bytearray(BLOBS[1])
    flipped[len(flipped) // 2] ^= 0x01
    layers = image([]).layers
    bad = image([], blobs=[BLOBS[0], bytes(flipped)])
    bad = Image(bad.reference, bad.source, bad.config, bad.config_digest,
                (bad.layers[0], replace(bad.layers[1], digest=layers[1].digest)))
    with pytest.raises(CorruptImage, match=r"layer 2/2 .*digest mismatch"):
        Scanner(cache=store).scan_image(bad)


def test_a_registry_blob_is_trusted_by_digest_and_not_opened(store: ScanCache) -> None:
    opens: list[int] = []
    Scanner(cache=store).scan_image(image(opens))
    Scanner(cache=store, trust_digests=True).scan_image(image(opens))
    assert sorted(opens) == [0, 1]


def test_a_layer_without_a_blob_digest_is_never_served_from_the_cache(store: ScanCache) -> None:
    opens: list[int] = []
    legacy = image(opens)
    legacy = Image(legacy.reference, legacy.source, legacy.config, legacy.config_digest,
                   tuple(replace(layer, digest=None, size=None) for layer in legacy.layers))
    Scanner(cache=store).scan_image(legacy)
    assert store.get(legacy.layers[0].diff_id, elf=False) is None


def test_a_cached_scan_that_disagrees_with_the_config_is_rescanned(store: ScanCache) -> None:
    opens: list[int] = []
    Scanner(cache=store).scan_image(image(opens))
    wrong = [sha(LAYERS[0]), "sha256:" + "00" * 32]
    with pytest.raises(Exception, match="diff_id mismatch"):
        Scanner(cache=store).scan_image(image(opens, diff_ids=wrong))
    assert opens.count(1) == 2  # layer 2 was read again, and verification named the mismatch


def test_a_streamed_layer_with_a_known_digest_is_hashed_not_scanned_on_a_hit(store: ScanCache) -> None:
    from imgaudit.errors import CorruptImage

    scanner = Scanner(cache=store)
    layer = Layer(0, sha(LAYERS[0]), sha(BLOBS[0]), len(BLOBS[0]))
    first = scanner.scan(layer, io.BytesIO(BLOBS[0]), 1)
    assert scanner.scan(layer, io.BytesIO(BLOBS[0]), 1) == first
    with pytest.raises(CorruptImage, match="digest mismatch"):
        scanner.scan(layer, io.BytesIO(BLOBS[0][:-1] + bytes([BLOBS[0][-1] ^ 1])), 1)


def test_no_cache_means_no_files(tmp_path: Path) -> None:
    opens: list[int] = []
    Scanner(cache=None).scan_image(image(opens))
    Scanner(cache=None).scan_image(image(opens))
    assert len(opens) == 4


# -- the scan's helper threads (layers._Offload), which the cache relies on being deterministic -----

ELF_LAYER = make_layer([f(f"bin/p{i}", b"\x7fELF\x02\x01\x01" + bytes([i]) * (300_000 + i)) for i in range(6)]
                       + [f("big", b"z" * 700_000), f("small", b"s")])


def test_late_digests_and_elf_facts_land_on_their_own_entries() -> None:
    import hashlib
    import threading

    seen: list[str] = []

    def reader(path: str, data: bytes) -> ElfFacts:
        seen.append(threading.current_thread().name)
        return ElfFacts(machine=path, debug_bytes=len(data))

    result = scan_layer(io.BytesIO(gz(ELF_LAYER)), label="x", elf_reader=reader)
    plain = scan_layer(io.BytesIO(ELF_LAYER), label="x")
    files = {e.path: e for e in result.entries}
    for i in range(6):
        entry = files[f"/bin/p{i}"]
        assert entry.elf is not None and entry.elf.machine == entry.path and entry.elf.debug_bytes == entry.size
        want = hashlib.sha256(b"\x7fELF\x02\x01\x01" + bytes([i]) * (300_000 + i)).hexdigest()
        assert entry.digest == want
    assert files["/big"].digest == hashlib.sha256(b"z" * 700_000).hexdigest()
    assert [e.digest for e in plain.entries] == [e.digest for e in result.entries]
    assert seen and all(name.startswith("imgaudit-elf") for name in seen)


def test_a_failing_elf_reader_fails_the_scan_and_leaves_no_thread() -> None:
    import threading

    before = threading.active_count()

    def reader(path: str, data: bytes) -> ElfFacts:
        raise RuntimeError("parser gone")

    with pytest.raises(RuntimeError, match="parser gone"):
        scan_layer(io.BytesIO(gz(ELF_LAYER)), label="x", elf_reader=reader)
    assert threading.active_count() == before


# -- whole reports -------------------------------------------------------------------------------


def test_a_seen_image_is_answered_from_its_manifest_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from imgaudit import audit as audit_mod
    from tests.builders import ImageSpec, write_oci_archive

    archive = write_oci_archive(tmp_path / "img.tar", {"app:1": ImageSpec(LAYERS, entrypoint=["/a/x"])})
    first = audit_mod.audit(f"oci-archive:{archive}")
    assert first.complete

    def no_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the layers were read again")

    monkeypatch.setattr(audit_mod, "load", no_load)
    copy = shutil.copy(archive, tmp_path / "other.tar")
    again = audit_mod.audit(f"oci-archive:{copy}")
    assert again.to_dict()["image"]["reference"].endswith("other.tar")
    first_dict, again_dict = first.to_dict(), again.to_dict()
    first_dict.pop("image"), again_dict.pop("image")
    assert first_dict == again_dict
    with pytest.raises(AssertionError, match="read again"):
        audit_mod.audit(f"oci-archive:{copy}", audit_mod.Options(cache=False))


def test_incomplete_reports_are_not_kept_and_foreign_pickles_are_refused(store: ScanCache) -> None:
    import pickle

    from imgaudit.report import ImageInfo, Incomplete, PlatformInfo, Report

    info = ImageInfo("r", "oci", None, "sha256:c", PlatformInfo("linux", "amd64", None), [], [], [], "", "")
    partial = Report(image=info, incomplete=[Incomplete("x", "timed out")])
    store.put_report("k1", partial)
    assert store.get_report("k1") is None
    whole = Report(image=info)
    store.put_report("k2", whole)
    assert store.get_report("k2") == whole
    payload = pickle.dumps(os.system)
    blob = cache_mod.REPORT_MAGIC + bytes((cache_mod.FORMAT_VERSION, 0))
    blob += __import__("hashlib").sha256(payload).digest() + payload
    store.report_path("k3").write_bytes(blob)
    assert store.get_report("k3") is None
    assert not store.report_path("k3").exists()


def test_the_elf_budget_is_given_back_after_success_failure_and_truncation() -> None:
    from imgaudit import layers

    def reader(path: str, data: bytes) -> ElfFacts:
        return ElfFacts(machine=path)

    def failing(path: str, data: bytes) -> ElfFacts:
        raise RuntimeError("parser gone")

    scan_layer(io.BytesIO(gz(ELF_LAYER)), label="x", elf_reader=reader)
    with pytest.raises(RuntimeError):
        scan_layer(io.BytesIO(gz(ELF_LAYER)), label="x", elf_reader=failing)
    with pytest.raises(Exception, match=r"truncated|unexpected end"):
        scan_layer(io.BytesIO(ELF_LAYER[: len(ELF_LAYER) // 3]), label="x", elf_reader=reader)
    assert layers._ELF_BUDGET.used == 0


def test_the_scan_fingerprint_covers_every_module_a_scan_comes_from() -> None:
    """A cached scan is reused until the code that made it changes: every imgaudit module that layers.py, elf.py
    or cache.py import, at any depth, is hashed into the key (tarheader.py and paxrules.py once were not, so a
    change to how PAX headers are read kept serving scans read the old way)."""
    import ast

    package = Path(cache_mod.__file__).parent
    todo, seen = ["layers.py", "elf.py", "cache.py"], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(ast.parse((package / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgaudit."):
                todo.append(node.module.split(".")[1] + ".py")
    assert seen == set(cache_mod.SCAN_MODULES)


@pytest.mark.parametrize("compress", [False, True])
def test_a_scan_is_written_piece_by_piece_not_held_whole(store: ScanCache, compress: bool) -> None:
    """At the moment a layer's scan is complete, writing its entry held every entry as a tuple, marshal's
    buffer and the bytes made from it: 2.4x the entry on top of the scan (62 MiB for 130,000 entries).
    Pieces of 4,096 entries keep it to one piece; the entry reads back whole, across piece boundaries."""
    import tracemalloc

    entries = tuple(Entry(f"/usr/share/doc/package-{i:06d}/changelog.Debian.gz", EntryType.FILE, mode=0o644,
                          size=i, digest=f"{i:064x}") for i in range(10 * 4096 + 5))
    scan = replace(sample_scan(), entries=sample_scan().entries + entries)
    store = ScanCache(store.root, max_bytes=store.max_bytes, compress=compress)
    store.path(scan.digest, elf=True)  # the code fingerprint, read once per process
    tracemalloc.start()
    try:
        store.put(scan, elf=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    written = store.path(scan.digest, elf=True).stat().st_size
    assert written > 4 << 20 or compress
    assert peak < 4 << 20, (peak, written)  # a piece of 4,096 entries, its dump and a copy; 20 MB before
    blob = store.path(scan.digest, elf=True).read_bytes()
    tracemalloc.start()
    try:
        again = decode(blob)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert again == scan
    inflated = len(encode(scan)) if compress else 0  # a zstd entry is inflated whole first
    assert peak - kept < (3 << 20) + inflated, (peak, kept)  # one piece's rows beside the entries; 8 MB before


def test_layers_to_scan_go_before_the_cached_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a scan's parser holds a big file, the scans already loaded from the cache add to the peak (the bench
    image with its top layer changed: 325 -> 274 MiB), so the layers to scan come first, then the cached ones,
    each group largest first."""
    from imgaudit.audit import Options, load
    from tests.builders import ImageSpec, write_oci_layout

    big = make_layer([d("data")] + [f(f"data/f{i}", b"x" * 100) for i in range(2000)])
    small = make_layer([d("etc"), f("etc/os-release", "ID=test\n")])
    load(f"oci:{write_oci_layout(tmp_path / 'base', {'1': ImageSpec([big])})}", Options(elf=False))
    order: list[int] = []
    scan = Scanner.scan

    def recording(self: Scanner, layer: Layer, raw: Any, count: int) -> LayerScan:
        order.append(layer.index)
        return scan(self, layer, raw, count)

    monkeypatch.setattr(Scanner, "scan", recording)
    load(f"oci:{write_oci_layout(tmp_path / 'app', {'1': ImageSpec([big, small])})}", Options(elf=False))
    assert order == [1, 0]  # the small new layer, then the big cached one
