"""Sources on synthetic archives and layouts: every shape `docker save`, kaniko, skopeo and BuildKit write,
and the bad inputs of RELIABILITY.md sections B and C."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgaudit.errors import CorruptImage, ImageNotFound, ImgauditError, LimitExceeded, SourceUnavailable, UsageError
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import parse_reference
from imgaudit.rootfs import RootFS
from imgaudit.scanner import Scanner
from imgaudit.sources import daemon, load_image
from imgaudit.sources.manifest import (
    Descriptor,
    check_digest,
    check_platform,
    host_platform,
    load_json,
    parse_descriptor,
    select_platform,
)
from tests.builders import (
    OCI_INDEX,
    OCI_MANIFEST,
    ImageSpec,
    d,
    f,
    gz,
    hard,
    make_layer,
    oci_blobs,
    sha,
    sym,
    wh,
    write_docker_archive,
    write_oci_archive,
    write_oci_layout,
    zst,
)

AMD64 = Platform("linux", "amd64")
ARM64 = Platform("linux", "arm64")


def base() -> ImageSpec:
    return ImageSpec([make_layer([d("etc"), f("etc/os-release", "ID=test\n"), f("gone", "x")]),
                      make_layer([wh("gone"), f("app", "#!/bin/sh\n", mode=0o755)])],
                     entrypoint=["/app"], created_by=["ADD rootfs", "COPY app"])


def load(text: str, platform: Platform | None = None) -> tuple[Image, tuple[LayerScan, ...]]:
    return load_image(parse_reference(text), platform=platform, scanner=Scanner())


def paths(scans: tuple[LayerScan, ...]) -> list[str]:
    return [n.path for n in RootFS.build(scans).walk("/")]


def write_tar(path: Path, members: list[tuple[str, Any]]) -> Path:
    """A tar of (name, bytes | ("symlink"|"hardlink", target) | "dir") members, in the given order."""
    with tarfile.open(path, "w") as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, bytes):
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
                continue
            if content == "dir":
                info.type = tarfile.DIRTYPE
            else:
                info.type = tarfile.SYMTYPE if content[0] == "symlink" else tarfile.LNKTYPE
                info.linkname = content[1]
            tar.addfile(info)
    return path


def legacy(spec: ImageSpec, *, config: bytes | None = None, layers: list[bytes] | None = None,
           prefix: str = "", tags: list[str] | None = None) -> list[tuple[str, Any]]:
    """Members of a legacy `docker save` archive, manifest.json last (as the daemon streams it)."""
    cfg = config if config is not None else spec.blobs()[0]
    blobs = layers if layers is not None else spec.layers
    members: list[tuple[str, Any]] = [(f"{prefix}{sha(b)[7:]}/layer.tar", b) for b in blobs]
    members.append((f"{prefix}{sha(cfg)[7:]}.json", cfg))
    manifest = [{"Config": f"{prefix}{sha(cfg)[7:]}.json", "RepoTags": tags or ["test:1"],
                 "Layers": [f"{prefix}{sha(b)[7:]}/layer.tar" for b in blobs]}]
    members.append((f"{prefix}manifest.json", json.dumps(manifest).encode()))
    return members


# -- docker-archive -----------------------------------------------------------------------------


def test_legacy_docker_archive(tmp_path: Path) -> None:
    spec = base()
    image, scans = load(str(write_docker_archive(tmp_path / "a.tar", {"test:1": spec})))
    cfg = spec.blobs()[0]
    assert (image.source, image.config_digest, image.manifest_digest) == ("docker-archive", sha(cfg), None)
    assert image.reference == f"docker-archive:{tmp_path / 'a.tar'}"
    assert [la.created_by for la in image.layers] == ["ADD rootfs", "COPY app"]
    assert [la.diff_id for la in image.layers] == [sha(x) for x in spec.layers]
    assert [la.size for la in image.layers] == [len(x) for x in spec.layers]
    assert image.config.entrypoint == ("/app",)
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


@pytest.mark.parametrize("shape", ["legacy", "oci"])
def test_layers_read_in_parallel_give_the_same_scans(tmp_path: Path, shape: str) -> None:
    path = write_docker_archive(tmp_path / "a.tar", {"test:1": base()}, shape=shape)
    serial = load_image(parse_reference(str(path)), platform=None, scanner=Scanner())[1]
    parallel = load_image(parse_reference(str(path)), platform=None, scanner=Scanner(jobs=4))[1]
    assert serial == parallel


def test_docker25_archive_gives_the_oci_manifest_digest(tmp_path: Path) -> None:
    spec = base()
    image, scans = load(str(write_docker_archive(tmp_path / "a.tar", {"test:1": spec}, shape="oci")))
    assert image.manifest_digest is not None and image.manifest_digest.startswith("sha256:")
    assert [la.digest for la in image.layers] == [sha(x) for x in spec.layers]
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_several_images_are_picked_by_name_and_tag(tmp_path: Path) -> None:
    other = ImageSpec([make_layer([f("other", "o")])])
    path = write_docker_archive(tmp_path / "a.tar", {"one:1": base(), "ghcr.io/x/two:2": other})
    _, scans = load(f"docker-archive:{path}:ghcr.io/x/two:2")
    assert paths(scans) == ["/other"]
    _, scans = load(f"docker-archive:{path}:docker.io/library/one:1")
    assert "/app" in paths(scans)
    with pytest.raises(UsageError, match=r"holds 2 images \(one:1; ghcr.io/x/two:2\)"):
        load(str(path))
    with pytest.raises(UsageError, match=r"no image docker.io/library/three:latest; it has: one:1, ghcr.io/x/two:2"):
        load(f"docker-archive:{path}:three")


def test_gzip_archive_streams_to_the_same_result(tmp_path: Path) -> None:
    plain = write_docker_archive(tmp_path / "a.tar", {"test:1": base()}, shape="oci")
    zipped = tmp_path / "a.tar.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    image_a, scans_a = load(str(plain))
    image_b, scans_b = load(f"docker-archive:{zipped}")
    assert (image_a.config, image_a.config_digest, image_a.manifest_digest) == \
        (image_b.config, image_b.config_digest, image_b.manifest_digest)
    assert [s.diff_id for s in scans_a] == [s.diff_id for s in scans_b]
    assert paths(scans_a) == paths(scans_b)


def test_zstd_compressed_archive_streams(tmp_path: Path) -> None:
    plain = write_docker_archive(tmp_path / "a.tar", {"test:1": base()})
    packed = tmp_path / "a.tar.zst"
    packed.write_bytes(zst(plain.read_bytes()))
    image, scans = load(str(packed))
    assert image.source == "docker-archive"
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]
    packed.write_bytes(zst(plain.read_bytes())[:-200])
    with pytest.raises(CorruptImage):
        load(f"docker-archive:{packed}")


def test_kaniko_shape_gzip_layers_and_sha256_config_name(tmp_path: Path) -> None:
    spec = base()
    cfg = spec.blobs()[0]
    blobs = [gz(x) for x in spec.layers]
    manifest = [{"Config": sha(cfg), "RepoTags": ["k:latest"], "Layers": [f"{sha(b)[7:]}.tar.gz" for b in blobs]}]
    members = [(sha(cfg), cfg)] + [(f"{sha(b)[7:]}.tar.gz", b) for b in blobs]
    path = write_tar(tmp_path / "k.tar", [*members, ("manifest.json", json.dumps(manifest).encode())])
    image, scans = load(str(path))
    assert image.config_digest == sha(cfg)
    assert [s.compression for s in scans] == ["gzip", "gzip"]
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_dot_slash_prefixes_are_normalised(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "a.tar", legacy(base(), prefix="./"))
    _, scans = load(str(path))
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_zero_layer_image_is_valid(tmp_path: Path) -> None:
    image, scans = load(str(write_docker_archive(tmp_path / "a.tar", {"empty:1": ImageSpec([])})))
    assert (image.layers, scans) == ((), ())
    assert paths(scans) == []


@pytest.mark.parametrize("compressed", [False, True])
def test_missing_layer_and_config_name_the_path(tmp_path: Path, compressed: bool) -> None:
    members = legacy(base())
    without_layer = [m for m in members if not m[0].startswith(sha(base().layers[1])[7:])]
    without_config = [m for m in members if not m[0].endswith(".json") or m[0] == "manifest.json"]
    for name, kept in (("layer.tar", without_layer), (".json", without_config)):
        path = _maybe_gzip(write_tar(tmp_path / "a.tar", kept), compressed)
        with pytest.raises(CorruptImage, match=rf"{name} is missing from the archive"):
            load(f"docker-archive:{path}")


def _maybe_gzip(path: Path, compressed: bool) -> Path:
    if not compressed:
        return path
    out = path.with_suffix(".tar.gz")
    out.write_bytes(gzip.compress(path.read_bytes()))
    return out


@pytest.mark.parametrize(("config", "message"), [
    (b"{not json", "invalid config JSON in"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid config JSON in"),
    (b'{"os": NaN}', "invalid config JSON in"),
    (b'{"os": "linux", "architecture": "amd64", "rootfs": {"diff_ids": ["sha256:../../etc"]}}', "invalid digest"),
    (b'{"os": "linux", "architecture": "amd64", "config": {"Entrypoint": [1]}}', "Entrypoint is not a list"),
    (b"\xff\xfe\x00garbage", "invalid config JSON in"),
])
def test_malformed_config_json_is_corrupt(tmp_path: Path, config: bytes, message: str) -> None:
    path = write_tar(tmp_path / "a.tar", legacy(base(), config=config))
    with pytest.raises(CorruptImage, match=message):
        load(str(path))


def test_malformed_manifest_json_is_corrupt(tmp_path: Path) -> None:
    members = [*legacy(base())[:-1], ("manifest.json", b'[{"Config": 1}')]
    with pytest.raises(CorruptImage, match="invalid manifest JSON in"):
        load(str(write_tar(tmp_path / "a.tar", members)))


def test_caps_on_manifest_and_config(tmp_path: Path) -> None:
    big_manifest = [*legacy(base())[:-1], ("manifest.json", b" " * (1 << 20) + b"[]")]
    with pytest.raises(LimitExceeded, match=r"manifest.json exceeds 1 MiB"):
        load(str(write_tar(tmp_path / "a.tar", big_manifest)))
    big_config = json.dumps({"os": "linux", "architecture": "amd64", "pad": "x" * (4 << 20)}).encode()
    with pytest.raises(LimitExceeded, match=r"config .* exceeds 4 MiB"):
        load(str(write_tar(tmp_path / "b.tar", legacy(base(), config=big_config))))


@pytest.mark.parametrize("extra", [1, -1])
def test_layer_count_must_match_diff_ids(tmp_path: Path, extra: int) -> None:
    spec = base()
    layers = [*spec.layers, make_layer([f("more", "m")])] if extra > 0 else spec.layers[:1]
    path = write_tar(tmp_path / "a.tar", legacy(spec, layers=layers))
    with pytest.raises(CorruptImage, match=rf"lists {len(layers)} layers but the config has 2 diff_ids"):
        load(str(path))


@pytest.mark.parametrize("compressed", [False, True])
def test_wrong_diff_id_names_the_layer(tmp_path: Path, compressed: bool) -> None:
    spec = base()
    tampered = [spec.layers[0], make_layer([f("app", "evil")])]
    path = _maybe_gzip(write_tar(tmp_path / "a.tar", legacy(spec, layers=tampered)), compressed)
    with pytest.raises(CorruptImage, match=r"layer 2/2 .*diff_id mismatch"):
        load(f"docker-archive:{path}")


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../x.json"])
def test_config_path_is_never_a_host_path(tmp_path: Path, name: str) -> None:
    manifest = [{"Config": name, "RepoTags": ["t:1"], "Layers": []}]
    path = write_tar(tmp_path / "a.tar", [("manifest.json", json.dumps(manifest).encode())])
    with pytest.raises(CorruptImage, match=r"leaves the archive|is missing from the archive"):
        load(str(path))


def test_symlink_cycle_between_members(tmp_path: Path) -> None:
    members = [("config.json", ("symlink", "manifest.json")), ("manifest.json", ("symlink", "config.json"))]
    with pytest.raises(CorruptImage, match="link in a loop"):
        load(f"docker-archive:{write_tar(tmp_path / 'a.tar', members)}")
    chain = [(f"l{i}", ("symlink", f"l{i + 1}")) for i in range(10)] + [("manifest.json", ("symlink", "l0"))]
    with pytest.raises(CorruptImage, match="more than 4 links"):
        load(f"docker-archive:{write_tar(tmp_path / 'b.tar', chain)}")


@pytest.mark.parametrize("compressed", [False, True])
def test_linked_members_are_followed_inside_the_archive(tmp_path: Path, compressed: bool) -> None:
    spec = base()
    members = legacy(spec)
    first, second = (f"{sha(x)[7:]}/layer.tar" for x in spec.layers)
    # an older `docker save` links a repeated layer; here layer 2's member links to a copy
    linked = [(n, c) for n, c in members if n not in (second, "manifest.json")]
    linked += [("copy/layer.tar", spec.layers[1]), (second, ("symlink", "../copy/layer.tar"))]
    linked += [("hard.json", ("hardlink", f"{sha(spec.blobs()[0])[7:]}.json"))]
    manifest = [{"Config": "hard.json", "RepoTags": ["t:1"], "Layers": [first, second]}]
    linked.append(("manifest.json", json.dumps(manifest).encode()))
    path = _maybe_gzip(write_tar(tmp_path / "a.tar", linked), compressed)
    _, scans = load(f"docker-archive:{path}")
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_platform_is_checked_against_a_single_image(tmp_path: Path) -> None:
    path = write_docker_archive(tmp_path / "a.tar", {"t:1": base()})
    load(str(path), AMD64)
    with pytest.raises(ImageNotFound, match="is a linux/amd64 image, not linux/arm64"):
        load(str(path), ARM64)


def test_a_corrupt_member_of_another_image_does_not_matter_when_streaming(tmp_path: Path) -> None:
    good = base()
    members = legacy(good)
    members.insert(0, ("junk/layer.tar", gz(b"not a tar at all" * 100)))
    path = _maybe_gzip(write_tar(tmp_path / "a.tar", members), True)
    _, scans = load(f"docker-archive:{path}")
    assert len(scans) == 2


@pytest.mark.parametrize("compressed", [False, True])
def test_truncated_archive(tmp_path: Path, compressed: bool) -> None:
    members = legacy(base())
    members = members[-2:] + members[:-2]  # manifest.json and config first, the layers after
    data = write_tar(tmp_path / "a.tar", members).read_bytes()
    (tmp_path / "a.tar").write_bytes(data[:data.index(b"#!/bin/sh") + 5])  # cut inside the last layer
    path = _maybe_gzip(tmp_path / "a.tar", compressed)
    with pytest.raises(CorruptImage, match="truncated"):
        load(f"docker-archive:{path}")


# -- OCI layouts and archives -------------------------------------------------------------------


def two_platforms() -> dict[str, ImageSpec]:
    return {"amd": ImageSpec([make_layer([f("arch", "amd64")])]),
            "arm": ImageSpec([make_layer([f("arch", "arm64")])], architecture="arm64", variant="v8")}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        h.update(f"{path}:{st.st_mode}:{st.st_mtime_ns}".encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def test_oci_layout_dir_by_tag_and_read_only(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "lay", {"v1": base(), "v2": ImageSpec([make_layer([f("two", "2")])])})
    before = tree_digest(layout)
    image, scans = load(f"oci:{layout}:v2")
    assert paths(scans) == ["/two"]
    assert image.manifest_digest is not None and image.layers[0].digest is not None
    assert image.layers[0].media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    with pytest.raises(UsageError, match=r"several images \(v1, v2\)"):
        load(f"oci:{layout}")
    with pytest.raises(UsageError, match="no image named 'v3'; it has: v1, v2"):
        load(f"oci:{layout}:v3")
    assert tree_digest(layout) == before


@pytest.mark.parametrize("compression", ["gzip", "zstd", "tar"])
def test_oci_archive_layer_compressions(tmp_path: Path, compression: str) -> None:
    spec = base()
    spec.compression = compression
    _, scans = load(str(write_oci_archive(tmp_path / "o.tar", {"v1": spec})))
    assert [s.compression for s in scans] == [compression] * 2
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_gzip_oci_archive(tmp_path: Path) -> None:
    plain = write_oci_archive(tmp_path / "o.tar", {"v1": base()})
    zipped = tmp_path / "o.tar.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    image, scans = load(f"oci-archive:{zipped}")
    assert image.manifest_digest == load(str(plain))[0].manifest_digest
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_platform_selection_from_an_index(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "lay", two_platforms(), index_platforms=True)
    _strip_ref_names(layout)
    assert host_platform() == AMD64  # this suite runs on amd64 machines
    assert paths(load(f"oci:{layout}")[1]) == ["/arch"]
    assert load(f"oci:{layout}")[0].config.platform == AMD64
    image, _ = load(f"oci:{layout}", ARM64)
    assert image.config.platform == Platform("linux", "arm64", "v8")
    with pytest.raises(ImageNotFound, match="has no linux/s390x image; it has: linux/amd64, linux/arm64/v8"):
        load(f"oci:{layout}", Platform("linux", "s390x"))


def _strip_ref_names(layout: Path) -> None:
    index = json.loads((layout / "index.json").read_text())
    for desc in index["manifests"]:
        desc.pop("annotations", None)
    (layout / "index.json").write_text(json.dumps(index))


def _nest(layout: Path, levels: int, extra: list[dict[str, Any]] | None = None) -> None:
    """Wraps index.json's manifests in `levels` nested image indexes."""
    index = json.loads((layout / "index.json").read_text())
    manifests = index["manifests"] + (extra or [])
    for _ in range(levels):
        blob = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
        (layout / "blobs" / "sha256" / sha(blob)[7:]).write_bytes(blob)
        manifests = [{"mediaType": OCI_INDEX, "digest": sha(blob), "size": len(blob)}]
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": manifests}))


def test_nested_indexes_and_attestations(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "lay", two_platforms(), index_platforms=True)
    _strip_ref_names(layout)
    attestation = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                              "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                         "digest": sha(b"{}"), "size": 2}, "layers": []}).encode()
    (layout / "blobs" / "sha256" / sha(attestation)[7:]).write_bytes(attestation)
    extra = [{"mediaType": OCI_MANIFEST, "digest": sha(attestation), "size": len(attestation),
              "platform": {"os": "unknown", "architecture": "unknown"},
              "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}]
    _nest(layout, 3, extra)
    assert load(f"oci:{layout}", ARM64)[0].config.platform.architecture == "arm64"
    _nest(layout, 8)
    with pytest.raises(CorruptImage, match="nested more than 8 levels"):
        load(f"oci:{layout}")


def test_non_layer_media_types_are_skipped_and_zstd_synonym_accepted(tmp_path: Path) -> None:
    spec = ImageSpec([make_layer([f("a", "1")])])
    cfg, _ = spec.blobs()
    layer = zst(spec.layers[0])
    sbom = b'{"_type": "https://in-toto.io/Statement/v0.1"}'
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": sha(cfg), "size": len(cfg)},
                           "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.zstd",
                                       "digest": sha(layer), "size": len(layer)},
                                      {"mediaType": "application/vnd.in-toto+json", "digest": sha(sbom),
                                       "size": len(sbom)}]}).encode()
    layout = _layout(tmp_path / "lay", [cfg, layer, sbom, manifest], manifest)
    image, scans = load(f"oci:{layout}")
    assert len(image.layers) == 1 and scans[0].compression == "zstd"


def _layout(root: Path, blobs: list[bytes], manifest: bytes) -> Path:
    (root / "blobs" / "sha256").mkdir(parents=True)
    for blob in blobs:
        (root / "blobs" / "sha256" / sha(blob)[7:]).write_bytes(blob)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest)}]}))
    return root


def _layer_blob(layout: Path) -> Path:
    blobs, _ = oci_blobs({"v1": base()})
    layer = gz(base().layers[0])
    assert sha(layer) in blobs
    return layout / "blobs" / "sha256" / sha(layer)[7:]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "dir", "missing"])
def test_layout_blobs_must_be_regular_files(tmp_path: Path, kind: str) -> None:
    layout = write_oci_layout(tmp_path / "lay", {"v1": base()})
    blob = _layer_blob(layout)
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    if kind == "symlink":
        blob.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(blob)
    elif kind == "dir":
        blob.mkdir()
    with pytest.raises(CorruptImage, match=blob.name[:12]):
        load(f"oci:{layout}")


def test_layout_blob_digest_and_manifest_digest_are_checked(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "lay", {"v1": base()})
    blob = _layer_blob(layout)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(CorruptImage, match="layer 1/2"):
        load(f"oci:{layout}")
    index = json.loads((layout / "index.json").read_text())
    manifest = layout / "blobs" / "sha256" / index["manifests"][0]["digest"][7:]
    manifest.write_bytes(manifest.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    with pytest.raises(CorruptImage, match="manifest"):
        load(f"oci:{layout}")


@pytest.mark.parametrize("content", [b'{"imageLayoutVersion": "2.0.0"}', b"[]", b"{bad"])
def test_unknown_layout_version(tmp_path: Path, content: bytes) -> None:
    layout = write_oci_layout(tmp_path / "lay", {"v1": base()})
    (layout / "oci-layout").write_bytes(content)
    with pytest.raises(CorruptImage, match="oci-layout"):
        load(f"oci:{layout}")


def test_missing_index_json(tmp_path: Path) -> None:
    layout = write_oci_layout(tmp_path / "lay", {"v1": base()})
    (layout / "index.json").unlink()
    with pytest.raises(CorruptImage, match=r"index.json is missing from the layout"):
        load(f"oci:{layout}")


def test_artifacts_are_not_images(tmp_path: Path) -> None:
    cfg = b"{}"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                                      "digest": sha(cfg), "size": len(cfg)}, "layers": []}).encode()
    with pytest.raises(ImgauditError, match="artifact, not a container image"):
        load(f"oci:{_layout(tmp_path / 'lay', [cfg, manifest], manifest)}")


# -- manifest helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["sha256:../../etc/passwd", "sha256:XYZ", "sha256:" + "A" * 64,
                                   "sha256:" + "a" * 63, "md5:" + "a" * 32, "", None, 5])
def test_malformed_digests_are_refused(value: object) -> None:
    with pytest.raises(CorruptImage, match="invalid digest"):
        check_digest(value, "here")


@pytest.mark.parametrize("size", [-1, 2**70, True, "1", None])
def test_descriptor_sizes_are_range_checked(size: object) -> None:
    with pytest.raises(CorruptImage, match="size"):
        parse_descriptor({"mediaType": OCI_MANIFEST, "digest": sha(b""), "size": size}, "here")


def test_json_bombs() -> None:
    with pytest.raises(CorruptImage, match="invalid manifest JSON in x"):
        load_json(b"[" * 200_000, "x", "manifest")
    with pytest.raises(CorruptImage):
        load_json(b'{"a": Infinity}', "x")
    assert load_json(b'{"a": 1, "a": 2}', "x") == {"a": 2}


def _desc(p: Platform | None) -> Descriptor:
    return Descriptor(OCI_MANIFEST, sha(str(p).encode()), 1, p)


def test_select_platform_rules() -> None:
    amd, arm, v7 = _desc(AMD64), _desc(ARM64), _desc(Platform("linux", "arm", "v7"))
    assert select_platform([arm], None, AMD64, "w") is arm  # the only one
    assert select_platform([arm, amd], None, AMD64, "w") is amd  # the host's
    assert select_platform([amd, arm], None, Platform("linux", "arm64", "v8"), "w") is arm  # arm64 means v8
    assert select_platform([amd, v7], Platform("linux", "arm"), AMD64, "w") is v7  # arm means v7
    with pytest.raises(UsageError, match=r"several platforms \(linux/arm64, linux/arm/v7\)"):
        select_platform([arm, v7], None, AMD64, "w")
    unknown = _desc(None)
    assert select_platform([unknown], ARM64, AMD64, "w") is unknown  # decided by the config later


def test_platform_names_the_image_wrote_are_escaped_in_errors() -> None:
    """An index platform `windows/\rm` rewrote the error line (the json fuzz harness, thirteenth round)."""
    hostile, other = _desc(Platform("windows", "\rm")), _desc(Platform("li\x1b[2Jnux", "s390x"))
    errors = []
    for call in (lambda: select_platform([hostile, other], None, AMD64, "w"),
                 lambda: select_platform([hostile, other], ARM64, AMD64, "w"),
                 lambda: check_platform(Platform("linux", "amd\r64"), ARM64, "w")):
        with pytest.raises((UsageError, ImageNotFound)) as err:
            call()
        errors.append(str(err.value))
    assert all("\r" not in e and "\x1b" not in e for e in errors), errors
    assert "windows/\\x0dm" in errors[0] and "li\\x1b[2Jnux/s390x" in errors[1] and "amd\\x0d64" in errors[2]


# -- daemon ------------------------------------------------------------------------------------


class FakeImages:
    def __init__(self, known: dict[str, str]) -> None:
        self.known = known

    def get(self, name: str) -> Any:
        import docker.errors  # type: ignore[import-untyped]

        if name not in self.known:
            raise docker.errors.ImageNotFound(f"no such image: {name}")
        attrs = {"Id": self.known[name], "Os": "linux", "Architecture": "amd64", "Config": {"Cmd": ["sh"]},
                 "RootFS": {"Type": "layers", "Layers": [] if name.endswith(":empty") else ["sha256:..."]}}
        return type("Img", (), {"id": self.known[name], "attrs": attrs})()


class FakeResponse:
    def __init__(self, data: bytes, fail_after: int | None) -> None:
        self.data = data
        self.fail_after = fail_after

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def raise_for_status(self) -> None:
        pass

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        import requests

        for start in range(0, len(self.data), 7777):  # odd chunk sizes: reads straddle them
            if self.fail_after is not None and start > self.fail_after:
                raise requests.exceptions.ConnectionError("connection reset")
            yield self.data[start:start + 7777]


class FakeApi:
    """The two calls `daemon.save_stream` makes on the SDK's APIClient."""

    def __init__(self, data: bytes, fail_after: int | None = None) -> None:
        self.data = data
        self.fail_after = fail_after
        self.asked: list[str] = []

    def _url(self, template: str, image: str) -> str:
        return template.format(image)

    def get(self, url: str, *, stream: bool, timeout: int) -> FakeResponse:
        assert stream and timeout > 0  # an idle watchdog, never an unbounded wait
        self.asked.append(url)
        return FakeResponse(self.data, self.fail_after)


class FakeClient:
    def __init__(self, data: bytes, known: dict[str, str], fail_after: int | None = None) -> None:
        self.images = FakeImages(known)
        self.api = FakeApi(data, fail_after)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("shape", ["legacy", "oci"])
def test_daemon_streams_the_save_and_orders_layers_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              shape: str) -> None:
    spec = base()
    data = write_docker_archive(tmp_path / "a.tar", {"whatever:1": spec}, shape=shape).read_bytes()
    assert data.rfind(b"manifest.json") > data.find(b"ID=test")  # manifest.json after the layers
    client = FakeClient(data, {"docker.io/library/app:1": "sha256:" + "1" * 64})
    monkeypatch.setattr(daemon, "connect", lambda: client)
    image, scans = load("docker-daemon:app:1")
    assert client.api.asked == ["/images/sha256:" + "1" * 64 + "/get"]  # saved by id: one image, whatever its tags
    assert (image.source, image.reference) == ("docker-daemon", "docker-daemon:docker.io/library/app:1")
    assert [s.diff_id for s in scans] == [sha(x) for x in spec.layers]
    assert [la.created_by for la in image.layers] == ["ADD rootfs", "COPY app"]
    assert paths(scans) == ["/app", "/etc", "/etc/os-release"]


def test_daemon_zero_layer_image_comes_from_inspect(monkeypatch: pytest.MonkeyPatch) -> None:
    client = FakeClient(b"", {"docker.io/library/x:empty": "sha256:" + "3" * 64})
    monkeypatch.setattr(daemon, "connect", lambda: client)
    image, scans = load("docker-daemon:x:empty")
    assert (image.layers, scans, image.config_digest) == ((), (), "sha256:" + "3" * 64)
    assert (image.config.cmd, image.config.platform) == (("sh",), AMD64)
    assert client.api.asked == []  # Docker would answer "empty export - not implemented"


def test_daemon_image_not_found_and_broken_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_docker_archive(tmp_path / "a.tar", {"x:1": base()}).read_bytes()
    monkeypatch.setattr(daemon, "connect", lambda: FakeClient(data, {}))
    with pytest.raises(ImageNotFound, match=r"not in the Docker daemon .*docker-archive:") as err:
        load("docker-daemon:nosuch")
    assert "\n" not in str(err.value)
    broken = FakeClient(data, {"docker.io/library/x:1": "sha256:" + "2" * 64}, fail_after=5000)
    monkeypatch.setattr(daemon, "connect", lambda: broken)
    with pytest.raises(SourceUnavailable, match=r"broke off the image stream after \d+ bytes: connection reset"):
        load("docker-daemon:x:1")


def test_unreachable_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no.sock"
    monkeypatch.setenv("DOCKER_HOST", url)
    with pytest.raises(SourceUnavailable) as err:
        load("docker-daemon:alpine")
    assert str(err.value) == f"cannot reach the Docker daemon at {url}; is it running? (or use docker-archive:FILE)"


def test_hard_linked_layers_inside_image_content_survive_the_stream(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ImageSpec([make_layer([f("a", "data"), hard("b", "a"), sym("c", "a")])])
    data = write_docker_archive(tmp_path / "a.tar", {"x:1": spec}).read_bytes()
    monkeypatch.setattr(daemon, "connect", lambda: FakeClient(data, {"docker.io/library/x:1": "sha256:" + "4" * 64}))
    _, scans = load("docker-daemon:x:1")
    fs = RootFS.build(scans)
    node = fs.get("/b")
    assert node is not None and node.entry.size == 4
