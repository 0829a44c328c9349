"""OCI image layouts (image-spec image-layout.md): a directory (`oci:DIR[:ref]`) or a tar of one
(`oci-archive:FILE[:ref]`). Read-only: nothing is ever written into a layout (no index update, no lock)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from imgaudit.errors import CorruptImage, UsageError, escape
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner
from imgaudit.sources import archive
from imgaudit.sources.manifest import (
    MAX_CONFIG,
    MAX_MANIFEST,
    Descriptor,
    Plan,
    Store,
    build_image,
    build_layers,
    check_cap,
    check_layer_count,
    check_platform,
    layer_specs_from_manifest,
    load_json,
    parse_config,
    parse_manifest,
    read_blob,
    resolve_manifest,
    set_aside,
)

BLOB_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LAYOUT_FILE = 1 << 20


def load(ref: Reference, *, platform: Platform | None, scanner: Scanner) -> tuple[Image, tuple[LayerScan, ...]]:
    if ref.transport == "oci-archive":
        return archive.load_path(ref, platform=platform, scanner=scanner, planner=plan_oci, selector=ref.tag)
    store = DirStore(_layout_dir(ref), ref.display)
    plan = plan_oci(store, ref.tag, platform)
    image = build_image(plan, ref, build_layers(plan, store.size, store.opener))
    return image, scanner.scan_image(image)


def _layout_dir(ref: Reference) -> Path:
    path = Path(ref.path or "")
    if not path.is_dir():
        raise UsageError(f"no such OCI layout directory: {escape(str(path))}")
    return path


def plan_oci(store: Store, selector: str | None, platform: Platform | None) -> Plan:
    """index.json → (ref name, platform, nested indexes) → manifest → config; each blob checked by digest."""
    where = store.where

    def fetch(desc: Descriptor) -> bytes:
        return read_blob(store, desc, MAX_MANIFEST, "index")

    _check_layout_version(store)
    index = store.read("index.json", MAX_MANIFEST, "index.json")
    desc = resolve_manifest(index, where, fetch, ref_name=selector, platform=platform)
    manifest = parse_manifest(read_blob(store, desc, MAX_MANIFEST, "manifest"), f"{where} manifest {desc.digest[:19]}")
    config_bytes = read_blob(store, manifest.config, MAX_CONFIG, "config")
    config = parse_config(config_bytes, f"{where} config {manifest.config.digest[:19]}")
    check_platform(config.platform, platform, where)
    specs = layer_specs_from_manifest(manifest)
    check_layer_count(specs, config, where)
    return Plan(config, manifest.config.digest, desc.digest, specs, set_aside(manifest, where))


def _check_layout_version(store: Store) -> None:
    """image-layout.md: `oci-layout` names the layout version; only 1.x is known (a missing file is tolerated,
    as some writers omit it)."""
    if not store.has("oci-layout"):
        return
    document = load_json(store.read("oci-layout", MAX_LAYOUT_FILE, "oci-layout"), f"{store.where} oci-layout",
                         "oci-layout")
    version = document.get("imageLayoutVersion") if isinstance(document, dict) else None
    if not isinstance(version, str) or not version.startswith("1."):
        shown = escape(str(version))[:40]
        raise CorruptImage(f"{store.where}: unsupported OCI layout version {shown!r} in oci-layout (want 1.x)")


class DirStore:
    """Files of a layout directory, opened relative to it without following links: a blob must be a
    regular file, never a symlink, FIFO or directory (g-cr #2306, RELIABILITY.md #40)."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where

    def _open(self, name: str, what: str) -> int:
        *dirs, base = name.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for part in dirs:
                parent, fd = fd, os.open(part, DIR_OPEN, dir_fd=fd)
                os.close(parent)
            blob = os.open(base, BLOB_OPEN, dir_fd=fd)  # O_NONBLOCK: a FIFO must not hang the open
        except OSError as err:
            raise self._error(err, name, what) from err
        finally:
            os.close(fd)
        if not stat.S_ISREG(os.fstat(blob).st_mode):
            os.close(blob)
            raise CorruptImage(f"{self.where}: {what} {escape(name)} is not a regular file")
        return blob

    def _error(self, err: OSError, name: str, what: str) -> CorruptImage:
        if err.errno == errno.ENOENT:
            return CorruptImage(f"{self.where}: {what} {escape(name)} is missing from the layout")
        if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            return CorruptImage(f"{self.where}: {what} {escape(name)} is a symlink or not a regular file")
        return CorruptImage(f"{self.where}: cannot read {what} {escape(name)}: {escape(err.strerror or str(err))}")

    def has(self, name: str) -> bool:
        try:
            os.close(self._open(name, ""))
        except CorruptImage:
            return False
        return True

    def read(self, name: str, cap: int, what: str) -> bytes:
        with os.fdopen(self._open(name, what), "rb") as fobj:
            check_cap(os.fstat(fobj.fileno()).st_size, cap, f"{self.where} {what} {escape(name)}")
            data = fobj.read(cap + 1)
        check_cap(len(data), cap, f"{self.where} {what} {escape(name)}")  # it may grow while we read
        return data

    def size(self, name: str) -> int:
        fd = self._open(name, "layer")
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        return lambda: os.fdopen(self._open(name, "layer"), "rb", buffering=1 << 20)
