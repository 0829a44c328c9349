"""Terminal output of `inspect` and `ls` with rich (colour only on a terminal; NO_COLOR honoured)."""

from __future__ import annotations

import io
import stat

from rich.console import Console
from rich.text import Text

from imgaudit.render.linkage_text import LINKAGE_RULES, print_linkage
from imgaudit.render.size_text import print_size
from imgaudit.render.text import safe
from imgaudit.report import Report
from imgaudit.rootfs import Node


def console(buf: io.StringIO, *, color: bool, width: int) -> Console:
    """A console that prints strings as they are: no markup and no emoji codes. Text from an image is only
    ever a plain string through `safe`, and our own styles are `Text` spans. rich's markup `escape` protects
    one string but not two printed side by side: an unclosed `[/a` in one name and a `]` in the next made a
    closing tag (MarkupError) or hid the text between them (RELIABILITY.md #105)."""
    # The buffer is no terminal: colour is the caller's decision (stdout is one, NO_COLOR unset), so force it.
    return Console(file=buf, width=width, no_color=not color, color_system="auto" if color else None,
                   force_terminal=color, highlight=False, soft_wrap=True, markup=False, emoji=False)


def render_inspect(report: Report, *, color: bool = False, show_all: bool = False) -> str:
    buf = io.StringIO()
    con = console(buf, color=color, width=120)
    img = report.image
    plat = img.platform
    variant = f"/{plat.variant}" if plat.variant else ""
    con.print(Text.assemble((safe(img.reference), "bold"), safe(f"  ({img.source}, {plat.os}/{plat.architecture}"
                                                                 f"{variant})")))
    if img.manifest_digest:
        con.print(f"manifest  {img.manifest_digest}")
    con.print(f"config    {img.config_digest}")
    con.print(f"entrypoint {safe(str(img.entrypoint))}  cmd {safe(str(img.cmd))}")
    if report.entrypoint.verdict != "unknown":
        print_linkage(con, report, show_all=show_all)  # the linkage part lives in linkage_text.py
    elif report.entrypoint.message:  # why there is no verdict (a Windows image)
        con.print(f"entrypoint - {safe(report.entrypoint.message)}")
    if report.entrypoint.capabilities:
        con.print(f"  capabilities {safe(report.entrypoint.capabilities)}")
    rt = report.runtime
    if rt.libc != "unknown" or rt.distro.id:
        distro = rt.distro.pretty_name or rt.distro.id or "-"
        con.print(f"runtime   libc {rt.libc} {rt.libc_version or ''}  distro {distro}  shell {rt.shell or 'none'}")
    print_size(con, report, show_all=show_all)  # the size part lives in size_text.py
    _findings(con, report, show_all)
    if not report.complete:
        con.print(Text.assemble(("incomplete:", "yellow"), f" {len(report.incomplete)} part(s) not analysed"))
        for item in report.incomplete[:10]:
            con.print(f"  {safe(item.what)}: {safe(item.reason)}")
    return buf.getvalue()


def _findings(con: Console, report: Report, show_all: bool) -> None:
    shown = report.findings if show_all else [f for f in report.findings if f.severity.value != "info"]
    shown = [f for f in shown if f.rule not in LINKAGE_RULES]  # printed by print_linkage, grouped
    for finding in shown[:50]:
        con.print(f"{finding.severity.value:8} {finding.rule:24} {safe(finding.path or '')}  {safe(finding.message)}")
    s = report.summary
    con.print(f"{s.errors} error(s), {s.warnings} warning(s), {s.infos} info(s)")


def mode_string(node: Node) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "char": stat.S_IFCHR, "block": stat.S_IFBLK,
            "fifo": stat.S_IFIFO}.get(node.type.value, stat.S_IFREG)
    return stat.filemode(kind | node.entry.mode)


def render_listing(rows: list[dict[str, object]]) -> str:
    out = []
    for row in rows:
        link = f" -> {safe(str(row['link']))}" if row.get("link") else ""
        caps = f"  [{safe(str(row['capabilities']))}]" if row.get("capabilities") else ""  # getcap's text
        out.append(f"{row['modestr']} {row['size']:>12} L{row['layer']:<3} {safe(str(row['path']))}{link}{caps}")
    return "\n".join(out) + ("\n" if out else "")
