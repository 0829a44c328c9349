"""The linkage part of `inspect` in the terminal (the entrypoint verdict in one line, then problems
grouped by kind, every binary with `--all`) and the text of `imgaudit ldd`."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from imgaudit.loader import LD_PRELOAD, PRELOAD_FILE, Link, Resolution
from imgaudit.render.text import safe
from imgaudit.report import Report

LINKAGE_RULES = (
    "missing-interpreter", "missing-library", "glibc-version", "missing-symbol", "exec-format",
    "script-interpreter-missing", "entrypoint-missing", "not-executable", "other",
    "libc-mismatch", "preload-missing", "ld-cache-stale", "no-ca-certificates", "elf-unreadable",
)
COLOURS = {"ok": "green", "fail": "red", "warn": "yellow"}
SHOWN_PER_KIND = 5


def print_linkage(con: Console, report: Report, *, show_all: bool = False) -> None:
    ep = report.entrypoint
    colour = COLOURS.get(ep.verdict, "white")
    why = f" ({ep.failure})" if ep.failure else ""
    argv = f" {' '.join(ep.argv)}" if ep.argv else ""
    message = f": {ep.message}" if ep.message else ""
    con.print(Text.assemble((safe(f"entrypoint {ep.verdict.upper()}{why}"), colour), safe(argv + message)))
    if ep.fix:
        con.print(f"  fix: {safe(ep.fix)}")
    _problems(con, report, show_all)
    if show_all:
        _binaries(con, report)


def _problems(con: Console, report: Report, show_all: bool) -> None:
    groups: dict[str, list[Any]] = {}
    for finding in report.findings:
        if finding.rule in LINKAGE_RULES and finding.path != report.entrypoint.path:
            groups.setdefault(finding.rule, []).append(finding)
    for rule in LINKAGE_RULES:
        items = groups.get(rule, [])
        if not items:
            continue
        con.print(f"{items[0].severity.value} {rule} ({len(items)})")
        limit = len(items) if show_all else SHOWN_PER_KIND
        for finding in items[:limit]:
            where = finding.path or "-"
            message = finding.message if finding.message.startswith(where) else f"{where}: {finding.message}"
            con.print(f"  {safe(message)}")
        if len(items) > limit:
            con.print(f"  … {len(items) - limit} more (--all)")
        if items[0].fix:
            con.print(f"  fix: {safe(items[0].fix)}")


def _binaries(con: Console, report: Report) -> None:
    con.print(f"binaries ({len(report.binaries)})")
    for b in report.binaries:
        colour = COLOURS.get(b.verdict, "white")
        glibc = f" needs glibc {b.glibc_required}" if b.glibc_required else ""
        rust = f" rust {b.rust.rustc_version or '?'}" if b.rust else ""
        con.print(Text.assemble("  ", (f"{b.verdict:4}", colour),
                                safe(f" {b.role:10} {b.linking:10} {b.libc:5} {b.path}{glibc}{rust}")))


# -- imgaudit ldd --------------------------------------------------------------------------------


def render_ldd(path: str, res: Resolution | None, *, static_reason: str | None = None) -> str:
    """An lddtree: each object's needed libraries indented under it, with the search step."""
    if res is None:
        return f"{safe(path)}: {static_reason or 'not a dynamic executable'}\n"
    out = [f"{safe(path)} ({res.flavour} loader {safe(res.interpreter or '-')})"]
    out += [f"  search {step}: {safe(dirs)}" for step, dirs in res.search]
    by_parent: dict[str, list[Link]] = {}
    for link in res.links:
        by_parent.setdefault(link.needed_by, []).append(link)
    seen: set[str] = set()
    for where in (LD_PRELOAD, PRELOAD_FILE):  # loaded after the program and before its libraries
        if where in by_parent:
            out.append(f"  preloaded ({where})")
            _tree(out, where, by_parent, 1, seen)
    if seen:
        out.append("  needed")
    _tree(out, res.program, by_parent, 1, seen)
    problems = [p for p in res.problems if p.kind not in ("no-version-info", "weak-version")]
    if problems:
        out.append("problems:")
        out += [f"  {'error' if p.fatal else 'warning'} {p.kind}: {safe(p.message)}" for p in problems]
    return "\n".join(out) + "\n"


def _tree(out: list[str], parent: str, by_parent: dict[str, list[Link]], depth: int, seen: set[str]) -> None:
    if parent in seen:
        return
    seen.add(parent)
    for link in by_parent.get(parent, []):
        pad = "    " * depth
        if link.path is None:
            tried = ", ".join(c.path for c in link.tried if c.outcome != "ok")
            out.append(f"{pad}{safe(link.name)} => not found ({link.reason}; tried {safe(tried) or 'nothing'})")
            continue
        real = f" -> {safe(link.real_path)}" if link.real_path and link.real_path != link.path else ""
        via = link.step.value if link.step else "?"
        out.append(f"{pad}{safe(link.name)} => {safe(link.path)}{real} [{via}]")
        if link.new:
            _tree(out, link.path, by_parent, depth + 1, seen)
