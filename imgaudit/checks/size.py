"""Size audit: bytes per layer (the full audit — waste, reclaimable bytes, packages — builds on this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgaudit.layers import EntryType
from imgaudit.report import FileSize, LayerInfo, Report, SizeInfo
from imgaudit.rootfs import Change

if TYPE_CHECKING:
    from imgaudit.audit import Loaded

TOP_FILES = 20


def analyse(loaded: Loaded, report: Report) -> None:
    report.size = size_info(loaded)


def size_info(loaded: Loaded) -> SizeInfo:
    layers = layer_infos(loaded)
    files = [n for n in loaded.rootfs.walk() if n.type is EntryType.FILE]
    top = sorted(files, key=lambda n: (-n.entry.size, n.path))[:TOP_FILES]
    return SizeInfo(
        compressed_bytes=sum(x.compressed_bytes for x in layers),
        uncompressed_bytes=sum(x.uncompressed_bytes for x in layers),
        final_bytes=sum(n.entry.size for n in files),
        file_count=len(files),
        layers=layers,
        top_files=[FileSize(n.path, n.entry.size, n.layer) for n in top],
    )


def layer_infos(loaded: Loaded) -> list[LayerInfo]:
    counts = [dict.fromkeys(Change, 0) for _ in loaded.scans]
    for events in loaded.rootfs.history.values():
        for layer, change in events:
            counts[layer][change] += 1
    return [
        LayerInfo(
            index=i,
            digest=layer.digest,
            diff_id=scan.diff_id,
            compressed_bytes=scan.compressed_size,
            uncompressed_bytes=scan.size,
            files_added=counts[i][Change.ADDED],
            files_modified=counts[i][Change.MODIFIED],
            files_removed=counts[i][Change.REMOVED],
            created_by=layer.created_by,
        )
        for i, (layer, scan) in enumerate(zip(loaded.image.layers, loaded.scans, strict=True))
    ]
