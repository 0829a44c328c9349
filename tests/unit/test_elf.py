"""ELF facts read through the LIEF worker: fixtures built from fixtures/src, the Alpine corpus, and
the fault paths (bad input, a crashing or hanging worker) that must never reach the caller."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imgaudit import elf
from imgaudit.elf import ElfFacts, ElfReader, Symbol, VersionNeed

REPO = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("IMGAUDIT_FIXTURES_OUT") or REPO / "fixtures" / "build")
CORPUS = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus")
ALPINE = {
    "x86_64": "alpine/alpine-minirootfs-3.20.3-x86_64.tar.gz",
    "aarch64": "alpine/alpine-minirootfs-3.20.3-aarch64.tar.gz",
}
GLIBC_INTERP = "/lib64/ld-linux-x86-64.so.2"
Read = Callable[[str], ElfFacts]
LD_SCRIPT = b"""/* GNU ld script
   Use the shared library, but some functions are only in
   the static library, so try that secondarily.  */
OUTPUT_FORMAT(elf64-x86-64)
GROUP ( /lib/x86_64-linux-gnu/libc.so.6 /usr/lib/x86_64-linux-gnu/libc_nonshared.a )
"""


@pytest.fixture
def facts(fixtures: Path, reader: ElfReader) -> Read:
    """`facts("glibc/hello-dynamic")`: the facts of one built fixture, which must parse cleanly."""

    def read(name: str) -> ElfFacts:
        path = fixtures / name
        if not path.exists():
            pytest.skip(f"fixture {name} was not built (see scripts/build-fixtures output)")
        result = reader.read(str(path), path.read_bytes())
        assert result.error is None, f"{name}: {result.error}"
        return result

    return read


def facts_of(reader: ElfReader, path: Path) -> ElfFacts:
    return reader.read(str(path), path.read_bytes())


def elf_fixtures(fixtures: Path) -> dict[Path, bytes]:
    """Every built fixture that is an ELF file, by path, in path order."""
    files = {p: p.read_bytes() for p in sorted(fixtures.rglob("*")) if p.is_file()}
    return {path: data for path, data in files.items() if data[:4] == elf.ELF_MAGIC}


def glibc_needs(result: ElfFacts) -> list[str]:
    return [n.version for n in result.version_needs if n.file == "libc.so.6" and n.version.startswith("GLIBC_2.")]


def readelf_debug_bytes(path: Path) -> int:
    out = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    # "  [27] .debug_info  PROGBITS  0000000000000000 003074 0002b5 00  0 0  1": the size is column 5
    return sum(int(m.group(1), 16) for m in re.finditer(r"\] \.z?debug_\S*\s+\S+\s+\S+\s+\S+\s+(\S+)", out))


def rustc_release_and_commit() -> tuple[str, str]:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return fields["release"], fields["commit-hash"]


# --- glibc and musl programs -----------------------------------------------------------------


def test_glibc_dynamic_program(facts: Read) -> None:
    hello = facts("glibc/hello-dynamic")
    assert (hello.elf_class, hello.endian, hello.machine) == (64, "little", "x86_64")
    assert hello.elf_type == "pie" and hello.linking == "dynamic"
    assert hello.interpreter == GLIBC_INTERP
    assert hello.needed == ("libc.so.6",)
    assert hello.has_dynamic and not hello.static_pie and not hello.bind_now
    assert hello.libc == "glibc" and hello.rust is None
    assert glibc_needs(hello), hello.version_needs
    assert Symbol("puts", "GLIBC_2.2.5") in hello.imported_symbols
    assert Symbol("__libc_start_main", "GLIBC_2.34") in hello.imported_symbols
    assert all(s.name for s in hello.imported_symbols)  # the null symbol is not an import
    assert hello.banner is None and hello.libc_version is None


def test_static_static_pie_and_dynamic_are_told_apart(facts: Read) -> None:
    static, static_pie = facts("glibc/hello-static"), facts("glibc/hello-static-pie")
    assert (static.elf_type, static.linking, static.interpreter, static.needed) == ("exec", "static", None, ())
    assert not static.has_dynamic and not static.static_pie
    assert (static_pie.elf_type, static_pie.linking, static_pie.interpreter) == ("pie", "static-pie", None)
    assert static_pie.has_dynamic and static_pie.static_pie and static_pie.needed == ()
    # No loader to say it, but glibc leaves its marks (tunables, GLIBC_PRIVATE) in static programs.
    assert static.libc == static_pie.libc == "glibc"


def test_musl_dynamic_and_static(facts: Read) -> None:
    dynamic, static = facts("musl/hello-dynamic"), facts("musl/hello-static")
    assert dynamic.interpreter == "/lib/ld-musl-x86_64.so.1"
    assert dynamic.libc == "musl" and dynamic.linking == "dynamic"
    assert dynamic.version_needs == ()  # musl has no symbol versions
    assert Symbol("puts") in dynamic.imported_symbols
    assert (static.interpreter, static.linking, static.needed) == (None, "static", ())
    assert static.libc == "none"  # a static musl "hello" carries no libc marker


def test_debug_bytes_and_stripping(facts: Read) -> None:
    debug, stripped = facts("glibc/hello-debug"), facts("glibc/hello-debug-stripped")
    assert debug.debug_bytes > 0 and not debug.stripped
    if shutil.which("readelf"):
        assert debug.debug_bytes == readelf_debug_bytes(BUILD / "glibc" / "hello-debug")
    assert stripped.debug_bytes == 0 and stripped.stripped
    assert facts("glibc/hello-dynamic").debug_bytes == 0


# --- the versioned library and its app -------------------------------------------------------


def test_greet_app_runpath_versions_and_bind_now(facts: Read) -> None:
    app = facts("greet/bin/greet-app")
    assert app.needed == ("libgreet.so.1", "libc.so.6")
    assert app.runpath == ("$ORIGIN/../lib",) and app.rpath == ()
    assert app.bind_now
    assert VersionNeed("libgreet.so.1", "GREET_2.0") in app.version_needs
    assert VersionNeed("libgreet.so.1", "GREET_1.0") in app.version_needs
    assert glibc_needs(app)
    assert Symbol("greet_loud", "GREET_2.0") in app.imported_symbols
    assert Symbol("greet", "GREET_1.0") in app.imported_symbols
    assert app.exported_symbols == ()


def test_rpath_app_and_bind_now_from_flags_1_alone(facts: Read) -> None:
    app = facts("greet/bin/greet-app-rpath")
    assert app.rpath == ("$ORIGIN/../lib",) and app.runpath == ()
    assert app.bind_now  # --disable-new-dtags leaves only DF_1_NOW


def test_greet_library_flavours(facts: Read) -> None:
    current, old, missing = (facts(f"greet/{d}/libgreet.so.1") for d in ("lib", "lib-old", "lib-missing"))
    assert current.soname == old.soname == missing.soname == "libgreet.so.1"
    assert current.elf_type == "dyn" and current.linking == "dynamic" and not current.static_pie
    assert current.version_defs == ("GREET_1.0", "GREET_2.0")  # the base entry (file name) left out
    assert set(current.exported_symbols) >= {Symbol("greet", "GREET_1.0"), Symbol("greet_loud", "GREET_2.0")}
    assert old.version_defs == ("GREET_1.0",)
    assert "greet_loud" not in {s.name for s in old.exported_symbols}
    assert missing.version_defs == ("GREET_1.0", "GREET_2.0")
    assert {s.name for s in missing.exported_symbols} >= {"greet", "greet_quiet"}
    assert "greet_loud" not in {s.name for s in missing.exported_symbols}
    # the ABS symbols that name each version are not exports
    assert not {s.name for s in current.exported_symbols} & {"GREET_1.0", "GREET_2.0"}


# --- Rust ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rustc() -> tuple[str, str]:
    if shutil.which("rustc") is None:
        pytest.skip("rustc not found")
    return rustc_release_and_commit()


def test_rust_gnu_dynamic(facts: Read, rustc: tuple[str, str]) -> None:
    svc = facts("rust/hello-svc-gnu")
    assert {"libgcc_s.so.1", "libc.so.6"} <= set(svc.needed)
    assert svc.interpreter == GLIBC_INTERP and svc.bind_now and svc.libc == "glibc"
    assert svc.rust is not None
    assert (svc.rust.rustc_version, svc.rust.rustc_commit, svc.rust.target) == (rustc[0], rustc[1], "gnu")


def test_rust_crt_static_is_a_static_pie(facts: Read, rustc: tuple[str, str]) -> None:
    svc = facts("rust/hello-svc-static")
    assert svc.static_pie and svc.linking == "static-pie" and svc.needed == ()
    assert svc.libc == "glibc"
    assert svc.rust is not None and svc.rust.target == "static" and svc.rust.rustc_commit == rustc[1]


def test_stripped_rust_still_names_its_rustc(facts: Read, rustc: tuple[str, str]) -> None:
    svc = facts("rust/hello-svc-stripped")
    assert svc.stripped
    assert svc.rust is not None and svc.rust.rustc_commit == rustc[1]


def test_rust_commit_found_without_comment_section(
    fixtures: Path, reader: ElfReader, rustc: tuple[str, str], tmp_path: Path
) -> None:
    """Debian strips .comment; the commit in .rodata is then the only trace of rustc."""
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy not found")
    bare = tmp_path / "hello-svc-no-comment"
    src = fixtures / "rust" / "hello-svc-stripped"
    subprocess.run(["objcopy", "--remove-section=.comment", str(src), str(bare)], check=True)
    svc = reader.read(str(bare), bare.read_bytes())
    assert svc.rust is not None
    assert (svc.rust.rustc_version, svc.rust.rustc_commit) == (None, rustc[1])


def test_c_program_is_not_rust(facts: Read) -> None:
    assert facts("greet/bin/greet-app").rust is None
    assert facts("glibc/hello-static").rust is None


# --- OpenSSL ---------------------------------------------------------------------------------


def test_ssl_app_needs_openssl_versions(facts: Read) -> None:
    app = facts("ssl/ssl-app")
    assert {"libssl.so.3", "libcrypto.so.3"} <= set(app.needed)
    assert any(n.version.startswith("OPENSSL_3") for n in app.version_needs)


# --- libc itself -----------------------------------------------------------------------------


def test_host_glibc_banner_and_version(reader: ElfReader) -> None:
    libc = Path("/lib/x86_64-linux-gnu/libc.so.6")
    if not libc.exists():
        pytest.skip("no Debian-style x86_64 glibc on this host")
    result = reader.read(str(libc), libc.read_bytes())
    assert result.soname == "libc.so.6" and result.libc == "glibc" and result.elf_type == "dyn"
    assert result.banner is not None and result.banner.startswith("GNU C Library")
    expected = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"
    assert expected is not None and result.libc_version == expected.split()[1]
    assert f"GLIBC_{result.libc_version}" in result.version_defs
    assert any(s.hidden for s in result.exported_symbols)  # compat symbols such as memcpy@GLIBC_2.2.5


def alpine_members(arch: str, *names: str) -> dict[str, bytes]:
    tarball = CORPUS / ALPINE[arch]
    if not tarball.exists():
        pytest.skip(f"corpus {tarball} not present (set IMGAUDIT_CORPUS)")
    with tarfile.open(tarball) as tar:
        return {name: tar.extractfile(f"./{name}").read() for name in names}  # type: ignore[union-attr]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_alpine_busybox_and_musl_loader(reader: ElfReader, arch: str) -> None:
    loader = f"lib/ld-musl-{arch}.so.1"
    files = alpine_members(arch, "bin/busybox", loader)
    busybox = reader.read("bin/busybox", files["bin/busybox"])
    assert busybox.error is None and busybox.machine == arch and busybox.elf_class == 64
    assert busybox.interpreter == f"/{loader}" and busybox.libc == "musl"
    assert busybox.needed == (f"libc.musl-{arch}.so.1",)
    musl = reader.read(loader, files[loader])
    assert musl.error is None and musl.machine == arch
    assert musl.soname == f"libc.musl-{arch}.so.1" and musl.libc == "musl"
    assert musl.banner == f"musl libc ({arch})" and musl.libc_version == "1.2.5"
    assert len(musl.exported_symbols) > 1000 and not musl.static_pie


def test_old_alpine_musl_version(reader: ElfReader) -> None:
    tarball = CORPUS / "alpine" / "alpine-minirootfs-3.12.12-x86_64.tar.gz"
    if not tarball.exists():
        pytest.skip(f"corpus {tarball} not present")
    with tarfile.open(tarball) as tar:
        data = tar.extractfile("./lib/ld-musl-x86_64.so.1").read()  # type: ignore[union-attr]
    assert reader.read("ld-musl", data).libc_version == "1.1.24"


# --- ParserConfig against a full parse (RELIABILITY item 93) ---------------------------------


def test_trimmed_parser_config_gives_the_same_facts_as_a_full_parse(fixtures: Path, reader: ElfReader) -> None:
    files = elf_fixtures(fixtures)
    assert len(files) >= 10
    for path, data in files.items():
        assert reader.read(str(path), data) == reader._read_op(data, elf._OP_PARSE_ALL), path


def test_every_slot_of_a_session_answers_for_its_own_file(fixtures: Path, reader: ElfReader) -> None:
    """The scan fills all slots ahead of the parser; each file's facts must come from its own slot
    (the worker once folded slot numbers onto two memfds, and six of eight files got another's facts)."""
    distinct = list({reader.read("x", data): data for data in elf_fixtures(fixtures).values()}.items())
    assert len(distinct) >= elf.SLOTS + 2
    session = reader.session()
    for start in (0, 2):
        batch = distinct[start:start + elf.SLOTS]
        uploads = []
        for _, data in batch:
            upload = session.upload(len(data))
            for at in range(0, len(data), 4096):
                upload.write(data[at:at + 4096])
            uploads.append(upload)
        assert sorted(u.slot for u in uploads) == list(range(elf.SLOTS))
        for (facts, _), upload in zip(batch, uploads, strict=True):
            assert upload.facts() == facts


def test_concurrent_sessions_and_reads_on_one_reader_each_get_their_own_files_facts(
        fixtures: Path, reader: ElfReader) -> None:
    """`--jobs 2` scans two layers at once through one parser (on two CPUs): their sessions and the reads of
    kept files take slots from the same reader at the same time, and no file may get another's facts."""
    distinct = list({reader.read("x", data): data for data in elf_fixtures(fixtures).values()}.items())
    assert len(distinct) >= elf.SLOTS + 2
    wrong: list[str] = []
    start = threading.Barrier(3)

    def scan(turn: int) -> None:
        session = reader.session()
        start.wait()
        pending: list[tuple[elf.ElfUpload, ElfFacts]] = []

        def check(upload: elf.ElfUpload, expected: ElfFacts) -> None:
            if upload.facts() != expected:
                wrong.append(f"scan {turn}, slot {upload.slot}")

        for index, (expected, data) in enumerate(distinct * 3):
            if index % 2 != turn:
                continue
            upload = session.upload(len(data))
            for at in range(0, len(data), 8192):
                upload.write(data[at:at + 8192])
            pending.append((upload, expected))
            if len(pending) == elf.SLOTS // 2:  # a scan hands the oldest upload on as it reads ahead
                check(*pending.pop(0))
        for item in pending:
            check(*item)
        session.close()

    def reads() -> None:
        start.wait()
        for expected, data in distinct:
            if reader.read("x", data) != expected:
                wrong.append("read")

    threads = [threading.Thread(target=scan, args=(0,)), threading.Thread(target=scan, args=(1,)),
               threading.Thread(target=reads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "deadlocked"
    assert wrong == []
    assert sorted(reader._free) == list(range(elf.SLOTS))


@pytest.mark.parametrize("parsers", [1, 2])
def test_concurrent_scans_share_the_parsers_one_per_two_cpus(parsers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each parser costs ~70 MB and its own `import lief`; on two CPUs a second one bought no time at
    `--jobs 2` (issue 7). Callers beyond the count share the least busy reader."""
    elf.close()
    monkeypatch.setattr(elf, "_parsers", lambda: parsers)
    first, second = elf.read_elf.session(), elf.read_elf.session()
    try:
        assert (first.reader is second.reader) == (parsers == 1)
        third = elf.read_elf.session()
        assert third.reader in (first.reader, second.reader)
        third.close()
    finally:
        first.close()
        second.close()
    assert {r.users for r in elf._readers} == {0}
    elf.close()
    assert elf._readers == []


@pytest.mark.parametrize("with_elf", [False, True])
def test_the_parser_starts_at_the_first_elf_file(tmp_path: Path, fixtures: Path, monkeypatch: pytest.MonkeyPatch,
                                                 with_elf: bool) -> None:
    """An image without ELF files never starts the parser: its `import lief` cost 0.4 s of CPU and 67 MB, which set
    the peak of an image of 200,000 small files (196 -> 163 MB without it, eleventh round's code)."""
    from fuzz import hostile as h
    from imgaudit.audit import Options, load

    spawned: list[int] = []
    spawn = elf._Channel.spawn
    monkeypatch.setattr(elf._Channel, "spawn", lambda channel, **kw: spawned.append(1) or spawn(channel, **kw))
    members = [h.member(f"srv/f{i}", b"#!/bin/sh\n" * i) for i in range(50)]
    if with_elf:
        members.append(h.member("app/hello", (fixtures / "glibc" / "hello-dynamic").read_bytes(), mode=0o755))
    image = h.write_image("oci-dir", tmp_path / "layout", [h.Blob(h.tar_of(*members))])
    loaded = load(image, Options(cache=False))
    parsed = [e.path for s in loaded.scans for e in s.entries if e.elf is not None and e.elf.error is None]
    assert (parsed, spawned) == ((["/app/hello"], [1]) if with_elf else ([], []))


def test_without_section_headers_lief_reads_the_symbols(fixtures: Path, reader: ElfReader) -> None:
    """sstrip-style files have no section headers; .dynsym is then found through DT_SYMTAB."""
    data = bytearray((fixtures / "greet" / "bin" / "greet-app").read_bytes())
    data[0x28:0x30] = bytes(8)  # e_shoff
    data[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    bare, full = reader.read("bare", bytes(data)), facts_of(reader, fixtures / "greet" / "bin" / "greet-app")
    assert bare.error is None
    assert (bare.needed, bare.runpath, bare.version_needs) == (full.needed, full.runpath, full.version_needs)
    assert bare.imported_symbols == full.imported_symbols
    assert bare.stripped and bare.debug_bytes == 0


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "not a valid ELF (no ELF magic)"),
        (b"\x7fELF", "not a valid ELF (truncated: 4 bytes)"),
        (b"#!/bin/sh\necho hi\n", "not a valid ELF (no ELF magic)"),
        (LD_SCRIPT, "GNU ld script"),
        (b"INPUT(-lfoo)\n", "GNU ld script"),
        (b"\x7fELF\x03\x01\x01" + bytes(64), "not a valid ELF (bad class byte 0x03)"),
        (b"\x7fELF\x02\x07\x01" + bytes(64), "not a valid ELF (bad data byte 0x07)"),
        (b"\x7fELF\x02\x01\x01" + bytes(20), "not a valid ELF (truncated header: 27 bytes)"),
    ],
)
def test_not_quite_elf(reader: ElfReader, data: bytes, error: str) -> None:
    result = reader.read("x", data)
    assert result.error == error
    assert result.needed == () and result.interpreter is None and result.libc == "unknown"


def test_random_garbage_after_the_magic(reader: ElfReader) -> None:
    rng = random.Random(7)
    for _ in range(20):
        result = reader.read("x", elf.ELF_MAGIC + rng.randbytes(rng.randrange(0, 4096)))
        assert result.error is not None and result.error.startswith("not a valid ELF")


def test_truncated_elf_is_an_error_not_a_silently_short_answer(fixtures: Path, reader: ElfReader) -> None:
    data = (fixtures / "greet" / "bin" / "greet-app").read_bytes()
    for cut in (64, 1000, len(data) // 2, len(data) - 1):
        result = reader.read("greet-app", data[:cut])
        assert result.error is not None and "truncated" in result.error, cut
        assert (result.machine, result.elf_class) == ("x86_64", 64)  # still known from e_ident


def test_mutated_elves_never_raise(fixtures: Path, reader: ElfReader) -> None:
    rng = random.Random(1)
    for name in ("glibc/hello-dynamic", "greet/lib/libgreet.so.1", "musl/hello-dynamic"):
        original = (fixtures / name).read_bytes()
        for _ in range(40):
            data = bytearray(original)
            for _ in range(rng.choice((5, 50, 500))):
                data[rng.randrange(16, len(data))] = rng.randrange(256)
            result = reader.read(name, bytes(data))
            assert isinstance(result, ElfFacts)
            assert result.error is None or not result.needed


def test_size_cap(fixtures: Path) -> None:
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    with ElfReader(max_bytes=1000) as small:
        assert small.read("x", data).error == f"too large to parse ({len(data)} bytes, cap 1000)"


def test_non_utf8_names_survive_as_surrogates(fixtures: Path, reader: ElfReader) -> None:
    data = (fixtures / "greet" / "bin" / "greet-app").read_bytes()
    at = data.index(b"libgreet.so.1\0")
    patched = data[:at] + b"libgr\xffet.so.1" + data[at + 13 :]
    result = reader.read("greet-app", patched)
    assert result.error is None
    assert result.needed[0] == "libgr\udcffet.so.1"
    assert os.fsencode(result.needed[0]) == b"libgr\xffet.so.1"


def test_machine_lief_has_no_name_for(fixtures: Path, reader: ElfReader) -> None:
    data = bytearray((fixtures / "glibc" / "hello-dynamic").read_bytes())
    data[18:20] = (9999).to_bytes(2, "little")  # e_machine
    result = reader.read("x", bytes(data))
    assert (result.error, result.machine, result.needed) == (None, "em_9999", ("libc.so.6",))


def test_is_elf_and_is_ld_script() -> None:
    assert elf.is_elf(b"\x7fELF\x02") and not elf.is_elf(b"\x7fEL") and not elf.is_elf(b"")
    assert elf.is_ld_script(LD_SCRIPT) and elf.is_ld_script(b"  GROUP ( libc.so.6 )")
    assert not elf.is_ld_script(b"#!/bin/sh\n") and not elf.is_ld_script(b"\x7fELF")


@pytest.mark.parametrize(
    ("e_machine", "elf_class", "endian", "name"),
    [
        (62, 64, "little", "x86_64"),
        (183, 64, "little", "aarch64"),
        (3, 32, "little", "i386"),
        (40, 32, "little", "arm"),
        (243, 64, "little", "riscv64"),
        (21, 64, "little", "ppc64le"),
        (21, 64, "big", "ppc64"),
        (22, 64, "big", "s390x"),
        (9999, 64, "little", "em_9999"),
    ],
)
def test_machine_names(e_machine: int, elf_class: int, endian: str, name: str) -> None:
    assert elf.machine_name(e_machine, elf_class, endian) == name


# --- the worker: crash, hang, death, isolation -----------------------------------------------


def worker_pid(reader: ElfReader) -> int:
    worker = reader._channel.worker
    assert worker is not None
    return worker.proc.pid


def test_worker_crash_is_reported_and_the_next_file_parses(fixtures: Path) -> None:
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    with ElfReader() as reader:
        assert reader.read("a", data).error is None
        first = worker_pid(reader)
        crashed = reader._read_op(data, elf._OP_ABORT)  # the worker calls os.abort()
        assert crashed.error == f"parser crashed (signal {signal.SIGABRT.value})"
        assert crashed.machine == "x86_64" and crashed.needed == ()
        again = reader.read("b", data)
        assert again.error is None and again.needed == ("libc.so.6",)
        assert worker_pid(reader) != first


def test_worker_hang_times_out_and_is_replaced(fixtures: Path) -> None:
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    with ElfReader(timeout=0.5) as reader:
        assert reader.read("a", data).error is None  # spawn outside the timed call
        hung = worker_pid(reader)
        started = time.monotonic()
        assert reader._read_op(data, elf._OP_HANG).error == "parser timed out after 0.5 s"
        assert time.monotonic() - started < 5
        assert reader.read("b", data).error is None
        assert not Path(f"/proc/{hung}").exists() or "zombie" in Path(f"/proc/{hung}/status").read_text()


def test_worker_killed_between_files_is_replaced_silently(fixtures: Path) -> None:
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    with ElfReader() as reader:
        reader.read("a", data)
        os.kill(worker_pid(reader), signal.SIGKILL)
        time.sleep(0.05)
        assert reader.read("b", data).error is None


def test_many_failures_in_a_row_disable_the_parser(fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(elf, "MAX_CONSECUTIVE_CRASHES", 2)
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    with ElfReader() as reader:
        for _ in range(2):
            assert reader._read_op(data, elf._OP_ABORT).error is not None
        assert reader.read("c", data).error == "parser disabled after 2 failures in a row"


def test_worker_limits(fixtures: Path) -> None:
    with ElfReader(memory_limit=3 << 30) as reader:
        reader.read("a", (fixtures / "glibc" / "hello-dynamic").read_bytes())
        limits = Path(f"/proc/{worker_pid(reader)}/limits").read_text()
    assert re.search(r"Max address space\s+3221225472\s", limits)
    assert re.search(r"Max core file size\s+0\s", limits)


def test_close_stops_the_worker_and_reading_again_respawns(fixtures: Path) -> None:
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    reader = ElfReader()
    reader.read("a", data)
    worker = reader._channel.worker
    assert worker is not None
    reader.close()
    assert worker.proc.returncode is not None
    assert reader.read("b", data).error is None
    reader.close()


def test_concurrent_callers_get_correct_answers(fixtures: Path) -> None:
    paths = [fixtures / "glibc" / "hello-dynamic", fixtures / "greet" / "lib" / "libgreet.so.1"]
    expected = [elf.read_elf(str(p), p.read_bytes()) for p in paths]
    results: list[bool] = []

    def work() -> None:
        results.extend(elf.read_elf(str(p), p.read_bytes()) == e for p, e in zip(paths * 5, expected * 5, strict=True))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40 and all(results)
    elf.close()


def test_the_calling_process_never_loads_lief(fixtures: Path) -> None:
    code = (
        "import sys; from imgaudit import elf; "
        f"f = elf.read_elf('x', open({str(fixtures / 'glibc' / 'hello-dynamic')!r}, 'rb').read()); "
        "assert f.needed == ('libc.so.6',), f; assert 'lief' not in sys.modules; print('ok')"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.stdout.strip() == "ok", run.stderr
    assert run.stderr == ""  # nothing from LIEF, nothing at exit


# --- one parse per content (RELIABILITY #98) ---------------------------------------------------


def test_copies_of_an_elf_file_are_parsed_once(fixtures: Path) -> None:
    """Regular files with equal bytes, in one layer or in the next: hard links were never parsed twice,
    copies are not either; each gets the facts of the first."""
    import io

    from imgaudit.layers import scan_layer
    from tests.builders import f, make_layer

    salt = os.urandom(8)  # content no earlier test of this process has had parsed
    elf = (fixtures / "glibc" / "hello-dynamic").read_bytes() + salt
    other = (fixtures / "musl" / "hello-static").read_bytes() + salt
    layer = make_layer([*(f(f"bin/copy{i}", elf, 0o755) for i in range(1_000)), f("bin/other", other, 0o755)])
    with ElfReader() as reader:
        scan = scan_layer(io.BytesIO(layer), label="layer 1/2", elf_reader=reader)
        assert reader.requests == 2
        facts = {e.path: e.elf for e in scan.entries}
        assert all(facts[f"/bin/copy{i}"] is facts["/bin/copy0"] for i in range(1_000))
        assert facts["/bin/copy0"] is not None and facts["/bin/copy0"].interpreter == GLIBC_INTERP
        assert facts["/bin/other"] is not None and facts["/bin/other"].interpreter is None  # static
        again = scan_layer(io.BytesIO(make_layer([f("usr/bin/again", elf, 0o755)])), label="layer 2/2",
                           elf_reader=reader)
        assert reader.requests == 2 and again.entries[-1].elf is facts["/bin/copy0"]
    with ElfReader() as fresh:  # another reader is another parser: it parses for itself
        scan_layer(io.BytesIO(make_layer([f("bin/copy", elf, 0o755)])), label="layer 1/1", elf_reader=fresh)
        assert fresh.requests == 1


def test_a_failed_parse_is_not_reused() -> None:
    """A timeout or a crash may not happen again: only facts without an error are kept for copies."""
    from imgaudit.elf import ElfFacts
    from imgaudit.layers import _SeenElf

    seen, reader = _SeenElf(), object()
    seen.keep(reader, "sha256:aa", ElfFacts(error="parser timed out after 10 s"))
    seen.keep(reader, "sha256:bb", ElfFacts(machine="x86_64"))
    assert seen.get(reader, "sha256:aa") is None
    assert seen.get(reader, "sha256:bb") == ElfFacts(machine="x86_64")
    assert seen.get(object(), "sha256:bb") is None  # another reader's facts are its own


def test_symbol_names_from_a_table_that_is_not_ascii_read_as_each_name_alone() -> None:
    """A .dynstr with UTF-8 (C++, Rust) or stray bytes: every offset, at a name's start or inside one (the
    linker shares tails), reads as the bytes from there to the NUL, decoded as os.fsdecode would."""
    table = b"\0main\0caf\xc3\xa9\0x\xff\0_ZN4core3fmt\0"
    names = elf._Names(table)
    offsets = [1, 6, 12, 15, 19, 8, 9, 13, 27]
    want = [table[o : table.index(b"\0", o)].decode("utf-8", "surrogateescape") for o in offsets]
    assert want[:4] == ["main", "café", "x\udcff", "_ZN4core3fmt"]
    assert names(offsets) == want


def test_names_after_a_utf8_name_are_found_at_their_byte_offsets() -> None:
    """Offsets count bytes: "éé" is 4 bytes but 2 characters. Counting characters moved every later name back
    by two, so offset 6 (of "x") read as "puts", the name that then started there."""
    table = b"\0\xc3\xa9\xc3\xa9\0x\0puts\0"
    assert elf._Names(table)([6, 8, 1, 3]) == ["x", "puts", "éé", "é"]


def test_exports_after_utf8_names_keep_their_own_names(facts: Read) -> None:
    """libu8.so.1's u8_hello follows three UTF-8 names in .dynstr (GCC takes UTF-8 identifiers); it read as
    "printf", the import whose name then started at its offset, and u8-app as missing u8_hello."""
    lib = facts("utf8/lib/libu8.so.1")
    assert sorted(s.name for s in lib.exported_symbols) == ["u8_hello", "u8_éé", "u8_ééé", "u8_éééé"]
    assert "printf" in [s.name for s in lib.imported_symbols]
    assert "u8_hello" in [s.name for s in facts("utf8/bin/u8-app").imported_symbols]
