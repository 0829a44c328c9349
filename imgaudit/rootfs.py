"""The final filesystem: layer scans merged in order, whiteouts applied, links resolved inside the root.

Merge rules follow the OCI image-spec "Changeset over existing files" and moby's UnpackLayer: a whiteout or
opaque marker affects lower layers only; a directory merges into a directory, anything else replaces
what was there; missing parents are created 0755; parents that are symlinks are followed inside the root.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, replace
from enum import Enum

from imgaudit.layers import Entry, EntryType, LayerScan, Skipped

MAXSYMLINKS = 40  # Linux's limit on symlink hops in one lookup


class Change(str, Enum):
    ADDED = "added"
    MODIFIED = "modified"
    REMOVED = "removed"


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
        # Children by their full path: the very string objects the node keys are, so a child costs a set slot
        # and no name string of its own.
        self._children: dict[str, set[str]] = {"/": set()}
        # Most paths change once: their history is one shared 1-tuple per (layer, change), not a list each.
        self.history: dict[str, tuple[Event, ...]] = {}
        self._events: dict[Event, tuple[Event]] = {}
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
                for child in list(self._children.get(path, ())):
                    self._remove(child, layer)
        for entry in scan.entries:
            if entry.type is EntryType.OPAQUE:
                try:
                    self._ensure_dir(entry.path, layer)
                except SymlinkLoop:
                    self.skipped.append(Skipped(entry.path, f"layer {layer}: {_LOOP}"))
            elif entry.type is not EntryType.WHITEOUT:
                self._add(entry, layer)

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
            self.skipped.append(Skipped(entry.path, f"layer {layer}: parent is {_LOOP}"))
            return
        if parent is None:
            self.skipped.append(Skipped(entry.path, f"layer {layer}: parent is not a directory"))
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
            if existing.entry.type is _DIR and entry.type is _DIR:
                self.nodes[path] = Node(entry, layer)
                self._record(path, layer, Change.MODIFIED)
                return
            self._drop_subtree(path, layer, keep_top=True)
            change = Change.MODIFIED
        else:
            change = Change.ADDED
        self._insert(parent, Node(entry, layer, hardlink_of), layer, change)

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
            self.skipped.append(Skipped(entry.path, f"layer {layer}: hard link target {entry.link} is behind a "
                                                    "symlink loop"))
            return None
        target = self.nodes.get(join(parent, name)) if parent else None
        if target is None or target.is_dir:
            why = "a directory" if target is not None else "missing"
            self.skipped.append(Skipped(entry.path, f"layer {layer}: hard link target {entry.link} is {why}"))
            return None
        shared = replace(target.entry, path=entry.path, mode=entry.mode or target.entry.mode)
        return shared, target.path

    def _insert(self, parent: str, node: Node, layer: int, change: Change) -> None:
        """Adds `node` under the real directory `parent`."""
        path = node.path
        self.nodes[path] = node
        self._children[parent].add(path)
        if node.entry.type is _DIR:
            self._children.setdefault(path, set())
        self._record(path, layer, change)

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
                self._insert(cur, Node(Entry(cand, _DIR, mode=0o755), layer), layer, Change.ADDED)
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
        """Removes `path` and all below it; a replaced path (keep_top) is recorded as modified, not removed."""
        stack = [path]
        while stack:
            cur = stack.pop()
            node = self.nodes.pop(cur, None)
            if node is None:
                continue
            if not (keep_top and cur == path):
                self._record(cur, layer, Change.REMOVED)
            stack.extend(self._children.pop(cur, ()))
        self._children[split(path)[0]].discard(path)

    def _record(self, path: str, layer: int, change: Change) -> None:
        event = self._events.get((layer, change))
        if event is None:
            event = self._events[layer, change] = ((layer, change),)
        past = self.history.get(path)
        self.history[path] = past + event if past else event

    # -- lookups -------------------------------------------------------------------------------

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """Real path of an existing node, or None. Absolute link targets start at the image root and
        `..` never climbs above it (chroot semantics). Raises SymlinkLoop past MAXSYMLINKS hops."""
        node = self.nodes.get(path)
        if node is not None and (node.entry.type is not _SYMLINK or not follow_last) and _canonical(path):
            return path  # the common case: a real path already, nothing to follow
        pending = [p for p in path.split("/") if p][::-1]
        cur = "/"
        hops = 0
        while pending:
            name = pending.pop()
            if name == ".":
                continue
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
        return cur

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
        return sorted(split(child)[1] for child in self._children.get(path, ()))

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
