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


class SymlinkLoop(Exception):
    """More than MAXSYMLINKS hops (ELOOP: 'too many levels of symbolic links')."""


_ROOT = Node(Entry("/", EntryType.DIR, mode=0o755), -1)


class RootFS:
    """Merged view of an image's layers with per-path history."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {"/": _ROOT}
        self._children: dict[str, set[str]] = {"/": set()}
        self.history: dict[str, list[tuple[int, Change]]] = {}
        self.skipped: list[Skipped] = []
        self.layer_count = 0
        self.contents: dict[str, bytes] = {}

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
                    self._remove(posixpath.join(path, child), layer)
        for entry in scan.entries:
            if entry.type is EntryType.OPAQUE:
                self._ensure_dir(entry.path, layer)
            elif entry.type is not EntryType.WHITEOUT:
                self._add(entry, layer)

    def _through_parent_links(self, path: str) -> str | None:
        """Where a whiteout or opaque marker acts: its parent directories resolved through symlinks, as
        moby's UnpackLayer (in a chroot) and containerd's fs.RootPath do; `docker export` is the oracle."""
        if path == "/":
            return path
        try:
            parent = self.resolve(posixpath.dirname(path))
        except SymlinkLoop:
            return None
        return posixpath.join(parent, posixpath.basename(path)) if parent else None

    def _add(self, entry: Entry, layer: int) -> None:
        if entry.path == "/":
            self.nodes["/"] = Node(replace(entry, path="/"), layer)
            return
        parent = self._ensure_dir(posixpath.dirname(entry.path), layer)
        if parent is None:
            self.skipped.append(Skipped(entry.path, f"layer {layer}: parent is not a directory"))
            return
        path = posixpath.join(parent, posixpath.basename(entry.path))
        if path != entry.path:
            entry = replace(entry, path=path)
        hardlink_of = None
        if entry.type is EntryType.HARDLINK:
            bound = self._bind_hardlink(entry, layer)
            if bound is None:
                return
            entry, hardlink_of = bound
        existing = self.nodes.get(path)
        if existing is not None:
            if existing.is_dir and entry.type is EntryType.DIR:
                self.nodes[path] = Node(entry, layer)
                self._record(path, layer, Change.MODIFIED)
                return
            self._drop_subtree(path, layer, keep_top=True)
            change = Change.MODIFIED
        else:
            change = Change.ADDED
        self._insert(Node(entry, layer, hardlink_of), layer, change)

    def _bind_hardlink(self, entry: Entry, layer: int) -> tuple[Entry, str] | None:
        """A hard link shares the target's content as it is when the link is read (moby os.Link)."""
        assert entry.link is not None
        parent = self.resolve(posixpath.dirname(entry.link))
        target = self.nodes.get(posixpath.join(parent, posixpath.basename(entry.link))) if parent else None
        if target is None or target.is_dir:
            why = "a directory" if target is not None else "missing"
            self.skipped.append(Skipped(entry.path, f"layer {layer}: hard link target {entry.link} is {why}"))
            return None
        shared = replace(target.entry, path=entry.path, mode=entry.mode or target.entry.mode)
        return shared, target.path

    def _insert(self, node: Node, layer: int, change: Change) -> None:
        self.nodes[node.path] = node
        self._children[posixpath.dirname(node.path)].add(posixpath.basename(node.path))
        if node.is_dir:
            self._children.setdefault(node.path, set())
        self._record(node.path, layer, change)

    def _ensure_dir(self, path: str, layer: int) -> str | None:
        """Returns the real path of directory `path`, creating missing parts and following symlinks."""
        cur = "/"
        for name in [p for p in path.split("/") if p]:
            cand = posixpath.join(cur, name)
            node = self.nodes.get(cand)
            if node is None:
                self._insert(Node(Entry(cand, EntryType.DIR, mode=0o755), layer), layer, Change.ADDED)
            elif node.type is EntryType.SYMLINK:
                resolved = self.resolve(cand)
                if resolved is None or not self.nodes[resolved].is_dir:
                    return None
                cand = resolved
            elif not node.is_dir:
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
            for child in self._children.pop(cur, ()):
                stack.append(posixpath.join(cur, child))
        self._children[posixpath.dirname(path)].discard(posixpath.basename(path))

    def _record(self, path: str, layer: int, change: Change) -> None:
        self.history.setdefault(path, []).append((layer, change))

    # -- lookups -------------------------------------------------------------------------------

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """Real path of an existing node, or None. Absolute link targets start at the image root and
        `..` never climbs above it (chroot semantics). Raises SymlinkLoop past MAXSYMLINKS hops."""
        pending = [p for p in path.split("/") if p][::-1]
        cur = "/"
        hops = 0
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                cur = posixpath.dirname(cur)
                continue
            cand = posixpath.join(cur, name)
            node = self.nodes.get(cand)
            if node is None:
                return None
            if node.type is EntryType.SYMLINK and (pending or follow_last):
                hops += 1
                if hops > MAXSYMLINKS:
                    raise SymlinkLoop(path)
                target = node.entry.link or ""
                if target.startswith("/"):
                    cur = "/"
                pending.extend([p for p in target.split("/") if p][::-1])
                continue
            if pending and not node.is_dir:
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
        return sorted(self._children.get(path, ()))

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
