"""Size audit: bytes per layer, where the final filesystem's bytes are, waste, packages, bloat findings.

Conventions: `compressed_bytes` is what a pull downloads (a layer blob used twice counts once),
`uncompressed_bytes` is the layer stack (counted per use, RELIABILITY.md #33), `final_bytes` is the
regular-file bytes of the final filesystem with each hard-linked inode once (what `docker export`
holds), so `final_bytes + reclaimable_bytes` is the regular-file bytes of all layers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgaudit.checks import bloat
from imgaudit.checks.waste import DiveScore, Hidden, Reclaimable, dive_score, reclaimable
from imgaudit.layers import EntryType, LayerScan
from imgaudit.packages import PackageDB, read_packages
from imgaudit.report import (
    DirSize,
    DuplicateGroup,
    FileSize,
    Inefficiency,
    LayerInfo,
    PackageSize,
    ReclaimableItem,
    Report,
    SizeInfo,
)
from imgaudit.rootfs import Change, Node, RootFS

if TYPE_CHECKING:
    from imgaudit.audit import Loaded
    from imgaudit.image import Layer

TOP_FILES = 20
TOP_DIRS = 20
TOP_DUPLICATES = 20
PATHS_PER_DUPLICATE = 10
REMOVALS = ("removed", "opaque", "replaced")


@dataclass(frozen=True)
class SizeFacts:
    """Everything the size audit computed, for the findings and renderers that build on it."""

    dive: DiveScore
    reclaim: Reclaimable
    packages: PackageDB | None
    owned: tuple[Node, ...]  # final regular files that own their bytes (hard links left out)
    duplicates: tuple[tuple[str, int, tuple[str, ...]], ...]  # (digest, size, paths), biggest first


def analyse(loaded: Loaded, report: Report) -> None:
    facts = size_facts(loaded.rootfs, loaded.scans)
    report.size = size_info(loaded, facts)
    report.findings.extend(bloat.findings(loaded.rootfs, loaded.scans, facts))


def size_facts(fs: RootFS, scans: Sequence[LayerScan]) -> SizeFacts:
    owned = owned_files(fs)
    return SizeFacts(dive_score(scans), reclaimable(fs, scans), read_packages(fs), owned, duplicate_groups(owned))


def size_info(loaded: Loaded, facts: SizeFacts) -> SizeInfo:
    layers = layer_infos(loaded.image.layers, loaded.scans, loaded.rootfs, facts.reclaim.hidden)
    files = [n for n in loaded.rootfs.nodes.values() if n.type is EntryType.FILE]
    dup_wasted = [size * (len(paths) - 1) for _, size, paths in facts.duplicates]
    return SizeInfo(
        compressed_bytes=pull_bytes(loaded.scans),
        uncompressed_bytes=sum(scan.size for scan in loaded.scans),
        final_bytes=layer_file_bytes(loaded.scans) - facts.reclaim.total,
        file_count=len(files),
        efficiency=facts.dive.efficiency,
        wasted_bytes=facts.dive.wasted_bytes,
        reclaimable_bytes=facts.reclaim.total,
        layers=layers,
        top_files=top_files(facts.owned),
        packages=[PackageSize(p.name, p.version, p.bytes) for p in facts.packages.packages] if facts.packages else [],
        user_wasted_percent=facts.dive.user_wasted_percent,
        inefficient_files=[Inefficiency(i.path, i.count, i.bytes) for i in facts.dive.inefficiencies],
        reclaimable=[ReclaimableItem(c.path, c.bytes, c.files, c.layer, c.hidden_by, c.reason)
                     for c in facts.reclaim.contributors],
        top_dirs=top_dirs(facts.owned),
        duplicates=[DuplicateGroup(d, size, size * (len(p) - 1), list(p[:PATHS_PER_DUPLICATE]))
                    for d, size, p in facts.duplicates[:TOP_DUPLICATES]],
        duplicate_bytes=sum(dup_wasted),
        package_db=facts.packages.kind if facts.packages else None,
    )


def pull_bytes(scans: Iterable[LayerScan]) -> int:
    """Compressed bytes a pull downloads: each distinct blob once."""
    return sum({scan.digest: scan.compressed_size for scan in scans}.values())


def layer_file_bytes(scans: Iterable[LayerScan]) -> int:
    return sum(e.size for scan in scans for e in scan.entries if e.type is EntryType.FILE)


def owned_files(fs: RootFS) -> tuple[Node, ...]:
    """Final regular files that hold their own bytes; a hard link shares its target's."""
    return tuple(n for n in fs.nodes.values() if n.type is EntryType.FILE and n.hardlink_of is None)


def top_files(owned: Iterable[Node], top: int = TOP_FILES) -> list[FileSize]:
    ranked = sorted(owned, key=lambda n: (-n.entry.size, n.path))[:top]
    return [FileSize(n.path, n.entry.size, max(n.layer, 0)) for n in ranked]


def dir_totals(owned: Iterable[Node]) -> dict[str, list[int]]:
    """Directory → [bytes, files] of every regular file below it."""
    totals: dict[str, list[int]] = {}
    for node in owned:
        parent = posixpath.dirname(node.path)
        while parent != "/":
            acc = totals.setdefault(parent, [0, 0])
            acc[0] += node.entry.size
            acc[1] += 1
            parent = posixpath.dirname(parent)
    return totals


def top_dirs(owned: Iterable[Node], top: int = TOP_DIRS) -> list[DirSize]:
    ranked = sorted(dir_totals(owned).items(), key=lambda kv: (-kv[1][0], kv[0]))[:top]
    return [DirSize(path, size, files) for path, (size, files) in ranked]


def duplicate_groups(owned: Iterable[Node]) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Identical content at different paths, by the sha256 the scan computed while streaming (the
    hash costs one pass over the bytes already being read; no second read)."""
    by_digest: dict[str, list[Node]] = {}
    for node in owned:
        if node.entry.digest and node.entry.size > 0:
            by_digest.setdefault(node.entry.digest, []).append(node)
    groups = [("sha256:" + digest, nodes[0].entry.size, tuple(sorted(n.path for n in nodes)))
              for digest, nodes in by_digest.items() if len(nodes) > 1]
    return tuple(sorted(groups, key=lambda g: (-g[1] * (len(g[2]) - 1), g[2][0])))


def _first_change(fs: RootFS, path: str, layer: int) -> Change | None:
    return next((c for lay, c in fs.history.get(path, ()) if lay == layer), None)


def _written_bytes(scan: LayerScan, fs: RootFS, layer: int) -> tuple[int, int]:
    """(added, modified) regular-file bytes of one layer; the last entry of a duplicated path counts."""
    last = {e.path: e for e in scan.entries if e.type is EntryType.FILE}
    added = modified = 0
    for path, entry in last.items():
        if _first_change(fs, path, layer) in (None, Change.ADDED):
            added += entry.size
        else:
            modified += entry.size
    return added, modified


def layer_infos(layers: Sequence[Layer], scans: Sequence[LayerScan], fs: RootFS,
                hidden: Sequence[Hidden] = ()) -> list[LayerInfo]:
    counts = [dict.fromkeys(Change, 0) for _ in scans]
    for events in fs.history.values():
        for layer, change in events:
            if 0 <= layer < len(counts):
                counts[layer][change] += 1
    removed = [0] * len(scans)
    for item in hidden:
        if item.reason in REMOVALS:
            removed[item.hidden_by] += item.bytes
    out = []
    for i, (desc, scan) in enumerate(zip(layers, scans, strict=True)):
        added, modified = _written_bytes(scan, fs, i)
        out.append(LayerInfo(
            index=i, digest=desc.digest, diff_id=scan.diff_id,
            compressed_bytes=scan.compressed_size, uncompressed_bytes=scan.size,
            files_added=counts[i][Change.ADDED], files_modified=counts[i][Change.MODIFIED],
            files_removed=counts[i][Change.REMOVED], created_by=desc.created_by,
            bytes_added=added, bytes_modified=modified, bytes_removed=removed[i],
        ))
    return out
