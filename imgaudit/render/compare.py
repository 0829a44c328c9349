"""`compare` and `diff` as a terminal table or GitHub-flavoured Markdown (for a pull-request comment).

Sizes are decimal SI units (1 MB = 1,000,000 bytes); `--format json` carries raw bytes.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

from rich.table import Table
from rich.text import Text

from imgaudit.compare import ImageColumn, smallest
from imgaudit.diff import ImageDiff, Totals
from imgaudit.render.size_text import CONVENTION, percent
from imgaudit.render.table import console
from imgaudit.render.text import human, safe

Row = tuple[str, Callable[[ImageColumn], str]]

ROWS: tuple[Row, ...] = (
    ("final size", lambda c: human(c.final_bytes)),
    ("compressed (pull)", lambda c: human(c.compressed_bytes)),
    ("layers (uncompressed)", lambda c: human(c.uncompressed_bytes)),
    ("layers", lambda c: str(c.layers)),
    ("files", lambda c: str(c.file_count)),
    ("libc", lambda c: f"{c.libc} {c.libc_version}" if c.libc_version else c.libc),
    ("distro", lambda c: f"{c.distro} {c.distro_version}" if c.distro and c.distro_version else c.distro or "-"),
    ("packages", lambda c: f"{c.packages} ({c.package_db})" if c.package_db else "-"),
    ("package bytes", lambda c: human(c.package_bytes) if c.package_db else "-"),
    ("reclaimable", lambda c: human(c.reclaimable_bytes)),
    ("wasted (dive)", lambda c: human(c.wasted_bytes)),
    ("efficiency (dive)", lambda c: percent(c.efficiency)),
    ("entrypoint", lambda c: f"{c.entrypoint_verdict} ({c.entrypoint_failure})" if c.entrypoint_failure
     else c.entrypoint_verdict),
    ("findings", lambda c: f"{c.errors} errors, {c.warnings} warnings"),
)


def label(reference: str) -> str:
    """A column heading: `docker-daemon:docker.io/library/x:1` → `x:1`, `oci-archive:/a/b/img.tar` → `img.tar`."""
    transport, sep, rest = reference.partition(":")
    if not sep or transport not in ("docker-daemon", "docker-archive", "oci", "oci-archive"):
        rest = reference.removeprefix("docker://")
    if transport in ("docker-archive", "oci", "oci-archive"):
        return rest.rstrip("/").rpartition("/")[2] or rest
    return rest.removeprefix("docker.io/").removeprefix("library/")


def compare_table(columns: Sequence[ImageColumn], *, color: bool = False) -> str:
    buf = io.StringIO()
    con = console(buf, color=color, width=160)
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("")
    for c in columns:
        table.add_column(safe(label(c.reference)), justify="right")
    for name, cell in ROWS:
        table.add_row(name, *(safe(cell(c)) for c in columns))
    con.print(table)
    con.print(f"smallest: {safe(label(smallest(columns) or '-'))}  ({CONVENTION})")
    return buf.getvalue()


def md(text: str) -> str:
    """Table-cell safe: control characters escaped, pipes and backticks neutralised."""
    return safe(text).replace("|", "\\|").replace("`", "'")


def compare_markdown(columns: Sequence[ImageColumn]) -> str:
    lines = ["| | " + " | ".join(f"`{md(label(c.reference))}`" for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(md(cell(c)) for c in columns) + " |" for name, cell in ROWS]
    lines += ["", f"Smallest: `{md(label(smallest(columns) or '-'))}`. Sizes in decimal SI units "
              "(1 MB = 1,000,000 bytes)."]
    return "\n".join(lines) + "\n"


def signed(delta: int) -> str:
    return ("+" if delta > 0 else "-" if delta < 0 else "±") + human(abs(delta))


TOTAL_ROWS: tuple[tuple[str, Callable[[Totals], int]], ...] = (
    ("final size", lambda t: t.final_bytes),
    ("compressed (pull)", lambda t: t.compressed_bytes),
    ("layers (uncompressed)", lambda t: t.uncompressed_bytes),
    ("reclaimable", lambda t: t.reclaimable_bytes),
    ("wasted (dive)", lambda t: t.wasted_bytes),
)


def _total_rows(diff: ImageDiff) -> list[tuple[str, str, str, str]]:
    rows = [(name, human(get(diff.old_totals)), human(get(diff.new_totals)),
             signed(get(diff.new_totals) - get(diff.old_totals))) for name, get in TOTAL_ROWS]
    for name, old, new in (("layers", diff.old_totals.layers, diff.new_totals.layers),
                            ("files", diff.old_totals.file_count, diff.new_totals.file_count),
                            ("packages", diff.old_totals.packages, diff.new_totals.packages)):
        rows.append((name, str(old), str(new), f"{new - old:+d}"))
    return rows


def _layer_rows(diff: ImageDiff) -> list[tuple[str, str, str, str]]:
    marks = {"kept": " ", "added": "+", "removed": "-"}
    out = []
    for change in diff.layers:
        index = change.new_index if change.new_index is not None else change.old_index
        delta = {"kept": "", "added": "+", "removed": "-"}[change.change] + human(change.bytes)
        out.append((marks[change.change], str(index), delta, safe(change.created_by)[:70]))
    return out


def _file_rows(diff: ImageDiff) -> list[tuple[str, str, str]]:
    return [(c.change, signed(c.delta), safe(c.path)) for c in diff.files]


def _package_rows(diff: ImageDiff) -> list[tuple[str, str, str, str]]:
    out = []
    for p in diff.packages:
        versions = f"{p.old_version or ''} → {p.new_version or ''}".strip(" →") if p.change == "upgraded" else \
            (p.new_version or p.old_version or "")
        out.append((p.change, safe(p.name), safe(versions), signed((p.new_bytes or 0) - (p.old_bytes or 0))))
    return out


def _counts_line(diff: ImageDiff) -> str:
    parts = [f"{n.count} {kind} ({signed(n.bytes)})" for kind, n in diff.file_counts.items()]
    return "files: " + (", ".join(parts) if parts else "no change")


def diff_table(diff: ImageDiff, *, color: bool = False) -> str:
    buf = io.StringIO()
    con = console(buf, color=color, width=160)
    con.print(Text.assemble((safe(diff.old), "bold"), " → ", (safe(diff.new), "bold"), f"  ({CONVENTION})"))
    con.print(_table(("", "old", "new", "change"), _total_rows(diff)))
    con.print("layers (matched by diff_id)")
    con.print(_table(("", "#", "size", "created by"), _layer_rows(diff)))
    con.print(_counts_line(diff))
    if diff.files:
        con.print(_table(("change", "size", "path"), _file_rows(diff)))
    if diff.packages:
        con.print("packages")
        con.print(_table(("change", "name", "version", "size"), _package_rows(diff)))
    for f in diff.findings:
        con.print(f"{f.change:5} {f.severity:8} {f.rule:22} {safe(f.path or '')}  {safe(f.message)}")
    return buf.getvalue()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None)
    for h in header:
        table.add_column(h, justify="left" if h in ("", "path", "name", "created by", "change", "version") else "right")
    for row in rows:
        table.add_row(*row)  # cells are safe()d text, shared with markdown
    return table


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md(cell) for cell in row) + " |" for row in rows]
    return lines


def diff_markdown(diff: ImageDiff) -> str:
    t_old, t_new = diff.old_totals, diff.new_totals
    delta = t_new.final_bytes - t_old.final_bytes
    lines = [f"### Image size: `{md(diff.old)}` → `{md(diff.new)}`: {signed(delta)}", ""]
    lines += _md_table(("", "old", "new", "change"), _total_rows(diff))
    added = [r for r in _layer_rows(diff) if r[0] != " "]
    lines += ["", f"**Layers** (matched by diff_id): {sum(1 for c in diff.layers if c.change == 'kept')} kept, "
              f"{sum(1 for c in diff.layers if c.change == 'added')} added, "
              f"{sum(1 for c in diff.layers if c.change == 'removed')} removed"]
    if added:
        lines += ["", *_md_table(("", "#", "size", "created by"), added)]
    lines += ["", f"**{_counts_line(diff).capitalize()}**"]
    if diff.files:
        lines += ["", *_md_table(("change", "size", "path"), _file_rows(diff))]
    if diff.packages:
        lines += ["", "**Packages**", "", *_md_table(("change", "name", "version", "size"), _package_rows(diff))]
    if diff.findings:
        rows = [(f.change, f.severity, f.rule, f.path or "", f.message) for f in diff.findings]
        lines += ["", "**Findings**", "", *_md_table(("", "severity", "rule", "path", "message"), rows)]
    lines += ["", "Sizes in decimal SI units (1 MB = 1,000,000 bytes)."]
    return "\n".join(lines) + "\n"
