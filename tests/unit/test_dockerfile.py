"""Dockerfile lines matched to layers through `created_by`, for both the classic builder and BuildKit."""

from __future__ import annotations

import pytest

from imgaudit.dockerfile import describe, final_chain, map_dockerfile, parse
from imgaudit.report import Finding, Severity

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
ARG RUST=1
FROM rust:${RUST}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \\
    cargo build --release

FROM debian:bookworm-slim AS base
RUN apt-get update \\
    # comments inside a continuation are dropped, as docker does
    && apt-get install -y --no-install-recommends ca-certificates \\
    && rm -rf /var/lib/apt/lists/*

FROM base
COPY --from=build /src/target/release/app /usr/local/bin/app
RUN <<EOF
useradd app
mkdir /data
EOF
USER app
CMD ["serve"]
ENTRYPOINT ["/usr/local/bin/app"]
"""

BUILDKIT = [
    "/bin/sh -c #(nop) ADD file:6b0e8f2 in / ",
    "/bin/sh -c #(nop)  CMD [\"bash\"]",
    "RUN /bin/sh -c apt-get update     && apt-get install -y --no-install-recommends ca-certificates     "
    "&& rm -rf /var/lib/apt/lists/* # buildkit",
    "COPY /src/target/release/app /usr/local/bin/app # buildkit",
    "RUN /bin/sh -c useradd app\nmkdir /data # buildkit",
]
CLASSIC = [
    "/bin/sh -c #(nop) ADD file:6b0e8f2 in / ",
    "/bin/sh -c apt-get update     && apt-get install -y --no-install-recommends ca-certificates     "
    "&& rm -rf /var/lib/apt/lists/*",
    "/bin/sh -c #(nop) COPY file:0a1b2c3d in /usr/local/bin/app ",
    "|0 /bin/sh -c useradd app",
]


def test_parse_joins_continuations_and_skips_heredoc_bodies() -> None:
    ins = parse(MULTI_STAGE)
    assert [(i.line, i.keyword) for i in ins] == [
        (2, "ARG"), (3, "FROM"), (4, "WORKDIR"), (5, "COPY"), (6, "RUN"), (9, "FROM"), (10, "RUN"), (15, "FROM"),
        (16, "COPY"), (17, "RUN"), (21, "USER"), (22, "CMD"), (23, "ENTRYPOINT")]
    run = ins[6]
    assert run.args == ("apt-get update && apt-get install -y --no-install-recommends ca-certificates "
                        "&& rm -rf /var/lib/apt/lists/*")


def test_final_chain_follows_from_stage_names() -> None:
    chain = final_chain(parse(MULTI_STAGE))
    assert [i.line for i in chain] == [9, 10, 15, 16, 17, 21, 22, 23]


@pytest.mark.parametrize(("created_by", "expected"), [
    ("/bin/sh -c #(nop) COPY file:abc in /app ", ("COPY", "file:abc in /app")),
    ("/bin/sh -c #(nop)  CMD [\"app\"]", ("CMD", "[\"app\"]")),
    ("|2 A=1 B=2 /bin/sh -c make all", ("RUN", "make all")),
    ("RUN |1 V=3 /bin/sh -c make # buildkit", ("RUN", "make")),
    ("COPY app /app # buildkit", ("COPY", "app /app")),
    ("WORKDIR /src", ("WORKDIR", "/src")),
])
def test_describe(created_by: str, expected: tuple[str, str]) -> None:
    assert describe(created_by) == expected


@pytest.mark.parametrize("history", [BUILDKIT, CLASSIC], ids=["buildkit", "classic"])
def test_layers_map_to_their_lines(history: list[str]) -> None:
    layers = [h for h in history if "CMD" not in h]  # empty_layer history entries have no layer
    dmap = map_dockerfile("Dockerfile", MULTI_STAGE, layers)
    assert dmap.layer_lines == (9, 10, 16, 17)  # base image → its FROM; then RUN, COPY, heredoc RUN
    assert dmap.from_line == 15 and dmap.entrypoint_line == 23


def test_line_for_findings() -> None:
    dmap = map_dockerfile("Dockerfile", MULTI_STAGE, [h for h in BUILDKIT if "CMD" not in h])
    at = Finding("missing-interpreter", Severity.ERROR, "m", "/usr/local/bin/app", layer=2)
    assert dmap.line_for(at, startup=True) == 16
    missing = Finding("entrypoint-missing", Severity.ERROR, "m", "/usr/local/bin/app")
    assert dmap.line_for(missing, startup=True) == 23
    budget = Finding("budget-size", Severity.ERROR, "m")
    assert dmap.line_for(budget, startup=False) == 15
    assert dmap.line_for(Finding("x", Severity.ERROR, "m", layer=99), startup=False) == 15


def test_escape_directive_and_unterminated_heredoc() -> None:
    text = "# escape=`\nFROM mcr.microsoft.com/windows\nRUN echo a `\n    b\nRUN echo '<<EOF'\nCOPY x /x\n"
    ins = parse(text)
    assert [(i.line, i.keyword, i.args) for i in ins] == [
        (2, "FROM", "mcr.microsoft.com/windows"), (3, "RUN", "echo a b"), (5, "RUN", "echo '<<EOF'"),
        (6, "COPY", "x /x")]


def test_unmatched_layers_stay_unmapped() -> None:
    dmap = map_dockerfile("Dockerfile", "FROM scratch\nCOPY a /a\n", ["ADD b.tar / # buildkit", "COPY a /a # buildkit"])
    assert dmap.layer_lines == (1, 2)  # once the stage's instructions are used up, the rest is the base
    dmap = map_dockerfile("Dockerfile", "FROM scratch\nCOPY a /a\nRUN x\n", ["ADD b.tar / # buildkit", "RUN x"])
    assert dmap.layer_lines == (None, 3)


def test_empty_dockerfile() -> None:
    dmap = map_dockerfile("Dockerfile", "", ["COPY a /a # buildkit"])
    assert dmap.layer_lines == (None,) and dmap.from_line is None and dmap.entrypoint_line is None
