"""The final filesystem: layer scans merged in order, whiteouts applied, links resolved inside the root.

Merge rules follow the OCI image-spec "Changeset over existing files" and moby's UnpackLayer: a whiteout or
opaque marker affects lower layers only; a directory merges into a directory, anything else replaces
what was there; missing parents are created 0755; parents that are symlinks are followed inside the root.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from imgaudit.layers import Entry, EntryType, LayerScan, Skipped
from imgaudit.quickinit import quick_init

MAXSYMLINKS = 40  # Linux's limit on symlink hops in one lookup


class Change(str, Enum):
    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"


@quick_init  # one per path of the merged filesystem
@dataclass(frozen=True, slots=True)
class Node:
    entry: Entry
    layer: int
    hardlink_of: str | None = None

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def type(self) -> EntryType:
        return self.entry.type

    @property
    def is_dir(self) -> bool:
        return self.entry.type is EntryType.DIR


@dataclass(frozen=True, slots=True)
class LostCapabilities:
    """A later layer wrote `path` again without the file capabilities a lower layer gave it."""

    path: str
    capabilities: str
    set_in: int
    lost_in: int


class SymlinkLoop(Exception):
    """More than MAXSYMLINKS hops (ELOOP: 'too many levels of symbolic links')."""


_LOOP = "a symlink loop (too many levels of symbolic links)"
_ROOT = Node(Entry("/", EntryType.DIR, mode=0o755), -1)
_DIR, _FILE, _SYMLINK, _HARDLINK = EntryType.DIR, EntryType.FILE, EntryType.SYMLINK, EntryType.HARDLINK
Event = tuple[int, Change]


def split(path: str) -> tuple[str, str]:
    """posixpath.split, without its generality on the normalised paths the scan gives (no doubled or
    trailing slash): this runs for every entry and every parent."""
    head, sep, tail = path.rpartition("/")
    if head and head[-1] != "/":
        return head, tail
    if sep and not head:
        return "/", tail
    return posixpath.split(path)


def join(parent: str, name: str) -> str:
    """posixpath.join of a real directory path (never empty) and one name."""
    return parent + name if parent[-1] == "/" else f"{parent}/{name}"


def _canonical(path: str) -> bool:
    """Absolute, with no empty, `.` or `..` part: such a path that is a key of `RootFS.nodes` is its own
    real path, since every key's parents are directories (a replaced directory takes its subtree along)."""
    tail = path + "/"
    return path[:1] == "/" and ("//" not in tail or path == "/") and "/./" not in tail and "/../" not in tail


class RootFS:
    """Merged view of an image's layers with per-path history."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": _ROOT}
        # Children by their full path: the very string objects the node keys are, so a child costs a list slot
        # and no name string of its own. A removal leaves its path in the list (a set cost ~66 bytes a child
        # and 216 an empty directory, issue 7 #82): readers keep the paths still in `nodes`, once each.
        self._children: dict[str, list[str]] = {"/": []}
        # Events of the paths whose history is not one addition, the node's own layer: most paths are added
        # once and never touched again, and a dict slot each was ~31 bytes a path (#82). `history` is the
        # whole view; `rewritten` these alone.
        self.rewritten: dict[str, tuple[Event, ...]] = {}
        self._events: dict[Event, tuple[Event]] = {}
        self.history: Mapping[str, tuple[Event, ...]] = History(self)
        self.skipped: list[Skipped] = []
        self.layer_count = 0
        self.contents: dict[str, bytes] = {}
        self.lost_capabilities: list[LostCapabilities] = []

    @classmethod
    def build(cls, scans: list[LayerScan] | tuple[LayerScan, ...]) -> RootFS:
        fs = cls()
        for scan in scans:
            fs.apply(scan)
        return fs

    # -- merging -------------------------------------------------------------------------------

    def apply(self, scan: LayerScan) -> None:
        layer = self.layer_count
        self.layer_count += 1
        self.contents.update(scan.files)
        removals = [e for e in scan.entries if e.type is EntryType.WHITEOUT]
        opaques = [e for e in scan.entries if e.type is EntryType.OPAQUE]
        for entry in removals:
            path = self._through_parent_links(entry.path)
            if path is not None and path in self.nodes and path != "/":
                self._remove(path, layer)
        for entry in opaques:
            path = self._through_parent_links(entry.path)
            node = self.nodes.get(path) if path is not None else None
            if path is not None and node is not None and node.is_dir:  # a marker in a symlink hides nothing
                for child in self._children.get(path, ()):
                    self._remove(child, layer)
                self._children[path] = []
        for entry in scan.entries:
            if entry.type is EntryType.OPAQUE:
                try:
                    self._ensure_dir(entry.path, layer)
                except SymlinkLoop:
                    self._skip(entry, layer, _LOOP)
            elif entry.type is not EntryType.WHITEOUT:
                self._add(entry, layer)

    def _skip(self, entry: Entry, layer: int, why: str) -> None:
        """An entry a runtime's unpack would fail on (ELOOP, ENOTDIR, a bad link): left out, said in the report."""
        self.skipped.append(Skipped(entry.path, f"layer {layer}: {why}"))

    def _through_parent_links(self, path: str) -> str | None:
        """Where a whiteout or opaque marker acts: its parent directories resolved through symlinks, as
        moby's UnpackLayer (in a chroot) and containerd's fs.RootPath do; `docker export` is the oracle."""
        if path == "/":
            return path
        head, name = split(path)
        try:
            parent = self.resolve(head)
        except SymlinkLoop:
            return None
        return join(parent, name) if parent else None

    def _add(self, entry: Entry, layer: int) -> None:
        if entry.path == "/":
            self.nodes["/"] = Node(replace(entry, path="/"), layer)
            return
        head, name = split(entry.path)
        try:
            parent = self._ensure_dir(head, layer)
        except SymlinkLoop:  # a runtime's unpack fails here (ELOOP); the rest of the image is still audited
            self._skip(entry, layer, f"parent is {_LOOP}")
            return
        if parent is None:
            self._skip(entry, layer, "parent is not a directory")
            return
        path = join(parent, name)
        if path == entry.path:
            path = entry.path  # the scan's string: keys, children and history all share it
        else:
            entry = replace(entry, path=path)
        hardlink_of = None
        if entry.type is _HARDLINK:
            bound = self._bind_hardlink(entry, layer)
            if bound is None:
                return
            entry, hardlink_of = bound
        existing = self.nodes.get(path)
        if existing is not None:
            if existing.entry.xattrs and entry.type is _FILE:
                self._note_lost_capabilities(existing, entry, layer)
            self._record(path, layer, Change.MODIFIED)
            if existing.entry.type is _DIR and entry.type is _DIR:
                self.nodes[path] = Node(entry, layer)
                return
            self._drop_subtree(path, layer, keep_top=True)
            self.nodes[path] = Node(entry, layer, hardlink_of)  # still listed under its parent
            if entry.type is _DIR:
                self._children[path] = []
            return
        self._insert(parent, Node(entry, layer, hardlink_of), layer)

    def _note_lost_capabilities(self, lower: Node, entry: Entry, layer: int) -> None:
        """A file rewritten without the capabilities it had (a later chown, chmod or COPY writes a new copy,
        and the kernel clears security.capability on chown)."""
        caps = lower.entry.capabilities
        if caps is not None and entry.capabilities is None:
            self.lost_capabilities.append(LostCapabilities(entry.path, caps, lower.layer, layer))

    def _bind_hardlink(self, entry: Entry, layer: int) -> tuple[Entry, str] | None:
        """A hard link shares the target's content as it is when the link is read (moby os.Link)."""
        assert entry.link is not None
        head, name = split(entry.link)
        try:
            parent = self.resolve(head)
        except SymlinkLoop:
            self._skip(entry, layer, f"hard link target {entry.link} is behind a symlink loop")
            return None
        target = self.nodes.get(join(parent, name)) if parent else None
        if target is None or target.is_dir:
            why = "a directory" if target is not None else "missing"
            self._skip(entry, layer, f"hard link target {entry.link} is {why}")
            return None
        shared = replace(target.entry, path=entry.path, mode=entry.mode or target.entry.mode)
        return shared, target.path

    def _insert(self, parent: str, node: Node, layer: int) -> None:
        """Adds `node`, a path not in `nodes`, under the real directory `parent`."""
        path = node.path
        if path in self.rewritten:  # removed before: its history goes on; else it is the node's own layer
            self._record(path, layer, Change.ADDED)
        self.nodes[path] = node
        self._children[parent].append(path)
        if node.entry.type is _DIR:
            self._children[path] = []

    def _ensure_dir(self, path: str, layer: int) -> str | None:
        """Returns the real path of directory `path`, creating missing parts and following symlinks."""
        node = self.nodes.get(path)
        if node is not None and node.entry.type is _DIR and _canonical(path):
            return path  # the common case: an existing directory, no part to create or follow
        cur = "/"
        for name in [p for p in path.split("/") if p]:
            cand = join(cur, name)
            node = self.nodes.get(cand)
            if node is None:
                self._insert(cur, Node(Entry(cand, _DIR, mode=0o755), layer), layer)
            elif node.entry.type is _SYMLINK:
                resolved = self.resolve(cand)
                if resolved is None or not self.nodes[resolved].is_dir:
                    return None
                cand = resolved
            elif node.entry.type is not _DIR:
                return None
            cur = cand
        return cur

    def _remove(self, path: str, layer: int) -> None:
        self._drop_subtree(path, layer)

    def _drop_subtree(self, path: str, layer: int, *, keep_top: bool = False) -> None:
        """Removes `path` and all below it; a replaced path (keep_top) was recorded as modified by the caller,
        and its node is left for the caller to replace."""
        stack = [path]
        while stack:
            cur = stack.pop()
            if cur not in self.nodes:
                continue  # a child removed before, still listed, or listed twice
            if not (keep_top and cur == path):
                self._record(cur, layer, Change.REMOVED)
                del self.nodes[cur]
            stack.extend(self._children.pop(cur, ()))

    def _record(self, path: str, layer: int, change: Change) -> None:
        """Adds an event to the history of `path`, while a node it had is still in `nodes`: a path without
        events of its own was added once, at its node's layer."""
        past = self.rewritten.get(path)
        if past is None:
            past = self.event(self.nodes[path].layer, Change.ADDED)
        self.rewritten[path] = past + self.event(layer, change)

    def added_once(self) -> dict[int, int]:
        """How many paths each layer added that no layer changed since (the paths `rewritten` leaves out)."""
        return Counter(node.layer for _, node in self._added_once())

    def _added_once(self) -> Iterator[tuple[str, Node]]:
        """The paths, and their nodes, whose whole history is their node's addition."""
        rewritten = self.rewritten
        return ((path, node) for path, node in self.nodes.items() if path not in rewritten and path != "/")

    def event(self, layer: int, change: Change) -> tuple[Event]:
        """One event as a 1-tuple shared by every path it happened to."""
        event = self._events.get((layer, change))
        if event is None:
            event = self._events[layer, change] = ((layer, change),)
        return event

    # -- lookups -------------------------------------------------------------------------------

    def resolve(self, path: str, *, follow_last: bool = True, searched: list[str] | None = None) -> str | None:
        """Real path of an existing node, or None. Absolute link targets start at the image root and
        `..` never climbs above it (chroot semantics). A trailing slash names a directory, following a last
        symlink (path_resolution(7): `/app/` of a file is ENOTDIR). Raises SymlinkLoop past MAXSYMLINKS hops.
        `searched` gets each directory looked in, in order (the kernel wants search permission on each)."""
        node = self.nodes.get(path)
        if node is not None and (node.entry.type is not _SYMLINK or not follow_last) and _canonical(path) \
                and searched is None:
            return path  # the common case: a real path already, nothing to follow
        directory = path[-1:] == "/" and path.strip("/") != ""
        follow_last = follow_last or directory
        pending = [p for p in path.split("/") if p][::-1]
        cur = "/"
        hops = 0
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if searched is not None:
                searched.append(cur)
            if name == "..":
                cur = split(cur)[0]
                continue
            cand = join(cur, name)
            node = self.nodes.get(cand)
            if node is None:
                return None
            if node.entry.type is _SYMLINK and (pending or follow_last):
                hops += 1
                if hops > MAXSYMLINKS:
                    raise SymlinkLoop(path)
                target = node.entry.link or ""
                if target.startswith("/"):
                    cur = "/"
                pending.extend([p for p in target.split("/") if p][::-1])
                continue
            if pending and node.entry.type is not _DIR:
                return None
            cur = cand
        return None if directory and not self.nodes[cur].is_dir else cur

    def get(self, path: str, *, follow: bool = True) -> Node | None:
        try:
            real = self.resolve(path, follow_last=follow)
        except SymlinkLoop:
            return None
        return self.nodes.get(real) if real else None

    def real_dirs(self, paths: list[str]) -> Iterator[tuple[str, str]]:
        """(path, real path) of each existing path whose real path was not met before, in order: a search
        list whose entries are links to each other (/lib -> usr/lib on merged-/usr) is walked once."""
        seen: set[str] = set()
        for path in paths:
            try:
                real = self.resolve(path)
            except SymlinkLoop:
                continue
            if real is not None and real not in seen:
                seen.add(real)
                yield path, real

    def listdir(self, path: str) -> list[str]:
        nodes = self.nodes
        return sorted({split(child)[1] for child in self._children.get(path, ()) if child in nodes})

    def walk(self, top: str = "/") -> Iterator[Node]:
        """Every node at or below `top`, sorted by path."""
        if top == "/":
            yield from (self.nodes[p] for p in sorted(self.nodes) if p != "/")
            return
        prefix = top.rstrip("/") + "/"
        for p in sorted(self.nodes):
            if p == top or p.startswith(prefix):
                yield self.nodes[p]

    def read(self, path: str) -> bytes | None:
        """Content of one of the small files the scan keeps (layers.SMALL_FILES), else None."""
        node = self.get(path)
        if node is None or node.entry.digest is None:
            return None
        return self.contents.get(node.entry.digest)


class History(Mapping[str, tuple[Event, ...]]):
    """Every path's events in layer order, removed paths included: `rewritten`'s, else the one addition of the
    path's node."""

    def __init__(self, fs: RootFS) -> None:
        self._fs = fs

    def __getitem__(self, path: str) -> tuple[Event, ...]:
        fs = self._fs
        events = fs.rewritten.get(path)
        if events is not None:
            return events
        node = fs.nodes.get(path)
        if node is None or path == "/":
            raise KeyError(path)
        return fs.event(node.layer, Change.ADDED)

    def __iter__(self) -> Iterator[str]:
        yield from self._fs.rewritten
        yield from (path for path, _ in self._fs._added_once())

    def __len__(self) -> int:
        return len(self._fs.rewritten) + sum(1 for _ in self._fs._added_once())
