"""Size audit: bytes per layer, where the final filesystem's bytes are, waste, packages, bloat findings.

Conventions: `compressed_bytes` is what a pull downloads (a layer blob used twice counts once),
`uncompressed_bytes` is the layer stack (counted per use, RELIABILITY.md #33), `final_bytes` is the
regular-file bytes of the final filesystem with each hard-linked inode once (what `docker export`
holds), so `final_bytes + reclaimable_bytes` is the regular-file bytes of all layers.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
from imgaudit.rootfs import Change, Node, RootFS, split

if TYPE_CHECKING:
    from imgaudit.audit import Loaded
    from imgaudit.image import Layer

TOP_FILES = 20
TOP_DIRS = 20
TOP_DUPLICATES = 20
PATHS_PER_DUPLICATE = 10
REMOVALS = ("removed", "opaque", "replaced")


@dataclass(slots=True)
class DirTotal:
    """The regular files below one directory, each inode once."""

    bytes: int = 0
    files: int = 0
    by_layer: dict[int, int] = field(default_factory=dict)

    @property
    def layer(self) -> int | None:
        """The layer that put the most bytes here: where the fix belongs."""
        ranked = sorted(self.by_layer.items(), key=lambda kv: (-kv[1], kv[0]))
        return ranked[0][0] if ranked else None

    def add(self, other: DirTotal) -> None:
        self.bytes += other.bytes
        self.files += other.files
        for layer, size in other.by_layer.items():
            self.by_layer[layer] = self.by_layer.get(layer, 0) + size


@dataclass(frozen=True)
class SizeFacts:
    """Everything the size audit computed, for the findings and renderers that build on it."""

    dive: DiveScore
    reclaim: Reclaimable
    packages: PackageDB | None
    owned: tuple[Node, ...]  # final regular files that own their bytes (hard links left out)
    duplicates: tuple[tuple[str, int, tuple[str, ...]], ...]  # (digest, size, paths), biggest first
    dirs: dict[str, DirTotal]  # every directory above an owned file (the root left out)
    file_count: int  # final regular files, hard links included


def analyse(loaded: Loaded, report: Report) -> None:
    facts = size_facts(loaded.rootfs, loaded.scans)
    report.size = size_info(loaded, facts)
    report.findings.extend(bloat.findings(loaded.rootfs, loaded.scans, facts))


def size_facts(fs: RootFS, scans: Sequence[LayerScan]) -> SizeFacts:
    owned = tuple(n for n in fs.nodes.values() if n.entry.type is EntryType.FILE and n.hardlink_of is None)
    links = sum(1 for n in fs.nodes.values() if n.hardlink_of is not None and n.entry.type is EntryType.FILE)
    return SizeFacts(dive_score(scans), reclaimable(fs, scans), read_packages(fs), owned, duplicate_groups(owned),
                     dir_index(owned), len(owned) + links)


def size_info(loaded: Loaded, facts: SizeFacts) -> SizeInfo:
    layers = layer_infos(loaded.image.layers, loaded.scans, loaded.rootfs, facts.reclaim.hidden)
    dup_wasted = [size * (len(paths) - 1) for _, size, paths in facts.duplicates]
    return SizeInfo(
        compressed_bytes=pull_bytes(loaded.scans),
        uncompressed_bytes=sum(scan.size for scan in loaded.scans),
        final_bytes=layer_file_bytes(loaded.scans) - facts.reclaim.total,
        file_count=facts.file_count,
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
        top_dirs=top_dirs(facts.dirs),
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


def top_files(owned: Iterable[Node], top: int = TOP_FILES) -> list[FileSize]:
    ranked = heapq.nsmallest(top, owned, key=lambda n: (-n.entry.size, n.path))
    return [FileSize(n.path, n.entry.size, max(n.layer, 0)) for n in ranked]


def dir_index(owned: Iterable[Node]) -> dict[str, DirTotal]:
    """Every directory (but the root) → the regular files below it: summed per parent first, then each
    directory's sum is carried up its ancestors once (not every file up every ancestor)."""
    direct: dict[str, DirTotal] = {}
    for node in owned:
        parent = split(node.path)[0]
        if parent == "/":
            continue
        acc = direct.get(parent)
        if acc is None:
            acc = direct[parent] = DirTotal()
        size = node.entry.size
        acc.bytes += size
        acc.files += 1
        acc.by_layer[node.layer] = acc.by_layer.get(node.layer, 0) + size
    index: dict[str, DirTotal] = {}
    for parent, acc in direct.items():
        path = parent
        while path != "/":
            total = index.get(path)
            if total is None:
                total = index[path] = DirTotal()
            total.add(acc)
            path = split(path)[0]
    return index


def top_dirs(dirs: dict[str, DirTotal], top: int = TOP_DIRS) -> list[DirSize]:
    ranked = heapq.nsmallest(top, dirs.items(), key=lambda kv: (-kv[1].bytes, kv[0]))
    return [DirSize(path, d.bytes, d.files) for path, d in ranked]


def duplicate_groups(owned: Iterable[Node]) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Identical content at different paths, by the sha256 the scan computed while streaming (the
    hash costs one pass over the bytes already being read; no second read)."""
    first: dict[str, Node] = {}
    again: dict[str, list[Node]] = {}  # a list only for content seen twice: most files are unique
    for node in owned:
        digest = node.entry.digest
        if digest and node.entry.size > 0:
            seen = first.setdefault(digest, node)
            if seen is not node:
                again.setdefault(digest, [seen]).append(node)
    groups = [("sha256:" + digest, nodes[0].entry.size, tuple(sorted(n.path for n in nodes)))
              for digest, nodes in again.items()]
    return tuple(sorted(groups, key=lambda g: (-g[1] * (len(g[2]) - 1), g[2][0])))


def _first_change(events: Iterable[tuple[int, Change]], layer: int) -> Change | None:
    for lay, change in events:
        if lay == layer:
            return change
    return None


def _written_bytes(scan: LayerScan, fs: RootFS, layer: int) -> tuple[int, int]:
    """(added, modified) regular-file bytes of one layer; the last entry of a duplicated path counts."""
    again: dict[str, int] = {}  # paths named twice (LayerScan.repeated): the last file entry's bytes
    added = modified = 0
    history = fs.rewritten  # a path added once has no other first change than ADDED or none
    repeated = scan.repeated
    for entry in scan.entries:
        if entry.type is not EntryType.FILE:
            continue
        if entry.path in repeated:
            again[entry.path] = entry.size
        elif _first_change(history.get(entry.path, ()), layer) in (None, Change.ADDED):
            added += entry.size
        else:
            modified += entry.size
    for path, size in again.items():
        if _first_change(history.get(path, ()), layer) in (None, Change.ADDED):
            added += size
        else:
            modified += size
    return added, modified


def layer_infos(layers: Sequence[Layer], scans: Sequence[LayerScan], fs: RootFS,
                hidden: Sequence[Hidden] = ()) -> list[LayerInfo]:
    counts = [dict.fromkeys(Change, 0) for _ in scans]
    for events in fs.rewritten.values():
        for layer, change in events:
            if 0 <= layer < len(counts):
                counts[layer][change] += 1
    for layer, added in fs.added_once().items():
        if 0 <= layer < len(counts):
            counts[layer][Change.ADDED] += added
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
