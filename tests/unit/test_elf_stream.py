"""ELF files streamed to the LIEF worker (ElfSession.stream): a file above the scan's ELF byte budget goes
straight from the layer into LIEF's own buffer, so it is held once, not in a slot and again in LIEF (issue 7:
"never hold several copies"). The stream must give the facts a slot gives, fail only its own file when the
worker dies or stalls mid-file, and leave the reader usable whatever happens to the scan around it."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fuzz import hostile as h
from imgaudit import elf, layers
from imgaudit.elf import ElfFacts, ElfReader
from imgaudit.errors import ImgauditError
from imgaudit.layers import scan_layer
from tests.builders import f, make_layer
from tests.unit.test_elf import ALPINE, CORPUS, elf_fixtures, worker_pid

PIECE = 64 << 10  # the size of the pieces a layer hands over, roughly


def streamed(reader: ElfReader, data: bytes, piece: int = PIECE) -> ElfFacts:
    session = reader.session()
    stream = session.stream(len(data))
    for at in range(0, len(data), piece):
        stream.write(data[at : at + piece])
    return stream.facts()


def elf_files(fixtures: Path) -> dict[str, bytes]:
    files = {str(path): data for path, data in elf_fixtures(fixtures).items()}
    for arch, tarball in ALPINE.items():
        if (CORPUS / tarball).is_file():
            with tarfile.open(CORPUS / tarball) as tar:
                for member in ("./bin/busybox", f"./lib/ld-musl-{arch}.so.1", "./lib/libz.so.1.3.1"):
                    fobj = tar.extractfile(member)
                    if fobj is not None:
                        files[f"{arch}{member[1:]}"] = fobj.read()
    return files


def bare(data: bytes) -> bytes:
    """The file as sstrip leaves it: no section headers (.dynsym is then found by LIEF, from DT_SYMTAB)."""
    out = bytearray(data)
    out[0x28:0x30] = bytes(8)  # e_shoff
    out[0x3C:0x40] = bytes(4)  # e_shnum, e_shstrndx
    return bytes(out)


def test_a_streamed_file_has_the_facts_a_slot_gives(fixtures: Path, reader: ElfReader) -> None:
    """Every fixture and the Alpine loader, busybox and zlib (two architectures), whole and without
    section headers: the stream parses once with LIEF reading .dynsym, a slot re-parses only when it must."""
    files = elf_files(fixtures)
    assert len(files) >= 20
    greet = fixtures / "greet" / "bin" / "greet-app"
    files["greet-app-bare"] = bare(greet.read_bytes())
    for name, data in files.items():
        assert streamed(reader, data) == reader.read(name, data), name
    whole = reader.read("greet-app", greet.read_bytes())
    assert streamed(reader, files["greet-app-bare"]).imported_symbols == whole.imported_symbols


def test_mutated_files_get_the_same_answer_streamed_and_the_next_file_is_unaffected(
        fixtures: Path, reader: ElfReader) -> None:
    """Truncations, bit flips and tables pointed out of bounds: refused or read alike by both ways in, and a
    stream the worker gives up on early still leaves the request pipe at the next request."""
    good = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    want = reader.read("good", good)
    count = 0
    for seed in range(1, 12):
        for label, mutant in h.elf_mutations((fixtures / "greet" / "bin" / "greet-app").read_bytes(), seed):
            assert streamed(reader, mutant, piece=777) == reader.read(label, mutant), (seed, label)
            count += 1
        assert streamed(reader, good) == want
    assert count >= 100


def test_files_that_are_not_elf_get_the_same_reason_streamed(reader: ElfReader) -> None:
    """Found by fuzz/harness_elf.py: the stream's check ran on a memoryview, where `in` looks for an item."""
    for data in (b"/* GNU ld script\n */\nGROUP ( libc.so.6 )\n", b"INPUT(-lfoo)\n", b"\x7fELX" + bytes(60)):
        assert streamed(reader, data) == reader.read("x", data)
    assert streamed(reader, b"INPUT(-lfoo)\n").error == "GNU ld script"


def phdr_swollen(data: bytes) -> bytes:
    """The file with its PT_PHDR segment's memory size blown up (as a fuzzer left it): the segment then covers
    .gnu.version's address with no bytes behind it, so DT_VERSYM reads nothing and the versions must come from
    LIEF, which finds the table through its section header."""
    out = bytearray(data)
    phoff, = struct.unpack_from("<Q", out, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", out, 0x36)
    for index in range(phnum):
        at = phoff + index * phentsize
        if struct.unpack_from("<I", out, at)[0] == 6:  # PT_PHDR
            struct.pack_into("<Q", out, at + 40, 0xF6 << 40)  # p_memsz
            return bytes(out)
    raise AssertionError("no PT_PHDR")


def test_symbol_versions_without_a_usable_dt_versym_are_lief_s_both_ways(fixtures: Path, reader: ElfReader) -> None:
    """Found by fuzz/harness_elf.py: without a usable DT_VERSYM a slot took LIEF's versions from a parse that had
    not read the symbols (so none: every import unversioned), the stream from one that had."""
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    want = reader.read("whole", data).imported_symbols
    assert "GLIBC_2.34" in want.versions()
    swollen = phdr_swollen(data)
    assert reader.read("swollen", swollen).imported_symbols == want
    assert streamed(reader, swollen).imported_symbols == want


def padded(fixtures: Path, size: int) -> bytes:
    """A real program followed by zeros up to `size` bytes: data after the last section that LIEF does
    not read (the overlay), so its facts are the program's."""
    data = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    return data + bytes(size - len(data))


def test_a_worker_killed_mid_stream_fails_that_file_only(fixtures: Path) -> None:
    data = padded(fixtures, 8 << 20)  # more than the pipe holds: the worker is reading when it dies
    with ElfReader() as reader:
        want = reader.read("a", data)
        stream = reader.session().stream(len(data))
        stream.write(data[: 4 << 20])
        os.kill(worker_pid(reader), signal.SIGKILL)
        stream.write(data[4 << 20 :])
        failed = stream.facts()
        assert failed.error == f"parser crashed (signal {signal.SIGKILL.value})"
        assert failed.machine == "x86_64" and failed.needed == ()
        assert streamed(reader, data) == want
        assert reader.read("b", data) == want


def test_a_worker_killed_mid_stream_fails_that_file_only_for_the_scans_sharing_it(fixtures: Path) -> None:
    """Concurrent scans share a parser: another scan's files, uploaded while the stream holds the parser and
    parsed after the crash, get their own facts from the next worker."""
    data = padded(fixtures, 8 << 20)
    with ElfReader() as reader:
        want = reader.read("a", data)
        others = [(reader.read("x", other), other) for other in list(elf_files(fixtures).values())[: elf.SLOTS]]
        stream = reader.session().stream(len(data))
        stream.write(data[: 4 << 20])
        got: list[ElfFacts] = []
        uploaded = threading.Event()

        def other_scan() -> None:
            session = reader.session()
            uploads = []
            for _, other in others:
                upload = session.upload(len(other))
                upload.write(other)
                uploads.append(upload)
            uploaded.set()
            got.extend(upload.facts() for upload in uploads)  # each waits for the stream's facts first
            session.close()

        thread = threading.Thread(target=other_scan)
        thread.start()
        assert uploaded.wait(30)
        os.kill(worker_pid(reader), signal.SIGKILL)
        stream.write(data[4 << 20 :])
        assert stream.facts().error == f"parser crashed (signal {signal.SIGKILL.value})"
        thread.join(60)
        assert not thread.is_alive()
        assert got == [facts for facts, _ in others]
        assert reader.read("b", data) == want


def test_a_worker_stalled_mid_stream_times_out_and_is_replaced(fixtures: Path) -> None:
    data = padded(fixtures, 8 << 20)
    with ElfReader(timeout=0.5) as reader:
        want = reader.read("a", data)
        stalled = worker_pid(reader)
        stream = reader.session().stream(len(data))
        stream.write(data[: 1 << 20])
        os.kill(stalled, signal.SIGSTOP)
        started = time.monotonic()
        stream.write(data[1 << 20 :])  # the pipe fills up: the write gives up after the timeout
        assert time.monotonic() - started < 5
        assert stream.facts().error == "parser timed out after 0.5 s"
        assert streamed(reader, data) == want
        assert worker_pid(reader) != stalled


def test_a_stream_given_up_before_its_end_leaves_the_reader_usable(fixtures: Path) -> None:
    data = padded(fixtures, 4 << 20)
    with ElfReader() as reader:
        want = reader.read("a", data)
        stream = reader.session().stream(len(data))
        stream.write(data[: 3 << 20])
        stream.discard()  # the worker waits for a megabyte that never comes: it is replaced
        assert reader.read("b", data) == want
        short = reader.session().stream(len(data))
        short.write(data[:100])
        with pytest.raises(ValueError, match="stream of 4194304 bytes got 100"):
            short.facts()
        assert streamed(reader, data) == want


# --- in a layer scan --------------------------------------------------------------------------------------


@contextlib.contextmanager
def slot_peak(reader: ElfReader) -> Iterator[list[int]]:
    """The largest total of bytes the reader's slots held at once, sampled every 2 ms: what a slot holds is
    shared memory, counted against the machine as much as the parser's own copy."""
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            for fd in reader._channel.memfds or ():
                with contextlib.suppress(OSError):
                    total += os.fstat(fd).st_blocks * 512
            peak[0] = max(peak[0], total)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()


def test_an_elf_above_the_byte_budget_is_never_held_twice(fixtures: Path) -> None:
    """A 96 MiB program in a layer (three times the budget) is read once, by the worker: no slot ever
    holds it; the files around it still go through the slots, and its facts are the program's."""
    big = padded(fixtures, 96 << 20)
    small = (fixtures / "musl" / "hello-dynamic").read_bytes()
    layer = make_layer([f("bin/before", small, 0o755), f("bin/big", big, 0o755), f("bin/after", small + b"x", 0o755)])
    with ElfReader() as other:
        want = other.read("big", big)
    with ElfReader() as reader, slot_peak(reader) as peak:
        scan = scan_layer(io.BytesIO(layer), label="layer 1/1", elf_reader=reader)
    facts = {e.path: e.elf for e in scan.entries}
    assert facts["/bin/big"] == want and want.error is None and want.needed == ("libc.so.6",)
    assert facts["/bin/before"] is not None and facts["/bin/before"].libc == "musl"
    assert facts["/bin/after"] is not None and facts["/bin/after"].libc == "musl"
    assert 0 < peak[0] <= layers._ELF_BUDGET.cap


def test_copies_of_a_big_elf_are_parsed_once(fixtures: Path) -> None:
    """RELIABILITY #98 above the budget: the first copy is streamed; a later file of its size may be a copy,
    which only its digest tells, so it takes a slot and is recognised there."""
    big = padded(fixtures, 40 << 20)[:-8] + os.urandom(8)  # bytes no earlier test has had parsed
    layer = make_layer([f("bin/one", big, 0o755), f("bin/two", big, 0o755)])
    with ElfReader() as reader:
        scan = scan_layer(io.BytesIO(layer), label="layer 1/1", elf_reader=reader)
        assert reader.requests == 1
    facts = {e.path: e.elf for e in scan.entries}
    assert facts["/bin/two"] is facts["/bin/one"] and facts["/bin/one"] is not None
    assert facts["/bin/one"].error is None


def test_a_layer_cut_inside_a_streamed_elf_leaves_the_reader_usable(fixtures: Path) -> None:
    big = padded(fixtures, 48 << 20)
    small = (fixtures / "glibc" / "hello-dynamic").read_bytes()
    layer = make_layer([f("bin/big", big, 0o755)])
    with ElfReader() as reader:
        with pytest.raises((tarfile.ReadError, ImgauditError, EOFError)):
            scan_layer(io.BytesIO(layer[: 20 << 20]), label="layer 1/1", elf_reader=reader)
        scan = scan_layer(io.BytesIO(make_layer([f("bin/small", small, 0o755)])), label="layer 1/1",
                          elf_reader=reader)
        assert scan.entries[-1].elf == reader.read("small", small)
