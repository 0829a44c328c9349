"""Command line: options → library calls → renderer → exit code (DESIGN.md §5)."""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from imgaudit import __version__
from imgaudit.errors import EXIT_USAGE, ImgauditError, UsageError, escape
from imgaudit.image import Platform

F = TypeVar("F", bound=Callable[..., Any])


def _color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def _fail(message: str, code: int, fmt: str | None) -> None:
    if fmt == "json":
        click.echo(json.dumps({"error": {"message": message, "exit_code": code}}))
    click.echo(f"imgaudit: error: {message}", err=True)
    sys.exit(code)


def handled(func: F) -> F:
    """One line on stderr and the documented exit code for every failure; `--debug` adds the traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.pop("debug", False)
        fmt = kwargs.get("fmt")
        try:
            return func(*args, **kwargs)
        except ImgauditError as err:
            if debug:
                traceback.print_exc()
            _fail(str(err), err.exit_code, fmt)
        except KeyboardInterrupt:
            click.echo("imgaudit: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            _quiet_broken_pipe()
        except Exception as err:  # an unexpected fault must still be one line, never a traceback
            if debug:
                traceback.print_exc()
            _fail(f"internal error: {escape(type(err).__name__)}: {escape(str(err))[:300]} (rerun with --debug)",
                  3, fmt)
        return None

    return wrapper  # type: ignore[return-value]


def _quiet_broken_pipe() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


def _platform(value: str | None) -> Platform | None:
    if value is None:
        return None
    try:
        return Platform.parse(value)
    except ValueError as err:
        raise UsageError(str(err)) from err


def common(func: F) -> F:
    func = click.option("--debug", is_flag=True, help="Show the traceback of an error.")(func)
    func = click.option("--platform", "platform", metavar="OS/ARCH[/VARIANT]",
                        help="Pick one image from a multi-platform index.")(func)
    return click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
                        help="Layers scanned in parallel.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgaudit")
def main() -> None:
    """Will this image start, and where do its bytes go?"""


@main.command()
@click.argument("reference")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--all", "show_all", is_flag=True, help="Show every finding, infos included.")
@common
@handled
def inspect(reference: str, fmt: str, show_all: bool, platform: str | None, jobs: int) -> None:
    """Summarise an image: platform, digests, entrypoint verdict, layers and sizes."""
    from imgaudit.audit import Options, audit

    report = audit(reference, Options(platform=_platform(platform), jobs=jobs))
    if fmt == "json":
        from imgaudit.render.json import render

        click.echo(render(report), nl=False)
    else:
        from imgaudit.render.table import render_inspect

        click.echo(render_inspect(report, color=_color(), show_all=show_all), nl=False)


@main.command(name="ls")
@click.argument("reference")
@click.argument("path", required=False, default="/")
@click.option("--layer", type=int, default=None, help="Only what layer N (0-based) added, changed and removed.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common
@handled
def ls_command(reference: str, path: str, layer: int | None, fmt: str, platform: str | None, jobs: int) -> None:
    """List the final filesystem of an image (or one layer's changes)."""
    from imgaudit.audit import Options, load
    from imgaudit.listing import final_rows, layer_rows, with_modestr

    loaded = load(reference, Options(platform=_platform(platform), jobs=jobs, elf=False))
    top = "/" + path.strip("/") if path.strip("/") else "/"
    if layer is not None and not 0 <= layer < len(loaded.scans):
        raise UsageError(f"--layer {layer}: the image has layers 0 to {len(loaded.scans) - 1}")
    rows = final_rows(loaded.rootfs, top) if layer is None else layer_rows(loaded.rootfs, layer, top)
    if fmt == "json":
        from imgaudit.render.json import dumps

        click.echo(dumps(rows), nl=False)
    else:
        from imgaudit.render.table import render_listing

        click.echo(render_listing(with_modestr(rows, loaded.rootfs)), nl=False)


def run() -> None:
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"imgaudit: error: {err.format_message()}", err=True)
        sys.exit(EXIT_USAGE)
