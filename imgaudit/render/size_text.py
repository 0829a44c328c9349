"""The size part of `inspect` in the terminal: a layer table with proportional bars, waste, the biggest items.

Sizes are decimal SI units (1 MB = 1,000,000 bytes, as `docker images` prints them); JSON carries raw bytes.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from imgaudit.render.text import human, safe
from imgaudit.report import Report, SizeInfo

BAR_WIDTH = 20
TOP = 5
TOP_ALL = 20
CONVENTION = "sizes in decimal SI units: 1 MB = 1,000,000 bytes"


def bar(size: int, biggest: int, width: int = BAR_WIDTH) -> str:
    """A bar proportional to `size` (the biggest layer fills `width`); any non-zero size shows."""
    if biggest <= 0 or size <= 0:
        return ""
    cells = max(1, round(width * size / biggest))
    return "█" * cells


def files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.1f} %"


def print_size(con: Console, report: Report, *, show_all: bool = False) -> None:
    size = report.size
    top = TOP_ALL if show_all else TOP
    con.print(layer_table(size))
    con.print(f"total     {human(size.compressed_bytes)} to pull (compressed), {human(size.uncompressed_bytes)} "
              f"in layers, {human(size.final_bytes)} in {files(size.file_count)} in the final filesystem  "
              f"({CONVENTION})")
    print_waste(con, size, top)
    print_biggest(con, size, top)
    print_packages(con, size, top)


def layer_table(size: SizeInfo) -> Table:
    table = Table(show_edge=False, pad_edge=False, box=None)
    for col in ("#", "compressed", "size", "", "+", "~", "-"):  # files added, modified, removed
        table.add_column(col, justify="left" if not col else "right", no_wrap=True,
                         min_width=BAR_WIDTH if not col else None)
    table.add_column("created by", no_wrap=True, overflow="ellipsis", max_width=50)
    biggest = max((x.uncompressed_bytes for x in size.layers), default=0)
    for layer in size.layers:
        table.add_row(str(layer.index), human(layer.compressed_bytes), human(layer.uncompressed_bytes),
                      bar(layer.uncompressed_bytes, biggest), str(layer.files_added), str(layer.files_modified),
                      str(layer.files_removed), safe(layer.created_by))
    return table


def print_waste(con: Console, size: SizeInfo, top: int) -> None:
    con.print(f"waste     efficiency {percent(size.efficiency)}, wasted {human(size.wasted_bytes)}, "
              f"user wasted {percent(size.user_wasted_percent)} (dive's definitions); reclaimable "
              f"{human(size.reclaimable_bytes)} (lower-layer bytes no final path shows)")
    for item in size.reclaimable[:top]:
        count = f", {files(item.files)}" if item.files > 1 else ""
        con.print(f"  {human(item.bytes):>9}  {safe(item.path)}  {item.reason} in layer {item.hidden_by}, "
                  f"added in layer {item.layer}{count}")


def print_biggest(con: Console, size: SizeInfo, top: int) -> None:
    if size.top_files:
        con.print("biggest files")
        for f in size.top_files[:top]:
            con.print(f"  {human(f.bytes):>9}  {safe(f.path)}  (layer {f.layer})")
    if size.top_dirs:
        con.print("biggest directories")
        for d in size.top_dirs[:top]:
            con.print(f"  {human(d.bytes):>9}  {safe(d.path)}  ({files(d.files)})")
    if size.duplicates:
        con.print(f"duplicates {human(size.duplicate_bytes)} in extra copies of identical files")
        for g in size.duplicates[:top]:
            more = " …" if len(g.paths) > 3 else ""
            con.print(f"  {human(g.wasted_bytes):>9}  {len(g.paths)} × {human(g.bytes)}: "
                      f"{safe(', '.join(g.paths[:3]))}{more}")


def print_packages(con: Console, size: SizeInfo, top: int) -> None:
    if not size.package_db:
        return
    total = sum(p.bytes for p in size.packages)
    con.print(f"packages  {len(size.packages)} ({size.package_db}), {human(total)} installed")
    for p in size.packages[:top]:
        con.print(f"  {human(p.bytes):>9}  {safe(p.name)} {safe(p.version)}")
