"""The size audit against the daemon and the images' own tools.

- reclaimable bytes = the bytes of all layers' regular files − the bytes `docker export` holds (each inode
  once), for images whose layers only add, overwrite or remove: synthetic archives (`docker load`), dive's
  kaniko image, and an image the legacy builder makes with RUN steps;
- package sizes = `dpkg-query -W -f '${Installed-Size}'` on the image's own database (the runtime images have
  no dpkg binary, so the host's dpkg-query reads the exported database; for distroless status.d, dpkg-query
  reads the control files themselves) and `apk info -s` run inside the Alpine image;
- `compare` of an Alpine, a distroless-style and a Debian-slim image prints the numbers `inspect --format json`
  prints for each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import jsonschema
import pytest
from click.testing import CliRunner

from imgaudit.audit import Options, audit, load
from imgaudit.cli import main
from imgaudit.render.text import human
from imgaudit.report import Report
from tests.builders import ImageSpec, d, f, hard, make_layer, opaque, wh, write_docker_archive
from tests.e2e.runtimes import ensure_runtimes

pytestmark = pytest.mark.e2e

KANIKO = "test-kaniko-image.tar"
KANIKO_TAG = "dive-test:kaniko-latest"
RUNTIMES = ("alpine-3.20", "bookworm-cc", "bookworm-slim")
OPTIONS = Options(cache=False)
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "imgaudit" / "schema" / "report.schema.json").read_text())


@pytest.fixture(autouse=True)
def no_scan_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGAUDIT_CACHE", "off")


@pytest.fixture(scope="module")
def runtimes(docker_client: Any) -> dict[str, str]:  # skips (or fails under IMGAUDIT_E2E=1) without a daemon
    return ensure_runtimes(list(RUNTIMES))


# -- the oracle: docker export ---------------------------------------------------------------------------------


def export_members(client: Any, image: str) -> Iterator[tarfile.TarInfo]:
    """`docker create` + `docker export`, streamed; the container is removed afterwards."""
    from imgaudit.sources.daemon import ChunkReader

    container = client.containers.create(image, command=["/imgaudit-never-started"])
    try:
        with ChunkReader(container.export(chunk_size=1 << 20), "daemon") as stream, \
                tarfile.open(fileobj=cast(BinaryIO, stream), mode="r|") as tar:
            for member in tar:
                tar.members = []  # type: ignore[attr-defined]
                yield member
    finally:
        container.remove(force=True)


def exported_bytes(client: Any, image: str) -> int:
    """Regular-file bytes of the exported filesystem; a hard link is a link entry (0 bytes), so each inode
    counts once."""
    return sum(m.size for m in export_members(client, image) if m.isreg())


def layer_file_bytes(loaded: Any) -> int:
    """Σ regular-file bytes of every layer, read from the layers as the daemon hands them out (docker save)."""
    return sum(e.size for scan in loaded.scans for e in scan.entries if e.type.value == "file")


def check_reclaimable(client: Any, image: str) -> Report:
    loaded = load(f"docker-daemon:{image}", OPTIONS)
    report = audit(loaded, OPTIONS)
    jsonschema.validate(report.to_dict(), SCHEMA)
    visible = exported_bytes(client, image)
    assert report.size.final_bytes == visible
    assert report.size.reclaimable_bytes == layer_file_bytes(loaded) - visible
    return report


def test_reclaimable_equals_layers_minus_export_synthetic(daemon_images: Any, tmp_path: Path) -> None:
    """Overwrites, a file whiteout, a directory whiteout, an opaque directory and hard links."""
    tag = daemon_images.tag("reclaim")
    layers = [
        make_layer([d("opt"), f("opt/keep", b"k" * 700), f("opt/rewrite", b"r" * 5000), f("opt/gone", b"g" * 3000),
                    d("cache"), f("cache/a", b"a" * 40_000), f("cache/b", b"b" * 2_000),
                    d("work"), f("work/old", b"o" * 9_000), hard("opt/link", "opt/keep")]),
        make_layer([d("opt"), f("opt/rewrite", b"R" * 5000, 0o600), wh("opt/gone"), wh("cache")]),
        make_layer([d("work"), opaque("work"), f("work/new", b"n" * 100)]),
    ]
    archive = write_docker_archive(tmp_path / "reclaim.tar", {tag: ImageSpec(layers, cmd=["/x"])})
    daemon_images.load(archive)
    report = check_reclaimable(daemon_images.client, tag)
    assert report.size.reclaimable_bytes == 5000 + 3000 + 42_000 + 9_000
    assert {c.reason for c in report.size.reclaimable} == {"overwritten", "removed", "opaque"}


def test_reclaimable_equals_layers_minus_export_kaniko(daemon_images: Any, corpus: Path) -> None:
    archive = corpus / "dive-test-images" / KANIKO
    daemon_images.load(archive)
    daemon_images.tags.append(KANIKO_TAG)
    report = check_reclaimable(daemon_images.client, KANIKO_TAG)
    assert report.size.reclaimable_bytes == 5 * 9249


def docker_build_dockerfile(tag: str, dockerfile: str) -> str:
    """The legacy builder (docker 20.10), Dockerfile on stdin, no context."""
    res = subprocess.run(["docker", "build", "-q", "-t", tag, "-"], input=dockerfile, text=True,
                         capture_output=True, timeout=600, env={**os.environ, "DOCKER_BUILDKIT": "0"}, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return tag


def test_reclaimable_equals_layers_minus_export_built(daemon_images: Any, runtimes: dict[str, str]) -> None:
    """RUN steps that write, remove, chmod and append: what teams actually do."""
    tag = daemon_images.tag("built")
    docker_build_dockerfile(tag, f"""FROM {runtimes["bookworm-slim"]}
RUN mkdir -p /data/cache && head -c 300000 /dev/urandom > /data/cache/blob && head -c 50000 /dev/urandom > /data/keep \\
    && echo hello > /data/small
RUN rm -rf /data/cache && chmod 600 /data/keep
RUN echo more >> /data/small && ln /data/keep /data/keep-link
""")
    report = check_reclaimable(daemon_images.client, tag)
    assert report.size.reclaimable_bytes >= 300_000 + 50_000 + 6  # the blob, keep before chmod, small


# -- packages --------------------------------------------------------------------------------------------------


def exported_files(client: Any, image: str, prefix: str) -> dict[str, bytes]:
    from imgaudit.sources.daemon import ChunkReader

    out: dict[str, bytes] = {}
    container = client.containers.create(image, command=["/imgaudit-never-started"])
    try:
        with ChunkReader(container.export(chunk_size=1 << 20), "daemon") as stream, \
                tarfile.open(fileobj=cast(BinaryIO, stream), mode="r|") as tar:
            for member in tar:
                name = member.name.lstrip("./")
                if name.startswith(prefix) and member.isreg():
                    data = tar.extractfile(member)
                    assert data is not None
                    out[name] = data.read()
    finally:
        container.remove(force=True)
    return out


def dpkg_query(admindir: Path) -> dict[str, tuple[str, int]]:
    """name → (version, Installed-Size in KiB) of every installed package, as dpkg itself reads them."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("the host has no dpkg-query")
    res = subprocess.run(["dpkg-query", f"--admindir={admindir}", "-W",
                          "-f", "${Package}\t${Version}\t${Installed-Size}\t${db:Status-Abbrev}\n"],
                         capture_output=True, text=True, check=True, timeout=60)
    out = {}
    for line in res.stdout.splitlines():
        name, version, size, status = line.split("\t")
        if status.strip() == "ii":
            out[name] = (version, int(size or 0))
    return out


def ours(report: Report) -> dict[str, tuple[str, int]]:
    return {p.name: (p.version, p.bytes) for p in report.size.packages}


def test_dpkg_status_sizes_match_dpkg_query(docker_client: Any, runtimes: dict[str, str], tmp_path: Path) -> None:
    image = runtimes["bookworm-slim"]
    report = audit(f"docker-daemon:{image}", OPTIONS)
    assert report.size.package_db == "dpkg"
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    files = exported_files(docker_client, image, "var/lib/dpkg/status")
    (admin / "status").write_bytes(files["var/lib/dpkg/status"])
    expected = {name: (version, kib * 1024) for name, (version, kib) in dpkg_query(admin).items()}
    assert len(expected) > 5
    assert ours(report) == expected


def test_distroless_status_d_matches_dpkg_reading_the_control_files(docker_client: Any, runtimes: dict[str, str],
                                                                     tmp_path: Path) -> None:
    image = runtimes["bookworm-cc"]
    report = audit(f"docker-daemon:{image}", OPTIONS)
    assert report.size.package_db == "dpkg-status.d"
    controls = {name: data for name, data in exported_files(docker_client, image, "var/lib/dpkg/status.d/").items()
                if not name.endswith(".md5sums")}
    assert controls
    paragraphs = []
    for data in controls.values():
        text = data.decode().strip()
        paragraphs.append(text if re.search(r"(?m)^Status:", text) else text + "\nStatus: install ok installed")
    admin = tmp_path / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "status").write_text("\n\n".join(paragraphs) + "\n")
    expected = {name: (version, kib * 1024) for name, (version, kib) in dpkg_query(admin).items()}
    assert ours(report) == expected


def apk_human(size: int) -> str:
    """apk-tools' apk_get_human_size: divide by 1024 while the number has five digits or more."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    unit = 0
    while size >= 10000 and unit < len(units) - 1:
        size //= 1024
        unit += 1
    return f"{size} {units[unit]}"


def test_apk_sizes_match_apk_info(runtimes: dict[str, str]) -> None:
    image = runtimes["alpine-3.20"]
    report = audit(f"docker-daemon:{image}", OPTIONS)
    assert report.size.package_db == "apk"
    names = [p.name for p in report.size.packages]
    res = subprocess.run(["docker", "run", "--rm", "--network", "none", image, "apk", "info", "-s", *names],
                         capture_output=True, text=True, timeout=120, check=True)
    shown = dict(re.findall(r"(?m)^(\S+) installed size:\n(.+)$", res.stdout))
    assert shown == {f"{p.name}-{p.version}": apk_human(p.bytes) for p in report.size.packages}


# -- compare ---------------------------------------------------------------------------------------------------


def _cli(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1), result.output
    return result.stdout


def test_compare_matches_inspect(runtimes: dict[str, str]) -> None:
    refs = [f"docker-daemon:{runtimes[name]}" for name in RUNTIMES]
    columns = json.loads(_cli(["compare", *refs, "--format", "json"]))["images"]
    table = _cli(["compare", *refs])
    markdown = _cli(["compare", *refs, "--format", "markdown"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| |")}
    for i, (ref, column) in enumerate(zip(refs, columns, strict=True)):
        full = json.loads(_cli(["inspect", ref, "--format", "json"]))
        jsonschema.validate(full, SCHEMA)
        size = full["size"]
        assert column["final_bytes"] == size["final_bytes"]
        assert column["compressed_bytes"] == size["compressed_bytes"]
        assert column["layers"] == len(size["layers"])
        assert column["packages"] == len(size["packages"])
        assert column["reclaimable_bytes"] == size["reclaimable_bytes"]
        assert (column["libc"], column["libc_version"]) == (full["runtime"]["libc"], full["runtime"]["libc_version"])
        assert column["distro"] == full["runtime"]["distro"]["id"]
        assert column["entrypoint_verdict"] == full["entrypoint"]["verdict"]
        # the printed table and markdown show the same numbers, in decimal SI units
        for label, value in (("final size", human(size["final_bytes"])),
                             ("compressed (pull)", human(size["compressed_bytes"])),
                             ("reclaimable", human(size["reclaimable_bytes"]))):
            assert rows[label][i] == value
            assert value in table
    assert [c["libc"] for c in columns] == ["musl", "glibc", "glibc"]
    assert [c["package_db"] for c in columns] == ["apk", "dpkg-status.d", "dpkg"]
