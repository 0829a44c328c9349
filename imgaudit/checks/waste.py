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
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    """A node of a dive FileTree: a name, a tar header's size and type flag, children by name (None
    until the first child: most nodes are leaves)."""

    __slots__ = ("children", "is_dir", "size")

    def __init__(self, size: int = 0, is_dir: bool = False) -> None:
        self.size = size
        self.is_dir = is_dir
        self.children: dict[str, _DNode] | None = None

    def attach(self, name: str, child: _DNode) -> _DNode:
        if self.children is None:
            self.children = {}
        self.children[name] = child
        return child

    def detach(self, name: str) -> None:
        if self.children is not None:
            del self.children[name]


class _Tree:
    """A dive FileTree, its nodes also indexed by path ("/a/b"): adding a path costs a lookup, not a walk
    from the root. Nodes are created parents first, so the index lists every parent before its children."""

    __slots__ = ("index", "root", "whiteouts")

    def __init__(self) -> None:
        self.root = _DNode()
        self.index: dict[str, _DNode] = {}
        self.whiteouts = False  # a name starting `.wh.`: stacking this tree must follow dive's order

    def add(self, path: str, size: int, is_dir: bool) -> None:
        """dive's `FileTree.AddPath`: missing parents get an empty payload (so they are *not* directories),
        a name starting `.wh..wh..` stops the walk, the payload replaces the last node's, children stay."""
        node = self.index.get(path)
        if node is not None:
            node.size, node.is_dir = size, is_dir
            return
        head, _, name = path.rpartition("/")
        parent = self.index.get(head) if head else self.root
        if parent is not None and not name.startswith(WHITEOUT_PREFIX):  # the common case: one new node
            self.index[path] = parent.attach(name, _DNode(size, is_dir))
            return
        node = self._create(path)
        if node is not None:
            node.size, node.is_dir = size, is_dir

    def _create(self, path: str) -> _DNode | None:
        chain = [path]  # the missing paths, deepest first
        head = path.rpartition("/")[0]
        while head and head not in self.index:
            chain.append(head)
            head = head.rpartition("/")[0]
        node = self.index[head] if head else self.root
        for missing in reversed(chain):
            name = missing.rpartition("/")[2]
            if name.startswith(OPAQUE_PREFIX):
                return None
            if name.startswith(WHITEOUT_PREFIX):
                self.whiteouts = True
            node = self.index[missing] = node.attach(name, _DNode())
        return node

    def get(self, path: str) -> _DNode | None:
        return self.index.get(path)

    def remove(self, path: str) -> None:
        """Drops `path` and its subtree (nothing when it is not there)."""
        node = self.index.pop(path, None)
        if node is None:
            return
        head, _, name = path.rpartition("/")
        (self.index[head] if head else self.root).detach(name)
        stack = [(path, node)]
        while stack:
            top, cur = stack.pop()
            for name, child in (cur.children or {}).items():
                below = f"{top}/{name}"
                del self.index[below]
                stack.append((below, child))

    def copy(self, keep: Callable[[str], bool]) -> _Tree:
        """The nodes at the paths `keep` takes (with their parents: `_Near` takes a path's parents too)."""
        twin = _Tree()
        twin.whiteouts = self.whiteouts
        for path, node in self.index.items():
            if not keep(path):
                continue
            head, _, name = path.rpartition("/")
            parent = twin.index[head] if head else twin.root
            twin.index[path] = parent.attach(name, _DNode(node.size, node.is_dir))
        return twin


def _key(path: str) -> str:
    """The tree path of an entry: its non-empty parts under "/" (the scan's paths are already so)."""
    if path[:1] == "/" and "//" not in path and path[-1:] != "/":
        return path
    return "/" + "/".join(p for p in path.split("/") if p)


def layer_tree(scan: LayerScan, keep: Callable[[str], bool] | None = None) -> _Tree:
    """One layer as dive's tree: every tar entry in order (or those `keep` takes, which must take a path's
    parents too); a whiteout stays a `.wh.NAME` leaf."""
    tree = _Tree()
    for entry in scan.entries:
        path = _key(entry.path)
        if path == "/":
            continue  # "/" or "./": dive's AddPath never attaches a payload to its root
        if keep is not None and not keep(path):
            continue
        if entry.type is EntryType.WHITEOUT:
            head, _, name = path.rpartition("/")
            tree.add(f"{head}/{WHITEOUT_PREFIX}{name}", entry.size, False)
        elif entry.type is EntryType.OPAQUE:
            tree.add(f"{path}/{OPAQUE_PREFIX}opq", 0, False)
        else:
            tree.add(path, entry.size, entry.type is EntryType.DIR)
    return tree


def _go_order(name: str) -> bytes:
    """Go's sort.Strings compares bytes; names may carry surrogate-escaped raw bytes."""
    return name.encode("utf-8", "surrogateescape")


def _walk(tree: _Tree, leaves_only: bool) -> Iterator[tuple[str, _DNode]]:
    """Depth-first, children sorted as Go sorts them. With `leaves_only`, leaves in the order dive's
    `VisitDepthChildFirst` visits them; otherwise every node, children before their parent."""
    stack: list[tuple[str, _DNode, bool]] = [("", tree.root, False)]
    while stack:
        path, node, expanded = stack.pop()
        if not node.children or expanded:
            if path and (not leaves_only or not node.children):
                yield path, node
            continue
        stack.append((path, node, True))
        for name in sorted(node.children, key=_go_order, reverse=True):
            stack.append((f"{path}/{name}", node.children[name], False))


def _stack(lower: _Tree, upper: _Tree, keep: Callable[[str], bool] | None = None) -> None:
    """dive's `FileTree.Stack`, of the paths `keep` takes (None: `upper` holds only such paths already): a
    whiteout removes its path (a miss is logged and ignored), anything else is added with its payload; opaque
    markers were never in the tree, so they do nothing."""
    if not upper.whiteouts:
        # Without a removal the order of the additions does not matter: each path ends with its payload.
        for path, node in upper.index.items():
            if keep is None or keep(path):
                lower.add(path, node.size, node.is_dir)
        return
    for path, node in _walk(upper, leaves_only=False):
        target = _whited_out(path)
        if target is not None:
            lower.remove(target)
        elif keep is None or keep(path):
            lower.add(path, node.size, node.is_dir)


def _lookup_targets(scans: Iterable[LayerScan]) -> set[str]:
    """Every path a `.wh.` name in these layers' dive trees can name: whiteout targets, and for any part of a
    path so named, the path it would name (a superset of what dive looks up and removes)."""
    targets: set[str] = set()
    for scan in scans:
        for entry in scan.entries:
            path = _key(entry.path)
            if entry.type is EntryType.WHITEOUT:
                targets.add(path)
            if "/" + WHITEOUT_PREFIX in path:
                head = ""
                for part in path.split("/")[1:]:
                    if part.startswith(WHITEOUT_PREFIX):
                        targets.add(f"{head}/{part[len(WHITEOUT_PREFIX):]}")
                    head = f"{head}/{part}"
    return targets


class _Near:
    """Whether a path can change what a lookup of `targets` in a stacked tree finds: a target, a path below one
    (its bytes) or above one (a parent, so the tree can hold it). A stacked tree of these paths alone answers
    every lookup and removal of a target as the whole tree would: no other path's node is read."""

    def __init__(self, targets: set[str]) -> None:
        self.targets = targets
        self.above: set[str] = set()
        for target in targets:
            head = target.rpartition("/")[0]
            while head and head not in self.above:
                self.above.add(head)
                head = head.rpartition("/")[0]

    def __call__(self, path: str) -> bool:
        if path in self.above:
            return True
        targets = self.targets
        while path:
            if path in targets:
                return True
            path = path.rpartition("/")[0]
        return False


def _subtree_bytes(node: _DNode) -> int:
    total, stack = 0, [node]
    while stack:
        cur = stack.pop()
        total += cur.size
        stack.extend((cur.children or {}).values())
    return total


class _PathStat:
    """dive's per-path sums once a path is seen twice (or errors out); a path seen once is just its size."""

    __slots__ = ("count", "cumulative", "minimum")

    def __init__(self, cumulative: int = 0, minimum: int = -1, count: int = 0) -> None:
        self.cumulative = cumulative
        self.minimum = minimum  # dive's minDiscoveredSize starts at -1 and stays so if the path errors out
        self.count = count


Stats = dict[str, "int | _PathStat"]  # a plain int: seen once, that many bytes (its sum and its minimum)


def _whited_out(path: str) -> str | None:
    """The path a `.wh.NAME` node names (dive's FileNode.Path(): the prefix is fictitious), else None."""
    head, _, name = path.rpartition("/")
    return f"{head}/{name[len(WHITEOUT_PREFIX):]}" if name.startswith(WHITEOUT_PREFIX) else None


def _leaf(stacked: _Tree, path: str, node: _DNode) -> tuple[str, int | None]:
    """(dive's path, bytes) of a leaf: a whiteout counts as the path it removes, for the lower directory's
    subtree bytes, 0 for anything that is not a directory, None when the path is not in the lower layers
    (dive's GetNode error)."""
    target_path = _whited_out(path)
    if target_path is None:
        return path, node.size
    target = stacked.get(target_path)
    if target is None:
        return target_path, None
    return target_path, _subtree_bytes(target) if target.is_dir else 0


def _leaves(tree: _Tree, stacked: _Tree) -> Iterable[tuple[str, _DNode]]:
    """The leaves dive visits. Its visitor stops the layer at the first whiteout of a path the lower layers
    lack, so only then does the visiting order matter."""
    leaves = ((path, node) for path, node in tree.index.items() if not node.children)
    if not tree.whiteouts:
        return leaves
    listed = list(leaves)
    if any(t is not None and stacked.get(t) is None for t in (_whited_out(path) for path, _ in listed)):
        return _walk(tree, leaves_only=True)
    return listed


def _visit_layer(tree: _Tree, stacked: _Tree, stats: Stats, order: list[str]) -> None:
    for leaf_path, node in _leaves(tree, stacked):
        path, size = _leaf(stacked, leaf_path, node) if tree.whiteouts else (leaf_path, node.size)
        if size is None:
            if path not in stats:
                stats[path] = _PathStat()
            return  # dive's visitor returns the error: the rest of this layer is never visited
        _count(stats, order, path, size)


def _count(stats: Stats, order: list[str], path: str, size: int) -> None:
    """One layer's leaf at `path` of `size` bytes (each path once per layer)."""
    stat = stats.get(path)
    if stat is None:
        stats[path] = size
    elif isinstance(stat, int):
        stats[path] = _PathStat(stat + size, min(stat, size), 2)
        order.append(path)
    else:
        stat.cumulative += size
        stat.minimum = size if stat.minimum < 0 else min(stat.minimum, size)
        stat.count += 1
        if stat.count == 2:
            order.append(path)


def _marked(scan: LayerScan) -> bool:
    """Whether dive's tree of this layer has a `.wh.` name (`_Tree.whiteouts`): a whiteout, or a path
    through a directory so named (the scan drops `.wh..wh.` paths, so no name is cut short)."""
    return any(e.type is EntryType.WHITEOUT or "/.wh." in e.path for e in scan.entries)


def _plain_leaves(scan: LayerScan) -> Iterator[tuple[str, int]]:
    """The leaves of an unmarked layer's dive tree, (path, bytes), without building the tree (a node
    object per entry was most of the size audit's peak memory, issue 7): a node is a leaf unless
    another path of the layer lies below it; the last entry of a path gives its payload, and an opaque
    marker (never in the tree itself) leaves its directory as an empty node, as `_Tree.add` does."""
    inner: set[str] = set()
    again: dict[str, int] = {}  # the payloads of paths named twice (LayerScan.repeated), the last one's
    repeated = scan.repeated
    for entry in scan.entries:
        path = _key(entry.path)
        head = path.rpartition("/")[0]
        while head and head not in inner:
            inner.add(head)
            head = head.rpartition("/")[0]
        if entry.path in repeated and path != "/":
            if entry.type is EntryType.OPAQUE:
                again.setdefault(path, 0)
            else:
                again[path] = entry.size
    for entry in scan.entries:
        path = _key(entry.path)
        if path != "/" and path not in inner and entry.path not in repeated:
            yield path, 0 if entry.type is EntryType.OPAQUE else entry.size
    for path, size in again.items():
        if path not in inner:
            yield path, size


def _repeated(stats: Stats, path: str) -> _PathStat:
    stat = stats[path]
    assert isinstance(stat, _PathStat)  # `order` lists paths seen twice
    return stat


def dive_score(scans: Sequence[LayerScan]) -> DiveScore:
    """Efficiency, wasted bytes and the user share exactly as dive's `image.Analyze` computes them."""
    stats: Stats = {}
    order: list[str] = []
    # dive stacks layers 0..k-1 onto a copy of layer 0 for each whiteout of layer k; stacking once
    # per layer gives the same trees (for layer 0: the copy of layer 0 itself, unstacked). Without
    # whiteouts stacking layer 0 onto its copy changes nothing. Only a marked layer (one with `.wh.` names)
    # looks into the stack, so it is built up to the last marked layer alone, and only of the paths near
    # what those names look up (`_Near`): on the bench image a few thousand paths under /usr/share/doc and
    # /usr/share/man, not the 44,000 of the layers below. An unmarked layer is visited without a whole tree.
    marked = [_marked(scan) for scan in scans]
    last_marked = max((i for i, m in enumerate(marked) if m), default=-1)
    near = _Near(_lookup_targets(scan for scan, m in zip(scans, marked, strict=True) if m))
    stacked = _Tree()
    fresh = 0
    for index, scan in enumerate(scans):
        stack = index < last_marked  # a later layer's whiteouts look into this one
        if not marked[index]:
            top = index == len(scans) - 1
            for path, size in _plain_leaves(scan):
                if top and path not in stats:
                    fresh += size  # seen once: its bytes count in both sums, it needs no entry of its own
                else:
                    _count(stats, order, path, size)
            if stack:  # its tree of the paths that matter alone: parents it implies reset their payloads too
                _stack(stacked, layer_tree(scan, near))  # built of the paths `near` takes
            continue
        tree = layer_tree(scan)  # one layer's tree at a time
        if index == 0:
            stacked = tree.copy(near)
        _visit_layer(tree, stacked, stats, order)
        if stack:
            _stack(stacked, tree, near)
    wasted = sum(_repeated(stats, p).cumulative for p in order)
    total = fresh + sum(s if isinstance(s, int) else s.cumulative for s in stats.values())
    smallest = fresh + sum(s if isinstance(s, int) else s.minimum for s in stats.values())
    sizes = [sum(e.size for e in scan.entries) for scan in scans]
    worst = sorted(order, key=lambda p: (-_repeated(stats, p).cumulative, p))[:TOP_INEFFICIENT]
    return DiveScore(
        efficiency=max(0.0, smallest / total) if total else 1.0,
        wasted_bytes=wasted,
        size_bytes=sum(sizes),
        user_size_bytes=sum(sizes[1:]),
        inefficiencies=tuple(Inefficiency(p, _repeated(stats, p).count, _repeated(stats, p).cumulative)
                             for p in worst),
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


def _file_layers(scans: Sequence[LayerScan], paths: set[str]) -> dict[str, list[int]]:
    """Path (of `paths`) → layers (ascending) with a regular-file entry there."""
    out: dict[str, list[int]] = {}
    for index, scan in enumerate(scans):
        for entry in scan.entries:
            if entry.type is EntryType.FILE and entry.path in paths:
                layers = out.setdefault(entry.path, [])
                if not layers or layers[-1] != index:
                    layers.append(index)
    return out


def _link_target(fs: RootFS, node: Node) -> str | None:
    """The path whose file a hard link shows: its target's target while that was a link when this one was made."""
    target = node.hardlink_of
    seen: set[str] = set()
    while target is not None and target not in seen:
        seen.add(target)
        lower = fs.nodes.get(target)
        if lower is None or lower.hardlink_of is None or lower.layer > node.layer:
            break
        target = lower.hardlink_of
    return target


def _link_origin(node: Node, target: str, file_layers: dict[str, list[int]]) -> tuple[int, str] | None:
    """The layer entry whose bytes a hard link shows: the file its target was when the link was made."""
    layers = [i for i in file_layers.get(target, ()) if i <= node.layer]
    return (layers[-1], target) if layers else None


def link_origins(fs: RootFS, scans: Sequence[LayerScan]) -> defaultdict[int, set[str]]:
    """Layer → paths of its entries whose bytes a final hard link shows (the file its target was when the
    link was made). Every other entry a final path shows is that path's own node (`_shows`)."""
    out: defaultdict[int, set[str]] = defaultdict(set)
    links = [node for node in fs.nodes.values() if node.hardlink_of is not None and node.entry.type is EntryType.FILE]
    targets = [(node, _link_target(fs, node)) for node in links]
    file_layers = _file_layers(scans, {t for _, t in targets if t is not None}) if links else {}
    for node, target in targets:
        origin = _link_origin(node, target, file_layers) if target is not None else None
        if origin is not None:
            out[origin[0]].add(origin[1])
    return out


def _shows(fs: RootFS, layer: int, path: str) -> bool:
    """Whether the final file at `path` is the one `layer` wrote there (not a hard link to another): asked
    of the node, where a set of every such path per layer was a peak cost of the size audit (issue 7)."""
    node = fs.nodes.get(path)
    return node is not None and node.layer == layer and node.hardlink_of is None and node.entry.type is EntryType.FILE


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
        parent = posixpath.dirname(path)
        if parent == path:  # "//": dirname stands still (the scan normalises paths, but never loop)
            return
        path = parent


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
    linked = link_origins(fs, scans)
    removals = [_Removals.of(scan) for scan in scans]
    out: list[Hidden] = []
    for index, scan in enumerate(scans):
        later: set[str] = set()  # paths named twice that a later entry of the same layer writes again
        repeated = scan.repeated
        shown = linked.get(index, set())
        for entry in reversed(scan.entries):
            if entry.type in (EntryType.WHITEOUT, EntryType.OPAQUE):
                continue  # they only affect lower layers (OCI image-spec, "Whiteouts")
            duplicate = False
            if entry.path in repeated:
                duplicate = entry.path in later
                later.add(entry.path)
            if entry.type is not EntryType.FILE:
                continue
            if duplicate:  # the last entry of a layer wins (RELIABILITY.md #55)
                out.append(Hidden(entry.path, entry.size, index, index, "duplicate-entry", entry.path))
                continue
            if _shows(fs, index, entry.path) or entry.path in shown or _shown_elsewhere(fs, index, entry):
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
