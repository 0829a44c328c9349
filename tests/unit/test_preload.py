"""LD_PRELOAD and /etc/ld.so.preload (rtld.c `do_preload`, musl `load_preload`), through the real scan → RootFS →
loader path with the preload fixtures and the host's glibc; the same cases run against `docker run` in
tests/e2e/test_oracle.py (`preload-*`)."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imgaudit import entrypoint, loader
from imgaudit.audit import audit
from imgaudit.elf import ElfFacts, read_elf
from imgaudit.image import ImageConfig, Platform
from imgaudit.layers import scan_layer
from imgaudit.loader import LoaderEnv, glibc_preloads
from imgaudit.render.linkage_text import render_ldd
from imgaudit.report import Severity
from imgaudit.rootfs import RootFS
from imgaudit.rules import rule
from tests.builders import Item, f, make_layer
from tests.unit.test_fix_texts import loaded_from

LIBDIR = "usr/lib/x86_64-linux-gnu"
MUSL_LD = "lib/ld-musl-x86_64.so.1"


def rootfs(items: list[Item], edits: Mapping[str, Mapping[str, Any]] | None = None) -> RootFS:
    """A one-layer image; the ELF facts at the paths of `edits` get those fields (an RPATH the fixture lacks)."""
    fields = edits or {}

    def reader(path: str, data: bytes) -> ElfFacts:
        real = read_elf(path, data)
        return replace(real, **fields[path]) if path in fields else real

    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)), elf_reader=reader)])


@pytest.fixture(scope="module")
def glibc_items(fixtures: Path, host_glibc: dict[str, Path]) -> list[Item]:
    """The host's loader and libc, the glibc hello program, libpreload.so in the multiarch dir and its dependency
    under /opt/dep (off the search path)."""
    return [*(f(name, path.read_bytes(), 0o755) for name, path in host_glibc.items()),
            f("gl", (fixtures / "glibc/hello-dynamic").read_bytes(), 0o755),
            f(f"{LIBDIR}/libpreload.so", (fixtures / "preload/glibc/libpreload.so").read_bytes()),
            f("opt/dep/libpreload-dep.so", (fixtures / "preload/glibc/libpreload-dep.so").read_bytes())]


@pytest.fixture(scope="module")
def musl_items(fixtures: Path) -> list[Item]:
    """The host's musl (musl-tools, which builds the fixtures): the loader is libc, and defines what /mu binds."""
    host = Path("/") / MUSL_LD
    if not host.exists():
        pytest.skip("needs musl-tools' /lib/ld-musl-x86_64.so.1")
    return [f(MUSL_LD, host.resolve().read_bytes(), 0o755),
            f("mu", (fixtures / "musl/hello-dynamic").read_bytes(), 0o755),
            f("usr/lib/libpreload.so", (fixtures / "preload/musl/libpreload.so").read_bytes()),
            f("opt/dep/libpreload-dep.so", (fixtures / "preload/musl/libpreload-dep.so").read_bytes())]


def names(res: loader.Resolution | None) -> list[str]:
    assert res is not None
    return [o.name for o in res.objects]


# -- which names, in which order ----------------------------------------------------------------


@pytest.mark.parametrize(("env", "file", "expect"), [
    (None, None, ()),
    ("a.so b.so:c.so", None, (("a.so", "LD_PRELOAD"), ("b.so", "LD_PRELOAD"), ("c.so", "LD_PRELOAD"))),
    ("::a.so  ", None, (("a.so", "LD_PRELOAD"),)),
    ("a.so\tb.so", None, (("a.so\tb.so", "LD_PRELOAD"),)),  # only space and colon split the variable
    ("x" * 4095 + " y.so", None, (("x" * 4095, "LD_PRELOAD"), ("y.so", "LD_PRELOAD"))),
    ("x" * 4096 + " y.so", None, (("y.so", "LD_PRELOAD"),)),  # no room in rtld's buffer: skipped
    ("a.so", b"# c.so\nb.so\td.so # e.so\n\nf.so:g.so", (("a.so", "LD_PRELOAD"), ("b.so", "/etc/ld.so.preload"),
     ("d.so", "/etc/ld.so.preload"), ("f.so", "/etc/ld.so.preload"), ("g.so", "/etc/ld.so.preload"))),
    (None, b"a.so\0b.so", (("a.so", "/etc/ld.so.preload"),)),  # strsep stops at a NUL
    (None, b"x.so\0y.so\nz.so", (("x.so", "/etc/ld.so.preload"), ("z.so", "/etc/ld.so.preload"))),  # the last
    (None, b"x.so\ny.so\0z.so", (("x.so", "/etc/ld.so.preload"), ("y.so", "/etc/ld.so.preload"))),  # word alone
    (None, b"x.so:", (("x.so", "/etc/ld.so.preload"),)),
    (None, b"", ()),
])
def test_glibc_reads_the_variable_then_the_file(env: str | None, file: bytes | None,
                                                expect: tuple[tuple[str, str], ...]) -> None:
    assert glibc_preloads(env, file) == expect


def test_musl_splits_the_variable_at_any_white_space_and_reads_no_file(musl_items: list[Item]) -> None:
    fs = rootfs([*musl_items, f("etc/ld.so.preload", b"/usr/lib/libpreload.so\n")])
    musl = loader.MuslLoader(fs, LoaderEnv(preload="a.so\tb.so\n:c.so"), "x86_64", 64)
    assert musl.preloads == (("a.so", "LD_PRELOAD"), ("b.so", "LD_PRELOAD"), ("c.so", "LD_PRELOAD"))
    res = loader.resolve(fs, "/mu")
    assert res is not None and res.flavour == "musl" and res.fatal is None
    assert "/usr/lib/libpreload.so" not in names(res)


# -- glibc ---------------------------------------------------------------------------------------


def test_a_preload_comes_after_the_program_and_before_its_needed_libraries(glibc_items: list[Item]) -> None:
    fs = rootfs(glibc_items)
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="libpreload.so", library_path="/opt/dep"))
    assert names(res) == ["/gl", f"/{LIBDIR}/libpreload.so", "/lib/x86_64-linux-gnu/libc.so.6",
                          "/opt/dep/libpreload-dep.so", "/lib64/ld-linux-x86-64.so.2"]
    assert res is not None and res.problems == ()
    preloaded = res.objects[1]
    assert preloaded.needed_by == "LD_PRELOAD" and preloaded.depth == 1
    # an edge of no object, which `imgaudit ldd` shows above the program's own
    assert (res.links[0].name, res.links[0].needed_by, res.links[0].path) == (
        "libpreload.so", "LD_PRELOAD", f"/{LIBDIR}/libpreload.so")
    tree = render_ldd("/gl", res).splitlines()
    assert tree[tree.index("  preloaded (LD_PRELOAD)") + 1].startswith("    libpreload.so => ")
    assert tree[tree.index("  needed") + 1].startswith("    libc.so.6 => ")


def test_a_preload_not_found_is_ignored_with_glibcs_error_line(glibc_items: list[Item]) -> None:
    fs = rootfs([*glibc_items, f("etc/ld.so.preload", b"/nope/libtrace.so\n")])
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="libjemalloc.so.2"))
    assert res is not None and res.fatal is None
    assert [(p.kind, p.fatal, p.object, p.library, p.message) for p in res.problems] == [
        ("preload-missing", False, "LD_PRELOAD", "libjemalloc.so.2",
         "ERROR: ld.so: object 'libjemalloc.so.2' from LD_PRELOAD cannot be preloaded (cannot open shared object "
         "file): ignored."),
        ("preload-missing", False, "/etc/ld.so.preload", "/nope/libtrace.so",
         "ERROR: ld.so: object '/nope/libtrace.so' from /etc/ld.so.preload cannot be preloaded (cannot open shared "
         "object file): ignored.")]
    assert [c.path for c in res.links[0].tried] != []  # the program's own libc.so.6 is still searched and found


def test_a_preload_that_is_no_elf_file_names_the_header(glibc_items: list[Item]) -> None:
    fs = rootfs([*glibc_items, f("etc/not-a-lib", b"text " * 40)])
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="/etc/not-a-lib"))
    assert res is not None and res.fatal is None
    assert [p.message for p in res.problems] == [
        "ERROR: ld.so: object '/etc/not-a-lib' from LD_PRELOAD cannot be preloaded (invalid ELF header): ignored."]


def test_a_preloads_missing_dependency_stops_start_up(glibc_items: list[Item]) -> None:
    fs = rootfs(glibc_items)
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="libpreload.so"))
    assert res is not None and res.fatal is not None
    assert (res.fatal.kind, res.fatal.object, res.fatal.message) == (
        "missing-library", f"/{LIBDIR}/libpreload.so",
        "/gl: error while loading shared libraries: libpreload-dep.so: cannot open shared object file: No such file "
        "or directory")


def test_a_preloads_dependencies_search_the_programs_rpath(glibc_items: list[Item], musl_items: list[Item],
                                                           fixtures: Path) -> None:
    """`l_loader` of a preload is the program: its DT_NEEDED search goes on to the program's DT_RPATH. musl loads
    a preload for no object, so no RPATH applies."""
    items = [*glibc_items[:-1],  # the dependency only under /app/lib, which the program's RPATH names
             f("gl", (fixtures / "glibc/hello-dynamic").read_bytes() + b"\0rpath", 0o755),
             f("app/lib/libpreload-dep.so", (fixtures / "preload/glibc/libpreload-dep.so").read_bytes())]
    fs = rootfs(items, {"/gl": {"rpath": ("/app/lib",)}})
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="libpreload.so"))
    assert res is not None and res.fatal is None and "/app/lib/libpreload-dep.so" in names(res)
    dep = next(link for link in res.links if link.name == "libpreload-dep.so")
    assert (dep.needed_by, dep.step) == (f"/{LIBDIR}/libpreload.so", loader.Step.RPATH)
    musl = rootfs([*items, musl_items[0], f("mu", (fixtures / "musl/hello-dynamic").read_bytes() + b"\0rpath", 0o755),
                   f("usr/lib/libpreload.so", (fixtures / "preload/musl/libpreload.so").read_bytes())],
                  {"/mu": {"rpath": ("/app/lib",)}})
    res = loader.resolve(musl, "/mu", LoaderEnv(preload="libpreload.so"))
    assert res is not None and res.fatal is not None and res.fatal.library == "libpreload-dep.so"


def test_a_preloaded_soname_is_what_a_needed_entry_of_that_name_gets(glibc_items: list[Item], fixtures: Path) -> None:
    """greet-app's RUNPATH finds a libgreet.so.1 without greet_loud (BIND_NOW: fatal); a preloaded complete
    libgreet.so.1 is already loaded under that soname, so the search never happens and the program starts."""
    items = [*glibc_items, f("app/bin/greet-app", (fixtures / "greet/bin/greet-app").read_bytes(), 0o755),
             f("app/lib/libgreet.so.1", (fixtures / "greet/lib-missing/libgreet.so.1").read_bytes()),
             f("full/libgreet.so.1", (fixtures / "greet/lib/libgreet.so.1").read_bytes())]
    fs = rootfs(items)
    alone = loader.resolve(fs, "/app/bin/greet-app")
    assert alone is not None and alone.fatal is not None and alone.fatal.kind == "missing-symbol"
    res = loader.resolve(fs, "/app/bin/greet-app", LoaderEnv(preload="/full/libgreet.so.1"))
    assert res is not None and res.fatal is None, res.problems
    assert "/app/lib/libgreet.so.1" not in names(res)
    assert res.resolved()["libgreet.so.1"] == "/full/libgreet.so.1"


def test_a_library_is_resolved_without_preloads(glibc_items: list[Item]) -> None:
    fs = rootfs(glibc_items)
    res = loader.resolve(fs, "/gl", LoaderEnv(preload="libjemalloc.so.2"), as_library=True)
    assert res is not None and res.problems == ()


# -- musl ----------------------------------------------------------------------------------------


def test_musl_ignores_a_missing_preload_without_a_word_and_imgaudit_says_so(musl_items: list[Item]) -> None:
    fs = rootfs(musl_items)
    res = loader.resolve(fs, "/mu", LoaderEnv(preload="/nope/libjemalloc.so.2"))
    assert res is not None and res.flavour == "musl" and res.fatal is None
    assert [(p.kind, p.fatal, p.message) for p in res.problems] == [
        ("preload-missing", False, "LD_PRELOAD names /nope/libjemalloc.so.2, which musl's loader does not find: "
         "the program runs without it, and nothing says so")]


def test_musl_preload_dependencies_search_no_rpath_and_name_the_preload(musl_items: list[Item]) -> None:
    fs = rootfs(musl_items)
    res = loader.resolve(fs, "/mu", LoaderEnv(preload="libpreload.so"))
    assert res is not None and res.fatal is not None
    assert res.fatal.message == ("Error loading shared library libpreload-dep.so: No such file or directory "
                                 "(needed by /usr/lib/libpreload.so)")
    ok = loader.resolve(fs, "/mu", LoaderEnv(preload="libpreload.so", library_path="/opt/dep"))
    assert ok is not None and ok.fatal is None
    assert names(ok) == ["/mu", "/usr/lib/libpreload.so", f"/{MUSL_LD}", "/opt/dep/libpreload-dep.so"]


# -- the verdict and the report -------------------------------------------------------------------


def test_the_entrypoint_verdict_warns_with_the_loaders_line(glibc_items: list[Item]) -> None:
    fs = rootfs(glibc_items)
    config = ImageConfig(Platform("linux", "amd64"), entrypoint=("/gl",), env=("LD_PRELOAD=libjemalloc.so.2",))
    verdict = entrypoint.judge(fs, config, ["/gl"])
    assert verdict.verdict == "warn" and verdict.failure is None
    assert verdict.message == ("ERROR: ld.so: object 'libjemalloc.so.2' from LD_PRELOAD cannot be preloaded "
                               "(cannot open shared object file): ignored.")
    fatal = entrypoint.judge(fs, ImageConfig(Platform("linux", "amd64"), env=("LD_PRELOAD=libpreload.so",)), ["/gl"])
    assert (fatal.verdict, fatal.failure) == ("fail", "missing-library")


@pytest.mark.parametrize(("musl", "preload", "fix"), [
    # an Alpine path in a Debian image: the library is there, under the multiarch dir
    (False, "/usr/lib/libpreload.so", f"libpreload.so is in the image at /{LIBDIR}/libpreload.so: name that path in "
                                      "LD_PRELOAD"),
    (False, "libjemalloc.so.2", "install libjemalloc2 in the runtime stage (`apt-get install -y "
                                "--no-install-recommends libjemalloc2`), or drop libjemalloc.so.2 from LD_PRELOAD"),
    (True, "libjemalloc.so.2", "install jemalloc in the runtime stage (`apk add --no-cache jemalloc`), or drop "
                               "libjemalloc.so.2 from LD_PRELOAD"),
    (False, "libtrace.so", rule("preload-missing").fix),
])
def test_the_report_has_one_warning_per_preload_with_a_fix(glibc_items: list[Item], musl_items: list[Item],
                                                           musl: bool, preload: str, fix: str) -> None:
    program = "/mu" if musl else "/gl"
    scan = scan_layer(io.BytesIO(make_layer(musl_items if musl else glibc_items)), elf_reader=read_elf)
    config = ImageConfig(Platform("linux", "amd64"), entrypoint=(program,), env=(f"LD_PRELOAD={preload}",))
    report = audit(loaded_from([scan], config))
    found = [(x.rule, x.severity, x.path, x.fix) for x in report.findings if x.rule == "preload-missing"]
    assert found == [("preload-missing", Severity.WARNING, program, fix)]
    assert report.entrypoint is not None and report.entrypoint.verdict == "warn"


def test_a_preload_list_of_a_million_names_is_bounded_and_said_to_be_cut(glibc_items: list[Item]) -> None:
    """A 16 MiB /etc/ld.so.preload names ~1M libraries, each searched for every program: the walk maps the first
    MAX_PRELOADS, the report lists 16 and says how many more, and is not complete."""
    names = b"\n".join(b"/nope/lib%d.so" % i for i in range(600_000))  # 10 MB, under what a scan keeps
    scan = scan_layer(io.BytesIO(make_layer([*glibc_items, f("etc/ld.so.preload", names)])), elf_reader=read_elf)
    config = ImageConfig(Platform("linux", "amd64"), entrypoint=("/gl",))
    start = time.process_time()
    report = audit(loaded_from([scan], config))
    assert time.process_time() - start < 20
    found = [x for x in report.findings if x.rule == "preload-missing"]
    assert len(found) == 17 and found[-1].message.startswith(f"{loader.MAX_PRELOADS - 16} more preloaded libraries")
    assert [(i.what, i.reason) for i in report.incomplete] == [
        ("/etc/ld.so.preload", f"{600_000 - loader.MAX_PRELOADS} preloads past the first 1024 not analysed")]
    assert not report.complete
    # past the 16 MiB a scan keeps of such a file, nothing of it is read: said so too
    scan = scan_layer(io.BytesIO(make_layer([*glibc_items, f("etc/ld.so.preload", names * 3)])), elf_reader=read_elf)
    report = audit(loaded_from([scan], config))
    assert [i.reason for i in report.incomplete] == [
        "/etc/ld.so.preload is larger than imgaudit reads: its preloads were not analysed"]
