"""Which Dockerfile line made which layer: a small Dockerfile reader matched against the layers' `created_by`.

Handles both history shapes: the classic builder's `/bin/sh -c #(nop) COPY file:… in /app` and
`|1 ARG=v /bin/sh -c make`, and BuildKit's `COPY app /app # buildkit` / `RUN /bin/sh -c make # buildkit`.
Only the final stage's layers are in the image (plus the stages it is built FROM, and the base image's).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from imgaudit.report import Finding

_HEREDOC = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")
_DIRECTIVE = re.compile(r"^#\s*escape\s*=\s*(\S)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    line: int  # 1-based line of the keyword
    keyword: str  # upper case
    args: str  # continuation lines joined


def _escape_char(lines: list[str]) -> str:
    """The `# escape=` parser directive; it is only honoured before the first comment or instruction."""
    for line in lines:
        match = _DIRECTIVE.match(line.strip())
        if match:
            return match[1]
        if line.strip():
            break
    return "\\"


def _skip_heredocs(args: str, lines: list[str], index: int) -> int:
    """Index of the line after the bodies of `<<EOF` heredocs that start at `args` (BuildKit syntax)."""
    start = index
    for dash, _, word in _HEREDOC.findall(args):
        while index < len(lines):
            body = lines[index]
            index += 1
            if (body.lstrip("\t") if dash else body) == word:
                break
        else:
            return start  # no terminator: `<<` was not a heredoc (e.g. inside a quoted string)
    return index


def parse(text: str) -> list[Instruction]:
    lines = text.splitlines()
    escape = _escape_char(lines)
    out: list[Instruction] = []
    i = 0
    while i < len(lines):
        start, raw = i, lines[i].strip()
        i += 1
        if not raw or raw.startswith("#"):
            continue
        parts = []
        while raw.endswith(escape) and i < len(lines):
            parts.append(raw[:-1])
            raw = lines[i].strip()
            i += 1
            while (not raw or raw.startswith("#")) and i < len(lines):  # comments and blanks inside continuations
                raw = lines[i].strip()
                i += 1
        parts.append(raw.removesuffix(escape))
        keyword, _, args = " ".join(parts).partition(" ")
        out.append(Instruction(start + 1, keyword.upper(), " ".join(args.split())))
        if keyword.upper() in ("RUN", "COPY", "ADD"):
            i = _skip_heredocs(args, lines, i)
    return out


def stages(instructions: Sequence[Instruction]) -> list[list[Instruction]]:
    """Instructions grouped per stage; each stage starts with its FROM (anything before the first FROM is ARGs)."""
    out: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM" or not out:
            out.append([])
        out[-1].append(ins)
    return [s for s in out if s and s[0].keyword == "FROM"]


def _stage_name(stage: list[Instruction]) -> str | None:
    words = _plain_args(stage[0].args).split()
    return words[2].lower() if len(words) >= 3 and words[1].lower() == "as" else None


def final_chain(instructions: Sequence[Instruction]) -> list[Instruction]:
    """The final stage's instructions, preceded by those of the earlier stages it is built FROM."""
    groups = stages(instructions)
    if not groups:
        return []
    chain = groups[-1]
    names = {_stage_name(g): g for g in groups[:-1] if _stage_name(g)}
    seen: set[str] = set()
    while True:
        base = _plain_args(chain[0].args).split()[:1]
        parent = names.get(base[0].lower()) if base else None
        if parent is None or base[0].lower() in seen:
            return chain
        seen.add(base[0].lower())
        chain = parent + chain


def _plain_args(args: str) -> str:
    """Arguments without leading `--flag=value` options (`--from=`, `--mount=`, `--chown=`, `--platform=`)."""
    words = args.split(" ")
    while words and words[0].startswith("--"):
        words.pop(0)
    return " ".join(words)


def _destination(args: str) -> str:
    plain = _plain_args(args)
    if plain.startswith("["):
        try:
            items = json.loads(plain)
            return str(items[-1]).rstrip("/") if items else ""
        except (json.JSONDecodeError, TypeError):
            pass
    return plain.rsplit(" ", 1)[-1].rstrip("/")


def describe(created_by: str) -> tuple[str, str]:
    """`created_by` → (KEYWORD, args) in the Dockerfile's own terms."""
    text = " ".join(created_by.split())
    text = text.removesuffix("# buildkit").strip()
    nop = re.search(r"/bin/sh -c #\(nop\) (.*)$", text)
    if nop:
        keyword, _, args = nop[1].strip().partition(" ")
        return keyword.upper(), args.strip()
    shell = re.search(r"/bin/sh -c (.*)$", text)
    if shell:
        return "RUN", shell[1].strip()
    keyword, _, args = text.partition(" ")
    return keyword.upper(), args.strip()


def score(layer: tuple[str, str], ins: Instruction) -> int:
    """2: this instruction made the layer; 1: same kind of instruction; 0: not it."""
    keyword, args = layer
    if keyword != ins.keyword:
        return 0
    if keyword == "RUN":
        return 2 if args == _plain_args(ins.args) or args == ins.args else 1
    if keyword in ("COPY", "ADD"):
        # The classic builder writes `file:<hash> in /dest`, so only the destination can be compared.
        dest = args.rsplit(" in ", 1)[-1].strip().rstrip("/") if " in " in args else _destination(args)
        return 2 if dest == _destination(ins.args) else 1
    return 2 if args == ins.args else 1


def match_layers(chain: Sequence[Instruction], created_by: Sequence[str]) -> list[int | None]:
    """Dockerfile line per layer, matched from the last layer backwards (only the top layers are ours).

    A layer takes the nearest earlier instruction that made it, else the nearest of the same kind; once the
    stage's instructions are used up, the rest are the base image's layers and map to the FROM line.
    """
    from_line = chain[0].line if chain else None
    candidates = [ins for ins in chain if ins.keyword != "FROM"]
    out: list[int | None] = [None] * len(created_by)
    j = len(candidates) - 1
    for i in reversed(range(len(created_by))):
        if j < 0:
            out[i] = from_line
            continue
        layer = describe(created_by[i])
        scores = [(score(layer, candidates[k]), k) for k in range(j, -1, -1)]
        strong = next((k for s, k in scores if s == 2), None)
        weak = next((k for s, k in scores if s == 1), None)
        k = strong if strong is not None else weak
        if k is not None:
            out[i] = candidates[k].line
            j = k - 1
    return out


@dataclass(frozen=True)
class DockerfileMap:
    """Lines of one Dockerfile for each layer, the final FROM and the ENTRYPOINT/CMD."""

    path: str
    layer_lines: tuple[int | None, ...]
    from_line: int | None
    entrypoint_line: int | None

    def line_for(self, finding: Finding, *, startup: bool) -> int | None:
        """The line that introduced the finding's layer; start-up findings without one point at ENTRYPOINT/CMD."""
        if finding.layer is not None and 0 <= finding.layer < len(self.layer_lines):
            line = self.layer_lines[finding.layer]
            if line is not None:
                return line
        if startup:
            return self.entrypoint_line or self.from_line
        return self.from_line


def map_dockerfile(path: str, text: str, created_by: Sequence[str]) -> DockerfileMap:
    chain = final_chain(parse(text))
    last_stage = stages(chain)[-1] if chain else []
    # ENTRYPOINT and CMD are inherited from the stages the final one is built FROM.
    entry = [i.line for i in chain if i.keyword == "ENTRYPOINT"] or [i.line for i in chain if i.keyword == "CMD"]
    return DockerfileMap(path, tuple(match_layers(chain, created_by)),
                         last_stage[0].line if last_stage else None, entry[-1] if entry else None)
