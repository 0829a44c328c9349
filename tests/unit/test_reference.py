"""Reference parsing: transports, Docker Hub normalisation, digest validation, sniffing bare paths."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from imgaudit.errors import UsageError
from imgaudit.reference import Reference, parse_reference
from tests.builders import ImageSpec, f, make_layer, write_docker_archive, write_oci_archive, write_oci_layout

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "name", "tag"), [
    ("alpine", "docker.io/library/alpine", "latest"),
    ("alpine:3.20", "docker.io/library/alpine", "3.20"),
    ("library/alpine", "docker.io/library/alpine", "latest"),
    ("docker.io/alpine", "docker.io/library/alpine", "latest"),
    ("index.docker.io/library/alpine:edge", "docker.io/library/alpine", "edge"),
    ("registry-1.docker.io/bitnami/redis", "docker.io/bitnami/redis", "latest"),
    ("ghcr.io/org/team/img:1.0", "ghcr.io/org/team/img", "1.0"),
    ("localhost:5000/foo", "localhost:5000/foo", "latest"),
    ("localhost/foo:bar", "localhost/foo", "bar"),
    ("[::1]:5000/foo:bar", "[::1]:5000/foo", "bar"),
    ("my-registry.example:443/a_b/c.d__e:v1.2-rc", "my-registry.example:443/a_b/c.d__e", "v1.2-rc"),
])
def test_bare_names_are_normalised_and_mean_the_daemon(text: str, name: str, tag: str) -> None:
    ref = parse_reference(text)
    assert (ref.transport, ref.name, ref.tag, ref.digest, ref.bare) == ("docker-daemon", name, tag, None, True)
    assert ref.original == text
    assert ref.display == f"{name}:{tag}"


def test_digest_reference_keeps_no_default_tag() -> None:
    ref = parse_reference(f"alpine@{DIGEST}")
    assert (ref.name, ref.tag, ref.digest) == ("docker.io/library/alpine", None, DIGEST)
    assert ref.display == f"docker.io/library/alpine@{DIGEST}"
    both = parse_reference(f"alpine:3.20@{DIGEST}")
    assert (both.tag, both.digest) == ("3.20", DIGEST)


@pytest.mark.parametrize("text", [
    "", "  ", "Alpine", "alpine:", "alpine:-bad", "a//b", "-a", "a/-b", "alpine\x1b[2J", "alpine\n",
    "alpine@sha256:XYZ", f"alpine@sha256:{'AB' * 32}", f"alpine@sha256:{'a' * 63}", f"alpine@md5:{'a' * 32}",
    "alpine@", "alpine@sha256:../../etc/passwd", "a" * 64 + ":1", "x/" + "a" * 300,
    "docker://", "docker://Alpine", f"docker://alpine@sha256:{'A' * 64}",
    "docker-daemon:", "docker-daemon:sha256:1234", "docker-archive:", "oci:", "oci:dir:bad name",
])
def test_invalid_references_are_one_line_usage_errors(text: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_reference(text)
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    assert "\x1b" not in str(err.value)


def test_registry_transport() -> None:
    ref = parse_reference(f"docker://registry-1.docker.io/library/alpine@{DIGEST}")
    assert (ref.transport, ref.name, ref.digest, ref.bare) == ("registry", "docker.io/library/alpine", DIGEST, False)
    assert ref.display == f"docker://docker.io/library/alpine@{DIGEST}"
    assert parse_reference("docker://quay.io/x/y:1").named == "quay.io/x/y:1"


def test_daemon_transport_names_ids_and_digests() -> None:
    named = parse_reference("docker-daemon:alpine:3.20")
    assert (named.transport, named.named, named.bare) == ("docker-daemon", "docker.io/library/alpine:3.20", False)
    assert named.display == "docker-daemon:docker.io/library/alpine:3.20"
    full = parse_reference(f"docker-daemon:{DIGEST}")
    assert (full.image_id, full.name) == (DIGEST, None)
    short = parse_reference("docker-daemon:0123456789ab")
    assert short.image_id == "0123456789ab"
    pinned = parse_reference(f"docker-daemon:alpine@{DIGEST}")
    assert pinned.digest == DIGEST
    for bare in (DIGEST, DIGEST[7:]):
        ref = parse_reference(bare)
        assert (ref.transport, ref.image_id, ref.bare, ref.display) == ("docker-daemon", bare, True, bare)


def test_archive_transports_split_path_and_selector(tmp_path: Path) -> None:
    ref = parse_reference("docker-archive:/tmp/x.tar:alpine:3.20")
    assert (ref.transport, ref.path, ref.name, ref.tag) == ("docker-archive", "/tmp/x.tar", "docker.io/library/alpine",
                                                            "3.20")
    assert ref.display == "docker-archive:/tmp/x.tar:docker.io/library/alpine:3.20"
    assert parse_reference("docker-archive:/tmp/x.tar").name is None
    assert parse_reference("oci:/tmp/lay:v1").tag == "v1"
    assert parse_reference("oci:/tmp/lay:docker.io/library/alpine:3.20").tag == "docker.io/library/alpine:3.20"
    assert parse_reference("oci-archive:/tmp/o.tar").tag is None
    with pytest.raises(UsageError, match="not digest"):
        parse_reference(f"docker-archive:/tmp/x.tar:alpine@{DIGEST}")


def test_an_existing_path_with_colons_is_taken_whole(tmp_path: Path) -> None:
    odd = tmp_path / "a:b.tar"
    odd.write_bytes(b"")
    ref = parse_reference(f"docker-archive:{odd}")
    assert (ref.path, ref.name) == (str(odd), None)


def _spec() -> ImageSpec:
    return ImageSpec([make_layer([f("hello", "world")])])


def test_bare_paths_are_sniffed(tmp_path: Path) -> None:
    legacy = write_docker_archive(tmp_path / "legacy.tar", {"a:1": _spec()})
    docker25 = write_docker_archive(tmp_path / "d25.tar", {"a:1": _spec()}, shape="oci")
    oci_tar = write_oci_archive(tmp_path / "oci.tar", {"v1": _spec()})
    layout = write_oci_layout(tmp_path / "layout", {"v1": _spec()})
    zipped = tmp_path / "legacy.tar.gz"
    zipped.write_bytes(gzip.compress(legacy.read_bytes()))
    found = {p.name: parse_reference(str(p)).transport for p in (legacy, docker25, oci_tar, layout, zipped)}
    assert found == {"legacy.tar": "docker-archive", "d25.tar": "docker-archive", "oci.tar": "oci-archive",
                     "layout": "oci", "legacy.tar.gz": "docker-archive"}
    assert parse_reference(str(layout)) == Reference("oci", str(layout), path=str(layout))


def test_bare_paths_that_are_not_images_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "text.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    for path in (tmp_path / "text.txt", tmp_path / "empty"):
        with pytest.raises(UsageError, match="not"):
            parse_reference(str(path))
    with pytest.raises(UsageError, match="no such file"):
        parse_reference(str(tmp_path / "missing.tar"))
    with pytest.raises(UsageError, match="no such file"):
        parse_reference("./missing.tar")
