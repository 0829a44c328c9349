"""Command line: options → library calls → renderer → exit code (DESIGN.md §5)."""

from __future__ import annotations

import json
import logging
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
from imgaudit.progress import terminal_progress

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


def _no_cache(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["IMGAUDIT_CACHE"] = "off"  # read by cache.ScanCache.default(); also the ELF worker's env


def common(func: F) -> F:
    func = click.option("--debug", is_flag=True, help="Show the traceback of an error.")(func)
    func = click.option("--no-cache", is_flag=True, expose_value=False, callback=_no_cache,
                        help="Neither read nor write the cache of layer scans, linkage memos and reports "
                             "($IMGAUDIT_CACHE_DIR).")(func)
    func = click.option("--platform", "platform", metavar="OS/ARCH[/VARIANT]",
                        help="Pick one image from a multi-platform index.")(func)
    return click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
                        help="Layers scanned in parallel; their ELF files share one parser process per two CPUs.")(func)


_PULL_KEYS = ("from_source", "username", "password_stdin", "ca_cert", "insecure")


def pull_options(func: F) -> F:
    """--from and the registry options, handed to the command as one raw `pull` dict (see `_pull`)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, pull={key: kwargs.pop(key) for key in _PULL_KEYS}, **kwargs)

    options = [
        click.option("--from", "from_source", type=click.Choice(["daemon", "registry"]),
                     help="Where a bare NAME[:TAG] comes from.  [default: the local daemon if it has it, "
                          "else the registry]"),
        click.option("--username", metavar="USER", help="Registry user (overrides the Docker config)."),
        click.option("--password-stdin", is_flag=True, help="Read the registry password or token from stdin."),
        click.option("--ca-cert", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                     help="Trust this CA (PEM) for the registry's TLS certificate."),
        click.option("--insecure", is_flag=True,
                     help="Plain HTTP or unverified TLS for the registry the reference names (implied for "
                          "localhost and 127.0.0.1)."),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _pull(pull: dict[str, Any]) -> dict[str, Any]:
    """`Options` fields every image-reading command shares: the pull flags and the terminal progress.
    The password comes from stdin only (argv shows in `ps`), read
    whole with one trailing newline dropped, as `docker login --password-stdin` does."""
    from imgaudit.sources.auth import RegistryOptions

    username, from_stdin = pull["username"], pull["password_stdin"]
    if from_stdin != bool(username):
        raise UsageError("--username and --password-stdin go together (the password is read from stdin)")
    password = sys.stdin.read().removesuffix("\n").removesuffix("\r") if from_stdin else None
    if from_stdin and not password:
        raise UsageError("--password-stdin: stdin was empty")
    return {"source": pull["from_source"],
            "registry": RegistryOptions(username, password, pull["ca_cert"], pull["insecure"]),
            "progress": terminal_progress()}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="imgaudit")
def main() -> None:
    """Will this image start, and where do its bytes go?"""


_BUDGET_FLAGS = (  # the CI gate's budgets (imgaudit/policy.py); SIZE is 200MB (decimal) or 1.5GiB (binary)
    ("--max-size", "SIZE", "Fail when all layers, uncompressed, exceed SIZE."),
    ("--max-compressed-size", "SIZE", "Fail when the compressed layers exceed SIZE."),
    ("--max-layers", "N", "Fail with more than N layers."),
    ("--min-efficiency", "RATIO", "Fail under this efficiency (dive's lowestEfficiency; 0.95 or 95%)."),
    ("--max-wasted", "SIZE", "Fail when wasted bytes exceed SIZE (dive's highestWastedBytes)."),
    ("--max-user-wasted", "RATIO", "Fail when wasted ÷ bytes after the base layer exceeds RATIO "
                                   "(dive's highestUserWastedPercent)."),
    ("--max-reclaimable", "SIZE", "Fail when bytes hidden by later layers exceed SIZE."),
)


def gate_options(func: F) -> F:
    """Outputs, fail threshold, budgets, ignores, config file and Dockerfile of the CI gate."""
    for flag, metavar, text in reversed(_BUDGET_FLAGS):
        func = click.option(flag, metavar=metavar, help=text + " 'off' lifts a configured budget.")(func)
    options = [
        click.option("--format", "fmt", type=click.Choice(["table", "json", "sarif", "junit", "markdown"]),
                     default="table", show_default=True, help="What to print on stdout."),
        click.option("--output", "-o", "outputs", multiple=True, metavar="[FORMAT:]FILE",
                     help="Also write FORMAT to FILE (format from the suffix: .sarif .json .xml .md). Repeatable."),
        click.option("--fail-on", type=click.Choice(["error", "warning", "never"]),
                     help="Exit 1 when a finding reaches this severity.  [default: error]"),
        click.option("--ignore", "ignore", multiple=True, metavar="RULE[:PATH]",
                     help="Drop findings of RULE (at paths matching the PATH glob). Repeatable."),
        click.option("--config", type=click.Path(dir_okay=False), metavar="FILE",
                     help="Read settings from FILE instead of the nearest .imgaudit.toml / pyproject.toml / .dive-ci."),
        click.option("--dockerfile", type=click.Path(dir_okay=False), metavar="PATH",
                     help="Point SARIF results and annotations at the Dockerfile line that made each layer."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@main.command()
@click.argument("reference")
@click.option("--all", "show_all", is_flag=True, help="Show every finding, infos included.")
@gate_options
@common
@pull_options
@handled
def inspect(reference: str, fmt: str, show_all: bool, platform: str | None, jobs: int, pull: dict[str, Any],
            **gate: Any) -> None:
    """Summarise an image: platform, digests, entrypoint verdict, layers and sizes; exit 1 when it fails the gate."""
    from pathlib import Path

    from imgaudit import ci
    from imgaudit.audit import Options, audit
    from imgaudit.policy import apply, load_policy, unknown_ignores
    from imgaudit.rules import rule_ids

    flags = {k: v for k, v in gate.items() if v not in (None, ()) and k not in ("outputs", "config", "dockerfile")}
    policy = load_policy(flags, Path(gate["config"]) if gate["config"] else None)
    for ignore in unknown_ignores(policy, rule_ids()):
        click.echo(f"imgaudit: warning: --ignore {ignore}: no rule matches {ignore.rule!r}", err=True)
    outputs = [ci.parse_output(value) for value in gate["outputs"]]
    protected = ci.input_paths(reference) + ([Path(gate["dockerfile"])] if gate["dockerfile"] else [])
    ci.check_outputs(outputs, protected)
    report = apply(audit(reference, Options(platform=_platform(platform), jobs=jobs, **_pull(pull))), policy)
    view = ci.Gate(policy, ci.load_dockerfile(gate["dockerfile"], report), color=_color(), show_all=show_all)
    sys.exit(ci.finish(report, view, fmt=fmt, outputs=outputs, env=os.environ,
                       echo=lambda text: click.echo(text, nl=False),
                       echo_err=lambda text: click.echo(text, nl=False, err=True)))


main.add_command(inspect, name="check")  # the name a CI step reads best: `imgaudit check IMAGE`


@main.command(name="ls")
@click.argument("reference")
@click.argument("path", required=False, default="/")
@click.option("--layer", type=int, default=None, help="Only what layer N (0-based) added, changed and removed.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common
@pull_options
@handled
def ls_command(reference: str, path: str, layer: int | None, fmt: str, platform: str | None, jobs: int,
               pull: dict[str, Any]) -> None:
    """List the final filesystem of an image (or one layer's changes)."""
    from imgaudit.audit import Options, load
    from imgaudit.listing import final_rows, layer_rows, with_modestr

    loaded = load(reference, Options(platform=_platform(platform), jobs=jobs, elf=False, **_pull(pull)))
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


def _library_warnings_to_stderr() -> None:
    """The library logs its warnings (it never prints, DESIGN.md §5); the CLI shows them as its own lines."""
    logger = logging.getLogger("imgaudit")
    if logger.handlers:  # run() called again in one process (tests)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("imgaudit: warning: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def run() -> None:
    _library_warnings_to_stderr()
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:  # click's word for a KeyboardInterrupt while it parses the command line
        click.echo("imgaudit: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"imgaudit: error: {err.format_message()}", err=True)
        sys.exit(EXIT_USAGE)


from imgaudit.cli_size import compare_command, diff_command  # noqa: E402 - it builds on the helpers above

main.add_command(compare_command)
main.add_command(diff_command)


from imgaudit.cli_ldd import ldd  # noqa: E402 - it builds on the helpers above

main.add_command(ldd)
