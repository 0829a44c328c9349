"""Bloat findings: bytes an image ships but does not need, each with its size and the change that removes it.

Leftovers of package managers and builds, toolchains in a runtime image, debug info in ELF files, files
written in one layer and removed or rewritten in a later one, docs/man/locales, duplicate content.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imgaudit.layers import LayerScan
from imgaudit.render.text import human
from imgaudit.report import Finding, Severity
from imgaudit.rootfs import Node, RootFS
from imgaudit.rules import rule as catalogued

if TYPE_CHECKING:
    from imgaudit.checks.size import DirTotal, SizeFacts


@dataclass(frozen=True)
class Thresholds:
    """Below `report` bytes a finding is not worth a line; from `warn` bytes it is a warning."""

    report: int = 1_000_000
    warn: int = 10_000_000


@dataclass(frozen=True)
class Leftover:
    rule: str
    what: str
    pattern: re.Pattern[str]  # matches the directory (a prefix of the files it holds)


_HOME = r"(?:/root|/home/[^/]+|/usr/local/share)"
LEFTOVERS: tuple[Leftover, ...] = (
    Leftover("apt-lists", "apt package lists", re.compile(r"^/var/lib/apt/lists$")),
    Leftover("apt-archives", "apt's downloaded .deb files and package caches", re.compile(r"^/var/cache/apt$")),
    Leftover("apk-cache", "the apk package cache", re.compile(r"^/(?:var/cache/apk|etc/apk/cache)$")),
    Leftover("pip-cache", "the pip download cache", re.compile(rf"^{_HOME}/\.cache/pip$")),
    Leftover("npm-cache", "the npm/yarn cache", re.compile(rf"^{_HOME}/(?:\.npm|\.cache/yarn)$")),
    Leftover("cargo-registry", "the Cargo registry and git checkouts",
             re.compile(rf"^(?:{_HOME}/\.cargo|/usr/local/cargo)/(?:registry|git)$")),
    Leftover("go-cache", "the Go build and module caches",
             re.compile(rf"^(?:{_HOME}/\.cache/go-build|{_HOME}/go/pkg/mod|/go/pkg/mod)$")),
)

DOCS = re.compile(r"^/usr/(?:local/)?share/(?:doc|man|info|locale|gtk-doc|help)$")
HEADERS = re.compile(r"^/usr/(?:local/)?include$")
RUST_TOOLCHAIN = re.compile(rf"^(?:/usr/local/rustup|{_HOME}/\.rustup|/usr/lib/rustlib|/usr/local/lib/rustlib)$")
GCC_DIRS = re.compile(r"^/usr/(?:lib|libexec)/gcc$")
TOOL_BINARIES = re.compile(
    r"^/usr/(?:local/)?bin/(?:rustc|cargo|rustdoc|(?:[\w.-]+-)?(?:gcc|g\+\+|cc1|as|ld)(?:-\d+)?)$")


class ElfDebug(Protocol):
    """The ELF facts this module reads (imgaudit.elf.ElfFacts has them)."""

    debug_bytes: int
    stripped: bool
    rust: object | None


DEFAULT_LIMITS = Thresholds()


def findings(fs: RootFS, scans: Sequence[LayerScan], facts: SizeFacts,
             limits: Thresholds = DEFAULT_LIMITS) -> list[Finding]:
    owned = facts.owned
    totals = facts.dirs
    out: list[Finding] = []
    out += leftovers(totals, limits)
    out += target_dirs(totals, limits)
    out += toolchains(owned, totals, limits)
    out += docs(totals, limits)
    out += unstripped(owned, limits)
    out += hidden_later(facts, limits)
    out += duplicates(facts, limits)
    return [f for f in out if f.bytes is None or f.bytes >= limits.report]


def _files(count: int) -> str:
    return "1 file" if count == 1 else f"{count} files"


def _severity(size: int, limits: Thresholds) -> Severity:
    return Severity.WARNING if size >= limits.warn else Severity.INFO


def _finding(rule: str, path: str, size: int, layer: int | None, message: str, limits: Thresholds,
             fix: str | None = None) -> Finding:
    """`fix` only for advice built for this finding; else the rule catalogue's, which the docs show too."""
    return Finding(rule, _severity(size, limits), f"{message} ({human(size)})", path=path,
                   layer=max(layer, 0) if layer is not None else None, fix=fix or catalogued(rule).fix, bytes=size)


def _outermost(paths: Iterable[str]) -> list[str]:
    """Drops paths inside another listed path so bytes are not counted twice."""
    kept: list[str] = []
    for path in sorted(paths):
        if not any(path.startswith(k + "/") for k in kept):
            kept.append(path)
    return kept


def leftovers(totals: dict[str, DirTotal], limits: Thresholds) -> Iterator[Finding]:
    for rule in LEFTOVERS:
        for path in _outermost(p for p in totals if rule.pattern.match(p)):
            d = totals[path]
            yield _finding(rule.rule, path, d.bytes, d.layer, f"{rule.what} left in the image, {_files(d.files)}",
                           limits)


def _is_cargo_target(path: str, totals: dict[str, DirTotal]) -> bool:
    """A Cargo `target/` directory: named target, with a `release` or `debug` profile dir holding
    Cargo's `.fingerprint` bookkeeping."""
    return posixpath.basename(path) == "target" and any(
        posixpath.join(path, profile, ".fingerprint") in totals for profile in ("release", "debug"))


def target_dirs(totals: dict[str, DirTotal], limits: Thresholds) -> Iterator[Finding]:
    for path in _outermost(p for p in totals if _is_cargo_target(p, totals)):
        d = totals[path]
        yield _finding("cargo-target", path, d.bytes, d.layer,
                       f"a Cargo build directory (target/) left in the image, {_files(d.files)}", limits)


def toolchains(owned: Sequence[Node], totals: dict[str, DirTotal], limits: Thresholds) -> Iterator[Finding]:
    """Compilers, headers and static archives: needed to build, never to run."""
    groups = (
        ("toolchain-rust", "a Rust toolchain (rustup/rustlib)", RUST_TOOLCHAIN),
        ("toolchain-gcc", "GCC's compiler passes and support files", GCC_DIRS),
        ("dev-headers", "C/C++ header files", HEADERS),
    )
    for rule, what, pattern in groups:
        for path in _outermost(p for p in totals if pattern.match(p)):
            d = totals[path]
            yield _finding(rule, path, d.bytes, d.layer, f"{what} in a runtime image", limits)
    yield from _file_group(
        "toolchain-binaries", "compiler and build-tool binaries (rustc, cargo, gcc, as, ld…) in a runtime image",
        [n for n in owned if TOOL_BINARIES.match(n.path)], limits)
    yield from _file_group("static-archives", "static libraries (.a) in a runtime image: only the linker reads them",
                           [n for n in owned if n.path.endswith(".a")], limits)


def _file_group(rule: str, what: str, nodes: list[Node], limits: Thresholds) -> Iterator[Finding]:
    if not nodes:
        return
    size = sum(n.entry.size for n in nodes)
    biggest = max(nodes, key=lambda n: (n.entry.size, n.path))
    more = f"{biggest.path} and {len(nodes) - 1} more" if len(nodes) > 1 else biggest.path
    yield _finding(rule, biggest.path, size, biggest.layer, f"{what}: {more}", limits)


def docs(totals: dict[str, DirTotal], limits: Thresholds) -> Iterator[Finding]:
    for path in _outermost(p for p in totals if DOCS.match(p)):
        d = totals[path]
        yield _finding("docs-man-locales", path, d.bytes, d.layer,
                       f"documentation, man pages or translations, {_files(d.files)}", limits)


def _debug(node: Node) -> ElfDebug | None:
    elf = node.entry.elf
    return elf if elf is not None and getattr(elf, "debug_bytes", 0) > 0 else None  # type: ignore[return-value]


def unstripped(owned: Sequence[Node], limits: Thresholds) -> Iterator[Finding]:
    """ELF files carrying debug sections: one finding per big one, the small ones summed up."""
    small: list[tuple[Node, ElfDebug]] = []
    # The few files with debug sections, then sorted: a sort of every node was the peak of a 2M-entry layer.
    debug = [(node, elf) for node in owned if (elf := _debug(node)) is not None]
    for node, elf in sorted(debug, key=lambda pair: pair[0].path):
        if elf.debug_bytes < limits.report:
            small.append((node, elf))
            continue
        yield _finding("unstripped-elf", node.path, elf.debug_bytes, node.layer,
                       f"debug information in {'a Rust' if elf.rust is not None else 'an'} ELF file",
                       limits, _strip_fix(node.path, elf))
    total = sum(elf.debug_bytes for _, elf in small)
    if small and total >= limits.report:
        yield _finding("unstripped-elf", posixpath.commonpath([n.path for n, _ in small]) if len(small) > 1
                       else small[0][0].path, total, small[0][0].layer,
                       f"debug information in {len(small)} ELF files", limits)


def _strip_fix(path: str, elf: ElfDebug) -> str:
    if elf.rust is not None:
        return (f"in Cargo.toml: `[profile.release] strip = true` (or `debug = false`) saves {human(elf.debug_bytes)};"
                f" or `strip --strip-debug {path}` in the build stage")
    return f"`strip --strip-debug {path}` in the build stage (or link with -s / install -s)"


_HIDDEN_RULES = {
    "removed": ("removed-later", "added in layer {layer} and removed in layer {hidden_by}: the bytes still ship in "
                "layer {layer}"),
    "opaque": ("removed-later", "added in layer {layer}, hidden by an opaque directory in layer {hidden_by}: the "
               "bytes still ship in layer {layer}"),
    "replaced": ("removed-later", "added in layer {layer}, its parent replaced in layer {hidden_by}: the bytes still "
                 "ship in layer {layer}"),
    "overwritten": ("rewritten-later", "written in layer {layer} and again in layer {hidden_by} (chmod, chown, touch "
                    "or an edit copies the whole file): both copies ship"),
    "duplicate-entry": ("duplicate-entry", "the same path twice in layer {layer}: the first copy is dead weight"),
}


def hidden_later(facts: SizeFacts, limits: Thresholds) -> Iterator[Finding]:
    """Bytes of lower layers nobody sees: a later `rm` or rewrite never shrinks an image."""
    for item in facts.reclaim.contributors:
        rule, message = _HIDDEN_RULES[item.reason]
        files = f", {item.files} files" if item.files > 1 else ""
        yield _finding(rule, item.path, item.bytes, item.layer,
                       message.format(layer=item.layer, hidden_by=item.hidden_by) + files, limits)


def duplicates(facts: SizeFacts, limits: Thresholds) -> Iterator[Finding]:
    for digest, size, paths in facts.duplicates:
        wasted = size * (len(paths) - 1)
        if wasted < limits.report:
            break  # ranked by wasted bytes
        yield _finding("duplicate-content", paths[0], wasted, None,
                       f"the same content ({digest[:19]}) at {len(paths)} paths: {', '.join(paths[:4])}"
                       f"{' …' if len(paths) > 4 else ''}", limits)
