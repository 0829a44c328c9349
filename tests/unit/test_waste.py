"""dive-compatible efficiency/wasted bytes and our reclaimable bytes, on images whose numbers dive's own tests
state (rebuilt header for header from those tests), on the corpus of dive's test images, and on synthetic
overwrites, whiteouts and opaque directories worked out by hand from dive's `filetree/efficiency.go`."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from imgaudit.audit import Loaded
from imgaudit.checks.waste import dive_score, reclaimable
from imgaudit.image import Image, ImageConfig, Layer, Platform
from imgaudit.layers import scan_layer
from imgaudit.rootfs import RootFS
from tests.builders import Item, d, f, hard, make_layer, opaque, wh

CORPUS = Path(os.environ.get("IMGAUDIT_CORPUS", Path(__file__).resolve().parents[3] / "shared" / "corpus"))
DIVE_IMAGES = CORPUS / "dive-test-images"


def loaded_of(layers: list[list[Item]]) -> Loaded:
    scans = tuple(scan_layer(io.BytesIO(make_layer(items))) for items in layers)
    descs = tuple(Layer(i, s.diff_id, s.digest, s.compressed_size, created_by=f"layer {i}")
                  for i, s in enumerate(scans))
    image = Image("test", "oci", ImageConfig(Platform("linux", "amd64")), "sha256:" + "0" * 64, descs)
    return Loaded(image, scans, RootFS.build(scans))


def score(layers: list[list[Item]]):  # type: ignore[no-untyped-def]
    return dive_score(loaded_of(layers).scans)


def blob(n: int, seed: int = 0) -> bytes:
    """n bytes; different seeds give different content."""
    unit = bytes((i * 31 + seed) % 253 for i in range(253))
    return (unit * (n // 253 + 1))[:n]


# -- dive's own unit tests (dive/filetree/efficiency_test.go) ------------------------------------------------


def test_dive_efficiency_test_case() -> None:
    """TestEfficency: parents added implicitly are not directories, so the whiteout of /etc/nginx costs 0."""
    result = score([
        [f("etc/nginx/nginx.conf", blob(2000)), f("etc/nginx/public", blob(3000))],
        [f("etc/nginx/nginx.conf", blob(5000)), f("etc/athing", blob(10000))],
        [wh("etc/nginx")],
    ])
    assert result.efficiency == 0.75
    assert [(i.path, i.count, i.bytes) for i in result.inefficiencies] == [("/etc/nginx/nginx.conf", 2, 7000)]


def test_dive_efficiency_scratch_case() -> None:
    """TestEfficency_ScratchImage: nothing but a 0-byte file scores 1.0."""
    result = score([[f("nothing")], [], []])
    assert result.efficiency == 1.0
    assert result.inefficiencies == ()
    assert result.user_wasted_percent is None  # dive divides 0 by 0 here


# -- dive's test-docker-image.tar (image_archive_analysis_test.go, export_test.go) --------------------------

README = blob(6405, seed=1)


def _dive_docker_image() -> list[list[Item]]:
    """`.data/Dockerfile` built by docker: layer 1..13 exactly as export_test.go lists them; the alpine base
    is reduced to what the numbers depend on: 1154361 bytes of leaves, `root/` and `tmp/` empty."""
    base = [d("bin"), f("bin/busybox", blob(1075464), 0o755), hard("bin/sh", "bin/busybox"), d("etc"),
            f("etc/group", blob(307)), d("lib"), f("lib/ld-musl-x86_64.so.1", blob(78590)), d("root", 0o700),
            d("tmp", 0o1777)]
    root = d("root", 0o700)
    return [
        base,
        [f("somefile.txt", README)],
        [root, d("root/example"), d("root/example/really"), d("root/example/really/nested")],
        [root, d("root/example"), f("root/example/somefile1.txt", README)],
        [root, d("root/example"), f("root/example/somefile1.txt", README, 0o444)],
        [root, d("root/example"), f("root/example/somefile2.txt", README)],
        [root, d("root/example"), f("root/example/somefile3.txt", README)],
        [root, d("root/example"), wh("root/example/somefile3.txt"), f("root/saved.txt", README)],
        [root, f("root/.saved.txt", README)],
        [root, wh("root/example")],
        [root, d("root/.data"), f("root/.data/tag.sh", blob(917), 0o775), f("root/.data/test.sh", blob(1270), 0o755)],
        [d("tmp", 0o1777), f("tmp/saved.again1.txt", README)],
        [root, d("root/.data"), f("root/.data/saved.again2.txt", README)],
        [root, f("root/saved.txt", README, 0o755)],
    ]


def test_dive_test_docker_image_numbers() -> None:
    """Test_Analysis: {0.9844212134184309, 1220598, 66237, 32025, 0.4834911001404049}, bit for bit."""
    result = score(_dive_docker_image())
    assert result.efficiency == 0.9844212134184309
    assert result.size_bytes == 1220598
    assert result.user_size_bytes == 66237
    assert result.wasted_bytes == 32025
    assert result.user_wasted_percent == 0.4834911001404049
    assert {(i.path, i.count, i.bytes) for i in result.inefficiencies} == {
        ("/root/saved.txt", 2, 12810), ("/root/example/somefile1.txt", 2, 12810),
        ("/root/example/somefile3.txt", 2, 6405)}


def test_reclaimable_of_dive_test_docker_image() -> None:
    loaded = loaded_of(_dive_docker_image())
    result = reclaimable(loaded.rootfs, loaded.scans)
    assert result.total == 5 * 6405  # somefile1 twice, somefile2, somefile3, the first saved.txt
    top = result.contributors[0]
    assert (top.path, top.bytes, top.files, top.hidden_by, top.reason) == ("/root/example", 12810, 2, 9, "removed")
    assert {(c.path, c.layer, c.hidden_by, c.reason) for c in result.contributors[1:]} == {
        ("/root/example/somefile1.txt", 3, 4, "overwritten"), ("/root/example/somefile3.txt", 6, 7, "removed"),
        ("/root/saved.txt", 7, 13, "overwritten")}


def test_dive_ci_fail_image_numbers() -> None:
    """cli_ci_test.snap, Test_CI_Fail (BuildKit, busybox base, RUN layers carry an empty etc/): wasted 131 B,
    userWastedPercent 0.7197802197802198, efficiency 100.00 %, and the same five inefficient paths."""
    example, overwrite = blob(17, 2), blob(46, 3)
    etc, root = d("etc"), d("root", 0o700)
    base = [d("bin"), f("bin/busybox", blob(4_000_000), 0o755), d("etc"), f("etc/passwd", blob(340)),
            d("root", 0o700), d("tmp", 0o1777)]
    layers = [
        base,
        [f("somefile.txt", example)],
        [etc, root, d("root/example"), d("root/example/really"), d("root/example/really/nested")],
        [etc, root, d("root/example"), f("root/example/somefile1.txt", example)],
        [etc, root, d("root/example"), f("root/example/somefile1.txt", example, 0o444)],
        [etc, root, d("root/example"), f("root/example/somefile2.txt", example)],
        [etc, root, d("root/example"), f("root/example/somefile3.txt", example)],
        [etc, root, d("root/example"), wh("root/example/somefile3.txt"), f("root/saved.txt", example)],
        [etc, root, f("root/.saved.txt", example)],
        [etc, root, f("root/saved.txt", example, 0o755)],
        [etc, d("root", 0o421)],
        [etc, root, wh("root/example")],
        [root, f("root/saved.txt", overwrite)],
    ]
    result = score(layers)
    assert result.wasted_bytes == 131
    assert result.user_wasted_percent == 0.7197802197802198
    assert f"{result.efficiency * 100:.2f}" == "100.00"
    assert [(i.path, i.count, i.bytes) for i in result.inefficiencies] == [
        ("/root/saved.txt", 3, 80), ("/root/example/somefile1.txt", 2, 34), ("/root/example/somefile3.txt", 2, 17),
        ("/etc", 10, 0), ("/root", 2, 0)]


# -- synthetic cases, worked out by hand from efficiency.go -------------------------------------------------


def test_overwrite_and_file_whiteout() -> None:
    """/x: 100 + 60, smallest 60; /y: 40 + 0 (a file whiteout costs 0), smallest 0 → 60/200."""
    layers = [[f("x", blob(100)), f("y", blob(40))], [f("x", blob(60))], [wh("y")]]
    result = score(layers)
    assert result.efficiency == 60 / 200
    assert result.wasted_bytes == 200
    assert result.user_wasted_percent == 200 / 60
    loaded = loaded_of(layers)
    assert reclaimable(loaded.rootfs, loaded.scans).total == 140


def test_directory_whiteout_counts_once_and_never_lowers_the_score() -> None:
    layers = [[d("a"), f("a/x", blob(100)), f("a/y", blob(30))], [wh("a")]]
    result = score(layers)
    assert result.efficiency == 1.0  # /a/x, /a/y once each, /a (130 bytes) once
    assert result.wasted_bytes == 0
    loaded = loaded_of(layers)
    hidden = reclaimable(loaded.rootfs, loaded.scans)
    assert hidden.total == 130
    assert [(c.path, c.bytes, c.files, c.layer, c.hidden_by, c.reason) for c in hidden.contributors] == [
        ("/a", 130, 2, 0, 1, "removed")]


def test_whiteout_of_an_implicit_directory_costs_nothing() -> None:
    """Without its own tar entry a directory is no directory to dive: its whiteout counts 0 bytes."""
    result = score([[f("a/x", blob(100))], [wh("a")], [f("b", blob(10))]])
    assert result.efficiency == 1.0
    assert result.size_bytes == 110


def test_opaque_directory_is_invisible_to_dive_but_reclaimable() -> None:
    layers = [[d("a"), f("a/x", blob(100)), f("b", blob(50))], [d("a"), opaque("a"), f("a/y", blob(10))]]
    result = score(layers)
    assert (result.efficiency, result.wasted_bytes) == (1.0, 0)
    loaded = loaded_of(layers)
    hidden = reclaimable(loaded.rootfs, loaded.scans)
    assert hidden.total == 100
    assert [(c.path, c.reason, c.hidden_by) for c in hidden.contributors] == [("/a", "opaque", 1)]


def test_whiteout_of_a_missing_path_stops_dive_on_that_layer() -> None:
    """dive's visitor returns GetNode's error: `z` (visited after `.wh.ghost`) is never counted, `-x`
    (visited before) is, and /ghost keeps minDiscoveredSize -1: (7 + 10 - 1) / 17."""
    result = score([[f("a", blob(10))], [f("-x", blob(7)), wh("ghost"), f("z", blob(5))]])
    assert result.efficiency == 16 / 17


def test_whiteout_in_the_first_layer_is_charged_against_itself() -> None:
    """dive stacks nothing for layer 0 and finds `a` in layer 0 itself: /a is seen twice (0 and 10 bytes)."""
    layers = [[f("a", blob(10)), wh("a")]]
    result = score(layers)
    assert (result.efficiency, result.wasted_bytes) == (0.0, 10)
    loaded = loaded_of(layers)
    assert reclaimable(loaded.rootfs, loaded.scans).total == 0  # a whiteout only hides lower layers


def test_duplicate_entries_in_one_layer() -> None:
    loaded = loaded_of([[f("x", blob(100)), f("x", blob(30))]])
    hidden = reclaimable(loaded.rootfs, loaded.scans)
    assert hidden.total == 100
    assert hidden.contributors[0].reason == "duplicate-entry"
    assert dive_score(loaded.scans).wasted_bytes == 0  # one node per path in dive's layer tree


def test_layers_without_whiteouts_score_as_dives_trees() -> None:
    """Layers no whiteout reads are scored from their entries, without a tree (issue 7's memory): the last
    of duplicate entries gives the payload (/b: 20, not 50), a directory with children is no leaf (/a), the
    top layer's new paths count once (/e): /a/x 100 + 40, /b 20 + 20, /e 30 → smallest 90 of 210."""
    result = score([[d("a"), f("a/x", blob(100)), f("b", blob(50)), f("b", blob(20))],
                    [opaque("c"), f("a/x", blob(40)), d("a"), f("b", blob(20)), f("e", blob(30))]])
    assert result.efficiency == 90 / 210
    assert result.wasted_bytes == 180
    assert [(i.path, i.count, i.bytes) for i in result.inefficiencies] == [("/a/x", 2, 140), ("/b", 2, 40)]


def test_hard_link_keeps_removed_content_visible() -> None:
    loaded = loaded_of([[f("a", blob(100)), hard("b", "a")], [wh("a")]])
    assert reclaimable(loaded.rootfs, loaded.scans).total == 0


def test_replaced_parent_and_nested_removal() -> None:
    layers = [[d("p"), d("p/q"), f("p/q/r", blob(70)), f("p/s", blob(5))], [f("p", blob(3))]]
    loaded = loaded_of(layers)
    hidden = reclaimable(loaded.rootfs, loaded.scans)
    assert hidden.total == 75
    assert {h.reason for h in hidden.hidden} == {"replaced"}


# -- dive's test images (corpus) ------------------------------------------------------------------------------


def _corpus(name: str) -> Path:
    path = DIVE_IMAGES / name
    if not path.exists():
        pytest.skip(f"corpus image {path} not present (set IMGAUDIT_CORPUS)")
    return path


def _regular_bytes(path: Path, member: str) -> int:
    with tarfile.open(path) as outer:
        raw = outer.extractfile(member)
        assert raw is not None
        with tarfile.open(fileobj=raw, mode="r:*") as layer:
            return sum(m.size for m in layer.getmembers())


def test_dive_kaniko_image() -> None:
    """kaniko's build of the same `.data/Dockerfile` (README is 9249 bytes here): dive's definition applied
    by hand to its layer listing; the base layer only adds its own bytes (no path of it is seen again)."""
    from imgaudit.audit import audit, load

    path = _corpus("test-kaniko-image.tar")
    report = audit(load(f"docker-archive:{path}"))
    base = _regular_bytes(path, "5c4213be9af904dd74649d250f22023f532b2f9179ffcb15260b5eaa10d7a3b4.tar.gz")
    copy = 9249
    user = 10 * copy + 917 + 1270
    total = base + user + 2 * copy  # + the whiteout of /root/example (somefile1 and somefile2 below it)
    assert report.size.wasted_bytes == 5 * copy
    assert report.size.user_wasted_percent == 5 * copy / user
    assert report.size.efficiency == (total - 3 * copy) / total
    assert report.size.reclaimable_bytes == 5 * copy
    assert {i.path for i in report.size.inefficient_files} == {
        "/root/saved.txt", "/root/example/somefile1.txt", "/root/example/somefile3.txt"}


SINGLE_LAYER = ("test-oci-gzip-image.tar", "test-oci-zstd-image.tar", "test-oci-uncompressed-image.tar",
                "test-oci-estargz-image.tar")


def test_every_dive_test_image_has_expected_numbers() -> None:
    """A new image in the corpus needs its expected numbers here before it counts as covered."""
    if not DIVE_IMAGES.is_dir():
        pytest.skip(f"corpus {DIVE_IMAGES} not present (set IMGAUDIT_CORPUS)")
    assert {p.name for p in DIVE_IMAGES.iterdir()} == {"test-kaniko-image.tar", *SINGLE_LAYER}


@pytest.mark.parametrize("name", SINGLE_LAYER)
def test_dive_single_layer_oci_images(name: str) -> None:
    """One layer (BuildKit `COPY README.md`): nothing is seen twice, dive's user share is 0/0."""
    from imgaudit.audit import audit, load

    report = audit(load(f"oci-archive:{_corpus(name)}"))
    assert (report.size.efficiency, report.size.wasted_bytes, report.size.reclaimable_bytes) == (1.0, 0, 0)
    assert report.size.user_wasted_percent is None
    assert len(report.size.layers) == 1


def test_ancestors_end_even_where_dirname_stands_still() -> None:
    from imgaudit.checks.waste import _ancestors

    assert list(_ancestors("/a/b")) == ["/a/b", "/a"]
    assert list(_ancestors("//x")) == ["//x", "//"]  # dirname("//") is "//": this used to loop forever


_NAMES = ["a", "b", "c", "c/r", "a/x", "a/y", "a/x/p", "a/x/p/q/r", "b/q", "c/r/s", "lnk", "lnk/z", "a/lnk2", "a/.wh.b",
          "a/.wh.b/c", ".wh.c", ".wh.a", "b/.wh.q/z", "b/q/.wh.w", "a/x/.wh.p"]


@pytest.mark.parametrize("seed", range(0, 800, 100))
def test_the_stacked_tree_of_the_paths_near_the_lookups_scores_as_the_whole_tree(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """dive_score stacks only the paths near what a `.wh.` name looks up (`waste._Near`); keeping every path
    is dive's own whole tree. Colliding random layers, including `.wh.` names inside paths, score alike."""
    import random

    from imgaudit.checks import waste
    from tests.builders import random_layer

    stacks = []
    for rng in (random.Random(s) for s in range(seed, seed + 100)):
        layers = [make_layer(random_layer(rng, _NAMES, ("", "x", "yy", "zzz"))) for _ in range(rng.randint(1, 6))]
        stacks.append([scan_layer(io.BytesIO(layer)) for layer in layers])
    near = [dive_score(scans) for scans in stacks]
    monkeypatch.setattr(waste, "_Near", lambda targets: lambda path: True)
    assert near == [dive_score(scans) for scans in stacks]
