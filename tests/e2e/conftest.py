"""Shared e2e fixtures: the Docker daemon (skipped when absent unless IMGAUDIT_E2E=1), the corpus of real
image archives, throw-away daemon images, and listings that make imgaudit's RootFS comparable with what
the daemon itself exports (`docker create` + `docker export`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import pytest

from imgaudit.layers import EntryType
from imgaudit.rootfs import RootFS

REPO = Path(__file__).resolve().parents[2]

# What `docker create` adds to every container (moby daemon/initlayer/setup_unix.go): these files and the
# /etc/mtab link are unlinked and recreated whatever the image holds, so they are never compared.
INJECTED = frozenset({"/.dockerenv", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/etc/mtab",
                      "/dev/console"})
# Directories the init layer creates (0755) when the image lacks them; compared when the image has them.
CREATED_DIRS = frozenset({"/dev", "/dev/pts", "/dev/shm", "/proc", "/sys", "/etc"})

_TAR_TYPES = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
              tarfile.SYMTYPE: "symlink", tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block",
              tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}


class Row(NamedTuple):
    """One path of a final filesystem: a hard link is a regular file with its target's size and mode."""

    type: str
    size: int
    link: str | None
    mode: int
    uid: int
    gid: int


# -- listings -----------------------------------------------------------------------------------


def rootfs_listing(fs: RootFS) -> dict[str, Row]:
    """imgaudit's merged filesystem as {absolute path: Row}, the root itself left out."""
    out = {}
    for node in fs.walk("/"):
        entry = node.entry
        kind = "file" if entry.type is EntryType.HARDLINK else entry.type.value
        link = entry.link if entry.type is EntryType.SYMLINK else None
        size = entry.size if kind == "file" else 0
        out[node.path] = Row(kind, size, link, entry.mode & 0o7777, entry.uid, entry.gid)
    return out


def tar_listing(stream: BinaryIO) -> dict[str, Row]:
    """A flattened filesystem tar (`docker export`) read in one pass, hard links resolved to their target."""
    out: dict[str, Row] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            tar.members = []  # type: ignore[attr-defined]
            path = "/" + os.path.normpath(member.name).lstrip("/")
            if path in ("/", "/."):
                continue
            if member.islnk():
                target = out["/" + os.path.normpath(member.linkname).lstrip("/")]
                out[path] = target._replace(link=None)
                continue
            kind = _TAR_TYPES.get(member.type, f"other:{member.type!r}")
            out[path] = Row(kind, member.size if kind == "file" else 0, member.linkname if member.issym() else None,
                            member.mode & 0o7777, member.uid, member.gid)
    return out


def comparable(image: dict[str, Row], exported: dict[str, Row], working_dir: str = "") -> tuple[dict[str, Row],
                                                                                              dict[str, Row]]:
    """Both listings without what Docker adds to a container: INJECTED always; CREATED_DIRS and the config's
    WorkingDir (with its parents; `docker create` makes it) when the image has no such directory."""
    created = CREATED_DIRS | _with_parents(working_dir)
    keep_image = {p: r for p, r in image.items() if p not in INJECTED}
    keep_export = {p: r for p, r in exported.items()
                   if p not in INJECTED and not (p in created and _kind(image.get(p)) != "dir")}
    return keep_image, keep_export


def _with_parents(path: str) -> frozenset[str]:
    parts = [p for p in path.split("/") if p]
    return frozenset("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))


def _kind(row: Row | None) -> str | None:
    return row.type if row is not None else None


def differences(left: dict[str, Row], right: dict[str, Row], fields: tuple[str, ...] = Row._fields) -> list[str]:
    """Human-readable differences, one line per path (empty when equal on `fields`)."""
    lines = []
    for path in sorted(set(left) | set(right)):
        a, b = left.get(path), right.get(path)
        if a is None or b is None:
            lines.append(f"{path}: only in {'imgaudit' if b is None else 'docker'} ({a or b})")
            continue
        diff = [f"{f} {getattr(a, f)!r} != {getattr(b, f)!r}" for f in fields if getattr(a, f) != getattr(b, f)]
        if diff:
            lines.append(f"{path}: " + ", ".join(diff))
    return lines


# -- fixtures -----------------------------------------------------------------------------------


def _mandatory() -> bool:
    return os.environ.get("IMGAUDIT_E2E") == "1"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client; the test is skipped without a daemon, or fails when IMGAUDIT_E2E=1."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(version="auto", timeout=300)
        client.ping()
    except Exception as err:
        if _mandatory():
            pytest.fail(f"IMGAUDIT_E2E=1 but no Docker daemon answers: {err}")
        pytest.skip(f"no Docker daemon: {err}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def corpus() -> Path:
    path = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus")
    if not path.is_dir():
        if _mandatory():
            pytest.fail(f"corpus not found at {path}")
        pytest.skip(f"corpus not found at {path}")
    return path


class DaemonImages:
    """Unique tags for images a test puts into the daemon; all removed at teardown."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tags: list[str] = []

    def tag(self, hint: str = "img") -> str:
        tag = f"imgaudit-e2e/{hint}:{uuid.uuid4().hex[:12]}"
        self.tags.append(tag)
        return tag

    def load(self, archive: Path) -> None:
        """`docker load`: the daemon's own reading of a docker-archive (tags come from its manifest.json)."""
        with archive.open("rb") as data:
            self.client.images.load(data)

    def skopeo_copy(self, source: str, tag: str, *, arch: str | None = None) -> None:
        """skopeo writes the image into the daemon (layers decompressed, as `docker load` wants them)."""
        cmd = ["skopeo"] + ([f"--override-arch={arch}"] if arch else []) + ["copy", "-q", source,
                                                                           f"docker-daemon:{tag}"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)

    def export_listing(self, image: str) -> dict[str, Row]:
        """`docker create` then `docker export`, streamed; the container is removed afterwards."""
        from imgaudit.sources.daemon import ChunkReader

        container = self.client.containers.create(image, command=["/imgaudit-never-started"])
        try:
            with ChunkReader(container.export(chunk_size=1 << 20), "daemon") as stream:
                return tar_listing(cast(BinaryIO, stream))
        finally:
            container.remove(force=True)

    def cleanup(self) -> None:
        for tag in self.tags:
            # already gone, or never created because the test failed early; never forced, so an image
            # another tag or container still uses stays
            with contextlib.suppress(Exception):
                self.client.images.remove(tag)


@pytest.fixture
def daemon_images(docker_client: Any) -> Iterator[DaemonImages]:
    images = DaemonImages(docker_client)
    yield images
    images.cleanup()
