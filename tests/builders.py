"""Builders for synthetic layers and image archives, written in the test (no loose `.wh.*` files in git).

A layer is described as a list of `Item`s; archives follow the shapes real tools write:
`docker save` legacy (`<id>/layer.tar`), Docker ≥ 25 (OCI layout + manifest.json), OCI layout dir/tar.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Item:
    """One tar entry: `kind` is file|dir|symlink|hardlink|fifo; `data` for files, `link` for links."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)  # written as PAX SCHILY.xattr.NAME records


def f(name: str, data: bytes | str = b"", mode: int = 0o644, *, xattrs: dict[str, bytes] | None = None) -> Item:
    return Item(name, "file", data.encode() if isinstance(data, str) else data, mode=mode, xattrs=xattrs or {})


def d(name: str, mode: int = 0o755) -> Item:
    return Item(name, "dir", mode=mode)


def sym(name: str, target: str) -> Item:
    return Item(name, "symlink", link=target, mode=0o777)


def hard(name: str, target: str) -> Item:
    return Item(name, "hardlink", link=target, mode=0o644)


def wh(name: str) -> Item:
    """Whiteout of `name` (dir/base → dir/.wh.base)."""
    head, _, base = name.rpartition("/")
    return f(f"{head}/.wh.{base}" if head else f".wh.{base}")


def opaque(directory: str) -> Item:
    return f(f"{directory.rstrip('/')}/.wh..wh..opq")


def random_layer(rng: random.Random, names: Sequence[str], contents: Sequence[str] = ("", "x"),
                 targets: Sequence[str] = ("a", "/b", "../c", "nowhere")) -> list[Item]:
    """Up to ten entries over `names`, so that the layers of a stack collide: files (of `contents`, some setuid)
    and directories replace each other, whiteouts and opaque markers remove, and symlinks (to `targets` or to
    themselves) and hard links lead through, into loops and nowhere."""
    items: list[Item] = []
    for _ in range(rng.randint(1, 10)):
        name, kind = rng.choice(names), rng.random()
        if kind < 0.3:
            items.append(f(name, rng.choice(contents), rng.choice([0o644, 0o755, 0o4755])))
        elif kind < 0.45:
            items.append(d(name))
        elif kind < 0.6:
            items.append(sym(name, rng.choice([*targets, name])))
        elif kind < 0.68:
            items.append(hard(name, rng.choice(names)))
        elif kind < 0.85:
            items.append(wh(name))
        else:
            items.append(opaque(rng.choice(names).partition("/")[0]))
    return items


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}


def make_layer(items: list[Item], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """Plain tar bytes of one layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for it in items:
            info = tarfile.TarInfo(it.name)
            info.type = _TYPES[it.kind]
            info.mode = it.mode if it.mode is not None else (0o755 if it.kind == "dir" else 0o644)
            info.uid, info.gid = it.uid, it.gid
            info.mtime = 1700000000
            info.linkname = it.link
            # tarfile writes a value that is not UTF-8 as its raw bytes (with hdrcharset=BINARY), as GNU tar does
            info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in it.xattrs.items()}
            if it.kind == "file":
                info.size = len(it.data)
                tar.addfile(info, io.BytesIO(it.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class ImageSpec:
    """An image to write: plain layer tars plus config fields."""

    layers: list[bytes]
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(default_factory=lambda: [DEFAULT_ENV])
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None
    created_by: list[str] | None = None
    compression: str = "gzip"  # gzip|zstd|tar for OCI blobs
    user: str = ""
    working_dir: str = ""

    def config(self) -> dict[str, Any]:
        history = [{"created_by": c} for c in (self.created_by or [f"layer {i}" for i in range(len(self.layers))])]
        cfg: dict[str, Any] = {"Env": self.env}
        if self.entrypoint is not None:
            cfg["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            cfg["Cmd"] = self.cmd
        if self.user:
            cfg["User"] = self.user
        if self.working_dir:
            cfg["WorkingDir"] = self.working_dir
        out: dict[str, Any] = {
            "architecture": self.architecture, "os": self.os, "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in self.layers]},
            "history": history,
        }
        if self.variant:
            out["variant"] = self.variant
        return out

    def blobs(self) -> tuple[bytes, list[tuple[bytes, str]]]:
        """Config JSON bytes and the stored layer blobs with their media types."""
        cfg = json.dumps(self.config(), sort_keys=True).encode()
        comp = {"gzip": (gz, OCI_LAYER_GZIP), "zstd": (zst, OCI_LAYER_ZSTD), "tar": (lambda b: b, OCI_LAYER_TAR)}
        fn, media = comp[self.compression]
        return cfg, [(fn(layer), media) for layer in self.layers]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 1700000000
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(path: Path, images: dict[str, ImageSpec], *, shape: str = "legacy") -> Path:
    """`docker save` archive of one or more images keyed by repo:tag. shape: legacy | oci (Docker ≥ 25)."""
    with tarfile.open(path, "w") as tar:
        manifest = []
        written: set[str] = set()
        for tag, spec in images.items():
            cfg, _ = spec.blobs()
            layer_names = []
            if shape == "legacy":
                cfg_name = sha(cfg)[7:] + ".json"
                for layer in spec.layers:
                    name = sha(layer)[7:] + "/layer.tar"
                    if name not in written:
                        _add(tar, name, layer)
                        written.add(name)
                    layer_names.append(name)
            else:
                cfg_name = "blobs/sha256/" + sha(cfg)[7:]
                for layer in spec.layers:
                    name = "blobs/sha256/" + sha(layer)[7:]
                    if name not in written:
                        _add(tar, name, layer)
                        written.add(name)
                    layer_names.append(name)
            if cfg_name not in written:
                _add(tar, cfg_name, cfg)
                written.add(cfg_name)
            manifest.append({"Config": cfg_name, "RepoTags": [tag], "Layers": layer_names})
        if shape == "oci":
            _write_oci_index(tar, images, written)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return path


def _write_oci_index(tar: tarfile.TarFile, images: dict[str, ImageSpec], written: set[str]) -> None:
    descs = []
    for tag, spec in images.items():
        cfg, _ = spec.blobs()
        man = _oci_manifest(cfg, [(layer, OCI_LAYER_TAR) for layer in spec.layers])
        name = "blobs/sha256/" + sha(man)[7:]
        if name not in written:
            _add(tar, name, man)
            written.add(name)
        descs.append({"mediaType": OCI_MANIFEST, "digest": sha(man), "size": len(man),
                      "annotations": {"io.containerd.image.name": f"docker.io/library/{tag}",
                                      "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}})
    _add(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}).encode())
    _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')


def _oci_manifest(cfg: bytes, layers: list[tuple[bytes, str]]) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha(cfg), "size": len(cfg)},
        "layers": [{"mediaType": m, "digest": sha(b), "size": len(b)} for b, m in layers],
    }, sort_keys=True).encode()


def oci_blobs(images: dict[str, ImageSpec], *, index_platforms: bool = False) -> tuple[dict[str, bytes], bytes]:
    """Blobs (digest → bytes) and index.json bytes of an OCI layout holding `images` (tag → spec)."""
    blobs: dict[str, bytes] = {}
    descs = []
    for tag, spec in images.items():
        cfg, layers = spec.blobs()
        blobs[sha(cfg)] = cfg
        for blob, _ in layers:
            blobs[sha(blob)] = blob
        man = _oci_manifest(cfg, layers)
        blobs[sha(man)] = man
        desc: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": sha(man), "size": len(man),
                                "annotations": {"org.opencontainers.image.ref.name": tag}}
        if index_platforms:
            plat = {"os": spec.os, "architecture": spec.architecture}
            if spec.variant:
                plat["variant"] = spec.variant
            desc["platform"] = plat
        descs.append(desc)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}).encode()
    return blobs, index


def write_oci_layout(root: Path, images: dict[str, ImageSpec], *, index_platforms: bool = False) -> Path:
    blobs, index = oci_blobs(images, index_platforms=index_platforms)
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    (root / "index.json").write_bytes(index)
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


def write_oci_archive(path: Path, images: dict[str, ImageSpec], *, index_platforms: bool = False) -> Path:
    blobs, index = oci_blobs(images, index_platforms=index_platforms)
    with tarfile.open(path, "w") as tar:
        _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        _add(tar, "index.json", index)
        for digest, data in blobs.items():
            _add(tar, "blobs/sha256/" + digest[7:], data)
    return path
