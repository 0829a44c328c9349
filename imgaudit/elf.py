"""ELF facts for linkage checks (ELF gABI, GNU symbol versioning), read with LIEF in a worker process.

This is the only module that imports `lief`, and only inside the worker: LIEF can segfault, hang or
exhaust memory on hostile files (RELIABILITY.md 1.6, items 90-98), so the caller's process never
loads it. A long-lived worker gets each file through a shared in-memory file (`memfd_create`, so
LIEF parses a path: DESIGN.md 3b), or, for a file too big to hold twice, through the request pipe
straight into LIEF's own buffer (ElfSession.stream); it answers with plain tuples, and is killed and
respawned after a crash or a timeout. Bad input never raises: the file gets `ElfFacts.error` instead.
LIEF locates everything; the worker unpacks the .dynsym table itself, in bulk, as that is where the
time goes, and reads everything else it searches from LIEF's copy of the file.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import fcntl
import functools
import gc
import io
import itertools
import mmap
import operator
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, overload

ElfType = Literal["exec", "dyn", "pie", "rel", "core", "other"]
Libc = Literal["glibc", "musl", "none", "unknown"]
RustTarget = Literal["gnu", "musl", "static"]
Linking = Literal["static", "static-pie", "dynamic"]
Endian = Literal["little", "big", ""]

ELF_MAGIC = b"\x7fELF"
_Bytes = bytes | bytearray | mmap.mmap | memoryview  # a file's content, a map of its slot, or LIEF's copy
DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_LIMIT = 4 << 30
DEFAULT_MAX_BYTES = 1 << 30
# A worker that dies on this many files in a row is broken (e.g. LIEF #1146 on a whole
# architecture): stop paying a respawn per file and report every later file instead.
MAX_CONSECUTIVE_CRASHES = 20
# Memfds a worker reads files from. Two made the scan wait for the worker at every run of small ELF
# files (2.5 s of 11 on the bench image); eight let it run ahead within the layer's ELF byte budget.
SLOTS = 8
# A request pipe this big (Linux's default cap for unprivileged users) carries a streamed file in 1 MiB steps.
_STREAM_PIPE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class VersionNeed:
    """One vernaux entry of DT_VERNEED: `file` (a DT_NEEDED soname) must define `version`."""

    file: str
    version: str
    weak: bool = False


class Symbol(NamedTuple):
    """A dynamic symbol. `hidden` marks a non-default version (`name@V`, not `name@@V`), which
    binds only to references that ask for that version.

    A NamedTuple, not a frozen dataclass like the rest: an image holds ~300 symbols per ELF file
    and building them was a third of read_elf's time in the caller; tuples build ~3x faster and
    the garbage collector stops tracking them."""

    name: str
    version: str | None = None
    weak: bool = False
    hidden: bool = False


_BOOLS = (False, True)


class Symbols(Sequence[Symbol]):
    """One side of a file's .dynsym (imports or exports) as the columns the worker sends: the names
    joined by NUL (never inside a name), each symbol's slot (array "I" bytes) in a table of (version,
    hidden) pairs, and a 0/1 weak byte per symbol. A Symbol object per entry cost ~180 bytes (tuple and
    name string; 88 MB of the main process on the bench image); these cost about the names' length.
    Symbols are made when iterated; the column methods serve the binding sets without them."""

    __slots__ = ("joined", "size", "slots", "table", "weak")

    def __init__(self, joined: str = "", size: int = 0, slots: bytes = b"",
                 table: tuple[tuple[str | None, bool], ...] = (), weak: bytes = b"") -> None:
        if size and not (joined.count("\0") + 1 == size == len(slots) // 4 == len(weak) and len(slots) % 4 == 0):
            raise ValueError("symbol columns of different lengths")
        if size and max(array.array("I", slots)) >= len(table):
            raise ValueError("symbol version slot out of range")
        self.joined, self.size, self.slots, self.table, self.weak = joined, size, slots, table, weak

    @classmethod
    def of(cls, symbols: Iterable[Symbol]) -> Symbols:
        rows = list(symbols)
        pairs = sorted({(s.version, s.hidden) for s in rows}, key=lambda pair: (pair[0] or "", pair[1]))
        slot = {pair: at for at, pair in enumerate(pairs)}
        return cls("\0".join(s.name for s in rows), len(rows),
                   array.array("I", (slot[s.version, s.hidden] for s in rows)).tobytes(), tuple(pairs),
                   bytes(int(s.weak) for s in rows))

    def names(self) -> list[str]:
        return list(map(sys.intern, self.joined.split("\0"))) if self.size else []

    def versions(self) -> list[str | None]:
        return list(map([version for version, _ in self.table].__getitem__, array.array("I", self.slots)))

    def hidden(self) -> list[bool]:
        return list(map([flag for _, flag in self.table].__getitem__, array.array("I", self.slots)))

    def any_hidden(self) -> bool:
        return any(flag for _, flag in self.table)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[Symbol]:
        columns = zip(self.names(), self.versions(), map(_BOOLS.__getitem__, self.weak), self.hidden(), strict=True)
        return map(tuple.__new__, itertools.repeat(Symbol), columns)

    @overload
    def __getitem__(self, index: int) -> Symbol: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Symbol]: ...
    def __getitem__(self, index: int | slice) -> Symbol | Sequence[Symbol]:
        return list(self)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Symbols):
            return self._key() == other._key()
        return isinstance(other, tuple | list) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[str, int, bytes, tuple[tuple[str | None, bool], ...], bytes]:
        return self.joined, self.size, self.slots, self.table, self.weak

    def __repr__(self) -> str:
        return f"Symbols({list(self)!r})"


NO_SYMBOLS = Symbols()


@dataclass(frozen=True, slots=True)
class RustTls:
    """A TLS stack compiled into a Rust program, found by the panic locations its crate leaves."""

    library: Literal["rustls", "openssl"]  # openssl: the rust-openssl crate (libssl linked or vendored)
    version: str | None  # the crate's version; None from a vendored source tree
    roots: Literal["system", "embedded"]  # embedded: webpki-roots or its certificates are in the binary


@dataclass(frozen=True, slots=True)
class RustFacts:
    rustc_version: str | None = None
    rustc_commit: str | None = None
    target: RustTarget | None = None
    tls: RustTls | None = None


@dataclass(frozen=True, slots=True)
class ElfFacts:
    """What linkage checks need from one ELF file; `error` set means the file could not be read."""

    elf_class: int = 0
    endian: Endian = ""
    machine: str = ""
    elf_type: ElfType = "other"
    interpreter: str | None = None
    needed: tuple[str, ...] = ()
    soname: str | None = None
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    bind_now: bool = False
    has_dynamic: bool = False
    static_pie: bool = False
    version_needs: tuple[VersionNeed, ...] = ()
    version_defs: tuple[str, ...] = ()
    imported_symbols: Symbols = NO_SYMBOLS
    exported_symbols: Symbols = NO_SYMBOLS
    debug_bytes: int = 0
    stripped: bool = False
    rust: RustFacts | None = None
    libc: Libc = "unknown"
    banner: str | None = None
    libc_version: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        # tests and callers may still give plain tuples of Symbol
        for name in ("imported_symbols", "exported_symbols"):
            value = getattr(self, name)
            if not isinstance(value, Symbols):
                object.__setattr__(self, name, Symbols.of(value))

    @property
    def linking(self) -> Linking:
        """The `linking` of the JSON report: a shared library counts as dynamic."""
        if self.interpreter is not None:
            return "dynamic"
        if self.static_pie:
            return "static-pie"
        return "dynamic" if self.elf_type == "dyn" else "static"


# ---------------------------------------------------------------------------------------------
# Checks on the raw header, done in the caller: cheap, cannot crash, and they name the problem.

_LD_SCRIPT = re.compile(rb"\s*(?:/\*.*?\*/\s*)*(?:GROUP|INPUT|OUTPUT_FORMAT|SEARCH_DIR|INCLUDE)\s*\(", re.S)
_MACHINES = {62: "x86_64", 183: "aarch64", 3: "i386", 40: "arm", 243: "riscv", 21: "ppc64", 22: "s390"}


def is_elf(head: _Bytes) -> bool:
    return head[:4] == ELF_MAGIC


def is_ld_script(head: _Bytes) -> bool:
    """A GNU ld script (`libc.so` on Debian): the linker reads it, the loader never does."""
    head = bytes(head[:4096])  # `in` on a memoryview looks for an item, not a run of bytes
    return b"GNU ld script" in head[:256] or _LD_SCRIPT.match(head) is not None


def machine_name(e_machine: int, elf_class: int, endian: str, fallback: str = "") -> str:
    """Names as Docker platforms and distro triplets spell them; the word size or byte order picks
    the variant where one e_machine value covers two (EM_RISCV, EM_PPC64, EM_S390)."""
    name = _MACHINES.get(e_machine)
    if name == "riscv":
        return f"riscv{elf_class}"
    if name == "ppc64":
        return "ppc64le" if endian == "little" else "ppc64"
    if name == "s390":
        return "s390x" if elf_class == 64 else "s390"
    return name or fallback or f"em_{e_machine}"


def _ident(data: _Bytes) -> tuple[int, Endian, str]:
    """Class, byte order and machine from e_ident and e_machine, even when LIEF cannot parse."""
    if len(data) < 20 or data[4] not in (1, 2) or data[5] not in (1, 2):
        return 0, "", ""
    elf_class = 32 * data[4]
    endian: Endian = "little" if data[5] == 1 else "big"
    (e_machine,) = struct.unpack_from("<H" if endian == "little" else ">H", data, 18)
    return elf_class, endian, machine_name(e_machine, elf_class, endian)


def _precheck(data: _Bytes, max_bytes: int) -> str | None:
    """The reason `data` is not worth a parse, or None."""
    if not is_elf(data):
        return "GNU ld script" if is_ld_script(data) else "not a valid ELF (no ELF magic)"
    if len(data) < 16:
        return f"not a valid ELF (truncated: {len(data)} bytes)"
    if data[4] not in (1, 2):
        return f"not a valid ELF (bad class byte 0x{data[4]:02x})"
    if data[5] not in (1, 2):
        return f"not a valid ELF (bad data byte 0x{data[5]:02x})"
    if len(data) < (52 if data[4] == 1 else 64):
        return f"not a valid ELF (truncated header: {len(data)} bytes)"
    if len(data) > max_bytes:
        return f"too large to parse ({len(data)} bytes, cap {max_bytes})"
    return _truncation(data)


def _truncation(data: _Bytes) -> str | None:
    """LIEF parses a cut-off file without complaint and silently loses what lies past the cut (the
    dynamic section sits near the end), so check that the header tables and every segment fit."""
    order = "<" if data[5] == 1 else ">"
    is64 = data[4] == 2
    phoff, shoff = struct.unpack_from(order + ("QQ" if is64 else "II"), data, 32 if is64 else 28)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 54 if is64 else 42)
    need = max(phoff + phnum * phentsize if phnum else 0, shoff + shnum * shentsize if shoff else 0)
    if need <= len(data):
        phdr = struct.Struct(order + ("8xQ16xQ" if is64 else "4xI8xI"))  # p_offset, p_filesz
        if phentsize >= phdr.size:
            for index in range(phnum):
                offset, filesz = phdr.unpack_from(data, phoff + index * phentsize)
                need = max(need, offset + filesz if filesz else 0)
    if need > len(data):
        return f"not a valid ELF (truncated or corrupt: {len(data)} bytes, its headers describe {need})"
    return None


def _error_facts(data: _Bytes, error: str) -> ElfFacts:
    elf_class, endian, machine = _ident(data)
    return ElfFacts(elf_class=elf_class, endian=endian, machine=machine, error=error)


# ---------------------------------------------------------------------------------------------
# Worker side: runs in the subprocess only (see _BOOTSTRAP).

# ABORT and HANG exist to test the fault paths; PARSE_ALL to compare our ParserConfig with a full parse.
_OP_PARSE, _OP_ABORT, _OP_HANG, _OP_PARSE_ALL = 0, 1, 2, 3
_OP_PARSE_DYNSYM = 4  # internal: a re-parse with LIEF reading .dynsym
_OP_STREAM = 5  # the file's bytes follow the request on the request pipe (see ElfSession.stream)
_REQUEST = struct.Struct("<QBB")  # size, op, slot
_LENGTH = struct.Struct("<I")
_ET_NAMES: dict[int, ElfType] = {1: "rel", 2: "exec", 4: "core"}
_ET_DYN = 3
_SHN_UNDEF, _SHN_ABS = 0, 0xFFF1
_STB_LOCAL, _STB_WEAK = 0, 2
_DF_BIND_NOW, _DF_1_NOW, _DF_1_PIE = 0x8, 0x1, 0x08000000
_VER_FLG_BASE, _VER_FLG_WEAK = 0x1, 0x2
_VERSYM_HIDDEN = 0x8000
_RUSTC_VERSION = re.compile(rb"rustc version (\S+)")
_HEX40 = re.compile(rb"[0-9a-f]{40}/")
# Static glibc keeps version names (GLIBC_PRIVATE, GLIBC_TUNABLES, GLIBC_ABI_DT_RELR) in .rodata.
_GLIBC_MARKER = b"GLIBC_"
# musl's strerror text for errno 0 (glibc says "Success"): static musl programs that print errors
# (every Rust one) carry it; a static musl "hello" carries nothing and reads as "none".
_MUSL_MARKERS = (b"musl libc (", b"No error information")
_GLIBC_RELEASE = re.compile(rb"release version (\d+\.\d+(?:\.\d+)?)")
# musl keeps its version only as a bare string in .rodata (src/internal/version.c); the only
# other dotted-number string in it is "127.0.0.1", which the trailing NUL rules out.
# NAME-VERSION/src/ in a crate's path; VERSION is semver, maybe with a pre-release or build part.
_CRATE_VERSION = re.compile(rb"(\d+\.\d+\.\d+[0-9A-Za-z.+-]*)/src/")
# Subject names (DER PrintableString) of two roots that webpki-roots and every common bundle carry: either
# one means a root store is compiled in (webpki-roots, or certificates the program includes itself).
_EMBEDDED_ROOTS = (b"ISRG Root X1", b"DigiCert Global Root G2")
_MUSL_VERSION = re.compile(rb"\0(\d+\.\d+\.\d+(?:[-_][0-9A-Za-z._+-]*)?)\0")


class _Parser:
    """Turns a slot's current content (a memfd), or a file streamed after its request, into plain
    tuples (picklable, LIEF-free)."""

    def __init__(self, lief: Any, memfds: Sequence[int], requests: int) -> None:
        self.lief = lief
        self.memfds = memfds
        self.requests = requests
        self.path = ""
        self.configs = {
            _OP_PARSE: _parser_config(lief, dynsym=False),
            _OP_PARSE_ALL: lief.ELF.ParserConfig.all,
            _OP_PARSE_DYNSYM: _parser_config(lief, dynsym=True),
        }
        self.tags = lief.ELF.DynamicEntry.TAG
        self.symtab = lief.ELF.Section.TYPE.SYMTAB
        self.dynsym = lief.ELF.Section.TYPE.DYNSYM
        self.pt_dynamic = lief.ELF.Segment.TYPE.DYNAMIC
        self.pt_load = lief.ELF.Segment.TYPE.LOAD
        self.binary: Any = None
        self.with_dynsym = False  # whether LIEF read .dynsym in the parse self.binary holds

    def parse(self, size: int, op: int = _OP_PARSE, slot: int = 0) -> tuple[str, Any]:
        self.release()
        if op == _OP_STREAM:
            return self.parse_stream(size)
        self.path = f"/proc/self/fd/{self.memfds[slot]}"
        self.binary = self.lief.ELF.parse(self.path, self.configs[op])
        self.with_dynsym = op != _OP_PARSE
        if self.binary is None:
            return "error", "not a valid ELF (LIEF could not parse it)"
        return "ok", self.collect(self.binary, op)

    def parse_stream(self, size: int) -> tuple[str, Any]:
        """The file that follows the request on the request pipe, read by LIEF into the one copy it
        keeps. There is no second parse to fall back on, so .dynsym is read by LIEF at once (it is only
        used where the section headers do not locate the table, as with a slot)."""
        source = _PipedFile(self.requests, size)
        try:
            self.binary = self.lief.ELF.parse(source, self.configs[_OP_PARSE_DYNSYM])
            self.with_dynsym = True
        finally:
            source.drain()  # whatever LIEF took, the next request starts after this file
        if source.error is not None:
            return "error", source.error
        if self.binary is None:
            return "error", "not a valid ELF (LIEF could not parse it)"
        return "ok", self.collect(self.binary, _OP_PARSE_DYNSYM)

    def release(self) -> None:
        """Free the last file; called after its answer is sent, so the caller need not wait for
        LIEF's teardown."""
        self.binary = None

    def collect(self, binary: Any, op: int) -> dict[str, Any]:
        facts = self.dynamic(binary)
        facts.update(self.versions(binary))
        facts.update(self.header(binary, facts))
        comment, rodata, dynsym = self.sections(binary, facts)
        table = self.dynsym_table(binary, dynsym, facts, op)
        versym = self.versym(facts.pop("versym"), len(table.info), facts["endian"])
        imported, exported = _split_symbols(table, versym, frozenset(facts["version_defs"]))
        facts["static_pie"] = _static_pie(binary.header, facts, exported.names)
        areas = _Areas(rodata, binary, self.pt_load)
        facts.update(_libc_facts(facts, areas, exported.names))
        facts["rust"] = _rust_facts(comment, areas, facts)
        facts["symbols"] = _symbols_wire(imported, exported, facts.pop("version_names"))
        return facts

    def header(self, binary: Any, facts: dict[str, Any]) -> dict[str, Any]:
        header = binary.header
        elf_class = 32 if header.identity_class == self.lief.ELF.Header.CLASS.ELF32 else 64
        endian = "little" if header.identity_data == self.lief.ELF.Header.ELF_DATA.LSB else "big"
        arch = header.machine_type  # an int when LIEF has no name for the value
        interpreter = _str_attr(binary, "interpreter").rstrip("\0") if binary.has_interpreter else None
        e_type, pie_flag = int(header.file_type), facts["pie_flag"]
        return {
            "elf_class": elf_class,
            "endian": endian,
            "machine": machine_name(int(arch), elf_class, endian, getattr(arch, "name", "").lower()),
            "elf_type": _elf_type(e_type, interpreter, pie_flag, facts["soname"]),
            "interpreter": interpreter,
            "has_dynamic": any(seg.type is self.pt_dynamic for seg in binary.segments),
        }

    def dynamic(self, binary: Any) -> dict[str, Any]:
        tags = self.tags
        needed: list[str] = []
        facts: dict[str, Any] = {"soname": None, "rpath": (), "runpath": (), "bind_now": False, "versym": 0}
        pie_flag = False
        for entry in binary.dynamic_entries:
            tag = entry.tag
            if tag is tags.NEEDED:
                needed.append(_str_attr(entry, "name"))
            elif tag is tags.SONAME:
                facts["soname"] = _str_attr(entry, "name")
            elif tag is tags.RPATH:
                facts["rpath"] = tuple(_str_attr(entry, "rpath").split(":"))  # "" elements mean the cwd
            elif tag is tags.RUNPATH:
                facts["runpath"] = tuple(_str_attr(entry, "runpath").split(":"))
            elif tag is tags.BIND_NOW or (tag is tags.FLAGS and entry.value & _DF_BIND_NOW):
                facts["bind_now"] = True
            elif tag is tags.VERSYM:
                facts["versym"] = entry.value
            elif tag is tags.FLAGS_1:
                facts["bind_now"] |= bool(entry.value & _DF_1_NOW)
                pie_flag = bool(entry.value & _DF_1_PIE)
        facts.update(needed=tuple(needed), pie_flag=pie_flag)
        return facts

    def versions(self, binary: Any) -> dict[str, Any]:
        """Needs, definitions (without the base one naming the file), and the .gnu.version
        index -> name map that symbols() uses (vna_other and vd_ndx are those indexes)."""
        needs, defs, names = [], [], {}
        for req in binary.symbols_version_requirement:
            for aux in req.get_auxiliary_symbols():
                name = names[aux.other] = _str_attr(aux, "name")
                needs.append((_str_attr(req, "name"), name, bool(aux.flags & _VER_FLG_WEAK)))
        for vdef in binary.symbols_version_definition:
            auxs = vdef.auxiliary_symbols
            if auxs and not vdef.flags & _VER_FLG_BASE:
                name = names[vdef.ndx] = _str_attr(auxs[0], "name")
                defs.append(name)
        return {"version_needs": tuple(needs), "version_defs": tuple(defs), "version_names": names}

    def reparse(self, op: int) -> Any:
        """Parse the same file again with another config (kept, so release() frees it)."""
        self.binary = self.lief.ELF.parse(self.path, self.configs[op])
        self.with_dynsym = True
        return self.binary

    def dynsym_table(self, binary: Any, dynsym: _DynsymAt | None, facts: dict[str, Any], op: int) -> _DynsymTable:
        """The .dynsym columns: unpacked by us from the section, or read by LIEF when asked to, or
        when no usable section header says where the table is (LIEF then finds it through
        DT_SYMTAB and counts it with the hash tables)."""
        table = _read_dynsym(dynsym, facts) if op != _OP_PARSE_ALL else None
        if table is not None:
            return table
        if op == _OP_PARSE:
            binary = self.reparse(_OP_PARSE_DYNSYM)
        if binary is None:
            return _DynsymTable((), b"", (), _Names(b""))
        return self.lief_dynsym(binary)

    def lief_dynsym(self, binary: Any) -> _DynsymTable:
        """The .dynsym entries as LIEF reads them (it also counts them without sections); a
        symbol's "string table offset" is then its index in LIEF's list of names."""
        symbols = binary.dynamic_symbols
        names = [_str_attr(sym, "name") for sym in symbols]
        info = bytes(min(int(sym.binding), 15) << 4 for sym in symbols)
        return _DynsymTable(range(len(names)), info, [sym.shndx for sym in symbols], _Names(b"", names))

    def versym(self, address: int, count: int, endian: str) -> Sequence[int]:
        """The .gnu.version array, one entry per dynamic symbol. Read in bulk through DT_VERSYM:
        asking LIEF symbol by symbol costs more than the rest of the parse. Without it, LIEF's
        versions of the symbols it read (so from a parse that read them: a stream's, or a re-parse)."""
        if not count:
            return []
        raw = self.binary.get_content_from_virtual_address(address, 2 * count) if address else b""
        if len(raw) != 2 * count:
            binary = self.binary if self.with_dynsym else self.reparse(_OP_PARSE_DYNSYM)
            return [version.value for version in binary.symbols_version] if binary is not None else []
        table = array.array("H", bytes(raw))
        if endian != sys.byteorder:
            table.byteswap()
        return table

    def sections(self, binary: Any, facts: dict[str, Any]) -> tuple[bytes, memoryview | None, _DynsymAt | None]:
        """Fill debug_bytes and stripped; return `.comment`, the content of `.rodata`, and .dynsym
        with its string table (contents as LIEF holds them, so no copy of the file is needed)."""
        debug, symtab, comment, rodata, dynsym = 0, False, b"", None, None
        sections = binary.sections
        for section in sections:
            name, kind = _str_attr(section, "name"), section.type
            if name.startswith((".debug_", ".zdebug_")):
                debug += section.size
            elif kind is self.symtab:
                symtab = True
            elif kind is self.dynsym and dynsym is None and 0 < section.link < len(sections):
                strtab = sections[section.link]
                dynsym = _DynsymAt(section.content, section.size, section.entry_size, strtab.content, strtab.size)
            elif name == ".comment":
                comment = bytes(section.content)
            elif name == ".rodata":
                rodata = section.content
        facts.update(debug_bytes=debug, stripped=not symtab)
        return comment, rodata, dynsym


class _PipedFile(io.RawIOBase):
    """The `size` bytes that follow a stream request on the request pipe, as the seekable file
    LIEF's parse takes. LIEF 1.0 sizes a buffer of its own by seeking to the end, then fills it
    with one readinto from the start: the bytes go from the pipe straight into that buffer, the
    only copy of the file anywhere. Any other order of reads is refused (the parse then fails)
    rather than served from a second copy. The file is checked like a slot's (`_precheck`) once
    it is whole, while the buffer is still LIEF's to give."""

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self.fd = fd
        self.size = size
        self.left = size  # not yet taken from the pipe
        self.pos = 0
        self.error: str | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.pos != 0 or self.left != self.size or len(view) < self.size:
            self.error = "not a valid ELF (parser read it in an unexpected order)"
            return 0
        _read_into(self.fd, view[: self.size])
        self.left = 0
        self.error = _precheck(view[: self.size], self.size)
        if self.error is not None:
            return 0  # LIEF gives up on an empty read
        self.pos = self.size
        return self.size

    def drain(self) -> None:
        """Take what LIEF did not, so the next request is read from its start."""
        scrap = bytearray(min(self.left, 1 << 20))
        while self.left:
            self.left -= _read_into(self.fd, memoryview(scrap)[: min(self.left, len(scrap))])


def _read_into(fd: int, view: memoryview) -> int:
    """Fill `view` from `fd` (a pipe gives at most its capacity per read)."""
    got = 0
    while got < len(view):
        count = os.readv(fd, [view[got:]])
        if not count:
            raise EOFError("the caller closed the request pipe mid-file")
        got += count
    return got


def _parser_config(lief: Any, dynsym: bool) -> Any:
    """Skip what linkage does not use (RELIABILITY item 93): relocations, .symtab, notes, overlay.
    Version needs and definitions are kept. .dynsym is normally unpacked by _read_dynsym instead:
    LIEF builds an object per symbol, which cost half of the whole parse on /usr/lib."""
    config = lief.ELF.ParserConfig()
    config.parse_relocations = False
    config.parse_symtab_symbols = False
    config.parse_notes = False
    config.parse_overlay = False
    config.parse_dyn_symbols = dynsym
    config.parse_symbol_versions = True
    return config


class _Names:
    """Symbol names by string table offset: each name is the bytes from its offset to the next NUL,
    decoded as os.fsdecode would. The table is decoded once and split at its NULs, so a name that starts
    a part is a dict lookup; other offsets (the linker shares tails, so one may point inside another
    name, or past the end) take the slow path, one find and one decode per name."""

    def __init__(self, strtab: bytes, by_index: list[str] | None = None) -> None:
        self.strtab = strtab
        self.by_index = by_index
        self.starts: dict[int, str] | None = None

    def __call__(self, offsets: Sequence[int]) -> list[str]:
        if self.by_index is not None:
            return list(map(self.by_index.__getitem__, offsets))
        if self.starts is None:
            parts = self.strtab.decode("latin-1").split("\0")  # one character per byte: lengths are bytes
            # a part starts after the parts before it and one NUL each, counted in bytes before any decoding
            starts = map(operator.add, itertools.accumulate(map(len, parts), initial=0), itertools.count())
            if not self.strtab.isascii():  # C++, Rust and Go libraries may hold UTF-8 names: decode as slow() does
                parts = [p if p.isascii() else p.encode("latin-1").decode("utf-8", "surrogateescape") for p in parts]
            self.starts = dict(zip(starts, parts, strict=False))
        names = list(map(self.starts.get, offsets))
        if None in names:
            for at in itertools.compress(itertools.count(), map(operator.is_, names, itertools.repeat(None))):
                names[at] = self.slow(offsets[at])
        return names  # type: ignore[return-value]  # every None was replaced

    def slow(self, offset: int) -> str:
        end = self.strtab.find(b"\0", offset)
        return self.strtab[offset : end if end >= 0 else None].decode("utf-8", "surrogateescape")


class _DynsymAt(NamedTuple):
    """.dynsym and its string table as their section headers give them (a content shorter than
    the size means the section lies outside the file)."""

    content: memoryview
    size: int
    entsize: int
    strtab: memoryview
    strtab_size: int


class _DynsymTable(NamedTuple):
    """.dynsym as columns: st_name, st_info (one byte each), st_shndx, and the names' resolver."""

    st_name: Sequence[int]
    info: bytes
    shndx: Sequence[int]
    names: _Names


class _Picked(NamedTuple):
    """One side (imports or exports) of .dynsym: names, .gnu.version values, weak flags (0/1 bytes)."""

    names: list[str]
    versym: list[int]
    weak: bytes


# st_info byte -> 1 when the binding is not STB_LOCAL / is STB_WEAK
_NONLOCAL = bytes(int(info >> 4 != _STB_LOCAL) for info in range(256))
_WEAK = bytes(int(info >> 4 == _STB_WEAK) for info in range(256))


def _read_dynsym(dynsym: _DynsymAt | None, facts: dict[str, Any]) -> _DynsymTable | None:
    """The columns of .dynsym, sliced in bulk from the section's content (an object per symbol
    would cost more than the rest of the parse); None (LIEF then reads it) when the section is
    absent or odd, or lies (in part) outside the file."""
    if dynsym is None:
        return None
    is64 = facts["elf_class"] == 64
    if dynsym.entsize != (24 if is64 else 16) or dynsym.size % dynsym.entsize:
        return None
    if len(dynsym.content) != dynsym.size or len(dynsym.strtab) != dynsym.strtab_size:
        return None
    raw = bytes(dynsym.content)
    words, halves = array.array("I", raw), array.array("H", raw)
    if facts["endian"] != sys.byteorder:
        words.byteswap()
        halves.byteswap()
    strtab = _Names(bytes(dynsym.strtab))
    if is64:  # Elf64_Sym: st_name u32 @0, st_info u8 @4, st_shndx u16 @6, 24 bytes
        return _DynsymTable(words[0::6], raw[4::24], halves[3::12], strtab)
    return _DynsymTable(words[0::4], raw[12::16], halves[7::8], strtab)  # Elf32_Sym: @0, @12, @14, 16 bytes


def _split_symbols(table: _DynsymTable, versym: Sequence[int], defs: frozenset[str]) -> tuple[_Picked, _Picked]:
    """Non-local symbols split into imports (undefined) and exports (defined), in table order,
    without the ABS symbol naming each version definition. Column-wise, with C loops only."""
    count = len(table.info)
    keep = table.info.translate(_NONLOCAL)
    undefined = bytes(map(operator.not_, table.shndx))  # st_shndx == SHN_UNDEF
    imports = bytes(map(operator.and_, keep, undefined))
    exports = bytearray(map(operator.gt, keep, undefined))
    if defs:
        at = -1
        with contextlib.suppress(ValueError):
            while True:
                at = table.shndx.index(_SHN_ABS, at + 1)
                if exports[at] and table.names([table.st_name[at]])[0] in defs:
                    exports[at] = 0
    if len(versym) != count:  # a short .gnu.version reads as 0 (VER_NDX_LOCAL) past its end
        versym = list(itertools.islice(itertools.chain(versym, itertools.repeat(0)), count))
    weak = table.info.translate(_WEAK)
    return _pick(table, versym, weak, imports), _pick(table, versym, weak, exports)


def _pick(table: _DynsymTable, versym: Sequence[int], weak: bytes, selector: bytes | bytearray) -> _Picked:
    offsets = list(itertools.compress(table.st_name, selector))
    return _Picked(table.names(offsets), list(itertools.compress(versym, selector)),
                   bytes(itertools.compress(weak, selector)))


def _symbols_wire(imported: _Picked, exported: _Picked, names: dict[int, str]) -> tuple[Any, ...]:
    """Both sides for the caller as a few flat objects, not a tuple per symbol (pickling and
    unpickling those was a third of the ELF work): a table of the (version, hidden) pairs in use,
    and per side the names joined by NUL (never inside a name), each symbol's slot in that table
    (array "I" bytes) and its weak flag."""
    values = sorted(set(imported.versym).union(exported.versym))
    slots = {value: slot for slot, value in enumerate(values)}
    table = tuple((names.get(value & 0x7FFF), bool(value & _VERSYM_HIDDEN)) for value in values)

    def side(picked: _Picked) -> tuple[str, int, bytes, bytes]:
        positions = array.array("I", map(slots.__getitem__, picked.versym)).tobytes()
        return "\0".join(picked.names), len(picked.names), positions, picked.weak

    return table, side(imported), side(exported)


def _str_attr(obj: Any, attr: str) -> str:
    """A string attribute of a LIEF object. For text that is not UTF-8, LIEF returns bytes or
    raises; keep those bytes as surrogates, as os.fsdecode does, so a name still matches its file."""
    try:
        value = getattr(obj, attr)
    except UnicodeDecodeError as err:
        value = bytes(err.object)
    return value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")


def _elf_type(e_type: int, interpreter: str | None, pie_flag: bool, soname: str | None) -> ElfType:
    """ET_DYN is a PIE when DF_1_PIE says so or it asks for an interpreter; but libc.so.6 also has
    PT_INTERP (it runs to print its banner) and stays a library because it has a soname."""
    if e_type == _ET_DYN:
        return "pie" if pie_flag or (interpreter is not None and soname is None) else "dyn"
    return _ET_NAMES.get(e_type, "other")


def _static_pie(header: Any, facts: dict[str, Any], exported: list[str]) -> bool:
    """ET_DYN that runs without a loader: DF_1_PIE says so (binutils >= 2.35); before that, an entry
    point, no soname and no exports (Debian's musl libc.so has the first two: it is its own loader)."""
    pie_flag = facts.pop("pie_flag")
    if int(header.file_type) != _ET_DYN or facts["interpreter"] is not None or facts["needed"]:
        return False
    return pie_flag or (facts["soname"] is None and header.entrypoint != 0 and not exported)


class _Areas:
    """Where text markers are searched: `.rodata`; in a file without one, every section (an object
    file), or every loaded segment when there are no section headers either. The contents are
    LIEF's, searched in place with `re` (a memoryview has no find): the worker holds no copy of the
    file besides LIEF's."""

    def __init__(self, rodata: memoryview | None, binary: Any, pt_load: Any) -> None:
        self.rodata = rodata
        self.binary = binary
        self.pt_load = pt_load

    def __iter__(self) -> Iterator[memoryview]:
        if self.rodata is not None:
            yield self.rodata
            return
        sections = self.binary.sections
        if len(sections):
            yield from (section.content for section in sections)
            return
        for segment in self.binary.segments:
            if segment.type is self.pt_load:
                yield segment.content


@functools.lru_cache(maxsize=64)
def _literal(needle: bytes) -> re.Pattern[bytes]:
    return re.compile(re.escape(needle))


def _find(area: memoryview, needle: bytes, start: int = 0, end: int = sys.maxsize) -> int:
    """bytes.find for a memoryview."""
    match = _literal(needle).search(area, start, end)
    return match.start() if match else -1


def _libc_facts(facts: dict[str, Any], areas: _Areas, exported: list[str]) -> dict[str, Any]:
    libc = _libc_family(facts, areas, exported)
    banner, version = None, None
    if libc == "glibc" and facts["soname"] == "libc.so.6":
        banner, version = _glibc_banner(areas, facts["version_defs"])
    elif libc == "musl" and _is_musl_libc(facts):
        banner, version = _musl_banner(areas)
    return {"libc": libc, "banner": banner, "libc_version": version}


def _libc_family(facts: dict[str, Any], areas: _Areas, exported: list[str]) -> Libc:
    """Which libc the file is built for, from the loader it names, then what it needs, then markers
    left in static programs and in libc itself."""
    interp, needed, soname = facts["interpreter"] or "", facts["needed"], facts["soname"] or ""
    if "ld-musl-" in interp or soname.startswith("libc.musl-") or any(n.startswith("libc.musl-") for n in needed):
        return "musl"
    if "/ld-linux" in interp or "/ld64.so" in interp or soname.startswith(("libc.so.6", "ld-linux", "ld64.so")):
        return "glibc"
    if "libc.so.6" in needed or any(need[1].startswith("GLIBC_") for need in facts["version_needs"]):
        return "glibc"
    if interp or needed:
        return "unknown"
    if facts["elf_type"] == "dyn" and "__libc_start_main" not in exported:
        return "none"  # a library that needs nothing (libicudata) and is no libc: not worth a search
    return _static_libc(areas)


def _static_libc(areas: _Areas) -> Libc:
    """Markers in .rodata (the loaded segments without section headers): a static Go program of
    50 MB would otherwise cost three full searches."""
    if any(_find(area, _GLIBC_MARKER) >= 0 for area in areas):
        return "glibc"
    if any(_find(area, marker) >= 0 for area in areas for marker in _MUSL_MARKERS):
        return "musl"
    return "none"


def _is_musl_libc(facts: dict[str, Any]) -> bool:
    """musl's libc.so is also its loader: a library that needs nothing and asks for no loader."""
    return facts["elf_type"] == "dyn" and not facts["needed"] and facts["interpreter"] is None


def _glibc_banner(areas: _Areas, version_defs: Iterable[str]) -> tuple[str | None, str | None]:
    banner = next(filter(None, (_line_at(area, _find(area, b"GNU C Library")) for area in areas)), None)
    match = _GLIBC_RELEASE.search(banner.encode()) if banner else None
    if match:
        return banner, match.group(1).decode()
    glibc = [v[6:] for v in version_defs if v.startswith("GLIBC_2")]
    return banner, max(glibc, key=_version_key, default=None)


def _musl_banner(areas: _Areas) -> tuple[str | None, str | None]:
    """The banner the loader prints when run without arguments ("musl libc (x86_64)"), and the version."""
    for area in areas:
        at = _find(area, b"musl libc (")
        if at < 0:
            continue
        close = _find(area, b")", at, at + 64)
        banner = bytes(area[at : close + 1]).decode("ascii", "replace") if close > 0 else None
        match = _MUSL_VERSION.search(area)
        return banner, bytes(match.group(1)).decode("ascii") if match else None
    return None, None


def _line_at(area: memoryview, start: int) -> str | None:
    """The text line starting at `start` (up to a newline or NUL, at most 256 bytes)."""
    if start < 0:
        return None
    line = bytes(area[start : start + 256]).split(b"\0", 1)[0].split(b"\n", 1)[0]
    return line.decode("utf-8", "replace").rstrip(". ")


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) if part.isascii() and part.isdigit() else -1 for part in version.split("."))


def _rust_facts(
    comment: bytes, areas: _Areas, facts: dict[str, Any]
) -> tuple[str | None, str | None, str | None, tuple[str, str | None, str] | None] | None:
    match = _RUSTC_VERSION.search(comment)
    if not (match or _may_hide_rust(comment, facts)):
        return None
    version = match.group(1).decode("ascii", "replace") if match else None
    commit = _rustc_commit(areas)
    if version is None and commit is None:
        return None
    return version, commit, _rust_target(facts), _rust_tls(areas)


def _may_hide_rust(comment: bytes, facts: dict[str, Any]) -> bool:
    """Whether a file without "rustc version" in .comment is worth the ~1 GB/s search for the
    rustc commit. Every rustc object adds that line, so a .comment without it is C/C++. Debian
    strips .comment from everything, so only programs are searched: a stripped Rust shared
    library goes unrecognised, which costs nothing for linkage."""
    return not comment and facts["elf_type"] != "dyn"


def _rustc_commit(areas: _Areas) -> str | None:
    """The first `/rustc/<40 hex>/` path: std's panic locations keep it in .rodata even when the
    binary is stripped."""
    for area in areas:
        start = 0
        for _ in range(64):  # bounded: a hostile file may hold "/rustc/" everywhere
            hit = _find(area, b"/rustc/", start)
            if hit < 0:
                break
            tail = area[hit + 7 : hit + 48]
            if _HEX40.fullmatch(tail):
                return bytes(tail[:40]).decode("ascii")
            start = hit + 7
    return None


def _rust_tls(areas: _Areas) -> tuple[str, str | None, str] | None:
    """rustls or rust-openssl, by the source paths of their panic locations (cargo builds a crate in
    `<registry>/NAME-VERSION/src/`, a vendored tree in `vendor/NAME/src/`), and whether root
    certificates are compiled in: the webpki-roots crate has no panic location of its own, but its
    table holds the roots' subject names."""
    for library in ("rustls", "openssl"):
        for area in areas:
            found, version = _crate(area, library)
            if found:
                return library, version, "embedded" if _has_roots(areas) else "system"
    return None


def _has_roots(areas: _Areas) -> bool:
    return any(_crate(area, "webpki-roots")[0] or any(_find(area, name) >= 0 for name in _EMBEDDED_ROOTS)
               for area in areas)


def _crate(area: memoryview, name: str) -> tuple[bool, str | None]:
    """Whether a crate's sources appear in `area`, and its version when a registry path says it.
    `/rustls-` also starts rustls-webpki and rustls-pki-types: only a digit after the dash is a version."""
    if _find(area, b"/vendor/%s/src/" % name.encode()) >= 0:
        return True, None
    needle = b"/%s-" % name.encode()
    at = 0
    for _ in range(64):  # bounded: a hostile file may repeat the prefix everywhere
        hit = _find(area, needle, at)
        if hit < 0:
            return False, None
        match = _CRATE_VERSION.match(area[hit + len(needle) : hit + len(needle) + 64])
        if match:
            return True, bytes(match.group(1)).decode("ascii")
        at = hit + len(needle)
    return False, None


def _rust_target(facts: dict[str, Any]) -> RustTarget | None:
    if facts["libc"] == "musl":
        return "musl"
    if facts["interpreter"] is None and facts["elf_type"] != "dyn":
        return "static"  # +crt-static on the gnu target
    return "gnu" if facts["libc"] == "glibc" else None


def _serve(argv: list[str]) -> None:
    """Worker main loop: one request (size, op, slot) in, one length-prefixed pickle out."""
    import resource
    import signal

    requests, results, *memfds, memory_limit = (int(arg) for arg in argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    gc.disable()  # tuples by the hundred thousand, no cycles: collections only cost (see _serve_requests)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash must not write a core file
    try:
        import lief

        lief.logging.disable()  # "Can't access the content of section #N" (RELIABILITY item 94)
        parser = _Parser(lief, memfds, requests)
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))  # a blow-up fails here, not the host
        _send(results, ("ready", getattr(lief, "__version__", "?")))
    except Exception as err:  # reported to the caller, who raises
        _send(results, ("broken", f"{type(err).__name__}: {err}"))
        return
    _serve_requests(parser, requests, results, memory_limit)


def _serve_requests(parser: _Parser, requests: int, results: int, memory_limit: int) -> None:
    served = 0
    while head := _read_exact_fd(requests, _REQUEST.size):
        size, op, slot = _REQUEST.unpack(head)
        if op == _OP_ABORT:
            os.abort()
        while op == _OP_HANG:
            time.sleep(3600)
        _send(results, _parse_guarded(parser, size, op, slot, memory_limit))
        parser.release()
        served += 1
        if served % 1000 == 0:
            gc.collect()  # in case a LIEF binding ever leaves a cycle behind
        if _TRIM is not None and (size >= _TRIM_AFTER or served % 256 == 0):
            _TRIM(0)


# LIEF's frees stay in glibc's heap: the worker grew from 69 to 96 MB over /usr/lib's 1,067 files here
# and stayed there for the rest of the run (while the caller analyses); malloc_trim gave it back (70 MB).
_TRIM_AFTER = 8 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl has none)."""
    import ctypes

    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def _parse_guarded(parser: _Parser, size: int, op: int, slot: int, memory_limit: int) -> tuple[str, Any]:
    if slot >= len(parser.memfds) and op != _OP_STREAM:
        return "error", f"no slot {slot}"
    try:
        return parser.parse(size, op, slot)
    except MemoryError:
        return "error", f"parser ran out of memory (limit {memory_limit >> 20} MiB)"
    except Exception as err:  # LIEF raises many kinds on hostile input
        return "error", f"parser error ({type(err).__name__}: {err})"[:300]


def _read_exact_fd(fd: int, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = os.read(fd, size - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def _send(fd: int, reply: tuple[str, Any]) -> None:
    payload = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_LENGTH.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------------------------------------
# Caller side.


class _PlainUnpickler(pickle.Unpickler):
    """Only plain data comes back: even a worker whose memory LIEF corrupted cannot name a class."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"worker reply refers to {module}.{name}")


class _WorkerGone(Exception):
    """The worker closed its end before answering (it died, or was killed)."""


class _WorkerTimeout(Exception):
    pass


class _BadReply(Exception):
    pass


@dataclass(slots=True)
class _Worker:
    proc: subprocess.Popen[bytes]
    requests: int
    results: io.FileIO

    def kill(self) -> int:
        """Kill if still running, reap, close our ends; the exit status (negative = signal)."""
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait()
        self.forget()
        return status

    def forget(self) -> None:
        os.close(self.requests)
        self.results.close()


class _Channel:
    """The worker process, the memfds ("slots") it reads files from, and their lifecycle. Kept
    apart from ElfReader so that the reader's finalizer can stop it without keeping the reader
    alive. Several slots, so that the next files can be written while the worker parses one."""

    def __init__(self, timeout: float, memory_limit: int) -> None:
        self.timeout = timeout
        self.memory_limit = memory_limit
        self.worker: _Worker | None = None
        self.memfds: tuple[int, ...] | None = None
        self.pid = os.getpid()
        self.crashes = 0  # crashes and timeouts in a row
        self._memfds_lock = threading.Lock()  # sessions of several scans take their first slots at once

    def slot(self, slot: int) -> int:
        """The memfd of a slot, which the worker parses as /proc/self/fd/N."""
        self.check_owner()
        with self._memfds_lock:
            if self.memfds is None:
                self.memfds = tuple(os.memfd_create("imgaudit-elf") for _ in range(SLOTS))
            return self.memfds[slot]

    def exchange(self, size: int, op: int, slot: int) -> tuple[str, Any]:
        """Have the file in `slot` parsed, return the worker's (status, payload); a dead or stuck
        worker becomes an ("error", why) answer and is replaced on the next call."""
        self.check_owner()
        return self.answer(self.send_request(size, op, slot))

    def answer(self, worker: _Worker) -> tuple[str, Any]:
        """The worker's reply to the request just sent (see exchange)."""
        try:
            reply = _receive(worker.results, time.monotonic() + self.timeout)
        except _WorkerTimeout:
            return self.timed_out()
        except _WorkerGone:
            return self.died()
        except _BadReply as err:
            return self.failed(f"parser reply malformed ({err})")
        self.crashes = 0
        return reply

    def send_piece(self, worker: _Worker, view: memoryview) -> None:
        """Part of a streamed file (_OP_STREAM). The worker takes it at once unless it is stuck:
        waiting is bounded by the timeout (the pipe is non-blocking on this side)."""
        poller = select.poll()
        poller.register(worker.requests, select.POLLOUT)
        while view:
            if not poller.poll(self.timeout * 1000):
                raise _WorkerTimeout
            with contextlib.suppress(BlockingIOError):
                view = view[os.write(worker.requests, view) :]

    def failed(self, why: str) -> tuple[str, str]:
        self.drop_worker()
        self.crashes += 1
        return "error", why

    def timed_out(self) -> tuple[str, str]:
        return self.failed(f"parser timed out after {self.timeout:g} s")

    def died(self) -> tuple[str, str]:
        """The worker closed its end (a crash): reaped here, so its exit status names the cause."""
        return self.failed(_death_message(self.drop_worker()))

    def disabled(self) -> str | None:
        """Why no file is sent any more, once the worker has failed too often in a row."""
        if self.crashes >= MAX_CONSECUTIVE_CRASHES:
            return f"parser disabled after {MAX_CONSECUTIVE_CRASHES} failures in a row"
        return None

    def send_request(self, size: int, op: int, slot: int) -> _Worker:
        """Send to the live worker; one that died after its last answer is replaced, once."""
        for attempt in (1, 2):
            worker = self.worker or self.spawn()
            try:
                os.write(worker.requests, _REQUEST.pack(size, op, slot))
                return worker
            except OSError:
                self.drop_worker()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def spawn(self) -> _Worker:
        requests_r, requests_w = os.pipe()
        results_r, results_w = os.pipe()
        fds = (requests_r, results_w, *(self.slot(slot) for slot in range(SLOTS)))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOOTSTRAP, _WORKER_SCRIPT, *map(str, (*fds, self.memory_limit))],
                pass_fds=fds,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # LIEF and a dying interpreter write there
                start_new_session=True,
            )
        finally:
            os.close(requests_r)
            os.close(results_w)
        os.set_blocking(requests_w, False)  # see send_piece
        with contextlib.suppress(OSError):  # fewer wake-ups per streamed file; the default 64 KiB also works
            fcntl.fcntl(requests_w, fcntl.F_SETPIPE_SZ, _STREAM_PIPE_BYTES)
        self.worker = _Worker(proc, requests_w, io.FileIO(results_r, "rb"))
        self.await_ready(self.worker)
        return self.worker

    def await_ready(self, worker: _Worker) -> None:
        # Imported here: the worker runs this file outside the package and must not need it.
        from imgaudit.errors import ImgauditError

        try:
            status, detail = _receive(worker.results, time.monotonic() + max(60.0, self.timeout))
        except (_WorkerGone, _WorkerTimeout, _BadReply):
            status, detail = "broken", _death_message(self.drop_worker())
        if status != "ready":
            self.drop_worker()
            raise ImgauditError(f"cannot start the ELF parser (LIEF): {detail}")

    def drop_worker(self) -> int | None:
        worker, self.worker = self.worker, None
        return worker.kill() if worker is not None else None

    def stop(self) -> None:
        if self.pid != os.getpid():
            return  # a forked child's copy: the worker belongs to the parent
        self.drop_worker()
        self.close_slots()

    def close_slots(self) -> None:
        if self.memfds is not None:
            for fd in self.memfds:
                os.close(fd)
            self.memfds = None

    def check_owner(self) -> None:
        """After fork the child must not share (or kill) the parent's worker: close its copies of
        the descriptors and start afresh."""
        if self.pid == os.getpid():
            return
        if self.worker is not None:
            self.worker.forget()
        self.close_slots()
        self.pid, self.worker = os.getpid(), None


class ElfReader:
    """Reads ELF facts through one worker process and its SLOTS slots. Thread-safe: any number of
    sessions and reads may share it (each upload holds a slot until its facts are in), but files are
    parsed one at a time: use one reader per parser process wanted."""

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        memory_limit: int = DEFAULT_MEMORY_LIMIT,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.max_bytes = max_bytes
        self.requests = 0  # files sent to the worker
        self.users = 0  # open sessions and reads through the shared pool (_take)
        self._lock = threading.Lock()  # one request at a time; a stream holds it until its facts are in
        self._free = list(range(SLOTS))[::-1]  # slots no upload or read holds
        self._slots = threading.Condition()
        self._channel = _Channel(timeout, memory_limit)
        self._finalizer = weakref.finalize(self, self._channel.stop)

    def read(self, path: str, data: bytes) -> ElfFacts:
        """Facts of one file's bytes. Never raises for bad input: `error` says what went wrong.
        `path` is accepted for the caller's symmetry; messages leave naming the file to it."""
        del path
        error = _precheck(data, self.max_bytes)
        if error is not None:
            return _error_facts(data, error)
        return self._read_op(data, _OP_PARSE)

    def __call__(self, path: str, data: bytes) -> ElfFacts:
        """An ElfReader is a layer scan's `elf_reader` as it is (it streams through `session`)."""
        return self.read(path, data)

    def close(self) -> None:
        with self._lock:
            self._channel.stop()

    def __enter__(self) -> ElfReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(self) -> ElfSession:
        """Uploads straight into this reader's slots (see ElfSession), beside other sessions and reads."""
        return ElfSession(self)

    def _read_op(self, data: bytes, op: int) -> ElfFacts:
        slot = self._take_slot()
        try:
            return self._parse(data, op, slot, load=True)
        finally:
            self._give_slot(slot, len(data))

    def _take_slot(self) -> int:
        """A free slot, waiting while uploads hold them all."""
        with self._slots:
            while not self._free:
                self._slots.wait()
            return self._free.pop()

    def _give_slot(self, slot: int, size: int) -> None:
        """Frees a slot that held a file of `size` bytes (emptied if big: see _SLOT_KEEP)."""
        if size > _SLOT_KEEP:
            _empty(self._channel.slot(slot))
        with self._slots:
            self._free.append(slot)
            self._slots.notify()

    def _empty_free_slots(self) -> None:
        """Gives back the pages small files left in the free slots."""
        with self._slots:
            for slot in self._free:
                _empty(self._channel.slot(slot))

    def _parse(self, data: _Bytes, op: int, slot: int, *, load: bool) -> ElfFacts:
        """Facts of the file in `slot` (first written there from `data` when `load`); `data` also
        serves the error facts."""
        with self._lock:
            disabled = self._channel.disabled()
            if disabled is not None:
                return _error_facts(data, disabled)
            try:
                if load:
                    _write_slot(self._channel.slot(slot), data)
                self.requests += 1
                status, payload = self._channel.exchange(len(data), op, slot)
            except BaseException:
                # interrupted mid-request: the worker's state is unknown (the slots stay: a
                # session may be writing the other one)
                self._channel.drop_worker()
                raise
        return _facts_of_reply(data, status, payload)


# A slot that held a file this big is emptied once it is parsed, rather than holding its memory until
# the next file; smaller ones keep their pages, which the next file reuses (SLOTS x this at most).
_SLOT_KEEP = 4 << 20


def _empty(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)


def _write_slot(fd: int, data: _Bytes) -> None:
    os.ftruncate(fd, len(data))
    view = memoryview(data)
    offset = 0
    while offset < len(view):  # pwrite moves at most ~2 GiB per call
        offset += os.pwrite(fd, view[offset:], offset)


class ElfSession:
    """Files streamed into a reader's slots as they are read (from a tar, say), with no copy of
    their bytes in this process: the worker parses one slot while the next files fill the others.
    `upload` waits for a free slot (other sessions of the reader take them too); the upload's `facts`
    (from any thread) frees it again."""

    def __init__(self, reader: ElfReader) -> None:
        self.reader = reader
        self._stream: ElfStream | None = None

    def upload(self, size: int) -> ElfUpload:
        """A slot sized for a file of `size` bytes (at least 1), to fill with ElfUpload.write."""
        if size <= 0:
            raise ValueError("an upload holds at least one byte")
        slot = self.reader._take_slot()
        try:
            fd = self.reader._channel.slot(slot)
            os.ftruncate(fd, size)
        except BaseException:
            self.reader._give_slot(slot, 0)
            raise
        return ElfUpload(self, slot, fd, size)

    def stream(self, size: int) -> ElfStream:
        """A file of `size` bytes written straight into the worker as it is read, with no slot: LIEF's
        buffer is then its only copy (a slot's file is held twice, in the slot and in LIEF). The
        worker parses it as it arrives, so it must be idle: no upload of this reader, in any session,
        may be waiting for its facts. The reader is held until the stream's `facts()` (from any thread)
        or `discard()`."""
        self.reader._lock.acquire()
        self.reader._empty_free_slots()  # their pages are not needed while LIEF holds this file
        if _TRIM is not None:  # glibc keeps the scan's freed buffers in its arenas (~50 MB): give them back
            _TRIM(0)  # before the moment of the peak, LIEF's copy of the biggest file
        self._stream = ElfStream(self.reader, size)
        return self._stream

    def close(self) -> None:
        """Give the reader back to the shared pool (when it came from there), with no stream open:
        one whose facts were never asked for (a scan cut short) gives the reader up now."""
        if self._stream is not None:
            self._stream.discard()
            self._stream = None
        _give_back(self.reader)


class ElfUpload:
    """One file in a slot: `write` its bytes in order, then `facts()` once (or `discard()`)."""

    def __init__(self, session: ElfSession, slot: int, fd: int, size: int) -> None:
        self.session = session
        self.slot = slot
        self.fd = fd
        self.size = size
        self.written = 0
        self._released = False

    def write(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        while view:
            done = os.pwrite(self.fd, view, self.written)
            self.written += done
            view = view[done:]

    def facts(self) -> ElfFacts:
        """The file's facts, as ElfReader.read gives them; frees the slot."""
        try:
            if self.written != self.size:
                raise ValueError(f"upload of {self.size} bytes got {self.written}")
            reader = self.session.reader
            with mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ) as data:  # only the headers are touched here
                error = _precheck(data, reader.max_bytes)
                if error is not None:
                    return _error_facts(data, error)
                return reader._parse(data, _OP_PARSE, self.slot, load=False)
        finally:
            self.discard()

    def discard(self) -> None:
        if not self._released:
            self._released = True
            self.session.reader._give_slot(self.slot, self.size)


class ElfStream:
    """One file streamed to the worker (ElfSession.stream): `write` its bytes in order, then
    `facts()` once (or `discard()`). A worker that dies or stalls mid-file fails this file only:
    the rest of its bytes are counted and dropped, and the next file gets a new worker."""

    def __init__(self, reader: ElfReader, size: int) -> None:
        self.reader = reader
        self.size = size
        self.written = 0
        self.head = bytearray()  # enough of the file for its error facts (_ident)
        self.worker: _Worker | None = None
        self.error: str | None = None
        self._released = False
        channel = reader._channel
        try:
            channel.check_owner()
            self.error = channel.disabled()
            if self.error is None:
                reader.requests += 1
                self.worker = channel.send_request(size, _OP_STREAM, 0)
        except BaseException:
            self.discard()
            raise

    def write(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        if len(self.head) < _HEAD_BYTES:
            self.head += view[: _HEAD_BYTES - len(self.head)]
        self.written += len(view)
        if self.written > self.size:
            raise ValueError(f"stream of {self.size} bytes got {self.written}")
        if self.worker is None:
            return  # failed already: the caller reads the file to its end all the same
        channel = self.reader._channel
        try:
            channel.send_piece(self.worker, view)
        except _WorkerTimeout:
            self.worker = None
            self.error = channel.timed_out()[1]
        except OSError:  # EPIPE: the worker died taking this file
            self.worker = None
            self.error = channel.died()[1]

    def facts(self) -> ElfFacts:
        """The file's facts, as ElfReader.read gives them; gives the reader up."""
        try:
            if self.written != self.size:
                raise ValueError(f"stream of {self.size} bytes got {self.written}")
            if self.worker is None:
                status, payload = "error", self.error
            else:
                status, payload = self.reader._channel.answer(self.worker)
                self.worker = None
        finally:
            self.discard()
        return _facts_of_reply(self.head, status, payload)

    def discard(self) -> None:
        """Give the reader up; a worker still waiting for bytes of this file is killed."""
        if self._released:
            return
        self._released = True
        if self.worker is not None:
            self.reader._channel.drop_worker()
            self.worker = None
        self.reader._lock.release()


_TRIM = _malloc_trim()

# Enough of a streamed file for its error facts: _ident reads class, byte order and machine in the first 20.
_HEAD_BYTES = 64


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold the cyclic GC while a reply becomes objects: a big library brings 100,000 symbols, and
    collections triggered halfway through, which find nothing, cost 3x the building itself."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _receive(results: io.FileIO, deadline: float) -> tuple[str, Any]:
    (size,) = _LENGTH.unpack(_read_exact(results, _LENGTH.size, deadline))
    payload = _read_exact(results, size, deadline)
    try:
        with _gc_paused():
            reply = _PlainUnpickler(io.BytesIO(payload)).load()
    except Exception as err:  # whatever a confused worker wrote
        raise _BadReply(f"{type(err).__name__}: {err}") from err
    if not (isinstance(reply, tuple) and len(reply) == 2 and isinstance(reply[0], str)):
        raise _BadReply(f"unexpected {type(reply).__name__}")
    return reply


def _read_exact(results: io.FileIO, size: int, deadline: float) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    poller = select.poll()
    poller.register(results.fileno(), select.POLLIN)
    while got < size:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            raise _WorkerTimeout
        count = results.readinto(view[got:])
        if not count:
            raise _WorkerGone
        got += count
    return buf


def _death_message(status: int | None) -> str:
    if status is not None and status < 0:
        return f"parser crashed (signal {-status})"
    return f"parser exited unexpectedly (status {status})"


def _facts_of_reply(data: _Bytes, status: str, payload: Any) -> ElfFacts:
    """The facts a worker's (status, payload) gives for a file starting with `data`."""
    if status == "ok" and isinstance(payload, dict):
        with _gc_paused():
            return _facts_from_plain(data, payload)
    return _error_facts(data, str(payload))


def _facts_from_plain(data: _Bytes, plain: dict[str, Any]) -> ElfFacts:
    try:
        plain["version_needs"] = tuple(VersionNeed(*need) for need in plain["version_needs"])
        table, imported, exported = plain.pop("symbols")
        joined, size, slots, weak = imported
        plain["imported_symbols"] = Symbols(joined, size, slots, tuple((version, False) for version, _ in table), weak)
        joined, size, slots, weak = exported
        plain["exported_symbols"] = Symbols(joined, size, slots, tuple(table), weak)
        if plain["rust"] is not None:
            plain["rust"] = rust_facts_from_plain(*plain["rust"])
        return ElfFacts(**plain)
    except (TypeError, KeyError, ValueError, IndexError) as err:  # a worker running another version of this file
        return _error_facts(data, f"parser reply malformed ({err})")


def rust_facts_from_plain(version: str | None, commit: str | None, target: RustTarget | None,
                     tls: tuple[Any, Any, Any] | None) -> RustFacts:
    return RustFacts(version, commit, target, RustTls(*tls) if tls is not None else None)


_WORKER_SCRIPT = str(Path(__file__).resolve())
# The worker loads this file by path, without the package (whose __init__ may import much more)
# and without the cwd on sys.path (`-c` puts "" first: a stray lief.py there must not be imported).
_BOOTSTRAP = "import sys; del sys.path[0]; import runpy; runpy.run_path(sys.argv[1])['_serve'](sys.argv[2:])"
_readers: list[ElfReader] = []  # the shared readers, busy or idle, kept for the next call
_readers_lock = threading.Lock()


def _parsers() -> int:
    """How many parser processes concurrent scans share: one per two CPUs this process may run on. A layer
    scan keeps about one core busy (inflate, digests, the walk) and its parser a quarter of another, and each
    parser holds ~70 MB (`import lief`) plus the file it parses: on two CPUs a second one bought no time and
    cost 1.2 s of CPU and ~180 MB of peak at `--jobs 2` (issue 7)."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


class _SharedReaders:
    """`read_elf`: readers kept for the next call and shared by concurrent callers (a layer scan per
    thread): a new caller gets a reader of its own while fewer than _parsers() are running, else the
    least busy one, whose files are then parsed in turn with the other callers'."""

    def __call__(self, path: str, data: bytes) -> ElfFacts:
        """Facts of one ELF file's bytes; never raises for bad input."""
        reader = _take()
        try:
            return reader.read(path, data)
        finally:
            _give_back(reader)

    def session(self) -> ElfSession:
        """A session on a shared reader until it is closed (see ElfSession)."""
        return _take().session()


def _take() -> ElfReader:
    with _readers_lock:
        reader = min(_readers, key=lambda r: r.users, default=None)
        if reader is None or (reader.users and len(_readers) < _parsers()):
            reader = ElfReader()
            _readers.append(reader)
        reader.users += 1
        return reader


def _give_back(reader: ElfReader) -> None:
    with _readers_lock:
        if reader.users:  # 0 for a reader the caller made itself: not the pool's
            reader.users -= 1


read_elf = _SharedReaders()


def close() -> None:
    """Stop the shared workers no caller is using (also done at exit); the next read_elf starts a new one."""
    with _readers_lock:
        idle = [reader for reader in _readers if not reader.users]
        _readers[:] = [reader for reader in _readers if reader.users]
    for reader in idle:
        reader.close()


atexit.register(close)
