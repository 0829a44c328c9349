"""Turns an image's layers into verified `LayerScan`s: one pass each, deduplicated by digest, in parallel."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

from imgaudit.cache import ScanCache
from imgaudit.errors import CorruptImage, escape
from imgaudit.image import Image, Layer
from imgaudit.layers import ElfReader, LayerScan, Skipped, scan_layer, verify
from imgaudit.progress import CountingReader, ProgressFn

log = logging.getLogger(__name__)


def layer_label(layer: Layer, count: int) -> str:
    digest = layer.digest or layer.diff_id
    position = f"{layer.index + 1}/{count}" if count else f"{layer.index + 1}"  # a stream does not know count
    return f"layer {position} {digest[:19] if digest else ''}".rstrip()


class ImageResolved(Exception):
    """Raised by a probing Scanner once the source has resolved the image (`image` None: a stream
    source, whose image is known only after its layers): the caller wanted the image, not its layers."""

    def __init__(self, image: Image | None) -> None:
        super().__init__("image resolved")
        self.image = image


@dataclass
class Scanner:
    """Scans and verifies layers; `elf_reader` None skips ELF facts (listing only). A `probe` scanner
    scans nothing: it raises ImageResolved as soon as the source asks for a layer.

    A cached scan is used only for a layer whose blob digest the manifest names (or, for a plain
    `docker save` layer, its diff_id), and only after the blob's bytes hash to that digest (sha256 of
    the stored bytes: no inflate, no tar), so a blob that changed under its name is still caught
    (issue 7's integrity matrix). `trust_digests` (a registry, which serves blobs by digest and has
    no local copy to decay) skips that re-hash. A local blob's hash is remembered by its file's
    identity (see `blob_identity`), so an unchanged file is not hashed again by the next run."""

    elf_reader: ElfReader | None = None
    jobs: int = 1
    cache: ScanCache | None = None
    progress: ProgressFn | None = None
    probe: bool = False
    trust_digests: bool = False

    def scan(self, layer: Layer, raw: BinaryIO, count: int) -> LayerScan:
        """Scans `raw` unless the cache has this layer's digest (then `raw` is left unread)."""
        if self.probe:
            raise ImageResolved(None)
        cached = self.cached(layer, count, raw)
        if cached is not None:
            return warn_media_type(layer, cached, count)
        label = layer_label(layer, count)
        identity = blob_identity(raw) if self.cache is not None else None  # before reading: see blob_identity
        if self.progress is not None:
            raw = CountingReader(raw, label, self.progress)  # type: ignore[assignment]
        scan = scan_layer(raw, label=label, elf_reader=self.elf_reader)
        verify(scan, label=label, digest=layer.digest, diff_id=layer.diff_id or None, size=layer.size)
        if self.cache is not None and _deterministic(scan):
            self.cache.put(scan, elf=self.elf_reader is not None)
        if self.cache is not None and identity is not None:  # the scan hashed the stored bytes: the next run need not
            self.cache.put_hashed(identity, scan.digest, scan.compressed_size)
        return warn_media_type(layer, scan, count)

    def cached(self, layer: Layer, count: int, raw: BinaryIO | None) -> LayerScan | None:
        """The cached scan of a layer whose blob digest is known before its bytes are read, once `raw`
        hashes to it (raises CorruptImage, naming the layer, when it does not); None: scan it."""
        if self.cache is None or not layer.digest:
            return None
        scan = self.cache.get(layer.digest, elf=self.elf_reader is not None)
        if scan is None:
            return None
        label = layer_label(layer, count)
        try:
            verify(scan, label=label, digest=layer.digest, diff_id=layer.diff_id or None, size=layer.size)
        except CorruptImage:
            return None  # the manifest promises other bytes: scan them and let verification speak
        if not self.trust_digests:
            if raw is None:
                return None
            digest, size = self.stored_digest(raw)
            verify(replace(scan, digest=digest, compressed_size=size), label=label, digest=layer.digest,
                   diff_id=None, size=layer.size)
        return scan

    def _cached_or_foreign(self, layer: Layer) -> bool:
        """Whether the layer will be served without a scan (as far as the file names tell)."""
        key = layer.digest or layer.diff_id
        return is_foreign(layer) or (self.cache is not None and bool(key)
                                     and self.cache.has(key, elf=self.elf_reader is not None))

    def blobs_intact(self, image: Image) -> bool:
        """Every layer blob hashes to the digest its manifest names, or without one to its diff_id (a plain
        layer of a `docker save` before Docker 25): the check a cached report needs."""
        if not all(_stored_id(layer) and layer.open and not is_foreign(layer) for layer in image.layers):
            return False
        if self.trust_digests and all(layer.digest for layer in image.layers):
            return True

        def intact(layer: Layer) -> bool:
            with _opener(layer)() as raw:
                digest, size = self.stored_digest(raw)
            return digest == _stored_id(layer) and (layer.size is None or size == layer.size)

        unique = sorted({_stored_id(layer): layer for layer in image.layers}.values(), key=lambda x: -(x.size or 0))
        # two threads even at --jobs 1: hashing releases the GIL and this is all a warm run does
        with ThreadPoolExecutor(max(2, self.jobs)) as pool:
            return all(pool.map(intact, unique))

    def cached_plain(self, layer: Layer, opener: Callable[[], BinaryIO]) -> LayerScan | None:
        """A layer whose manifest names no blob digest (a `docker save` before Docker 25: plain tars named
        by diff_id) is served from the cache when its blob hashes to its diff_id: its bytes are then that
        plain tar. A blob that hashes to anything else is scanned (and verified) as usual."""
        if self.cache is None or not layer.diff_id:
            return None
        scan = self.cache.get(layer.diff_id, elf=self.elf_reader is not None)
        if scan is None or scan.compression != "tar" or scan.diff_id != layer.diff_id:
            return None
        with opener() as raw:
            digest, size = self.stored_digest(raw)
        if digest != layer.diff_id or (layer.size is not None and size != layer.size):
            return None
        return scan

    def stored_digest(self, raw: BinaryIO) -> tuple[str, int]:
        """`blob_digest(raw)`, or what it was when this run or an earlier one hashed the same bytes of
        a file that has not changed since (the cache remembers it by `blob_identity`)."""
        cache = self.cache
        identity = blob_identity(raw) if cache is not None else None
        if cache is None or identity is None:
            return blob_digest(raw)
        known = cache.hashed(identity)
        if known is None:
            known = blob_digest(raw)
            cache.put_hashed(identity, *known)
        return known

    def scan_image(self, image: Image) -> tuple[LayerScan, ...]:
        """Scans every layer of a random-access image (layers with `open`), each distinct blob once."""
        if self.probe:
            raise ImageResolved(image)
        count = len(image.layers)
        unique: dict[str, Layer] = {}
        for layer in image.layers:
            unique.setdefault(_key(layer), layer)

        def one(layer: Layer) -> LayerScan:
            if is_foreign(layer):
                return foreign_scan(layer, count)
            if self.trust_digests:  # no need to open (download) the blob to use its cached scan
                cached = self.cached(layer, count, None)
                if cached is not None:
                    return warn_media_type(layer, cached, count)
            opener = _opener(layer)
            if not layer.digest:
                cached = self.cached_plain(layer, opener)
                if cached is not None:
                    return warn_media_type(layer, cached, count)
            with opener() as raw:
                return self.scan(layer, raw, count)

        # Layers to scan first, largest first, then the cached ones: while a scan's parser holds a big file, scans
        # loaded before it add to the peak (the bench image with its top layer changed: 325 -> 274 MiB, for
        # 0.25 s more: the parser's import no longer overlaps the loading of the cached scans).
        cached = {_key(x): self._cached_or_foreign(x) for x in unique.values()}
        order = sorted(unique.values(), key=lambda layer: (cached[_key(layer)], -(layer.size or 0)))
        if self.jobs > 1 and len(order) > 1:
            with ThreadPoolExecutor(self.jobs) as pool:
                done = dict(zip([_key(x) for x in order], pool.map(one, order), strict=True))
        else:
            done = {_key(x): one(x) for x in order}
        return tuple(done[_key(layer)] for layer in image.layers)


FOREIGN_MARKERS = (".foreign.", ".nondistributable.")
# What a layer media type promises: OCI `+gzip`/`+zstd`, Docker `.tar.gzip`/`.tar.zstd`; a bare `.tar` is plain.
_PROMISED = (("gzip", "gzip"), ("zstd", "zstd"), ("tar", "tar"))


def promised_compression(media_type: str) -> str | None:
    """The compression a layer media type names, None when it names none (an empty type, a legacy archive)."""
    suffix = media_type.rsplit("+", 1)[1] if "+" in media_type else media_type.rsplit(".", 1)[-1]
    return next((kind for name, kind in _PROMISED if suffix == name), None)


def warn_media_type(layer: Layer, scan: LayerScan, count: int) -> LayerScan:
    """The magic bytes decide how a layer is read; a media type that says otherwise is a warning, since other
    tools trust it and fail (trivy #1527 "gzip: invalid header"; RELIABILITY.md #30). A 0-byte blob is an
    empty layer whatever its type (#34)."""
    promised = promised_compression(layer.media_type)
    if promised is not None and scan.compressed_size and scan.compression != promised:
        log.warning("%s: media type %s says %s but the bytes are %s: read by their magic bytes",
                    layer_label(layer, count), escape(layer.media_type)[:100], promised, scan.compression)
    return scan


def is_foreign(layer: Layer) -> bool:
    """Foreign (Windows base) and non-distributable layers live at their own URLs; nothing fetches them by
    default, and no credentials go there (CVE-2020-15157, RELIABILITY.md #20)."""
    return any(marker in layer.media_type for marker in FOREIGN_MARKERS)


def foreign_scan(layer: Layer, count: int) -> LayerScan:
    """An empty stand-in that keeps the layer's place and descriptor size and makes the report incomplete."""
    label = layer_label(layer, count)
    return LayerScan(digest=layer.digest or "", diff_id=layer.diff_id, compressed_size=layer.size or 0, size=0,
                     compression="foreign", entries=(),
                     skipped=(Skipped(label, "foreign layer: not fetched or analysed (size from its descriptor)"),))


def blob_digest(raw: BinaryIO) -> tuple[str, int]:
    """sha256 and size of a blob's stored bytes (hashlib releases the GIL: layers hash in parallel)."""
    h = hashlib.sha256()
    size = 0
    while chunk := raw.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _stored_id(layer: Layer) -> str:
    """The digest a layer's stored bytes must have: the manifest's, else (a plain `docker save` layer) its diff_id."""
    return layer.digest or layer.diff_id


# A file changed less than this long ago may change again within the same timestamp tick, unseen by
# its stat: its hash is not remembered (git's "racy clean" problem).
RACY_NS = 2_000_000_000


def blob_identity(raw: BinaryIO) -> str | None:
    """Names the stored bytes `raw` will yield by the file that holds them: device, inode, size,
    mtime and ctime (no user can set a ctime back: any write, truncate or rename-over changes it),
    and the member's span inside an archive. None when no such file vouches for them (a pipe, a
    download) or it changed in the last RACY_NS."""
    try:
        st = os.fstat(raw.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    if not stat.S_ISREG(st.st_mode) or time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) < RACY_NS:
        return None
    span = getattr(getattr(raw, "raw", raw), "span", None)  # (offset, size) of an archive member
    ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, span)
    return hashlib.sha256(repr(ident).encode()).hexdigest()


def _deterministic(scan: LayerScan) -> bool:
    """False when an ELF file's facts are a parser failure of this run (timeout, crash, memory), which
    the next run may not repeat: such a scan is not cached."""
    return not any(e.elf is not None and (e.elf.error or "").startswith("parser ") for e in scan.entries)


def _key(layer: Layer) -> str:
    return _stored_id(layer) or f"#{layer.index}"


def _opener(layer: Layer) -> Callable[[], BinaryIO]:
    if layer.open is None:
        raise CorruptImage(f"layer {layer.index + 1}: no way to read its blob")
    return layer.open


def check_layers(image: Image, scans: Sequence[LayerScan]) -> None:
    if len(scans) != len(image.layers):
        raise CorruptImage(f"{len(image.layers)} layers in the manifest but {len(scans)} were read")
