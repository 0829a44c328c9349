"""`imgaudit diff OLD NEW`: what changed between two builds of an image.

Layers are matched by diff_id (the uncompressed content), so a rebuilt layer with the same content counts as
kept; files by path in the final filesystem, packages by name, findings by (rule, path). Pure functions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from imgaudit.layers import EntryType
from imgaudit.report import SCHEMA_VERSION, Finding, LayerInfo, PackageSize, Report
from imgaudit.rootfs import RootFS

TOP_FILES = 30


@dataclass(frozen=True)
class FileFact:
    bytes: int
    digest: str | None


@dataclass(frozen=True)
class Totals:
    final_bytes: int
    compressed_bytes: int
    uncompressed_bytes: int
    layers: int
    file_count: int
    packages: int
    reclaimable_bytes: int
    wasted_bytes: int
    efficiency: float


@dataclass(frozen=True)
class LayerChange:
    change: str  # kept | added | removed
    diff_id: str
    old_index: int | None
    new_index: int | None
    bytes: int  # uncompressed
    compressed_bytes: int
    created_by: str


@dataclass(frozen=True)
class FileChange:
    path: str
    change: str  # added | removed | grown | shrunk | changed
    old_bytes: int | None
    new_bytes: int | None

    @property
    def delta(self) -> int:
        return (self.new_bytes or 0) - (self.old_bytes or 0)


@dataclass(frozen=True)
class PackageChange:
    name: str
    change: str  # added | removed | upgraded | grown | shrunk
    old_version: str | None
    new_version: str | None
    old_bytes: int | None
    new_bytes: int | None


@dataclass(frozen=True)
class FindingChange:
    change: str  # new | fixed
    rule: str
    severity: str
    path: str | None
    message: str
    bytes: int | None


@dataclass(frozen=True)
class ChangeCount:
    count: int = 0
    bytes: int = 0  # Σ of the size deltas


@dataclass(frozen=True)
class ImageDiff:
    old: str
    new: str
    old_totals: Totals
    new_totals: Totals
    layers: tuple[LayerChange, ...]
    files: tuple[FileChange, ...]  # the biggest changes by |delta|
    file_counts: dict[str, ChangeCount] = field(default_factory=dict)
    packages: tuple[PackageChange, ...] = ()
    findings: tuple[FindingChange, ...] = ()


def final_files(fs: RootFS) -> dict[str, FileFact]:
    """Regular files of the final filesystem by name; a hard link holds no bytes of its own (its target does)."""
    return {n.path: FileFact(0 if n.hardlink_of else n.entry.size, n.entry.digest)
            for n in fs.nodes.values() if n.type is EntryType.FILE}


def totals(report: Report) -> Totals:
    s = report.size
    return Totals(s.final_bytes, s.compressed_bytes, s.uncompressed_bytes, len(s.layers), s.file_count,
                  len(s.packages), s.reclaimable_bytes, s.wasted_bytes, s.efficiency)


def layer_changes(old: Sequence[LayerInfo], new: Sequence[LayerInfo]) -> list[LayerChange]:
    """New layers in order (kept when the old image has an unmatched layer with the same diff_id),
    then old layers no new layer matched."""
    unmatched: dict[str, list[LayerInfo]] = {}
    for layer in old:
        unmatched.setdefault(layer.diff_id, []).append(layer)
    out = []
    for layer in new:
        twins = unmatched.get(layer.diff_id)
        before = twins.pop(0) if twins else None
        out.append(LayerChange("kept" if before else "added", layer.diff_id, before.index if before else None,
                               layer.index, layer.uncompressed_bytes, layer.compressed_bytes, layer.created_by))
    for layers in unmatched.values():
        out.extend(LayerChange("removed", x.diff_id, x.index, None, x.uncompressed_bytes, x.compressed_bytes,
                               x.created_by) for x in layers)
    return out


def _file_change(path: str, old: FileFact | None, new: FileFact | None) -> FileChange | None:
    if old is None and new is not None:
        return FileChange(path, "added", None, new.bytes)
    if new is None and old is not None:
        return FileChange(path, "removed", old.bytes, None)
    assert old is not None and new is not None
    if new.bytes != old.bytes:
        return FileChange(path, "grown" if new.bytes > old.bytes else "shrunk", old.bytes, new.bytes)
    if old.digest != new.digest:
        return FileChange(path, "changed", old.bytes, new.bytes)
    return None


def file_changes(old: Mapping[str, FileFact], new: Mapping[str, FileFact]) -> list[FileChange]:
    changes = (_file_change(p, old.get(p), new.get(p)) for p in sorted(set(old) | set(new)))
    return [c for c in changes if c is not None]


def count_changes(changes: Sequence[FileChange]) -> dict[str, ChangeCount]:
    counts: Counter[str] = Counter(c.change for c in changes)
    sums: Counter[str] = Counter()
    for c in changes:
        sums[c.change] += c.delta
    return {kind: ChangeCount(counts[kind], sums[kind]) for kind in sorted(counts)}


def package_changes(old: Sequence[PackageSize], new: Sequence[PackageSize]) -> list[PackageChange]:
    before = {p.name: p for p in old}
    after = {p.name: p for p in new}
    out = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name), after.get(name)
        if a is None and b is not None:
            out.append(PackageChange(name, "added", None, b.version, None, b.bytes))
        elif b is None and a is not None:
            out.append(PackageChange(name, "removed", a.version, None, a.bytes, None))
        elif a is not None and b is not None and (a.version != b.version or a.bytes != b.bytes):
            kind = "upgraded" if a.version != b.version else "grown" if b.bytes > a.bytes else "shrunk"
            out.append(PackageChange(name, kind, a.version, b.version, a.bytes, b.bytes))
    return out


def _key(f: Finding) -> tuple[str, str | None]:
    return f.rule, f.path


def finding_changes(old: Sequence[Finding], new: Sequence[Finding]) -> list[FindingChange]:
    before = {_key(f) for f in old}
    after = {_key(f) for f in new}
    out = [FindingChange("new", f.rule, f.severity.value, f.path, f.message, f.bytes) for f in new
           if _key(f) not in before]
    out += [FindingChange("fixed", f.rule, f.severity.value, f.path, f.message, f.bytes) for f in old
            if _key(f) not in after]
    return out


def diff_images(old: Report, new: Report, old_files: Mapping[str, FileFact], new_files: Mapping[str, FileFact],
                top: int = TOP_FILES) -> ImageDiff:
    files = file_changes(old_files, new_files)
    biggest = sorted(files, key=lambda c: (-abs(c.delta), c.path))[:top]
    return ImageDiff(
        old=old.image.reference, new=new.image.reference, old_totals=totals(old), new_totals=totals(new),
        layers=tuple(layer_changes(old.size.layers, new.size.layers)), files=tuple(biggest),
        file_counts=count_changes(files), packages=tuple(package_changes(old.size.packages, new.size.packages)),
        findings=tuple(finding_changes(old.findings, new.findings)),
    )


def to_json(diff: ImageDiff) -> dict[str, Any]:
    body = asdict(diff)
    return {"schema_version": SCHEMA_VERSION, **body}
