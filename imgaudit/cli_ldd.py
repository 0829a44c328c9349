"""`imgaudit ldd REF PATH`: the in-image ldd/lddtree of one file (registered on `main` in cli.py)."""

from __future__ import annotations

import json

import click

from imgaudit.cli import _platform, common, handled
from imgaudit.errors import UsageError


@click.command(name="ldd")
@click.argument("reference")
@click.argument("path")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@common
@handled
def ldd(reference: str, path: str, fmt: str, platform: str | None, jobs: int) -> None:
    """Resolve PATH's needed libraries as the image's own loader would, with the search step of each."""
    from imgaudit.audit import Options, load
    from imgaudit.loader import LoaderEnv, facts_of, real_file, resolve, to_dict
    from imgaudit.render.linkage_text import render_ldd

    loaded = load(reference, Options(platform=_platform(platform), jobs=jobs))
    real = real_file(loaded.rootfs, path)
    if real is None:
        raise UsageError(f"{path}: no such file in {reference}")
    facts = facts_of(loaded.rootfs, real)
    reason = "not an ELF file" if facts is None else facts.error or "statically linked"
    config = loaded.image.config
    res = resolve(loaded.rootfs, path, LoaderEnv.from_env(config.env, config.working_dir))
    if fmt == "json":
        body = to_dict(res) if res is not None else {"path": path, "loader": None, "message": reason}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(render_ldd(path, res, static_reason=reason), nl=False)
