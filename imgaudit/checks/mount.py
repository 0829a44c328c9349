"""What the runtime makes of the layer stack and the links when it mounts the image: more layers than Docker
registers (`too-many-layers`, RELIABILITY.md #32), symlinks whose target climbs above the root, which the
kernel stops at `/` (`link-climbs-above-root`, #78), and overlayfs whiteouts tarred as char 0:0 devices, which
delete nothing (`overlay-whiteout-in-tar`, #63)."""

from __future__ import annotations

import posixpath
from typing import TYPE_CHECKING

from imgaudit.layers import EntryType
from imgaudit.report import Finding, Report, Severity
from imgaudit.rules import rule

if TYPE_CHECKING:
    from imgaudit.audit import Loaded

# moby layer/layer_store.go: `maxLayerDepth = 125` ("chosen to account for the 127 max in some graphdrivers
# plus the 2 additional layers used to create a rwlayer"); registering a layer whose parent chain is already
# 125 deep fails with ErrMaxDepthExceeded, whatever the graph driver (overlay2's own cap is 128 lower dirs).
MAX_LAYERS = 125
MAX_LISTED = 100  # links climbing above / (per layer: char 0:0 devices) with a finding each; one more counts the rest


def analyse(loaded: Loaded, report: Report) -> None:
    count = len(loaded.image.layers)
    if count > MAX_LAYERS:
        report.findings.append(Finding(
            "too-many-layers", Severity.WARNING,
            f"{count} layers: Docker's layer store takes at most {MAX_LAYERS}; pulling or loading the image "
            f"fails with \"max depth exceeded\"", None, None, rule("too-many-layers").fix))
    report.findings.extend(_climbing_links(loaded))
    report.findings.extend(_overlay_whiteouts(loaded))


def _overlay_whiteouts(loaded: Loaded) -> list[Finding]:
    out = []
    for layer, scan in enumerate(loaded.scans):
        for path in scan.overlay_whiteouts[:MAX_LISTED]:
            out.append(Finding(
                "overlay-whiteout-in-tar", Severity.WARNING,
                "a char 0:0 device: an overlayfs whiteout tarred as it is; runtimes extract a device node here, "
                "so what it meant to delete from the layers below stays", path, layer,
                rule("overlay-whiteout-in-tar").fix))
        if len(scan.overlay_whiteouts) > MAX_LISTED:
            out.append(Finding("overlay-whiteout-in-tar", Severity.WARNING,
                               f"{len(scan.overlay_whiteouts) - MAX_LISTED} more char 0:0 devices in this "
                               f"layer (first {MAX_LISTED} listed)", None, layer))
    return out


def _climbing_links(loaded: Loaded) -> list[Finding]:
    links = sorted((path, node) for path, node in loaded.rootfs.nodes.items()
                   if node.entry.type is EntryType.SYMLINK and ".." in (node.entry.link or ""))
    out = []
    climbing = 0
    for path, node in links:
        target = node.entry.link or ""
        inside = clamped(path, target)
        if inside is None:
            continue
        climbing += 1
        if climbing <= MAX_LISTED:
            out.append(Finding("link-climbs-above-root", Severity.INFO,
                               f"symlink target {target} climbs above /; the kernel stops at / so it points to "
                               f"{inside} in the container", path, node.layer,
                               f"Make the target absolute ({inside}) or relative without climbing above /."))
    if climbing > MAX_LISTED:
        out.append(Finding("link-climbs-above-root", Severity.INFO,
                           f"{climbing - MAX_LISTED} more symlinks climb above / (first "
                           f"{MAX_LISTED} listed)"))
    return out


def clamped(path: str, target: str) -> str | None:
    """Where a link at `path` points once `..` stops at `/` (chroot semantics), read lexically; None when its
    target never climbs above the root."""
    parts = [] if target.startswith("/") else [p for p in posixpath.dirname(path).split("/") if p]
    climbs = False
    for part in target.split("/"):
        if part == "..":
            if not parts:
                climbs = True
            else:
                parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts) if climbs else None
