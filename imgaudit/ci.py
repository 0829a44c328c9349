"""The post-build gate's outputs: the terminal format, `--output` files, GitHub Actions annotations and step summary.

Workflow commands follow GitHub's toolkit (`@actions/core` command.ts): data escapes `%`, CR and LF; property
values also `:` and `,`. Annotations go to stderr so stdout stays one machine-readable document.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from imgaudit.dockerfile import DockerfileMap, map_dockerfile
from imgaudit.errors import UsageError
from imgaudit.policy import Policy, decide, failing
from imgaudit.report import Finding, Report, Severity
from imgaudit.rules import Category, rule

FORMATS = ("table", "json", "sarif", "junit", "markdown")
_SUFFIXES = {".sarif": "sarif", ".json": "json", ".xml": "junit", ".md": "markdown", ".markdown": "markdown",
             ".txt": "table"}
ANNOTATIONS_PER_LEVEL = 10  # GitHub shows at most 10 errors and 10 warnings per step


@dataclass(frozen=True)
class Output:
    fmt: str
    path: Path


def parse_output(value: str) -> Output:
    """`[FORMAT:]FILE`; without FORMAT it comes from the suffix (`.sarif`, `.sarif.json`, `.json`, `.xml`, `.md`)."""
    head, sep, rest = value.partition(":")
    if sep and head in FORMATS and rest:
        return Output(head, Path(rest))
    path = Path(value)
    if path.name.endswith(".sarif.json"):
        return Output("sarif", path)
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"--output {value}: cannot tell the format from the name; write FORMAT:FILE with FORMAT "
                         f"one of {', '.join(FORMATS)}")
    return Output(fmt, path)


def input_paths(reference: str) -> list[Path]:
    """Local files or directories the reference reads (as the sources parse it), which an output must never replace."""
    from imgaudit.reference import parse_reference

    path = parse_reference(reference).path
    return [Path(path)] if path else []


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_outputs(outputs: Sequence[Output], protected: Sequence[Path]) -> None:
    for out in outputs:
        for path in protected:
            if _same(out.path, path):
                raise UsageError(f"--output {out.path}: refusing to overwrite the input {path}")
    for out in outputs:  # fail before the (slow) audit rather than after it
        if not out.path.parent.is_dir():
            raise UsageError(f"--output {out.path}: no directory {out.path.parent}")
    seen = [o.path.resolve() for o in outputs]
    if len(set(seen)) != len(seen):
        raise UsageError("--output: two outputs name the same file")


def write_atomic(path: Path, text: str) -> None:
    """Temp file in the same directory, then rename: a reader never sees half a report, a failure leaves none."""
    directory = path.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise UsageError(f"--output {path}: cannot write in {directory}: {err.strerror}") from err
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o644)  # mkstemp makes 0600; a report is no secret and CI uploaders may run as others
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- GitHub Actions ----

def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


_COMMAND = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def annotation(finding: Finding, dockerfile: DockerfileMap | None) -> str:
    props = []
    if dockerfile is not None:
        line = dockerfile.line_for(finding, startup=rule(finding.rule).category is Category.STARTUP)
        if line is not None:
            props += [f"file={escape_property(dockerfile.path)}", f"line={line}"]
    props.append(f"title={escape_property('imgaudit ' + finding.rule)}")
    where = f"{finding.path}: " if finding.path else ""
    fix = f" Fix: {finding.fix}" if finding.fix else ""
    return f"::{_COMMAND[finding.severity]} {','.join(props)}::{escape_data(where + finding.message + fix)}"


def workflow_commands(report: Report, dockerfile: DockerfileMap | None,
                      limit: int = ANNOTATIONS_PER_LEVEL) -> list[str]:
    """Errors and warnings in report order, at most `limit` of each, and a notice counting the rest."""
    out: list[str] = []
    left = 0
    for level in (Severity.ERROR, Severity.WARNING):
        found = [f for f in report.findings if f.severity is level]
        out += [annotation(f, dockerfile) for f in found[:limit]]
        left += max(0, len(found) - limit)
    if left:
        out.append(f"::notice title=imgaudit::{left} more finding(s) not annotated; see the job summary or the report")
    return out


def in_github_actions(env: Mapping[str, str]) -> bool:
    return env.get("GITHUB_ACTIONS") == "true"


def append_step_summary(env: Mapping[str, str], markdown: str) -> bool:
    """Append to `$GITHUB_STEP_SUMMARY` when the runner set it; True when written."""
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    with open(target, "a", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(markdown if markdown.endswith("\n") else markdown + "\n")
    return True


# ---- rendering and the whole gate ----

@dataclass(frozen=True)
class Gate:
    """Everything the outputs need besides the report."""

    policy: Policy
    dockerfile: DockerfileMap | None = None
    color: bool = False
    show_all: bool = False
    now: datetime | None = None  # fixed in tests so JUnit output is reproducible


def render_as(fmt: str, report: Report, gate: Gate, *, terminal: bool = False) -> str:
    """`report` (already `policy.apply`-ed) in one format; colour only for the terminal."""
    if fmt == "json":
        from imgaudit.render.json import render

        return render(report)
    if fmt == "sarif":
        from imgaudit.render.sarif import render as sarif

        uri = dockerfile_uri(gate.dockerfile.path) if gate.dockerfile else None
        return sarif(report, dockerfile=gate.dockerfile, dockerfile_uri=uri)
    if fmt == "junit":
        from imgaudit.render.junit import render as junit

        return junit(report, gate.policy, now=gate.now)
    if fmt == "markdown":
        from imgaudit.render.markdown import render as markdown

        return markdown(report, gate.policy)
    from imgaudit.render.table import render_inspect

    return render_inspect(report, color=gate.color and terminal, show_all=gate.show_all) + gate_line(report,
                                                                                                      gate.policy)


def dockerfile_uri(path: str) -> str:
    """SARIF wants a URI: relative paths percent-encoded (resolved against %SRCROOT%), absolute ones as file:."""
    given = Path(path)
    return given.as_uri() if given.is_absolute() else quote(given.as_posix(), safe="/")


def gate_line(report: Report, policy: Policy) -> str:
    count = len(failing(report, policy))
    if count:
        return f"gate: FAIL ({count} finding(s) at or above --fail-on {policy.fail_on.value})\n"
    return f"gate: pass (--fail-on {policy.fail_on.value})\n"


def load_dockerfile(path: str | None, report: Report) -> DockerfileMap | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"--dockerfile {path}: {err.strerror}") from err
    return map_dockerfile(annotation_path(path), text, [layer.created_by for layer in report.size.layers])


def annotation_path(path: str) -> str:
    """GitHub wants file paths relative to the repository root (the job's working directory)."""
    given = Path(path)
    if given.is_absolute():
        try:
            return given.relative_to(Path.cwd()).as_posix()
        except ValueError:
            return given.as_posix()
    return given.as_posix()


def finish(report: Report, gate: Gate, *, fmt: str, outputs: Sequence[Output], env: Mapping[str, str],
           echo: Callable[[str], None], echo_err: Callable[[str], None]) -> int:
    """Print the terminal format, write the `--output` files, talk to GitHub Actions; return the exit code."""
    for out in outputs:
        write_atomic(out.path, render_as(out.fmt, report, gate))
    echo(render_as(fmt, report, gate, terminal=True))
    if in_github_actions(env):
        for line in workflow_commands(report, gate.dockerfile):
            echo_err(line + "\n")
    if env.get("GITHUB_STEP_SUMMARY"):
        append_step_summary(env, render_as("markdown", report, gate))
    return decide(report, gate.policy)
