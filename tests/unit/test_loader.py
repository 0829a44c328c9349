"""Loader emulation on synthetic images built from real ELF fixtures (scripts/build-fixtures): search
order, $ORIGIN, ld.so.cache, wrong-class skips, version and symbol checks, musl's rules."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from imgaudit import loader
from imgaudit.elf import read_elf
from imgaudit.layers import scan_layer
from imgaudit.loader import LoaderEnv, Step
from imgaudit.rootfs import RootFS
from tests.builders import Item, f, make_layer, sym
from tests.unit.test_ldcache import OLD

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "build"
pytestmark = pytest.mark.skipif(not (FIX / "greet" / "bin" / "greet-app").exists(), reason="run scripts/build-fixtures")
# an ELF32 header, padded to the 64 bytes an x86_64 ld.so reads first (a shorter file is "file too short" to it)
ELF32_I386 = b"\x7fELF\x01\x01\x01" + bytes(11) + b"\x03\x00" + bytes(44)


def fx(rel: str) -> bytes:
    return (FIX / rel).read_bytes()


def image(items: list[Item]) -> RootFS:
    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)), elf_reader=read_elf)])


def exe(path: str, rel: str) -> Item:
    return f(path, fx(rel), 0o755)


def links(res: loader.Resolution) -> list[tuple[str, str | None, Step | None]]:
    return [(link.name, link.path, link.step) for link in res.links]


GREET_APP = exe("app/bin/greet-app", "greet/bin/greet-app")


def test_origin_runpath_finds_the_library_and_names_it_as_ld_so_does() -> None:
    fs = image([GREET_APP, f("app/lib/libgreet.so.1", fx("greet/lib/libgreet.so.1"))])
    res = loader.resolve(fs, "/app/bin/greet-app")
    assert res is not None and res.flavour == "glibc"
    assert links(res)[0] == ("libgreet.so.1", "/app/bin/../lib/libgreet.so.1", Step.RUNPATH)
    assert res.objects[1].real_path == "/app/lib/libgreet.so.1"
    # No libc in this image: glibc stops at the first library it cannot open.
    assert res.fatal is not None and res.fatal.kind == "missing-library"
    assert res.fatal.message == ("/app/bin/greet-app: error while loading shared libraries: libc.so.6: "
                                 "cannot open shared object file: No such file or directory")
    assert [c.path for c in res.missing()[0].tried] == [
        "/app/bin/../lib/libc.so.6", "/lib/libc.so.6", "/usr/lib/libc.so.6"]


def test_old_library_lacks_the_version_node() -> None:
    fs = image([GREET_APP, f("app/lib/libgreet.so.1", fx("greet/lib-old/libgreet.so.1"))])
    res = loader.resolve(fs, "/app/bin/greet-app", argv0="greet-app")
    assert res is not None
    versions = [p for p in res.problems if p.kind == "glibc-version"]
    assert [p.message for p in versions] == [
        "greet-app: /app/bin/../lib/libgreet.so.1: version `GREET_2.0' not found (required by greet-app)"]


def test_bind_now_missing_symbol_is_fatal() -> None:
    fs = image([GREET_APP, f("app/lib/libgreet.so.1", fx("greet/lib-missing/libgreet.so.1"))])
    res = loader.resolve(fs, "/app/bin/greet-app")
    assert res is not None
    symbols = [p for p in res.problems if p.kind == "missing-symbol"]
    # libc's symbols are not reported: libc itself is missing, which already stops start-up.
    assert [(p.symbol, p.fatal) for p in symbols] == [("greet_loud", True)]
    assert symbols[0].message.endswith("symbol lookup error: /app/bin/greet-app: undefined symbol: greet_loud, "
                                       "version GREET_2.0")


def test_a_symbol_exported_after_utf8_names_binds() -> None:
    """u8-app binds u8_hello at start-up; libu8.so.1 exports it after three UTF-8 names (the oracle runs it)."""
    fs = image([exe("app/bin/u8-app", "utf8/bin/u8-app"), f("app/lib/libu8.so.1", fx("utf8/lib/libu8.so.1"))])
    res = loader.resolve(fs, "/app/bin/u8-app")
    assert res is not None and res.objects[1].real_path == "/app/lib/libu8.so.1"
    assert [p.symbol for p in res.problems if p.kind == "missing-symbol"] == []


def test_ld_library_path_beats_runpath_and_rpath_beats_ld_library_path() -> None:
    fs = image([GREET_APP, exe("app/bin/greet-app-rpath", "greet/bin/greet-app-rpath"),
                f("app/lib/libgreet.so.1", fx("greet/lib/libgreet.so.1")),
                f("lp/libgreet.so.1", fx("greet/lib-old/libgreet.so.1"))])
    env = LoaderEnv.from_env(["LD_LIBRARY_PATH=/nowhere:/lp"])
    runpath = loader.resolve(fs, "/app/bin/greet-app", env)
    rpath = loader.resolve(fs, "/app/bin/greet-app-rpath", env)
    assert runpath is not None and rpath is not None
    assert links(runpath)[0] == ("libgreet.so.1", "/lp/libgreet.so.1", Step.LD_LIBRARY_PATH)
    assert links(rpath)[0] == ("libgreet.so.1", "/app/bin/../lib/libgreet.so.1", Step.RPATH)


def test_ld_so_cache_is_searched_before_the_default_dirs() -> None:
    items = [exe("opt/x/bin/greet-app", "greet/bin/greet-app"), f("lib/libgreet.so.1", fx("greet/lib/libgreet.so.1"))]
    without = loader.resolve(image(items), "/opt/x/bin/greet-app")
    with_cache = loader.resolve(image([*items, f("etc/ld.so.cache", OLD)]), "/opt/x/bin/greet-app")
    assert without is not None and with_cache is not None
    assert links(without)[0][2] is Step.DEFAULT
    assert links(with_cache)[0] == ("libgreet.so.1", "/lib/libgreet.so.1", Step.LD_CACHE)


def test_a_cache_entry_whose_file_is_gone_falls_back_to_the_default_dirs() -> None:
    fs = image([exe("opt/x/bin/greet-app", "greet/bin/greet-app"), f("etc/ld.so.cache", OLD)])
    res = loader.resolve(fs, "/opt/x/bin/greet-app")
    assert res is not None
    tried = [(c.path, c.step) for c in res.missing()[0].tried][1:3]
    assert tried == [("/lib/libgreet.so.1", Step.LD_CACHE), ("/lib/libgreet.so.1", Step.DEFAULT)]


def test_wrong_class_is_skipped_and_named() -> None:
    fs = image([GREET_APP, f("app/lib/libgreet.so.1", ELF32_I386)])
    res = loader.resolve(fs, "/app/bin/greet-app")
    assert res is not None and res.missing()[0].reason == "wrong ELF class"
    assert res.fatal is not None and res.fatal.message.endswith("libgreet.so.1: wrong ELF class: ELFCLASS32")


def test_debian_multiarch_default_dirs_and_lib_token() -> None:
    fs = image([f("usr/lib/x86_64-linux-gnu/libc.so.6", fx("greet/lib/libgreet.so.1")), sym("lib", "usr/lib")])
    dirs = loader.default_dirs(fs, "x86_64", 64)
    assert dirs == ["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib", "/usr/lib"]
    glibc = loader.GlibcLoader(fs, LoaderEnv(), "x86_64", 64)
    assert glibc.expand("$ORIGIN/${LIB}/$PLATFORM/$FOO", "/o") == "/o/x86_64-linux-gnu/x86_64/$FOO"


def test_musl_reserved_names_path_file_and_errors() -> None:
    musl_libc = fx("musl/hello-dynamic")  # stands in for /lib/ld-musl-x86_64.so.1: only its name matters here
    fs = image([exe("app/bin/greet-app", "greet/bin/greet-app"), f("lib/ld-musl-x86_64.so.1", musl_libc, 0o755),
                sym("lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"),
                f("etc/ld-musl-x86_64.path", b"/opt/libs\n/usr/lib\n")])
    res = loader.resolve(fs, "/app/bin/greet-app")
    assert res is not None and res.flavour == "musl"  # glibc's loader name, musl behind it (gcompat style)
    by_name = {link.name: link for link in res.links}
    assert by_name["libc.so.6"].step is Step.MUSL_LIBC
    assert by_name["libc.so.6"].path == "/lib64/ld-linux-x86-64.so.2"
    # RUNPATH is tried (found nothing), then the path file, never /lib (musl's default).
    assert [c.path for c in by_name["libgreet.so.1"].tried] == [
        "/app/bin/../lib/libgreet.so.1", "/opt/libs/libgreet.so.1", "/usr/lib/libgreet.so.1"]
    assert res.fatal is not None and res.fatal.message == (
        "Error loading shared library libgreet.so.1: No such file or directory (needed by /app/bin/greet-app)")


def test_static_binary_has_no_resolution() -> None:
    fs = image([exe("hello", "glibc/hello-static")])
    assert loader.resolve(fs, "/hello") is None
    assert loader.resolve(fs, "/missing") is None


def test_to_dict_is_plain_json() -> None:
    import json

    fs = image([GREET_APP, f("app/lib/libgreet.so.1", fx("greet/lib/libgreet.so.1"))])
    res = loader.resolve(fs, "/app/bin/greet-app")
    assert res is not None
    body = json.loads(json.dumps(loader.to_dict(res)))
    assert body["needed"][0]["via"] == "runpath" and body["verdict"] == "fail"


def test_one_loader_shared_by_programs_keeps_each_programs_search_path_and_scope() -> None:
    """linkage.py resolves every binary of an image with one loader, whose caches (searches by name and
    expanded dirs, open_verify by path, exports and bindings by real path) must give each program what
    a loader of its own would: the same soname found by $ORIGIN RUNPATH or RPATH, or LD_LIBRARY_PATH
    with $ORIGIN, is a different file for programs in different dirs."""
    items = [exe("a/bin/greet-app", "greet/bin/greet-app"), f("a/lib/libgreet.so.1", fx("greet/lib/libgreet.so.1")),
             exe("b/bin/greet-app", "greet/bin/greet-app"),
             f("b/lib/libgreet.so.1", fx("greet/lib-missing/libgreet.so.1")),
             exe("c/bin/greet-app-rpath", "greet/bin/greet-app-rpath"),
             f("c/lib/libgreet.so.1", fx("greet/lib-old/libgreet.so.1")),
             exe("d/bin/greet-app-rpath", "greet/bin/greet-app-rpath"),
             f("d/lib/libgreet.so.1", fx("greet/lib/libgreet.so.1"))]
    fs = image(items)
    programs = ["/a/bin/greet-app", "/b/bin/greet-app", "/c/bin/greet-app-rpath", "/d/bin/greet-app-rpath"]
    for env in (LoaderEnv(), LoaderEnv.from_env(["LD_LIBRARY_PATH=$ORIGIN/../lib"])):
        shared = loader.GlibcLoader(fs, env, "x86_64", 64)
        for program in programs + programs[::-1]:
            alone, with_shared = loader.resolve(fs, program, env), loader.resolve(fs, program, env, loader=shared)
            assert alone is not None and with_shared is not None
            assert loader.to_dict(with_shared) == loader.to_dict(alone)
            assert with_shared.objects[1].real_path == program.split("/bin/")[0] + "/lib/libgreet.so.1"
        resolved = {p: loader.resolve(fs, p, env, loader=shared) for p in programs}
        kinds = {p: {q.kind for q in res.problems} for p, res in resolved.items() if res is not None}
        assert "missing-symbol" in kinds["/b/bin/greet-app"] and "missing-symbol" not in kinds["/a/bin/greet-app"]
        assert "glibc-version" in kinds["/c/bin/greet-app-rpath"]
        assert "glibc-version" not in kinds["/d/bin/greet-app-rpath"]
