"""Turns an image's layers into verified `LayerScan`s: one pass each, deduplicated by digest, in parallel."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

from imgaudit.cache import ScanCache
from imgaudit.errors import CorruptImage
from imgaudit.image import Image, Layer
from imgaudit.layers import ElfReader, LayerScan, scan_layer, verify
from imgaudit.progress import CountingReader, ProgressFn


def layer_label(layer: Layer, count: int) -> str:
    digest = layer.digest or layer.diff_id
    position = f"{layer.index + 1}/{count}" if count else f"{layer.index + 1}"  # a stream does not know count
    return f"layer {position} {digest[:19] if digest else ''}".rstrip()


@dataclass
class Scanner:
    """Scans and verifies layers; `elf_reader` None skips ELF facts (listing only)."""

    elf_reader: ElfReader | None = None
    jobs: int = 1
    cache: ScanCache | None = None
    progress: ProgressFn | None = None

    def scan(self, layer: Layer, raw: BinaryIO, count: int) -> LayerScan:
        """Scans `raw` unless the cache has this layer's digest (then `raw` is left unread)."""
        cached = self.cached(layer, count)
        if cached is not None:
            return cached
        label = layer_label(layer, count)
        if self.progress is not None:
            raw = CountingReader(raw, label, self.progress)  # type: ignore[assignment]
        scan = scan_layer(raw, label=label, elf_reader=self.elf_reader)
        verify(scan, label=label, digest=layer.digest, diff_id=layer.diff_id or None, size=layer.size)
        if self.cache is not None:
            self.cache.put(scan, elf=self.elf_reader is not None)
        return scan

    def cached(self, layer: Layer, count: int) -> LayerScan | None:
        """A cached scan for a layer whose digest is known before its bytes are read. The cache is
        content-addressed: a hit trusts that the blob matches its digest and does not re-read it."""
        if self.cache is None:
            return None
        scan = self.cache.get(layer.digest or layer.diff_id or None, elf=self.elf_reader is not None)
        if scan is None:
            return None
        try:
            verify(scan, label=layer_label(layer, count), digest=layer.digest, diff_id=layer.diff_id or None,
                   size=layer.size)
        except CorruptImage:
            return None  # the manifest promises other bytes: scan them and let verification speak
        return scan

    def scan_image(self, image: Image) -> tuple[LayerScan, ...]:
        """Scans every layer of a random-access image (layers with `open`), each distinct blob once."""
        count = len(image.layers)
        unique: dict[str, Layer] = {}
        for layer in image.layers:
            unique.setdefault(_key(layer), layer)

        def one(layer: Layer) -> LayerScan:
            cached = self.cached(layer, count)
            if cached is not None:
                return cached
            opener = _opener(layer)
            with opener() as raw:
                return self.scan(layer, raw, count)

        order = sorted(unique.values(), key=lambda layer: -(layer.size or 0))
        if self.jobs > 1 and len(order) > 1:
            with ThreadPoolExecutor(self.jobs) as pool:
                done = dict(zip([_key(x) for x in order], pool.map(one, order), strict=True))
        else:
            done = {_key(x): one(x) for x in order}
        return tuple(done[_key(layer)] for layer in image.layers)


def _key(layer: Layer) -> str:
    return layer.digest or layer.diff_id or f"#{layer.index}"


def _opener(layer: Layer) -> Callable[[], BinaryIO]:
    if layer.open is None:
        raise CorruptImage(f"layer {layer.index + 1}: no way to read its blob")
    return layer.open


def check_layers(image: Image, scans: Sequence[LayerScan]) -> None:
    if len(scans) != len(image.layers):
        raise CorruptImage(f"{len(image.layers)} layers in the manifest but {len(scans)} were read")
