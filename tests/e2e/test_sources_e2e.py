"""The Docker daemon as the oracle for sources and the merge: what imgaudit lists for an image equals what
`docker create` + `docker export` gives for the same image (the corpus, synthetic images with every
merge rule), and one image read through every source gives one answer.

Known, asserted differences from Docker 20.10 (graphdriver) are declared per case in EXPECTED below.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from imgaudit.errors import ImageNotFound
from imgaudit.image import Image
from imgaudit.layers import LayerScan
from imgaudit.reference import parse_reference
from imgaudit.rootfs import RootFS
from imgaudit.scanner import Scanner
from imgaudit.sources import load_image
from tests.builders import ImageSpec, Item, d, f, hard, make_layer, opaque, sym, wh, write_docker_archive
from tests.e2e.conftest import REPO, DaemonImages, Row, comparable, differences, rootfs_listing

pytestmark = pytest.mark.e2e

KNOWN_FORMATS = ["test-kaniko-image.tar", "test-oci-estargz-image.tar", "test-oci-gzip-image.tar",
                 "test-oci-uncompressed-image.tar", "test-oci-zstd-image.tar"]


def corpus_files() -> list[str]:
    """Every file of the corpus' dive-test-images (the five known ones when the corpus is elsewhere)."""
    root = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus") / "dive-test-images"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else KNOWN_FORMATS


def load(text: str) -> tuple[Image, tuple[LayerScan, ...]]:
    return load_image(parse_reference(text), platform=None, scanner=Scanner())


def listing(scans: tuple[LayerScan, ...]) -> dict[str, Row]:
    return rootfs_listing(RootFS.build(scans))


def retag_archive(src: Path, dst: Path, tag: str) -> Path:
    """A copy of a docker-archive whose manifest.json names `tag` (so `docker load` never touches a shared
    name); every other member is copied byte for byte."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isreg() else None  # type: ignore[union-attr]
            if member.name.lstrip("./") == "manifest.json" and data is not None:
                manifest = json.loads(data)
                manifest[0]["RepoTags"] = [tag]
                data = json.dumps(manifest).encode()
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
    return dst


def to_daemon(images: DaemonImages, ref_text: str, image: Image, tmp: Path, hint: str) -> str:
    """Puts the image into the daemon by the daemon's own reading: `docker load` for a docker-archive,
    skopeo for OCI (via a gzip layout: skopeo 1.9 cannot convert zstd layers for Docker)."""
    tag = images.tag(hint)
    ref = parse_reference(ref_text)
    arch = image.config.platform.architecture
    if ref.transport == "docker-archive":
        images.load(retag_archive(Path(ref.path or ""), tmp / "retagged.tar", tag))
        return tag
    layout = tmp / "gzip-layout"
    subprocess.run(["skopeo", f"--override-arch={arch}", "copy", "-q", "--dest-compress",
                    "--dest-compress-format", "gzip", f"{ref.transport}:{ref.path}", f"oci:{layout}:x"],
                   check=True, capture_output=True, timeout=300)
    images.skopeo_copy(f"oci:{layout}:x", tag, arch=arch)
    return tag


def daemon_diff_ids(images: DaemonImages, tag: str) -> tuple[str, ...]:
    return tuple(images.client.images.get(tag).attrs["RootFS"].get("Layers") or ())


# -- (a) the corpus -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", corpus_files())
def test_corpus_image_matches_docker_export(name: str, corpus: Path, daemon_images: DaemonImages,
                                            tmp_path: Path) -> None:
    path = corpus / "dive-test-images" / name
    image, scans = load(str(path))
    tag = to_daemon(daemon_images, f"{image.source}:{path}", image, tmp_path, "corpus")
    assert daemon_diff_ids(daemon_images, tag) == image.config.diff_ids
    mine, theirs = comparable(listing(scans), daemon_images.export_listing(tag))
    assert differences(mine, theirs) == []
    assert len(mine) > 0


def test_corpus_directory_holds_the_five_formats(corpus: Path) -> None:
    found = {p.name for p in (corpus / "dive-test-images").iterdir()}
    assert set(KNOWN_FORMATS) <= found


# -- (b) synthetic images: every merge rule ------------------------------------------------------

# Each case: layers (lowest first) and the differences from Docker 20.10's export that are expected.
CASES: dict[str, list[list[Item]]] = {
    "whiteouts": [
        [d("a"), f("a/f1", "1"), f("a/f2", "22"), d("b"), f("b/x", "x"), f("keep", "k"), d("c"), f("c/old", "o")],
        [wh("a/f1"), wh("b"), wh("missing"), wh("c"), d("c"), f("c/new", "n")],
    ],
    "opaque": [
        [d("d"), f("d/old1", "o"), d("d/sub"), f("d/sub/old2", "o2"), d("e"), f("e/old", "o"), f("top", "t")],
        [opaque("d"), f("d/new", "n"), d("e"), f("e/new", "n"), opaque("e")],
    ],
    "type-changes": [
        [f("x", "file"), d("y"), f("y/z", "z"), d("z"), f("z/in", "i"), d("real"), sym("w", "real")],
        [d("x"), f("x/y", "xy"), f("y", "now a file"), sym("z", "real"), d("w"), f("w/in", "i")],
    ],
    "hardlinks": [
        [d("h"), f("h/orig", "original"), hard("h/same", "h/orig"), hard("h/abs", "/h/orig"),
         hard("h/chain", "h/same")],
        [hard("h/cross", "h/orig"), f("h/orig", "replaced, longer")],
        [hard("h/after", "h/orig")],
    ],
    "symlinks": [
        [d("usr"), d("usr/lib"), f("usr/lib/libx.so.1", "x"), sym("lib", "usr/lib"),
         sym("usr/lib/libx.so", "/lib/libx.so.1"), sym("up", "../../../../etc/shadow"), sym("dangling", "/nowhere"),
         sym("self", "self"), sym("loop-a", "loop-b"), sym("loop-b", "loop-a")],
        [sym("lib", "/usr/lib"), f("usr/lib/libx.so.1", "new x")],
    ],
    "under-symlinked-parent": [
        [d("real"), f("real/old", "o"), sym("alias", "/real"), sym("rel", "real"), d("deep"), d("deep/er"),
         sym("deep/link", "../real")],
        [f("alias/via-abs", "a"), f("rel/via-rel", "r"), f("deep/link/via-deep", "d"), d("alias/newdir"),
         f("alias/newdir/f", "f")],
    ],
    "modes-and-owners": [
        [Item("suid", "file", b"s", mode=0o4755), Item("sgid", "file", b"g", mode=0o2711),
         Item("tmp", "dir", mode=0o1777), Item("secret", "dir", mode=0o700),
         Item("owned", "file", b"o", mode=0o600, uid=1000, gid=1001), Item("fifo", "fifo", mode=0o644)],
        [f("secret/inner", "i"), Item("owned", "file", b"owned again", mode=0o640, uid=2, gid=3)],
    ],
    # Docker 20.10 creates a layer's implied parent directories 0600 (moby pkg/archive/diff.go UnpackLayer:
    # system.MkdirAll(parentPath, 0600)); containerd (applyNaive/mkparent) and imgaudit use 0755.
    "implied-parents": [
        [f("p/q/r", "implied"), d("s")],
        [f("s/t/u", "implied below an explicit dir")],
    ],
    # A whiteout below a lower-layer symlink: Docker (and containerd) resolve the parent through the link
    # and delete the target's entry, and so does imgaudit (the runtime's view wins over RELIABILITY.md #74).
    # An opaque marker on the link itself hides nothing in either.
    "whiteout-through-symlink": [
        [d("target"), f("target/keep", "k"), f("target/k2", "k"), sym("link", "/target")],
        [opaque("link"), wh("link/keep")],
    ],
}

EXPECTED: dict[str, list[str]] = {
    "implied-parents": ["/p: mode 493 != 384", "/p/q: mode 493 != 384", "/s/t: mode 493 != 384"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_synthetic_image_matches_docker_export(case: str, daemon_images: DaemonImages, tmp_path: Path) -> None:
    tag = daemon_images.tag(case)
    spec = ImageSpec([make_layer(items) for items in CASES[case]])
    archive = write_docker_archive(tmp_path / "image.tar", {tag: spec})
    image, scans = load(str(archive))
    daemon_images.load(archive)
    assert daemon_diff_ids(daemon_images, tag) == image.config.diff_ids
    mine, theirs = comparable(listing(scans), daemon_images.export_listing(tag))
    assert differences(mine, theirs) == EXPECTED.get(case, [])


# -- (c) conformance: one image, every source ---------------------------------------------------


def conformance_spec() -> ImageSpec:
    # Not "under-symlinked-parent": Docker 20.10 cannot `docker save` it (its tar-split reassembly opens
    # `alias/via-abs` on the host, where the absolute link points outside the layer directory).
    layers = [items for case in ("whiteouts", "opaque", "hardlinks", "symlinks", "modes-and-owners")
              for items in CASES[case]]
    return ImageSpec([make_layer(items) for items in layers], entrypoint=["/bin/app"], cmd=["--serve"],
                     env=["PATH=/bin", "A=1"], user="1000:1000", working_dir="/srv",
                     created_by=[f"step {i}" for i in range(len(layers))])


def every_source(archive: Path, tag: str, images: DaemonImages, tmp: Path) -> dict[str, str]:
    """References to the same image in every form: the archive as given, gzip-compressed, loaded into the
    daemon, and skopeo's OCI layout and OCI archive of it."""
    images.load(retag_archive(archive, tmp / "retagged.tar", tag))
    zipped = tmp / "image.tar.gz"
    zipped.write_bytes(gzip.compress(archive.read_bytes()))
    for dest in (f"oci:{tmp / 'layout'}:v1", f"oci-archive:{tmp / 'oci.tar'}:v1"):
        subprocess.run(["skopeo", "copy", "-q", f"docker-archive:{archive}", dest], check=True, capture_output=True,
                       timeout=300)
    return {"docker-archive": str(archive), "docker-archive.gz": f"docker-archive:{zipped}",
            "docker-daemon": f"docker-daemon:{tag}", "oci": f"oci:{tmp / 'layout'}:v1",
            "oci-archive": f"oci-archive:{tmp / 'oci.tar'}"}


@pytest.mark.parametrize("which", ["synthetic", "kaniko"])
def test_one_image_through_every_source(which: str, corpus: Path, daemon_images: DaemonImages,
                                        tmp_path: Path) -> None:
    tag = daemon_images.tag("conformance")
    if which == "kaniko":
        archive = corpus / "dive-test-images" / "test-kaniko-image.tar"
    else:
        archive = write_docker_archive(tmp_path / "image.tar", {tag: conformance_spec()})
    loaded = {name: load(text) for name, text in every_source(archive, tag, daemon_images, tmp_path).items()}
    reference_image, reference_scans = loaded["docker-archive"]
    for name, (image, scans) in loaded.items():
        assert image.source == name.removesuffix(".gz"), name
        assert image.config == reference_image.config, name
        assert [la.diff_id for la in image.layers] == list(reference_image.config.diff_ids), name
        assert [la.created_by for la in image.layers] == [la.created_by for la in reference_image.layers], name
        assert listing(scans) == listing(reference_scans), name
    # Docker keeps the config bytes (its image id is their digest); skopeo's conversion to OCI re-encodes them.
    docker_side = {loaded[n][0].config_digest for n in ("docker-archive", "docker-archive.gz", "docker-daemon")}
    oci_side = {(loaded[n][0].config_digest, loaded[n][0].manifest_digest) for n in ("oci", "oci-archive")}
    assert docker_side == {reference_image.config_digest} and len(oci_side) == 1
    mine, theirs = comparable(listing(reference_scans), daemon_images.export_listing(tag),
                              reference_image.config.working_dir)
    assert differences(mine, theirs) == []


# -- the daemon source itself ---------------------------------------------------------------------


def test_daemon_by_id_prefix_and_not_found(daemon_images: DaemonImages, tmp_path: Path) -> None:
    tag = daemon_images.tag("by-id")
    archive = write_docker_archive(tmp_path / "image.tar", {tag: ImageSpec([make_layer([f("a", "1")])])})
    daemon_images.load(archive)
    image_id: str = daemon_images.client.images.get(tag).id
    by_tag, _ = load(f"docker-daemon:{tag}")
    by_prefix, scans = load(f"docker-daemon:{image_id[7:19]}")
    assert by_tag.config_digest == by_prefix.config_digest == image_id
    assert list(listing(scans)) == ["/a"]
    with pytest.raises(ImageNotFound, match="docker-archive:"):
        load(f"docker-daemon:{tag}-missing")


def test_zero_layer_image_through_the_daemon(daemon_images: DaemonImages, tmp_path: Path) -> None:
    """`docker save` refuses it ("empty export"); it is still a valid, empty image (RELIABILITY.md #28)."""
    tag = daemon_images.tag("zero")
    archive = write_docker_archive(tmp_path / "image.tar", {tag: ImageSpec([], cmd=["sh"])})
    daemon_images.load(archive)
    from_daemon, scans = load(f"docker-daemon:{tag}")
    from_archive, _ = load(str(archive))
    assert (from_daemon.layers, scans) == ((), ())
    assert from_daemon.config_digest == from_archive.config_digest
    assert from_daemon.config.cmd == from_archive.config.cmd == ("sh",)
