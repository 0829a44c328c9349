"""RELIABILITY #96, DT and RPATH edge cases, one fixture each: real ELF fixtures whose DT_NEEDED, DT_RPATH
and DT_RUNPATH are rewritten on their way through the layer scan (the loader only reads the facts), so
every case runs the real scan → RootFS → loader path without a linker that would refuse to build it."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imgaudit import entrypoint, ldconf, loader
from imgaudit.elf import ElfFacts, read_elf
from imgaudit.image import ImageConfig, Platform
from imgaudit.layers import scan_layer
from imgaudit.loader import LoaderEnv, Step
from imgaudit.rootfs import MAXSYMLINKS, RootFS
from tests.builders import DEFAULT_ENV, Item, f, make_layer, sym

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "build"
pytestmark = pytest.mark.skipif(not (FIX / "greet" / "bin" / "greet-app").exists(), reason="run scripts/build-fixtures")
NO_SUCH = "cannot open shared object file: No such file or directory"


def fx(rel: str) -> bytes:
    return (FIX / rel).read_bytes()


APP, LIB, MUSL_APP = fx("greet/bin/greet-app"), fx("greet/lib/libgreet.so.1"), fx("musl/hello-dynamic")
MUSL_LD = f("lib/ld-musl-x86_64.so.1", fx("musl/hello-static"), 0o755)  # only its name matters to the loader


def image(items: list[Item], facts: Mapping[str, Mapping[str, Any]] | None = None) -> RootFS:
    """A one-layer image whose ELF facts at the given paths get the given fields (needed, rpath, …)."""
    edits = facts or {}
    # Facts are parsed once per content in a process (RELIABILITY #98): each edited file gets bytes of
    # its own, appended past everything the ELF headers point at.
    items = [replace(i, data=i.data + uuid.uuid4().bytes) if "/" + i.name in edits else i for i in items]

    def reader(path: str, data: bytes) -> ElfFacts:
        real = read_elf(path, data)
        return replace(real, **edits[path]) if path in edits else real

    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)), elf_reader=reader)])


def found(res: loader.Resolution | None, name: str) -> tuple[str | None, str | None, Step | None]:
    assert res is not None
    link = next(link for link in res.links if link.name == name)
    return link.path, link.real_path, link.step


def test_ten_thousand_needed_entries_resolve_in_bounded_time() -> None:
    """Each name is searched once and reported once; the walk is a queue, so nothing recurses."""
    needed = tuple(f"libmissing{i}.so" for i in range(10_000)) + ("libgreet.so.1",) * 10_000
    fs = image([f("app/bin/app", APP, 0o755), f("app/lib/libgreet.so.1", LIB)],
               {"/app/bin/app": {"needed": needed}})
    start = time.process_time()
    res = loader.resolve(fs, "/app/bin/app")
    took = time.process_time() - start
    assert res is not None and took < 10, took
    assert len(res.missing()) == 10_000
    assert len([p for p in res.problems if p.kind == "missing-library"]) == 10_000
    assert res.fatal is not None and res.fatal.library == "libmissing0.so"  # glibc stops at the first
    assert [o.real_path for o in res.objects[1:]] == ["/app/lib/libgreet.so.1"]  # loaded once, reused 9 999 times
    assert sum(1 for link in res.links if link.step is Step.LOADED) == 9_999


@pytest.mark.parametrize("musl", [False, True])
@pytest.mark.parametrize(("name", "cwd", "path"), [
    ("lib/libgreet.so.1", "/app", "/app/lib/libgreet.so.1"),
    ("../lib/libgreet.so.1", "/app/bin", "/app/bin/../lib/libgreet.so.1"),
    ("/app/lib/libgreet.so.1", "/elsewhere", "/app/lib/libgreet.so.1"),
])
def test_needed_with_a_slash_is_opened_from_the_images_working_dir(musl: bool, name: str, cwd: str,
                                                                   path: str) -> None:
    """Both loaders open such a name as written, relative to the process cwd: the image's WorkingDir."""
    program = MUSL_APP if musl else APP
    items = [f("app/bin/app", program, 0o755), f("app/lib/libgreet.so.1", LIB), MUSL_LD]
    fs = image(items, {"/app/bin/app": {"needed": (name,), "runpath": ()}})
    res = loader.resolve(fs, "/app/bin/app", LoaderEnv(cwd=cwd))
    assert found(res, name) == (path, "/app/lib/libgreet.so.1", Step.PATH)
    # From the root, the relative names find nothing: never the host's cwd, never a search path.
    res = loader.resolve(fs, "/app/bin/app", LoaderEnv(cwd="/"))
    assert res is not None
    link = next(link for link in res.links if link.name == name)
    if name.startswith("/"):
        assert link.path == path
    else:
        assert link.path is None and [c.path for c in link.tried] == ["/" + name]  # `..` stays at the root


def test_empty_rpath_element_is_the_images_working_dir_for_glibc_and_skipped_by_musl() -> None:
    """glibc's fillin_rpath turns an empty element into "./" (the process cwd); musl's path_open skips
    empty elements (strspn over the separators)."""
    items = [f("app/bin/app", APP, 0o755), f("app/bin/musl-app", MUSL_APP, 0o755), MUSL_LD,
             f("work/libgreet.so.1", LIB)]
    edit = {"needed": ("libgreet.so.1",), "runpath": ("/nowhere", "")}
    fs = image(items, {"/app/bin/app": edit, "/app/bin/musl-app": edit})
    glibc = loader.resolve(fs, "/app/bin/app", LoaderEnv(cwd="/work"))
    assert found(glibc, "libgreet.so.1") == ("/work/libgreet.so.1", "/work/libgreet.so.1", Step.RUNPATH)
    at_root = loader.resolve(fs, "/app/bin/app", LoaderEnv(cwd="/"))
    assert at_root is not None and at_root.missing()[0].tried[1].path == "/libgreet.so.1"
    musl = loader.resolve(fs, "/app/bin/musl-app", LoaderEnv(cwd="/work"))
    assert musl is not None and musl.flavour == "musl"
    assert [(c.path, c.step) for c in musl.missing()[0].tried][:1] == [("/nowhere/libgreet.so.1", Step.RUNPATH)]
    assert "/work/libgreet.so.1" not in [c.path for c in musl.missing()[0].tried]


@pytest.mark.parametrize(("machine", "platform"), [("x86_64", "x86_64"), ("aarch64", "aarch64")])
def test_platform_token_expands_to_the_machine_and_an_unknown_token_stays_literal(machine: str,
                                                                                  platform: str) -> None:
    glibc = loader.GlibcLoader(image([]), LoaderEnv(), machine, 64)
    expanded = glibc.expand("/p/$PLATFORM:/q/${PLATFORM}x:/r/$PLATFORMS", "/o")
    assert expanded == f"/p/{platform}:/q/{platform}x:/r/$PLATFORMS"
    assert glibc.expand("/opt/$FOO/${BAR}", "/o") == "/opt/$FOO/${BAR}"


def test_platform_and_unknown_tokens_in_a_real_search() -> None:
    """glibc searches `$ORIGIN/../$PLATFORM` expanded and `/opt/$FOO` as a literal directory name;
    musl expands only $ORIGIN and drops a whole rpath that has any other `$`."""
    items = [f("app/bin/app", APP, 0o755), f("app/bin/musl-app", MUSL_APP, 0o755), MUSL_LD,
             f("app/x86_64/libplat.so", LIB), f("opt/$FOO/libfoo.so", LIB), f("lib/libfoo.so", LIB)]
    edit = {"needed": ("libplat.so", "libfoo.so"), "runpath": ("$ORIGIN/../$PLATFORM", "/opt/$FOO")}
    fs = image(items, {"/app/bin/app": edit, "/app/bin/musl-app": edit})
    glibc = loader.resolve(fs, "/app/bin/app")
    assert found(glibc, "libplat.so") == ("/app/bin/../x86_64/libplat.so", "/app/x86_64/libplat.so", Step.RUNPATH)
    assert found(glibc, "libfoo.so") == ("/opt/$FOO/libfoo.so", "/opt/$FOO/libfoo.so", Step.RUNPATH)
    musl = loader.resolve(fs, "/app/bin/musl-app")
    assert musl is not None and musl.flavour == "musl"
    assert found(musl, "libfoo.so") == ("/lib/libfoo.so", "/lib/libfoo.so", Step.MUSL_DEFAULT)
    assert found(musl, "libplat.so")[0] is None


def test_a_dependency_cycle_terminates_with_each_library_loaded_once() -> None:
    items = [f("app/bin/app", APP, 0o755), f("lib/liba.so", LIB), f("lib/libb.so", LIB)]
    fs = image(items, {"/app/bin/app": {"needed": ("liba.so",), "runpath": ()},
                       "/lib/liba.so": {"needed": ("libb.so",), "soname": "liba.so"},
                       "/lib/libb.so": {"needed": ("liba.so",), "soname": "libb.so"}})
    res = loader.resolve(fs, "/app/bin/app")
    assert res is not None and res.fatal is None
    assert [(o.real_path, o.depth) for o in res.objects] == [
        ("/app/bin/app", 0), ("/lib/liba.so", 1), ("/lib/libb.so", 2)]
    assert [(link.needed_by, link.name, link.step) for link in res.links] == [
        ("/app/bin/app", "liba.so", Step.DEFAULT), ("/lib/liba.so", "libb.so", Step.DEFAULT),
        ("/lib/libb.so", "liba.so", Step.LOADED)]


def test_absolute_symlink_chains_resolve_inside_the_image() -> None:
    """Absolute link targets start at the image root, whatever the host has at those paths."""
    items = [f("app/bin/app", APP, 0o755), sym("lib/libgreet.so.1", "/usr/lib/libgreet.so.1.0"),
             sym("usr/lib/libgreet.so.1.0", "/opt/real/../real/libgreet.so"), sym("opt/real/libgreet.so", "/etc/x"),
             f("etc/x", LIB)]
    fs = image(items, {"/app/bin/app": {"runpath": ()}})
    res = loader.resolve(fs, "/app/bin/app")
    assert found(res, "libgreet.so.1") == ("/lib/libgreet.so.1", "/etc/x", Step.DEFAULT)


@pytest.mark.parametrize("links", [
    [sym("lib/libgreet.so.1", "/usr/lib/libgreet.so.1"), sym("usr/lib/libgreet.so.1", "/lib/libgreet.so.1")],
    [sym("lib/libgreet.so.1", "libgreet.so.1")],
    # A chain one hop longer than the kernel follows, ending at a real library.
    [sym(f"lib/l{i}", f"/lib/l{i + 1}") for i in range(MAXSYMLINKS)]
    + [sym("lib/libgreet.so.1", "/lib/l0"), f(f"lib/l{MAXSYMLINKS}", LIB)],
])
def test_a_symlink_loop_or_too_long_chain_is_a_missing_library(links: list[Item]) -> None:
    fs = image([f("app/bin/app", APP, 0o755), *links], {"/app/bin/app": {"runpath": ()}})
    res = loader.resolve(fs, "/app/bin/app")
    assert res is not None and res.fatal is not None and res.fatal.library == "libgreet.so.1"
    assert res.fatal.message == f"/app/bin/app: error while loading shared libraries: libgreet.so.1: {NO_SUCH}"
    assert [(c.path, c.outcome) for c in res.missing()[0].tried] == [
        ("/lib/libgreet.so.1", "missing"), ("/usr/lib/libgreet.so.1", "missing")]


def test_a_chain_of_exactly_the_hop_limit_is_followed() -> None:
    chain = [sym(f"lib/l{i}", f"/lib/l{i + 1}") for i in range(MAXSYMLINKS - 1)]
    items = [f("app/bin/app", APP, 0o755), *chain, sym("lib/libgreet.so.1", "/lib/l0"),
             f(f"lib/l{MAXSYMLINKS - 1}", LIB)]
    res = loader.resolve(image(items, {"/app/bin/app": {"runpath": ()}}), "/app/bin/app")
    assert found(res, "libgreet.so.1")[1] == f"/lib/l{MAXSYMLINKS - 1}"


@pytest.mark.parametrize(("target", "failure", "errno"), [
    ("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "missing-interpreter", "no such file or directory"),
    ("ld-loop", "other", "too many levels of symbolic links"),
    ("/lib64/ld-loop", "other", "too many levels of symbolic links"),
])
def test_pt_interp_a_dangling_or_looping_symlink_fails_exec(target: str, failure: str, errno: str) -> None:
    """binfmt_elf opens PT_INTERP: a dangling link is ENOENT, which runc prints as for a missing file; a loop is
    ELOOP (until the fourteenth round this test had a loop as ENOENT too; the oracle's
    exec-pt-interp-in-a-symlink-loop showed the kernel's ELOOP)."""
    items = [f("gl", fx("glibc/hello-dynamic"), 0o755), sym("lib64/ld-linux-x86-64.so.2", target),
             sym("lib64/ld-loop", "ld-loop")]
    config = ImageConfig(Platform("linux", "amd64"), env=(DEFAULT_ENV,))
    v = entrypoint.judge(image(items), config, ["/gl"])
    assert (v.verdict, v.failure, v.message) == ("fail", failure, f"exec /gl: {errno}")


def test_ld_so_conf_include_cycle_and_glob() -> None:
    items = [f("etc/ld.so.conf", b"include /etc/ld.so.conf.d/*.conf\n/usr/local/lib\n"),
             f("etc/ld.so.conf.d/b.conf", b"/opt/b, /opt/c\ninclude b.conf\n"),  # includes itself
             f("etc/ld.so.conf.d/a.conf", b"/opt/a/\ninclude ../ld.so.conf\n"),  # back to the top
             f("etc/ld.so.conf.d/.hidden.conf", b"/opt/hidden\n"),  # glob(3): `*` skips dot files
             f("etc/ld.so.conf.d/c.txt", b"/opt/txt\n"),
             sym("etc/ld.so.conf.d/loop.conf", "loop.conf"),  # ELOOP: unreadable, skipped
             sym("etc/ld.so.conf.d/d.conf", "/etc/ld.so.conf.d/a.conf")]  # a second name of a.conf
    assert ldconf.conf_dirs(image(items)) == ["/opt/a", "/opt/b", "/opt/c", "/usr/local/lib"]


def test_ld_so_conf_loops_through_symlinks_are_skipped() -> None:
    items = [f("etc/ld.so.conf", b"include /etc/loop/*.conf\ninclude /etc/loop.conf\n/ok\n"),
             sym("etc/loop", "/etc/loop"), sym("etc/loop.conf", "loop.conf")]
    assert ldconf.conf_dirs(image(items)) == ["/ok"]
    assert ldconf.conf_dirs(image([sym("etc/ld.so.conf", "ld.so.conf")])) == []


@pytest.mark.parametrize(("item", "glibc", "musl"), [
    (f("bad/libgreet.so.1/x", b""), "cannot read file data: Error 21", "Is a directory"),
    (f("bad/libgreet.so.1", b""), "file too short", "Exec format error"),
    (f("bad/libgreet.so.1", b"\x7fELF" + bytes(40)), "file too short", "Exec format error"),
    (f("bad/libgreet.so.1", b"#" * 100), "invalid ELF header", "Exec format error"),
])
def test_a_candidate_the_loader_opens_but_cannot_use_stops_the_search(item: Item, glibc: str, musl: str) -> None:
    """open_verify (glibc) and map_library (musl) fail on what open(2) took: a directory, a file shorter than an
    ELF header, a file without the ELF magic. The good library later on the path is never reached."""
    items = [f("app/bin/app", APP, 0o755), f("app/bin/musl-app", MUSL_APP, 0o755), MUSL_LD,
             f("app/lib/libgreet.so.1", LIB), item]
    edit = {"needed": ("libgreet.so.1",), "runpath": ("/bad", "/app/lib")}
    fs = image(items, {"/app/bin/app": edit, "/app/bin/musl-app": edit})
    res = loader.resolve(fs, "/app/bin/app")
    assert res is not None and res.fatal is not None
    assert res.fatal.message == f"/app/bin/app: error while loading shared libraries: /bad/libgreet.so.1: {glibc}"
    res = loader.resolve(fs, "/app/bin/musl-app")
    assert res is not None and res.fatal is not None
    assert res.fatal.message == f"Error loading shared library libgreet.so.1: {musl} (needed by /app/bin/musl-app)"
