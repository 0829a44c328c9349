"""Shared parsing of what names an image's parts: OCI image-spec indexes, manifests and configs, Docker
manifest lists and `docker save`'s manifest.json; platform selection. Every input is capped (containers/image
iolimits: 4 MiB manifests and configs, 1 MiB manifest.json) and every digest validated before use.
"""

from __future__ import annotations

import hashlib
import json
import platform as host
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from imgaudit.errors import CorruptImage, ImageNotFound, ImgauditError, LimitExceeded, UsageError, escape
from imgaudit.image import HistoryEntry, Image, ImageConfig, Layer, Platform
from imgaudit.reference import DIGEST_RE, Reference, split_name

MAX_MANIFEST = 4 << 20
MAX_CONFIG = 4 << 20
MAX_ARCHIVE_MANIFEST = 1 << 20
MAX_INDEX_DEPTH = 8
# Manifests an index may list, and all the indexes nested under one reference together (RELIABILITY.md #85).
# A multi-platform image lists one manifest per platform and, from BuildKit, one attestation per platform:
# the widest official images list a few dozen. The 4 MiB byte cap alone lets ~20 000 through, and each
# nested index listed is one more fetch, so the count is capped too.
MAX_INDEX_MANIFESTS = 1000
MAX_SIZE = 1 << 62

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                          "application/vnd.docker.container.image.v1+json"})
# Stored layer types, compressed or not; the bytes' magic decides how to read them (RELIABILITY.md #30).
# `…rootfs.diff.tar.zstd` is not in Docker's spec but BuildKit writes it (stereoscope #486).
LAYER_TYPES = frozenset({
    "",
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"

# `uname -m` → OCI architecture/variant (image-spec config.md lists GOARCH values).
_MACHINES = {
    "x86_64": ("amd64", None), "amd64": ("amd64", None), "aarch64": ("arm64", None), "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"), "i386": ("386", None),
    "i686": ("386", None), "ppc64le": ("ppc64le", None), "s390x": ("s390x", None),
    "riscv64": ("riscv64", None), "mips64": ("mips64", None), "loongarch64": ("loong64", None),
}


class Store(Protocol):
    """Where an image's named parts live: archive members or files of a layout directory."""

    where: str

    def read(self, name: str, cap: int, what: str) -> bytes:
        """The bytes of regular file `name`; CorruptImage if missing, LimitExceeded past `cap`."""
        ...

    def has(self, name: str) -> bool: ...


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    skipped: tuple[Descriptor, ...] = ()


@dataclass(frozen=True)
class ArchiveEntry:
    """One image of a `docker save` manifest.json."""

    config: str
    repo_tags: tuple[str, ...]
    layers: tuple[str, ...]

    @property
    def label(self) -> str:
        return ", ".join(self.repo_tags) or self.config


@dataclass(frozen=True)
class LayerSpec:
    """Where a layer's stored bytes are (`name` in the store) and what the manifest promises about them."""

    name: str
    digest: str | None = None
    size: int | None = None
    media_type: str = ""


@dataclass(frozen=True)
class Plan:
    """What an image is made of, before any layer is read."""

    config: ImageConfig
    config_digest: str
    manifest_digest: str | None
    layers: tuple[LayerSpec, ...]
    not_analysed: tuple[tuple[str, str], ...] = ()  # (what, why), carried to Image.not_analysed


# -- bytes and JSON -----------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_cap(size: int, cap: int, what: str) -> None:
    if size > cap:
        raise LimitExceeded(f"{what} exceeds {cap >> 20} MiB (cap); refusing to read it")


def load_json(data: bytes, where: str, kind: str = "config") -> Any:
    """Strict JSON: NaN/Infinity and lone surrogates (`"\\ud800"`, which no output can encode) refused;
    nesting bombs and bad UTF-8 become CorruptImage (RELIABILITY.md #31)."""
    try:
        document = json.loads(data, parse_constant=_no_constant)
    except RecursionError as err:
        raise CorruptImage(f"invalid {kind} JSON in {where}: nested too deeply") from err
    except ValueError as err:
        raise CorruptImage(f"invalid {kind} JSON in {where}: {escape(str(err))[:200]}") from err
    if b"\\u" in data and _lone_surrogate(document):
        raise CorruptImage(f"invalid {kind} JSON in {where}: a string holds a lone UTF-16 surrogate")
    return document


def _lone_surrogate(document: Any) -> bool:
    """Whether any key or string value is not valid Unicode text (walked without recursion)."""
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_digest(value: object, where: str) -> str:
    """A digest read from an image (never trusted as a path or key before this; CVE-2024-3727)."""
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        shown = escape(value)[:80] if isinstance(value, str) else type(value).__name__
        raise CorruptImage(f"{where}: invalid digest {shown!r} (want sha256: and 64 lowercase hex)")
    return value


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest[len("sha256:"):]


def member_name(name: object, where: str) -> str:
    """A path from manifest.json as an archive member name: `./` and `/` prefixes dropped (g-cr #2334); one
    that climbs out of the archive is refused, and it is never a host path (RELIABILITY.md #39)."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptImage(f"{where}: invalid path {escape(str(name))[:80]!r}")
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise CorruptImage(f"{where}: path {escape(name)!r} leaves the archive")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise CorruptImage(f"{where}: invalid path {escape(name)!r}")
    return "/".join(parts)


def named_digest(name: str) -> str | None:
    """The digest a member's name promises: `blobs/sha256/<hex>`, `sha256:<hex>` (kaniko) or `<hex>.json`."""
    base = posixpath.basename(name)
    if name.startswith("blobs/sha256/"):
        candidate = "sha256:" + base
    elif base.startswith("sha256:"):
        candidate = base
    elif base.endswith(".json") and posixpath.dirname(name) == "":
        candidate = "sha256:" + base[: -len(".json")]
    else:
        return None
    return candidate if DIGEST_RE.match(candidate) else None


def read_blob(store: Store, desc: Descriptor, cap: int, what: str) -> bytes:
    """A manifest or config blob, checked against its descriptor's size and digest."""
    check_cap(desc.size, cap, f"{store.where} {what} {desc.digest}")
    data = store.read(blob_name(desc.digest), cap, what)
    if len(data) != desc.size:
        raise CorruptImage(f"{store.where} {what} {desc.digest}: got {len(data)} bytes, want {desc.size}")
    got = sha256(data)
    if got != desc.digest:
        raise CorruptImage(f"{store.where} {what}: digest mismatch: expected {desc.digest}, got {got}")
    return data


# -- descriptors, indexes, manifests ------------------------------------------------------------


def parse_descriptor(obj: object, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise CorruptImage(f"{where}: a descriptor is not an object")
    media_type = obj.get("mediaType", "")
    size = obj.get("size")
    if not isinstance(media_type, str):
        raise CorruptImage(f"{where}: mediaType is not a string")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < MAX_SIZE:
        raise CorruptImage(f"{where}: descriptor size {escape(str(size))[:40]} is not a byte count")
    annotations = obj.get("annotations") or {}
    pairs = tuple(sorted((k, v) for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str))) \
        if isinstance(annotations, dict) else ()
    return Descriptor(media_type, check_digest(obj.get("digest"), where), size,
                      _platform(obj.get("platform"), where), pairs)


def _platform(obj: object, where: str) -> Platform | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("os"), str) \
            or not isinstance(obj.get("architecture"), str):
        raise CorruptImage(f"{where}: platform is not an object with os and architecture")
    variant = obj.get("variant")
    return Platform(obj["os"], obj["architecture"], variant if isinstance(variant, str) and variant else None)


def parse_index(data: bytes, where: str) -> tuple[Descriptor, ...]:
    obj = load_json(data, where, "index")
    if not isinstance(obj, dict) or not isinstance(obj.get("manifests"), list):
        raise CorruptImage(f"invalid index JSON in {where}: no manifests list")
    check_manifest_count(len(obj["manifests"]), where)
    return tuple(parse_descriptor(m, where) for m in obj["manifests"])


def check_manifest_count(count: int, where: str, what: str = "the index lists") -> None:
    if count > MAX_INDEX_MANIFESTS:
        raise LimitExceeded(f"{where}: {what} {count} manifests, over the cap of {MAX_INDEX_MANIFESTS}; "
                            "refusing to read it")


def parse_manifest(data: bytes, where: str) -> Manifest:
    """An image manifest; layers of other media types (attestations, artifacts) are set aside (g-cr #2298)."""
    obj = load_json(data, where, "manifest")
    if not isinstance(obj, dict):
        raise CorruptImage(f"invalid manifest JSON in {where}: not an object")
    if obj.get("schemaVersion") == 1:
        raise ImgauditError(f"{where}: Docker schema 1 manifests are not supported")
    if "manifests" in obj:
        raise CorruptImage(f"{where}: expected an image manifest, found an index")
    if not isinstance(obj.get("layers", []), list):
        raise CorruptImage(f"invalid manifest JSON in {where}: layers is not a list")
    config = parse_descriptor(obj.get("config"), f"{where} config")
    if config.media_type and config.media_type not in CONFIG_TYPES:
        raise ImgauditError(
            f"{where} is an artifact, not a container image (config type {escape(config.media_type)[:80]!r})"
        )
    layers = [parse_descriptor(x, f"{where} layer") for x in obj.get("layers", [])]
    return Manifest(config, tuple(x for x in layers if x.media_type in LAYER_TYPES),
                    tuple(x for x in layers if x.media_type not in LAYER_TYPES))


# -- platform selection -------------------------------------------------------------------------


def host_platform() -> Platform:
    arch, variant = _MACHINES.get(host.machine().lower(), (host.machine().lower(), None))
    return Platform("linux", arch, variant)


def platform_matches(want: Platform, have: Platform) -> bool:
    if (want.os, want.architecture) != (have.os, have.architecture):
        return False
    return want.variant is None or _variant(want) == _variant(have)


def _variant(p: Platform) -> str | None:
    """containerd's defaults: arm64 means v8 and arm means v7 when no variant is given."""
    if p.variant:
        return p.variant
    return {"arm64": "v8", "arm": "v7"}.get(p.architecture)


def check_platform(have: Platform, want: Platform | None, where: str) -> None:
    if want is not None and not platform_matches(want, have):
        raise ImageNotFound(f"{where} is a {escape(str(have))} image, not {want}")


def resolve_manifest(
    index: bytes, where: str, fetch: Callable[[Descriptor], bytes], *,
    ref_name: str | None, platform: Platform | None, host_plat: Platform | None = None,
) -> Descriptor:
    """Picks one image manifest from index.json: by ref name, then platform (nested indexes followed)."""
    top = _by_ref_name(parse_index(index, where), ref_name, where)
    candidates = list(_flatten(top, fetch, where, 0, _Walk()))
    if not candidates:
        raise ImgauditError(f"{where}: no image manifest in the index")
    return select_platform(candidates, platform, host_plat or host_platform(), where)


def _by_ref_name(descs: tuple[Descriptor, ...], ref_name: str | None, where: str) -> tuple[Descriptor, ...]:
    names = sorted({n for d in descs if (n := d.annotation(REF_NAME))})
    if ref_name is None:
        if len(names) > 1 and len({d.digest for d in descs}) > 1:
            raise UsageError(f"{where} holds several images ({', '.join(map(escape, names))}); add :NAME to pick one")
        return descs
    chosen = tuple(d for d in descs if ref_name in (d.annotation(REF_NAME), d.annotation(CONTAINERD_NAME)))
    if not chosen:
        raise UsageError(f"{where} has no image named {escape(ref_name)!r}; it has: "
                         f"{', '.join(map(escape, names)) or 'no named images'}")
    return chosen


@dataclass
class _Walk:
    """What a walk through nested indexes has met so far: manifests they list, and the indexes walked."""

    listed: int = 0
    seen: set[str] = field(default_factory=set)


def _flatten(descs: tuple[Descriptor, ...], fetch: Callable[[Descriptor], bytes], where: str,
             depth: int, walk: _Walk) -> Iterator[Descriptor]:
    for desc in descs:
        if desc.media_type in INDEX_TYPES:
            if depth >= MAX_INDEX_DEPTH:
                raise CorruptImage(f"{where}: indexes nested more than {MAX_INDEX_DEPTH} levels deep")
            if desc.digest in walk.seen:
                continue  # an index listed twice (or in a cycle) is walked once
            walk.seen.add(desc.digest)
            nested = parse_index(fetch(desc), f"{where} index {desc.digest[:19]}")
            walk.listed += len(nested)
            check_manifest_count(walk.listed, where, "the indexes nested in it list")
            yield from _flatten(nested, fetch, where, depth + 1, walk)
        elif desc.media_type in MANIFEST_TYPES and not _is_attestation(desc):
            yield desc


def _is_attestation(desc: Descriptor) -> bool:
    """BuildKit attaches provenance/SBOM manifests as `unknown/unknown` entries."""
    unknown = desc.platform is not None and (desc.platform.os, desc.platform.architecture) == ("unknown", "unknown")
    return unknown or desc.annotation("vnd.docker.reference.type") == "attestation-manifest"


def select_platform(cands: list[Descriptor], want: Platform | None, host_plat: Platform, where: str) -> Descriptor:
    """`want` if given; else the host's platform if present, else the only image, else a UsageError."""
    if want is not None:
        matches = [d for d in cands if d.platform is not None and platform_matches(want, d.platform)]
        if matches:
            return _best(matches, want)
        if len(cands) == 1 and cands[0].platform is None:
            return cands[0]  # platform unknown until the config is read: check_platform decides
        raise ImageNotFound(f"{where} has no {want} image; it has: {_platforms(cands)}")
    if len(cands) == 1:
        return cands[0]
    matches = [d for d in cands if d.platform is not None and platform_matches(host_plat, d.platform)]
    if matches:
        return _best(matches, host_plat)
    raise UsageError(f"{where} holds several platforms ({_platforms(cands)}); pick one with --platform")


def _best(matches: list[Descriptor], want: Platform) -> Descriptor:
    exact = [d for d in matches if d.platform is not None and _variant(d.platform) == _variant(want)]
    return (exact or matches)[0]


def _platforms(cands: list[Descriptor]) -> str:
    """The platforms an index names, as the image wrote them: control characters escaped (a `\r` in a name
    rewrote the error line: the json fuzz harness, thirteenth round)."""
    return escape(", ".join(dict.fromkeys(str(d.platform) if d.platform else "unknown platform" for d in cands)))


# -- image config ------------------------------------------------------------------------------


def parse_config(data: bytes, where: str) -> ImageConfig:
    """OCI image-spec config.md (Docker's is the same shape). Types are checked, never assumed."""
    obj = load_json(data, where)
    if not isinstance(obj, dict):
        raise CorruptImage(f"invalid config JSON in {where}: not an object")
    rootfs = obj.get("rootfs") or {}
    cfg = obj.get("config") or {}
    if not isinstance(rootfs, dict) or not isinstance(cfg, dict):
        raise CorruptImage(f"invalid config JSON in {where}: rootfs or config is not an object")
    diff_ids = _strings(rootfs.get("diff_ids"), "rootfs.diff_ids", where) or ()
    return ImageConfig(
        platform=Platform(_text(obj, "os", where) or "unknown", _text(obj, "architecture", where) or "unknown",
                          _text(obj, "variant", where) or None),
        entrypoint=_strings(cfg.get("Entrypoint"), "Entrypoint", where),
        cmd=_strings(cfg.get("Cmd"), "Cmd", where),
        env=_strings(cfg.get("Env"), "Env", where) or (),
        working_dir=_text(cfg, "WorkingDir", where),
        user=_text(cfg, "User", where),
        diff_ids=tuple(check_digest(d, f"{where} rootfs.diff_ids") for d in diff_ids),
        history=_history(obj.get("history"), where),
        labels=_labels(cfg.get("Labels"), where),
    )


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorruptImage(f"invalid config JSON in {where}: {key} is not a string")
    return value


def _strings(value: object, key: str, where: str) -> tuple[str, ...] | None:
    """A list of strings; Docker's strslice also accepts one bare string."""
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise CorruptImage(f"invalid config JSON in {where}: {key} is not a list of strings")
    return tuple(value)


def _history(value: object, where: str) -> tuple[HistoryEntry, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise CorruptImage(f"invalid config JSON in {where}: history is not a list of objects")
    return tuple(
        HistoryEntry(created_by=_text(h, "created_by", where), created=_text(h, "created", where) or None,
                     comment=_text(h, "comment", where) or None, empty_layer=h.get("empty_layer") is True)
        for h in value
    )


def _labels(value: object, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CorruptImage(f"invalid config JSON in {where}: Labels is not an object of strings")
    return tuple(sorted(value.items()))


# -- docker save manifest.json ------------------------------------------------------------------


def parse_archive_manifest(data: bytes, where: str) -> tuple[ArchiveEntry, ...]:
    obj = load_json(data, where, "manifest")
    if not isinstance(obj, list) or not all(isinstance(x, dict) for x in obj):
        raise CorruptImage(f"invalid manifest JSON in {where}: not a list of objects")
    entries = []
    for item in obj:
        layers = item.get("Layers") or []
        tags = item.get("RepoTags") or []
        if not isinstance(layers, list) or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise CorruptImage(f"invalid manifest JSON in {where}: Layers or RepoTags is not a list")
        entries.append(ArchiveEntry(member_name(item.get("Config"), f"{where} Config"), tuple(tags),
                                    tuple(member_name(x, f"{where} Layers") for x in layers)))
    if not entries:
        raise ImgauditError(f"{where} lists no image")
    return tuple(entries)


def select_archive_entry(entries: tuple[ArchiveEntry, ...], selector: str | None, where: str) -> ArchiveEntry:
    """The image named `selector` (normalised `name:tag`), else the only one, else a UsageError listing them."""
    if selector is None:
        if len(entries) == 1:
            return entries[0]
        listing = "; ".join(escape(e.label) for e in entries)
        raise UsageError(f"{where} holds {len(entries)} images ({listing}); add :NAME:TAG to pick one")
    for entry in entries:
        if selector in {_normal_tag(t) for t in entry.repo_tags}:
            return entry
    tags = ", ".join(escape(t) for e in entries for t in e.repo_tags) or "no tagged images"
    raise UsageError(f"{where} has no image {selector}; it has: {tags}")


def _normal_tag(tag: str) -> str | None:
    try:
        name, version, _ = split_name(tag)
    except UsageError:
        return None
    return f"{name}:{version}"


def layer_specs_from_names(names: tuple[str, ...]) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(name, named_digest(name) if name.startswith("blobs/") else None) for name in names)


def set_aside(manifest: Manifest, where: str) -> tuple[tuple[str, str], ...]:
    """The manifest's "layers" of other media types (attestations, artifacts), for the report (#29)."""
    return tuple((f"{where} layer {d.digest[:19]}", f"media type {escape(d.media_type)[:100]!r} is not a layer: "
                  "not analysed") for d in manifest.skipped)


def layer_specs_from_manifest(manifest: Manifest) -> tuple[LayerSpec, ...]:
    return tuple(LayerSpec(blob_name(x.digest), x.digest, x.size, x.media_type) for x in manifest.layers)


def check_layer_count(specs: tuple[LayerSpec, ...], config: ImageConfig, where: str) -> None:
    """Layers and diff_ids pair up one to one (g-cr #2304/#2370): never index past either list."""
    if len(specs) != len(config.diff_ids):
        raise CorruptImage(f"{where}: the manifest lists {len(specs)} layers but the config has "
                           f"{len(config.diff_ids)} diff_ids")


# -- plan → model -------------------------------------------------------------------------------


def build_layers(plan: Plan, size_of: Callable[[str], int | None],
                 opener: Callable[[str], Callable[[], BinaryIO]] | None = None) -> tuple[Layer, ...]:
    """Layers in order; `created_by` from the history entries that own a layer (no `empty_layer`)."""
    history = plan.config.layer_history()
    return tuple(
        Layer(index=i, diff_id=plan.config.diff_ids[i], digest=spec.digest,
              size=spec.size if spec.size is not None else size_of(spec.name), media_type=spec.media_type,
              created_by=history[i].created_by if i < len(history) else "",
              open=opener(spec.name) if opener else None)
        for i, spec in enumerate(plan.layers)
    )


def build_image(plan: Plan, ref: Reference, layers: tuple[Layer, ...]) -> Image:
    return Image(reference=ref.display, source=ref.transport, config=plan.config, config_digest=plan.config_digest,
                 layers=layers, manifest_digest=plan.manifest_digest, not_analysed=plan.not_analysed)
