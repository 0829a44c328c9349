"""Waste, two ways: dive's efficiency score, replayed exactly, and our own reclaimable bytes.

dive (wagoodman/dive `dive/filetree/efficiency.go`, `file_tree.go`, `file_node.go`, `image/analysis.go`)
builds one file tree per layer from the tar headers, visits each tree's *leaves* and groups them by path:
efficiency = Σ smallest copy ÷ Σ all copies, wasted = Σ all copies of every path seen in two or more
layers. Its blind spots are reproduced on purpose so the numbers match: a whiteout of a *file* counts
0 bytes, a whiteout of a directory counts the directory's subtree as one new path (it never lowers the
score), opaque markers are ignored, directories without their own tar entry are not directories.

`reclaimable_bytes` is ours: bytes of regular files in lower layers that no path of the final
filesystem shows (overwritten, removed, under a removed or opaque directory, an earlier duplicate entry
of the same layer), i.e. Σ all layers' regular files − what `docker export` of the image holds.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from imgaudit.layers import Entry, EntryType, LayerScan
from imgaudit.rootfs import Change, Node, RootFS

WHITEOUT_PREFIX = ".wh."
OPAQUE_PREFIX = ".wh..wh.."  # dive's doubleWhiteoutPrefix: such names never enter its trees
TOP_INEFFICIENT = 20
TOP_RECLAIMABLE = 20


# -- dive's efficiency --------------------------------------------------------------------------


@dataclass(frozen=True)
class Inefficiency:
    """A path dive saw in two or more layers: all its copies count as wasted."""

    path: str
    count: int
    bytes: int


@dataclass(frozen=True)
class DiveScore:
    efficiency: float
    wasted_bytes: int
    size_bytes: int  # dive's image size: Σ tar header sizes of every layer
    user_size_bytes: int  # the same without the first layer
    inefficiencies: tuple[Inefficiency, ...]

    @property
    def user_wasted_percent(self) -> float | None:
        """dive's `WastedUserPercent`, a fraction despite its name; None where dive divides by zero."""
        return self.wasted_bytes / self.user_size_bytes if self.user_size_bytes else None


class _DNode:
    """A node of a dive FileTree: a name, a tar header's size and type flag, children by name."""

    __slots__ = ("children", "is_dir", "size")

    def __init__(self, size: int = 0, is_dir: bool = False) -> None:
        self.size = size
        self.is_dir = is_dir
        self.children: dict[str, _DNode] = {}

    def copy(self) -> _DNode:
        twin = _DNode(self.size, self.is_dir)
        stack = [(self, twin)]
        while stack:
            src, dst = stack.pop()
            for name, child in src.children.items():
                dst.children[name] = _DNode(child.size, child.is_dir)
                stack.append((child, dst.children[name]))
        return twin


def _add_path(root: _DNode, parts: Sequence[str], size: int, is_dir: bool) -> None:
    """dive's `FileTree.AddPath`: missing parents get an empty payload (so they are *not* directories),
    a name starting `.wh..wh..` stops the walk, the payload replaces the last node's, children stay."""
    node = root
    for name in parts:
        child = node.children.get(name)
        if child is None:
            if name.startswith(OPAQUE_PREFIX):
                return
            child = node.children[name] = _DNode()
        node = child
    if parts:
        node.size, node.is_dir = size, is_dir


def _get(root: _DNode, parts: Sequence[str]) -> _DNode | None:
    node = root
    for name in parts:
        child = node.children.get(name)
        if child is None:
            return None
        node = child
    return node


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def layer_tree(scan: LayerScan) -> _DNode:
    """One layer as dive's tree: every tar entry in order; a whiteout stays a `.wh.NAME` leaf."""
    root = _DNode()
    for entry in scan.entries:
        parts = _parts(entry.path)
        if not parts:
            continue  # "/" or "./": dive's AddPath never attaches a payload to its root
        if entry.type is EntryType.WHITEOUT:
            _add_path(root, [*parts[:-1], WHITEOUT_PREFIX + parts[-1]], entry.size, False)
        elif entry.type is EntryType.OPAQUE:
            _add_path(root, [*parts, OPAQUE_PREFIX + "opq"], 0, False)
        else:
            _add_path(root, parts, entry.size, entry.type is EntryType.DIR)
    return root


def _go_order(name: str) -> bytes:
    """Go's sort.Strings compares bytes; names may carry surrogate-escaped raw bytes."""
    return name.encode("utf-8", "surrogateescape")


def _walk(root: _DNode, leaves_only: bool) -> Iterator[tuple[list[str], _DNode]]:
    """Depth-first, children sorted as Go sorts them. With `leaves_only`, leaves in the order dive's
    `VisitDepthChildFirst` visits them; otherwise every node, children before their parent."""
    stack: list[tuple[list[str], _DNode, bool]] = [([], root, False)]
    while stack:
        parts, node, expanded = stack.pop()
        if not node.children or expanded:
            if parts and (not leaves_only or not node.children):
                yield parts, node
            continue
        stack.append((parts, node, True))
        for name in sorted(node.children, key=_go_order, reverse=True):
            stack.append(([*parts, name], node.children[name], False))


def _stack(lower: _DNode, upper: _DNode) -> None:
    """dive's `FileTree.Stack`: a whiteout removes its path (a miss is logged and ignored), anything
    else is added with its payload; opaque markers were never in the tree, so they do nothing."""
    for parts, node in _walk(upper, leaves_only=False):
        if parts[-1].startswith(WHITEOUT_PREFIX):
            target = [*parts[:-1], parts[-1][len(WHITEOUT_PREFIX):]]
            parent = _get(lower, target[:-1])
            if parent is not None:
                parent.children.pop(target[-1], None)
        else:
            _add_path(lower, parts, node.size, node.is_dir)


def _subtree_bytes(node: _DNode) -> int:
    total, stack = 0, [node]
    while stack:
        cur = stack.pop()
        total += cur.size
        stack.extend(cur.children.values())
    return total


@dataclass
class _PathStat:
    cumulative: int = 0
    minimum: int = -1  # dive's minDiscoveredSize starts at -1 and stays so if the path errors out
    count: int = 0


def _whiteout_bytes(stacked: _DNode, parts: list[str]) -> int | None:
    """Bytes dive charges a whiteout: the lower directory's subtree, 0 for anything that is not a
    directory, None when the path is not in the lower layers (dive's GetNode error)."""
    target = _get(stacked, parts)
    if target is None:
        return None
    return _subtree_bytes(target) if target.is_dir else 0


def _visit_layer(tree: _DNode, stacked: _DNode, stats: dict[str, _PathStat], order: list[str]) -> None:
    for names, node in _walk(tree, leaves_only=True):
        whiteout = names[-1].startswith(WHITEOUT_PREFIX)
        # dive's FileNode.Path(): a whiteout prefix is fictitious on the leaf, so `.wh.x` counts as `x`
        parts = [*names[:-1], names[-1][len(WHITEOUT_PREFIX):]] if whiteout else names
        path = "/" + "/".join(parts)
        stat = stats.setdefault(path, _PathStat())
        size = _whiteout_bytes(stacked, parts) if whiteout else node.size
        if size is None:
            return  # dive's visitor returns the error: the rest of this layer is never visited
        stat.cumulative += size
        stat.minimum = size if stat.minimum < 0 else min(stat.minimum, size)
        stat.count += 1
        if stat.count == 2:
            order.append(path)


def dive_score(scans: Sequence[LayerScan]) -> DiveScore:
    """Efficiency, wasted bytes and the user share exactly as dive's `image.Analyze` computes them."""
    trees = [layer_tree(scan) for scan in scans]
    stats: dict[str, _PathStat] = {}
    order: list[str] = []
    # dive stacks layers 0..k-1 onto a copy of layer 0 for each whiteout of layer k; stacking once
    # per layer gives the same trees (for layer 0: the copy of layer 0 itself, unstacked).
    stacked = trees[0].copy() if trees else _DNode()
    for tree in trees:
        _visit_layer(tree, stacked, stats, order)
        _stack(stacked, tree)
    wasted = sum(stats[p].cumulative for p in order)
    total = sum(s.cumulative for s in stats.values())
    smallest = sum(s.minimum for s in stats.values())
    sizes = [sum(e.size for e in scan.entries) for scan in scans]
    worst = sorted(order, key=lambda p: (-stats[p].cumulative, p))[:TOP_INEFFICIENT]
    return DiveScore(
        efficiency=max(0.0, smallest / total) if total else 1.0,
        wasted_bytes=wasted,
        size_bytes=sum(sizes),
        user_size_bytes=sum(sizes[1:]),
        inefficiencies=tuple(Inefficiency(p, stats[p].count, stats[p].cumulative) for p in worst),
    )


# -- reclaimable bytes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hidden:
    """Bytes of one lower-layer regular file that the final filesystem does not show."""

    path: str
    bytes: int
    layer: int  # the layer that added the file
    hidden_by: int  # the layer that overwrote or removed it
    reason: str  # overwritten | removed | opaque | replaced | duplicate-entry
    root: str  # the whiteout, opaque directory or overwritten path responsible


@dataclass(frozen=True)
class Contributor:
    """Hidden bytes grouped by what hid them (a removed directory counts as one contributor)."""

    path: str
    bytes: int
    files: int
    layer: int
    hidden_by: int
    reason: str


@dataclass(frozen=True)
class Reclaimable:
    total: int
    hidden: tuple[Hidden, ...] = field(repr=False)
    contributors: tuple[Contributor, ...]


def _file_layers(scans: Sequence[LayerScan]) -> dict[str, list[int]]:
    """Path → layers (ascending) with a regular-file entry there."""
    out: dict[str, list[int]] = {}
    for index, scan in enumerate(scans):
        for entry in scan.entries:
            if entry.type is EntryType.FILE and (not out.get(entry.path) or out[entry.path][-1] != index):
                out.setdefault(entry.path, []).append(index)
    return out


def _link_origin(fs: RootFS, node: Node, file_layers: dict[str, list[int]]) -> tuple[int, str] | None:
    """The layer entry whose bytes a hard link shows: the file its target was when the link was made."""
    target = node.hardlink_of
    seen: set[str] = set()
    while target is not None and target not in seen:
        seen.add(target)
        lower = fs.nodes.get(target)
        if lower is None or lower.hardlink_of is None or lower.layer > node.layer:
            break
        target = lower.hardlink_of
    if target is None:
        return None
    layers = [i for i in file_layers.get(target, ()) if i <= node.layer]
    return (layers[-1], target) if layers else None


def visible_origins(fs: RootFS, scans: Sequence[LayerScan]) -> set[tuple[int, str]]:
    """(layer, path) of every layer entry whose bytes the final filesystem shows, each inode once."""
    file_layers = _file_layers(scans)
    out: set[tuple[int, str]] = set()
    for node in fs.nodes.values():
        if node.type is not EntryType.FILE:
            continue
        if node.hardlink_of is None:
            out.add((node.layer, node.path))
            continue
        origin = _link_origin(fs, node, file_layers)
        if origin is not None:
            out.add(origin)
    return out


def _shown_elsewhere(fs: RootFS, layer: int, entry: Entry) -> bool:
    """An entry written through a symlinked parent lands at another path: look it up as the kernel would."""
    node = fs.get(entry.path, follow=False)
    return node is not None and node.layer == layer and node.entry.digest == entry.digest \
        and node.entry.size == entry.size


def _hider(fs: RootFS, path: str, layer: int) -> tuple[int, Change] | None:
    for lay, change in fs.history.get(path, ()):
        if lay > layer:
            return lay, change
    return None


def _ancestors(path: str) -> Iterator[str]:
    """`path` itself, then each parent directory up to (not including) the root."""
    while path not in ("/", ""):
        yield path
        path = posixpath.dirname(path)


@dataclass(frozen=True)
class _Removals:
    """One layer's whiteout targets and opaque directories."""

    whiteouts: frozenset[str]
    opaques: frozenset[str]

    @classmethod
    def of(cls, scan: LayerScan) -> _Removals:
        return cls(frozenset(e.path for e in scan.entries if e.type is EntryType.WHITEOUT),
                   frozenset(e.path for e in scan.entries if e.type is EntryType.OPAQUE))


def _why(removals: _Removals, path: str, change: Change) -> tuple[str, str]:
    """(reason, root) of a hide: the whiteout or opaque marker of the hiding layer that covers `path`."""
    if change is Change.MODIFIED:
        return "overwritten", path
    for candidate in _ancestors(path):
        if candidate in removals.whiteouts:
            return "removed", candidate
        if candidate != path and candidate in removals.opaques:
            return "opaque", candidate
    return "replaced", path


def hidden_files(fs: RootFS, scans: Sequence[LayerScan]) -> list[Hidden]:
    """Every regular-file entry of every layer whose bytes no final path shows."""
    visible = visible_origins(fs, scans)
    removals = [_Removals.of(scan) for scan in scans]
    out: list[Hidden] = []
    for index, scan in enumerate(scans):
        later: set[str] = set()  # paths a later entry of the same layer writes again
        for entry in reversed(scan.entries):
            if entry.type in (EntryType.WHITEOUT, EntryType.OPAQUE):
                continue  # they only affect lower layers (OCI image-spec, "Whiteouts")
            duplicate = entry.path in later
            later.add(entry.path)
            if entry.type is not EntryType.FILE:
                continue
            if duplicate:  # the last entry of a layer wins (RELIABILITY.md #55)
                out.append(Hidden(entry.path, entry.size, index, index, "duplicate-entry", entry.path))
                continue
            if (index, entry.path) in visible or _shown_elsewhere(fs, index, entry):
                continue
            hider = _hider(fs, entry.path, index)
            hider_layer, change = hider if hider is not None else (index, Change.REMOVED)
            reason, root = _why(removals[hider_layer], entry.path, change)
            out.append(Hidden(entry.path, entry.size, index, hider_layer, reason, root))
    return out


def group_hidden(hidden: Sequence[Hidden], top: int = TOP_RECLAIMABLE) -> tuple[Contributor, ...]:
    """The biggest contributors: hidden files grouped by what hid them (a removed directory is one
    contributor); `layer` is the layer that added most of its bytes."""
    groups: dict[tuple[str, int, str], dict[int, list[int]]] = {}
    for item in hidden:
        by_layer = groups.setdefault((item.root, item.hidden_by, item.reason), {})
        acc = by_layer.setdefault(item.layer, [0, 0])
        acc[0] += item.bytes
        acc[1] += 1
    out = []
    for (root, hider, reason), by_layer in groups.items():
        size = sum(acc[0] for acc in by_layer.values())
        files = sum(acc[1] for acc in by_layer.values())
        layer = min(by_layer, key=lambda k: (-by_layer[k][0], k))
        out.append(Contributor(root, size, files, layer, hider, reason))
    out.sort(key=lambda c: (-c.bytes, c.path, c.hidden_by))
    return tuple(out[:top])


def reclaimable(fs: RootFS, scans: Sequence[LayerScan]) -> Reclaimable:
    hidden = hidden_files(fs, scans)
    return Reclaimable(sum(h.bytes for h in hidden), tuple(hidden), group_hidden(hidden))
