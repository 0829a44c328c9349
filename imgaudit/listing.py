"""`imgaudit ls`: the final filesystem (or one layer's changes) as rows of plain values."""

from __future__ import annotations

from typing import Any

from imgaudit.render.table import mode_string
from imgaudit.rootfs import Change, Node, RootFS


def node_row(node: Node) -> dict[str, Any]:
    symlink = node.type.value == "symlink"
    return {
        "path": node.path,
        "type": node.type.value,
        "mode": node.entry.mode,
        "size": node.entry.size,
        "layer": node.layer,
        "link": node.entry.link if symlink else node.hardlink_of,
        "capabilities": node.entry.capabilities,
        "xattrs": dict(node.entry.xattrs),
    }


def final_rows(fs: RootFS, top: str = "/") -> list[dict[str, Any]]:
    return [node_row(n) for n in fs.walk(top)]


def layer_rows(fs: RootFS, layer: int, top: str = "/") -> list[dict[str, Any]]:
    """What one layer added, changed and removed (paths as the merge saw them)."""
    prefix = top.rstrip("/") + "/"
    rows = []
    for path in sorted(fs.history):
        if not (path == top or path.startswith(prefix) or top == "/"):
            continue
        changes = [c for lay, c in fs.history[path] if lay == layer]
        if not changes:
            continue
        node = fs.nodes.get(path)
        change = Change.REMOVED if changes[-1] is Change.REMOVED else changes[0]
        row = node_row(node) if node is not None and change is not Change.REMOVED else {
            "path": path, "type": None, "mode": None, "size": 0, "layer": layer, "link": None,
            "capabilities": None, "xattrs": {}}
        row["change"] = change.value
        rows.append(row)
    return rows


def with_modestr(rows: list[dict[str, Any]], fs: RootFS) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        node = fs.nodes.get(row["path"])
        modestr = mode_string(node) if node is not None and row.get("change") != "removed" else "(removed) "
        out.append({**row, "modestr": modestr})
    return out
