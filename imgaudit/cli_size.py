"""`imgaudit compare REF REF…` and `imgaudit diff OLD NEW` (registered on the `main` group in cli.py).

Options → library calls → renderer, like cli.py; exit 0 unless an image cannot be read (DESIGN.md §5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from imgaudit.cli import _color, _platform, _pull, common, handled, pull_options

if TYPE_CHECKING:
    from imgaudit.audit import Loaded
    from imgaudit.report import Report

FORMATS = click.Choice(["table", "json", "markdown"])


def _audit_all(references: tuple[str, ...], platform: str | None, jobs: int,
               pull: dict[str, Any]) -> list[tuple[Loaded, Report]]:
    """(Loaded, Report) of each reference, in order."""
    from dataclasses import replace

    from imgaudit.audit import Options, audit, load

    options = Options(platform=_platform(platform), jobs=jobs, **_pull(pull))
    out = []
    for number, reference in enumerate(references, 1):
        loaded = load(reference, replace(options, keep_parsers=number < len(references)))
        out.append((loaded, audit(loaded, options)))
    return out


@click.command(name="compare")
@click.argument("references", nargs=-1, required=True, metavar="REF REF…")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@common
@pull_options
@handled
def compare_command(references: tuple[str, ...], fmt: str, platform: str | None, jobs: int,
                    pull: dict[str, Any]) -> None:
    """Compare images side by side: sizes, layers, libc, distro, packages, waste, entrypoint verdict."""
    from imgaudit.compare import compare, to_json

    columns = compare([report for _, report in _audit_all(references, platform, jobs, pull)])
    if fmt == "json":
        from imgaudit.render.json import dumps

        click.echo(dumps(to_json(columns)), nl=False)
        return
    from imgaudit.render.compare import compare_markdown, compare_table

    click.echo(compare_markdown(columns) if fmt == "markdown" else compare_table(columns, color=_color()), nl=False)


@click.command(name="diff")
@click.argument("old")
@click.argument("new")
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True,
              help="markdown makes a pull-request comment.")
@common
@pull_options
@handled
def diff_command(old: str, new: str, fmt: str, platform: str | None, jobs: int, pull: dict[str, Any]) -> None:
    """What changed between two builds: layers (by diff_id), files, packages, findings."""
    from imgaudit.diff import diff_images, final_files, to_json

    (old_loaded, old_report), (new_loaded, new_report) = _audit_all((old, new), platform, jobs, pull)
    result = diff_images(old_report, new_report, final_files(old_loaded.rootfs), final_files(new_loaded.rootfs))
    if fmt == "json":
        from imgaudit.render.json import dumps

        click.echo(dumps(to_json(result)), nl=False)
        return
    from imgaudit.render.compare import diff_markdown, diff_table

    click.echo(diff_markdown(result) if fmt == "markdown" else diff_table(result, color=_color()), nl=False)
