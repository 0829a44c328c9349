"""One streamed pass over a layer blob: decompression by magic bytes, digest checks, tar walk → `LayerScan`.

Follows the OCI image-spec `layer.md` (whiteouts, opaque markers) and owns decompression because
stdlib `r|gz` fails on multi-member gzip and never checks the CRC (RELIABILITY.md §1.8).
"""

from __future__ import annotations

import functools
import hashlib
import io
import posixpath
import queue
import re
import struct
import tarfile
import threading
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import Enum
from functools import cached_property
from types import ModuleType
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, runtime_checkable

from imgaudit import tarheader
from imgaudit.errors import CorruptImage, LimitExceeded, escape
from imgaudit.quickinit import quick_init
from imgaudit.tarheader import FastTarInfo, HeaderOverCap
from imgaudit.xattrs import MAX_XATTRS, Xattrs, capabilities, from_pax
from imgaudit.xattrs import PREFIX as XATTR_PREFIX
from imgaudit.zstdscout import ZstdScout

_inflate_mod: ModuleType
try:  # ISA-L inflates ~2.4x faster than zlib (DESIGN.md §3b); zlib is the fallback.
    from isal import isal_zlib as _inflate_mod
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflate_mod = zlib


class _Decompressor(Protocol):
    """What zlib/isal decompressobj and zstandard's decompressobj have in common."""

    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes | memoryview, /) -> bytes: ...

if TYPE_CHECKING:
    from imgaudit.elf import ElfFacts, ElfSession, ElfStream, ElfUpload

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
RAW_CHUNK = 1 << 20
HEAD_BYTES = 256  # binfmt_script reads a `#!` line of at most 256 bytes (entrypoint.parse_shebang)
ELF_HEAD_BYTES = 64  # an ELF64 header: class, byte order and machine are in its first 20 bytes (loader.ident)
MAX_SMALL_FILE = 16 << 20
MAX_ELF_BYTES = 512 << 20
ZSTD_MAX_WINDOW = 1 << 27
# What tarfile itself may read between two members: extension headers (PAX, GNU long names) and sparse
# maps. Go caps each at 1 MiB (CVE-2022-2879); CPython reads a declared size in one go (gh-151497).
MAX_HEADER_BYTES = 8 << 20
# One inflate call yields at most _GZIP_OUT (gzip: zlib's max_length) or 32 x 128 KiB (zstd: whole blocks,
# see zstdscout.py; 1 KiB slices, at most 32 MiB, where the scout is lost). Big calls matter: each call on
# the decoder thread ends in a wait for the GIL, so a call must carry milliseconds of work, not microseconds.
_GZIP_SLICE = RAW_CHUNK
_GZIP_OUT = 4 << 20
_ZSTD_SLICE = 1 << 10  # only where the block scout is lost (garbage, trailing data): 1 KiB x 32768
_ZSTD_BLOCKS = 31  # blocks begun per zstd call when the scout knows them: at most 32 x 128 KiB out
# A compression bomb: past 1 GiB of plain bytes, more than 100 plain bytes per stored byte. Real layers
# compress 2-10x; gzip cannot pass ~1032x, so only zero-filled files of gigabytes come near (exit 3).
MAX_RATIO = 100
BOMB_FLOOR = 1 << 30
MAX_ENTRIES = 5_000_000  # tar members in one layer (RELIABILITY.md #82)
PATH_MAX = 4096  # Linux's limit on a path; a runtime cannot create a longer one (#54, #83)
_TAIL = 32768
LATE_HASH_MIN = 256 << 10  # content at least this big is hashed on the helper thread
# hashlib gives up the GIL for an update of 2048 bytes or more, and the walk then waits to take it back from the
# decoder and digest threads: for a file of a few KiB that wait costs more than its sha256. Content up to
# SMALL_HASH is fed in pieces of UNRELEASED_UPDATE bytes, which keep the GIL (200,000 files of 2.5 KiB on
# average: 5.5 s of scan thread before, 4.3 s after).
SMALL_HASH = 32 << 10
UNRELEASED_UPDATE = 2047
OPAQUE_MARKER = ".wh..wh..opq"
WHITEOUT_PREFIX = ".wh."

# Small files the analysers read (DESIGN.md §1); their content is kept in the scan.
SMALL_FILES = re.compile(
    r"^/(?:etc/os-release|usr/lib/os-release|etc/ld\.so\.conf|etc/ld\.so\.conf\.d/[^/]+"
    r"|etc/ld\.so\.cache|etc/ld\.so\.preload|etc/ld-musl-[^/]+\.path|etc/passwd|etc/group"
    r"|var/lib/dpkg/status|var/lib/dpkg/status\.d/[^/]+|lib/apk/db/installed)$"
)


class EntryType(str, Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    WHITEOUT = "whiteout"
    OPAQUE = "opaque"


@quick_init  # built once per tar entry, and again by every cache load
@dataclass(frozen=True, slots=True)
class Entry:
    """One tar entry, path normalised to absolute; whiteouts name the path they remove."""

    path: str
    type: EntryType
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    link: str | None = None
    head: bytes = b""
    digest: str | None = None
    elf: ElfFacts | None = None
    xattrs: Xattrs = ()  # (name, readable value) from PAX SCHILY.xattr records (imgaudit/xattrs.py)

    @property
    def capabilities(self) -> str | None:
        """File capabilities as getcap prints them (`cap_net_raw=ep`), `invalid …`, or None."""
        return capabilities(self.xattrs) if self.xattrs else None


@dataclass(frozen=True, slots=True)
class Skipped:
    what: str
    reason: str


@dataclass(frozen=True)
class LayerScan:
    """Everything the analysers need from one layer; depends only on the layer's bytes."""

    digest: str
    diff_id: str
    compressed_size: int
    size: int
    compression: str
    entries: tuple[Entry, ...]
    files: dict[str, bytes] = field(default_factory=dict)  # content of SMALL_FILES by sha256 hex
    skipped: tuple[Skipped, ...] = ()
    trailing_bytes: int = 0
    # char 0:0 entries: overlayfs marks a deletion so in its upper directory; a tar of that directory carries
    # them, and a runtime extracts a device node, not a deletion (RELIABILITY.md #63). Kept as devices.
    overlay_whiteouts: tuple[str, ...] = ()

    @cached_property
    def repeated(self) -> frozenset[str]:
        """Paths that more than one entry names (rare: the image-spec forbids it). Whoever makes a scan asks
        for it at once, so the set of every path it takes lives before the merged filesystem does, and the
        size audit tracks only these paths, not every path of a layer, at its peak (issue 7)."""
        seen: set[str] = set()
        again: set[str] = set()
        for entry in self.entries:
            (again if entry.path in seen else seen).add(entry.path)
        return frozenset(again)


ElfReader = Callable[[str, bytes], "ElfFacts"]


@runtime_checkable
class StreamingElfReader(Protocol):
    """An ElfReader that also takes a file as it is read (elf.read_elf): the scan writes each ELF
    member straight into the parser's shared memory instead of holding it whole."""

    def __call__(self, path: str, data: bytes, /) -> ElfFacts: ...

    def session(self) -> ElfSession: ...


class _Inflater:
    """Decodes gzip (every member) or zstd (every frame, skippable ones too) incrementally; plain tar passes
    through. One call's output stays bounded whatever the ratio (gzip expands at most ~1032x, zstd
    ~32768x): gzip by zlib's max_length, zstd by feeding whole blocks (or small slices): a bomb never lands
    in memory at once (RELIABILITY.md #51)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._trailing = 0
        self._cut = b""  # the first bytes of a member's or frame's magic, cut by the chunk's end
        if kind != "tar":  # plain tar passes through feed() untouched
            self._obj = self._new()
        self._done = kind == "tar"
        self._input: memoryview = memoryview(b"")
        self._at = 0
        self._base = 0  # offset in the stored stream where _input starts
        self._scout = ZstdScout() if kind == "zstd" else None

    def _new(self) -> _Decompressor:
        if self.kind == "gzip":
            obj: _Decompressor = _inflate_mod.decompressobj(31)
            return obj
        import zstandard

        zobj: _Decompressor = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj()
        return zobj

    def feed(self, data: bytes) -> bytes:
        """Takes the next stored chunk (the last one must be used up) and returns the first plain piece."""
        if self.kind == "tar":
            return data
        if self._trailing:
            self._trailing += len(data)
            return b""
        if self._scout is not None:
            self._scout.feed(data)
        self._base += len(self._input) - len(self._cut)
        if self._cut:
            data, self._cut = self._cut + data, b""
        self._input, self._at = memoryview(data), 0
        return self.more()

    @property
    def trailing(self) -> int:
        """Bytes after the last member or frame that start none (a cut magic at the very end too)."""
        return self._trailing + len(self._cut)

    def _slice_end(self) -> int:
        if self._scout is None:
            return self._at + _GZIP_SLICE
        end = self._scout.end_for(self._base + self._at, self._base + len(self._input), _ZSTD_BLOCKS)
        return self._at + _ZSTD_SLICE if end is None else end - self._base

    def _next_member(self) -> bool:
        """After a member or frame ended with input left: a new decoder where another one starts (True),
        else the rest is trailing data."""
        rest = self._input[self._at:]
        self._at = len(self._input)
        if _starts_frame(rest, self.kind):
            self._at -= len(rest)
            self._obj = self._new()
            self._done = False
            return True
        if _magic_prefix(rest, self.kind):  # decided once the next chunk completes it
            self._cut = bytes(rest)
        else:
            self._trailing = len(rest)
        return False

    def more(self) -> bytes:
        """The next non-empty plain piece from the chunk fed last; b"" once it is used up."""
        while self._at < len(self._input):
            if self._obj.eof and not self._next_member():  # the last one ended where the last chunk did
                return b""
            piece = self._input[self._at:self._slice_end()]
            if self.kind == "gzip":
                out = self._obj.decompress(piece, _GZIP_OUT)  # type: ignore[call-arg]  # zlib's max_length
                # a capped call keeps its unused input in unconsumed_tail; output held back inside the
                # decoder always has input after it (at least the member's 8-byte trailer), so it comes out
                used = len(piece) - len(self._obj.unconsumed_tail)  # type: ignore[attr-defined]
            else:
                out = self._obj.decompress(piece)
                used = len(piece)
            if self._obj.eof:
                used -= len(self._obj.unused_data)
                self._done = True
            self._at += used
            if self._obj.eof and self._at < len(self._input):
                self._next_member()
            if out:
                return out
        return b""

    @property
    def complete(self) -> bool:
        return self._done


class LayerStream:
    """Forward-only file-like view of a layer's plain tar bytes; hashes the stored and the plain bytes
    as they pass. `tell`/`seek` (forward only) let tarfile read it in `r:` mode, which asks for what
    it needs (a header, a member's data) instead of `r|` mode's 10 KiB pieces (DESIGN.md §3b), and
    `consume` passes file contents to a hash without copying them.

    Reading and inflating run on a decoder thread a few pieces ahead of the tar walk, and both digests
    on a digest thread behind it (each of them releases the GIL for milliseconds at a time). Inflate
    alone is then the critical path: with the sha256 of 2.5 GB on the decoder thread too, the walk
    waited for it most of the time (DESIGN.md §3b). `close` stops both threads."""

    # Plain bytes decoded ahead of the reader (one piece may exceed it alone; a piece is at most 4 MiB, 32 MiB
    # for zstd the scout lost). The queue fills while the walk waits for the ELF parser, i.e. while the
    # worker holds its biggest file: 64 MiB ahead raised the process tree's peak by 48 MiB over 16.
    AHEAD_BYTES = 16 << 20
    # Pieces handed to the digest thread and not hashed yet; most of them are the queue's pieces too.
    DIGEST_INFLIGHT = 16 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        first = raw.read(RAW_CHUNK)
        self.compression = _sniff(first)
        unsupported = _unsupported(first)
        if unsupported:  # never handed to an external tool (GHSA-x86f-5xw2-fm2r)
            raise _StreamError(f"unsupported compression {unsupported}: only gzip, zstd and plain tar layers are read")
        self._inflater = _Inflater(self.compression)
        self._stored_hash = hashlib.sha256()
        self._plain_hash = hashlib.sha256()
        self._plain_is_stored = self.compression == "tar"  # one hash serves both digests
        self.stored_size = 0
        self.plain_size = 0
        self.offset = 0  # plain bytes handed out or skipped
        self._buf = b""
        self._pos = 0
        self.tail = bytearray()  # the last plain bytes handed out by read(), to judge where tar stopped
        self._pending: bytes | None = first
        self.head = b""  # the first plain bytes, to tell a layer compressed twice
        self.budget: int | None = None  # bytes read() may still hand out (tarfile's header reads); None: no cap
        self._ahead: queue.Queue[bytes | BaseException] = queue.Queue()
        self._queued = 0  # bytes in _ahead
        self._room = threading.Condition()
        self._stop = threading.Event()
        self._ended = False
        self._digests = _OrderedHasher("imgaudit-digest", batch=0, inflight=self.DIGEST_INFLIGHT)
        self._decoder = threading.Thread(target=self._decode_ahead, name="imgaudit-decode", daemon=True)
        self._decoder.start()

    def _decode_ahead(self) -> None:
        """The decoder thread: queues every plain piece, then b"" (the end) or the error that stopped it."""
        item: bytes | BaseException
        while not self._stop.is_set():
            try:
                item = self._produce()
            except BaseException as err:  # handed to the reader, who raises it where the bytes were wanted
                item = err
            size = len(item) if isinstance(item, bytes) else 0
            with self._room:
                while self._queued and self._queued + size > self.AHEAD_BYTES and not self._stop.is_set():
                    self._room.wait(0.05)
                self._queued += size
            self._ahead.put(item)
            if not isinstance(item, bytes) or not item:
                return

    def _pull(self) -> bytes:
        """The next non-empty piece of plain bytes, b"" at the end of the blob."""
        if self._ended:
            return b""
        item = self._ahead.get()
        if isinstance(item, bytes) and item:
            with self._room:
                self._queued -= len(item)
                self._room.notify()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        self._ended = not item
        return item

    def close(self) -> None:
        """Stops the decoder thread (it may be blocked on a full queue when the walk stopped early)."""
        self._stop.set()
        with self._room:
            self._room.notify()
        self._decoder.join()
        self._digests.close()

    def _settled(self) -> None:
        """Waits until every piece the decoder produced is hashed (it has stopped once the end was read)."""
        self._decoder.join()
        self._digests.wait()

    def _produce(self) -> bytes:
        """The next non-empty piece of plain bytes, b"" at the end of the blob (on the decoder thread)."""
        while True:
            plain = self._decode(None) if self.compression != "tar" else b""
            if plain:
                return self._plain(plain)
            chunk = self._pending if self._pending is not None else self._raw.read(RAW_CHUNK)
            self._pending = None
            if not chunk:
                return b""
            self._digests.update(self._stored_hash, chunk)
            self.stored_size += len(chunk)
            plain = self._decode(chunk)
            if plain:
                return self._plain(plain)

    def _decode(self, chunk: bytes | None) -> bytes:
        """Feeds a stored chunk (None: more from the last one); any decoder error is a corrupt stream
        (zlib.error, OSError, ValueError, or zstandard's own ZstdError)."""
        try:
            return self._inflater.more() if chunk is None else self._inflater.feed(chunk)
        except Exception as err:
            raise _StreamError(f"bad {self.compression} data at byte {self.stored_size}: {err}") from err

    def _plain(self, plain: bytes) -> bytes:
        if len(self.head) < 8:
            self.head += plain[:8]
        if not self._plain_is_stored:
            self._digests.update(self._plain_hash, plain)
        self.plain_size += len(plain)
        if self.plain_size > BOMB_FLOOR and self.plain_size > MAX_RATIO * self.stored_size:
            raise _OverCap(f"{self.compression} data expands more than {MAX_RATIO}:1 ({self.plain_size >> 20} MiB "
                           f"from {self.stored_size >> 10} KiB read): refusing a compression bomb (cap: "
                           f"{MAX_RATIO}:1 past {BOMB_FLOOR >> 30} GiB, RELIABILITY.md #51)")
        return plain

    def _refill(self) -> bool:
        """Replaces an exhausted buffer with the next piece; False at the end of the blob."""
        chunk = self._pull()
        self._buf, self._pos = chunk, 0
        return bool(chunk)

    def read(self, size: int = -1) -> bytes:
        if self.budget is not None:
            if size is None or size < 0 or size > self.budget:
                raise _OverCap(f"tar extension headers at offset {self.offset} exceed the "
                               f"{MAX_HEADER_BYTES >> 20} MiB cap (RELIABILITY.md #60)")
            self.budget -= size
        avail = len(self._buf) - self._pos
        if size is not None and 0 <= size <= avail:
            out = self._buf[self._pos:self._pos + size]
            self._pos += size
        else:
            want = -1 if size is None or size < 0 else size - avail
            parts: list[bytes | memoryview] = [memoryview(self._buf)[self._pos:]] if avail else []
            self._buf, self._pos = b"", 0
            while want != 0 and self._refill():
                take = len(self._buf) if want < 0 else min(want, len(self._buf))
                parts.append(memoryview(self._buf)[:take] if take < len(self._buf) else self._buf)
                self._pos = take
                want = want - take if want > 0 else want
            out = b"".join(parts)
        self.offset += len(out)
        if len(out) >= _TAIL:
            self.tail = bytearray(out[-_TAIL:])
        else:
            self.tail += out
            if len(self.tail) > 2 * _TAIL:
                del self.tail[:-_TAIL]
        return out

    def peek(self, size: int) -> bytes:
        """Up to `size` next bytes (fewer only at the end), without consuming them."""
        if len(self._buf) - self._pos < size:
            parts = [self._buf[self._pos:]]
            have = len(parts[0])
            while have < size and (chunk := self._pull()):
                parts.append(chunk)
                have += len(chunk)
            self._buf, self._pos = b"".join(parts), 0
        return self._buf[self._pos:self._pos + size]

    def consume(self, size: int, sink: Callable[[memoryview], object] | None = None) -> int:
        """Advances `size` bytes, handing them to `sink` as views (no copy); returns how many there were."""
        done = 0
        while done < size:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._refill():
                    break
                continue
            take = min(avail, size - done)
            if sink is not None:
                sink(memoryview(self._buf)[self._pos:self._pos + take])
            self._pos += take
            done += take
        if done:
            self.offset += done
            self.tail.clear()  # read() alone feeds the tail: what tar's last header reads lands there
        return done

    def tell(self) -> int:
        return self.offset

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.offset:
            raise io.UnsupportedOperation("a layer stream only moves forward")
        self.consume(pos - self.offset)
        return self.offset

    def drain(self) -> bytes:
        """Reads to the end of the blob; returns the plain bytes that tar did not consume."""
        rest = bytearray(self._buf[self._pos:])
        self._buf, self._pos = b"", 0
        while chunk := self._pull():
            if len(rest) < (1 << 20):
                rest += chunk[: (1 << 20) - len(rest)]
            elif any(chunk):
                rest += b"\x01"
        if not self._inflater.complete:
            raise _StreamError(
                f"{self.compression} stream ends early after {self.stored_size} bytes (truncated?)"
            )
        return bytes(rest)

    @property
    def trailing_bytes(self) -> int:
        return self._inflater.trailing

    @property
    def digest(self) -> str:
        """Complete once the stream has been drained (the decoder hands a piece on before queueing it)."""
        self._settled()
        return "sha256:" + self._stored_hash.hexdigest()

    @property
    def diff_id(self) -> str:
        self._settled()
        return self.digest if self._plain_is_stored else "sha256:" + self._plain_hash.hexdigest()


class _Offload:
    """Work that releases the GIL, moved off the scanning thread so it overlaps inflate and tar
    framing: sha256 updates (batched, in order, on one thread) and the ELF parser round trips (on
    another: the LIEF worker parses while the scan goes on). What is in flight is capped in bytes,
    so memory stays bounded; `finish` waits for everything and raises what a task raised."""

    HASH_BATCH = 4 << 20
    HASH_INFLIGHT = 32 << 20

    def __init__(self) -> None:
        self._hashes = _OrderedHasher("imgaudit-hash", batch=self.HASH_BATCH, inflight=self.HASH_INFLIGHT)
        self._elf_pool: ThreadPoolExecutor | None = None
        self._elf_session: ElfSession | None = None
        self._parsing: deque[tuple[Future[ElfFacts], int]] = deque()

    def update(self, h: hashlib._Hash, data: bytes | memoryview) -> None:
        """`h.update(data)`, later but in order; `data` must stay unchanged (bytes or a view of bytes)."""
        self._hashes.update(h, data)

    @staticmethod
    def reserve(size: int) -> None:
        """Call before reading an ELF file of `size` bytes for `parse` (or `unreserve` if that fails)."""
        _ELF_BUDGET.acquire(size)

    @staticmethod
    def unreserve(size: int) -> None:
        _ELF_BUDGET.release(size)

    def parse(self, reader: ElfReader, path: str, data: bytes, content: hashlib._Hash | str | None = None
              ) -> Future[ElfFacts]:
        """Parses on the helper thread; the bytes reserved for `data` are released once it is done.
        `content`: the file's digest, or the hash fed with its bytes (see parse_upload)."""
        return self._submit(len(data), self._once, reader, len(data), content, self._hashed(),
                            functools.partial(reader, path, data), _keep_nothing)

    def upload(self, reader: StreamingElfReader, size: int) -> ElfUpload:
        """A slot of the scan's parser session to write a file of `size` bytes into (waits while
        the parser holds them all); hand it to `parse_upload`, or `discard` it."""
        return self._session(reader).upload(size)

    def stream(self, reader: StreamingElfReader, size: int) -> ElfStream | None:
        """For a file above the ELF byte budget (reserved: the parser is idle), a stream straight into the
        parser, so that LIEF's copy is the only one; None when a file of this size went to the parser
        before: it may be a copy, recognised by its digest only once it is read whole, so it takes a slot.
        Hand the stream to `parse_stream`, or `discard` it."""
        session = self._session(reader)
        if _ELF_SEEN.size_seen(session.reader, size):
            return None
        return session.stream(size)

    def _session(self, reader: StreamingElfReader) -> ElfSession:
        if self._elf_session is None:
            self._elf_session = reader.session()
        return self._elf_session

    def parse_upload(self, upload: ElfUpload, content: hashlib._Hash | None = None) -> Future[ElfFacts]:
        """Like parse, for a filled upload (its slot is freed once it is parsed). A file whose content
        (the hash given every byte of it through `update`) was parsed before in this process is not parsed
        again (RELIABILITY #98: 10 000 copies of one ELF cost one parse)."""
        try:
            future = self._submit(upload.size, self._once, upload.session.reader, upload.size, content,
                                  self._hashed(), upload.facts, upload.discard)
        except BaseException:
            upload.discard()
            raise
        _release_if_cancelled(future, upload.discard)
        return future

    def parse_stream(self, stream: ElfStream, content: hashlib._Hash | None = None) -> Future[ElfFacts]:
        """The facts of a fully written stream, kept for its copies like parse_upload's. The file's bytes
        are in the parser now, not in this process: its reservation is released at once."""
        try:
            future = self._submit(0, self._streamed, stream, content, self._hashed())
        except BaseException:
            stream.discard()
            raise
        _release_if_cancelled(future, stream.discard)
        _ELF_BUDGET.release(stream.size)
        return future

    def _streamed(self, stream: ElfStream, content: hashlib._Hash | None, hashed: Future[None] | None) -> ElfFacts:
        facts = stream.facts()
        return _ELF_SEEN.keep(stream.reader, self._digest(content, hashed), facts)

    def _hashed(self) -> Future[None] | None:
        """A future done once every `update` so far has been applied (hashing runs in order, on one thread)."""
        return self._hashes.flush()

    @staticmethod
    def _digest(content: hashlib._Hash | str | None, hashed: Future[None] | None) -> str | None:
        if content is None or isinstance(content, str):
            return content
        if hashed is not None:
            hashed.result()
        return content.hexdigest()

    def _once(self, reader: object, size: int, content: hashlib._Hash | str | None, hashed: Future[None] | None,
              parse: Callable[[], ElfFacts], drop: Callable[[], None]) -> ElfFacts:
        """The facts of a file of `size` bytes: `parse()`d, unless a copy went to `reader` before (then the
        file is `drop()`ped, and so it is if its hashing was cancelled)."""
        if not _ELF_SEEN.size_seen(reader, size):
            # no earlier file of this size: not a copy, so the parse need not wait for the content hash
            facts = parse()
            return _ELF_SEEN.keep(reader, self._digest(content, hashed), facts)
        try:
            digest = self._digest(content, hashed)
        except BaseException:  # the hashing was cancelled (the scan is closing): free the slot all the same
            drop()
            raise
        seen = _ELF_SEEN.get(reader, digest)
        if seen is not None:
            drop()
            return seen
        return _ELF_SEEN.keep(reader, digest, parse())

    def _submit(self, size: int, fn: Callable[..., ElfFacts], *args: Any) -> Future[ElfFacts]:
        """Runs fn(*args) on the helper thread; once it has started, the reservation is the
        future's to release (if it cannot be started, it stays the caller's)."""
        if self._elf_pool is None:
            self._elf_pool = ThreadPoolExecutor(1, thread_name_prefix="imgaudit-elf")
        future = self._elf_pool.submit(fn, *args)
        future.add_done_callback(lambda _: _ELF_BUDGET.release(size))
        self._parsing.append((future, size))
        return future

    def finish(self) -> None:
        self._hashes.wait()
        while self._parsing:
            self._parsing.popleft()[0].result()

    def close(self) -> None:
        """Stops the helper threads (after an error too: queued work is dropped)."""
        self._hashes.close()
        if self._elf_pool is not None:
            self._elf_pool.shutdown(wait=True, cancel_futures=True)
            self._elf_pool = None
        if self._elf_session is not None:  # after the pool: no parse is running any more
            self._elf_session.close()
            self._elf_session = None


def _release_if_cancelled(future: Future[ElfFacts], release: Callable[[], None]) -> None:
    """A parse still queued when a scan fails is cancelled (`_Offload.close`) and never runs: its slot, or the
    reader a stream holds, must be given back all the same, or the next scans of the process wait for it
    forever (eight failed scans of layers with copies of an ELF file took every slot of the shared parser)."""
    future.add_done_callback(lambda done: release() if done.cancelled() else None)


class _OrderedHasher:
    """sha256 updates applied later but in order, on one thread of its own, handed over in batches of at least
    `batch` bytes (0: each update alone); at most `inflight` bytes wait to be hashed (one batch may exceed it)."""

    def __init__(self, name: str, *, batch: int, inflight: int) -> None:
        self._name = name
        self._batch_min = batch
        self._inflight = inflight
        self._pool: ThreadPoolExecutor | None = None
        self._batch: list[tuple[hashlib._Hash, bytes | memoryview]] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[Future[None], int]] = deque()

    def update(self, h: hashlib._Hash, data: bytes | memoryview) -> None:
        """`h.update(data)`, later; `data` must stay unchanged (bytes or a view of bytes)."""
        self._batch.append((h, data))
        self._batch_bytes += len(data)
        if self._batch_bytes >= self._batch_min:
            self.flush()

    def flush(self) -> Future[None] | None:
        """Hands the batch over; returns a future done once every update so far is applied (None: all are)."""
        if self._batch:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix=self._name)
            batch, size = self._batch, self._batch_bytes
            self._batch, self._batch_bytes = [], 0
            self._pending.append((self._pool.submit(_hash_batch, batch), size))
            _bound(self._pending, self._inflight)
        return self._pending[-1][0] if self._pending else None

    def wait(self) -> None:
        """Every update applied; raises what a batch raised."""
        self.flush()
        while self._pending:
            self._pending.popleft()[0].result()

    def close(self) -> None:
        """Stops the thread; updates not yet applied are dropped."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class _ByteBudget:
    """Bytes held at once across every scan of the process: above `cap`, a taker waits until the
    others give back (one taker may always exceed it alone)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._cond:
            while self.used and self.used + size > self.cap:
                self._cond.wait()
            self.used += size

    def release(self, size: int) -> None:
        with self._cond:
            self.used -= size
            self._cond.notify_all()


# ELF files read for the parser and not yet parsed. Process-wide: holding more files than the LIEF workers
# can take buys nothing. A bigger file waits until the parsers are idle, then is streamed into one (no slot
# holds it, so LIEF's copy is the only one: libxul is 184 MB), and gives its reservation back once it is sent.
_ELF_BUDGET = _ByteBudget(32 << 20)


class _SeenElf:
    """ELF facts by reader and content digest, process-wide and bounded: facts depend only on the bytes
    (and the reader), so a copy of a file parsed before, in this layer, another layer or another image,
    takes its facts. Failures are not kept: a timeout or a crash may not happen again."""

    CAP = 8192

    def __init__(self) -> None:
        # (id(reader), digest) -> (reader, facts): holding the reader keeps its id from being reused
        self._facts: dict[tuple[int, str], tuple[object, ElfFacts]] = {}
        self._sizes: set[tuple[int, int]] = set()  # (id(reader), size) of every file parsed: copies share one
        self._lock = threading.Lock()

    def size_seen(self, reader: object, size: int) -> bool:
        """Whether a file of `size` bytes went to `reader` before (and note that one does now). A wrong yes
        (an id reused by another reader) only costs a wait for the digest, which then finds nothing."""
        key = (id(reader), size)
        with self._lock:
            if key in self._sizes:
                return True
            if len(self._sizes) >= 8 * self.CAP:
                self._sizes.clear()
            self._sizes.add(key)
            return False

    def get(self, reader: object, digest: str | None) -> ElfFacts | None:
        if digest is None:
            return None
        with self._lock:
            seen = self._facts.get((id(reader), digest))
        return seen[1] if seen is not None else None

    def keep(self, reader: object, digest: str | None, facts: ElfFacts) -> ElfFacts:
        if digest is not None and getattr(facts, "error", True) is None:  # a stand-in reader may return anything
            with self._lock:
                if len(self._facts) >= self.CAP:
                    self._facts.clear()
                self._facts[id(reader), digest] = (reader, facts)
        return facts


_ELF_SEEN = _SeenElf()


def _keep_nothing() -> None:
    """What a file read into memory needs once its copy's facts serve instead: nothing to free."""


def _hash_batch(batch: list[tuple[hashlib._Hash, bytes | memoryview]]) -> None:
    for h, data in batch:
        h.update(data)


def _bound(queue: deque[tuple[Future[Any], int]], cap: int) -> None:
    """Waits for the oldest tasks while more than `cap` bytes are queued (one task may exceed it)."""
    while queue and queue[0][0].done():
        queue.popleft()[0].result()
    while len(queue) > 1 and sum(size for _, size in queue) > cap:
        queue.popleft()[0].result()


class _StreamError(Exception):
    pass


class _OverCap(Exception):
    """A resource cap was hit inside the stream; becomes LimitExceeded naming the layer."""


def _sniff(first: bytes) -> str:
    if first.startswith(GZIP_MAGIC):
        return "gzip"
    if first.startswith(ZSTD_MAGIC) or _skippable(first):
        return "zstd"
    return "tar"


_OTHER_MAGIC = ((re.compile(rb"BZh[1-9]1AY&SY"), "bzip2"), (re.compile(rb"\xfd7zXZ\x00"), "xz"),
                (re.compile(rb"\x04\x22\x4d\x18"), "lz4"))


def _unsupported(head: bytes) -> str | None:
    """A compression imgaudit does not read (never a tar whose first name happens to start alike)."""
    if head[257:262] == b"ustar":
        return None
    return next((name for magic, name in _OTHER_MAGIC if magic.match(head)), None)


def _skippable(data: bytes | memoryview) -> bool:
    """A zstd skippable frame (magic 0x184D2A50-5F, little-endian): decoders skip it (RFC 8878 §3.1.2)."""
    return len(data) >= 4 and 0x50 <= data[0] <= 0x5F and bytes(data[1:4]) == b"\x2a\x4d\x18"


def _magic_prefix(data: memoryview, kind: str) -> bool:
    """Fewer bytes than a magic, and the start of one (a chunk may end inside the next member's magic)."""
    head = bytes(data)
    if kind == "gzip":
        return len(head) < len(GZIP_MAGIC) and GZIP_MAGIC.startswith(head)
    return len(head) < 4 and (ZSTD_MAGIC.startswith(head) or _skippable(head + b"\x2a\x4d\x18"[len(head) - 1:]))


def _starts_frame(data: memoryview, kind: str) -> bool:
    head = bytes(data[:4])
    if kind == "gzip":
        return head.startswith(GZIP_MAGIC)
    return head == ZSTD_MAGIC or _skippable(head)


def normalise(name: str) -> str | None:
    """Archive name → absolute image path; None when it would climb above the root. `\\` is a character
    like any other, as for the runtimes on Linux (Go's archive/tar and filepath there): `\\x` is a file of
    that name, and `..\\..\\x` climbs nowhere."""
    path = "/" + name[2:] if name[:2] == "./" else "/" + name  # `tar -C root .` writes ./usr/…
    if "//" not in path and "/." not in path and path[-1] != "/":
        return path  # already normal: no empty, `.` or `..` part (nor a dot file, which takes the long way)
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def scan_layer(
    raw: BinaryIO,
    *,
    label: str = "layer",
    elf_reader: ElfReader | None = None,
    hash_content: bool = True,
) -> LayerScan:
    """Reads one layer blob to its end and returns its scan. Raises CorruptImage naming `label`."""
    offload = _Offload()
    try:
        return _scan(raw, offload, label=label, elf_reader=elf_reader, hash_content=hash_content)
    finally:
        offload.close()


def _scan(raw: BinaryIO, offload: _Offload, *, label: str, elf_reader: ElfReader | None,
          hash_content: bool) -> LayerScan:
    try:
        stream = LayerStream(raw)
    except _StreamError as err:
        raise CorruptImage(f"{label}: {err}") from err
    try:
        return _walk(stream, offload, label=label, elf_reader=elf_reader, hash_content=hash_content)
    finally:
        stream.close()


def _walk(stream: LayerStream, offload: _Offload, *, label: str, elf_reader: ElfReader | None,
          hash_content: bool) -> LayerScan:
    walker = _Walker(label, elf_reader, hash_content, offload)
    try:
        walker.walk(stream)
        rest = stream.drain()
        walker.finish()
    except _StreamError as err:
        raise CorruptImage(f"{label}: {err}") from err
    except tarfile.ReadError as err:
        where = f" after entry \"{escape(walker.last)}\"" if walker.last else ""
        if not walker.last and (_sniff(stream.head) != "tar" or _unsupported(stream.head)):
            raise CorruptImage(f"{label}: not a tar after decompression (compressed twice?)") from err
        raise CorruptImage(f"{label}: tar data is truncated or malformed{where}: {err}") from err
    except EOFError as err:
        raise CorruptImage(f"{label}: stream ends early (truncated)") from err
    except (_OverCap, HeaderOverCap) as err:
        raise LimitExceeded(f"{label}: {err}") from err
    except RecursionError as err:  # tarfile recurses once per chained extension header (PAX, GNU L/K)
        where = f" after entry \"{escape(walker.last)}\"" if walker.last else ""
        raise CorruptImage(f"{label}: too many tar extension headers in a row{where} (corrupt layer)") from err
    trailing = stream.trailing_bytes + _check_tar_end(stream, walker, rest, label)
    if trailing:  # covered by the digest, so not corruption, but never silent (RELIABILITY.md #49)
        walker.skipped.append(Skipped(label, f"{trailing} bytes of trailing data after the layer's end, ignored"))
    scan = LayerScan(
        digest=stream.digest,
        diff_id=stream.diff_id,
        compressed_size=stream.stored_size,
        size=stream.plain_size,
        compression=stream.compression,
        entries=tuple(walker.entries),
        files=walker.files,
        skipped=tuple(walker.skipped),
        trailing_bytes=trailing,
        overlay_whiteouts=tuple(walker.overlay_whiteouts),
    )
    _ = scan.repeated  # now, while no merged filesystem is held
    return scan


def _check_tar_end(stream: LayerStream, walker: _Walker, rest: bytes, label: str) -> int:
    """tarfile stops silently at a bad or cut header (RELIABILITY.md §1.8). A zero block there is the
    end-of-archive marker (anything after it is trailing data, covered by the digest); anything else
    is a corrupt layer. Returns the count of non-zero trailing bytes after the marker."""
    stopped_at = walker.end_offset
    if stopped_at is None or stream.plain_size == 0:
        return 0
    consumed = stream.offset  # drain() leaves the offset where tar stopped reading
    tail_start = consumed - len(stream.tail)
    if stopped_at < tail_start:
        raise CorruptImage(f"{label}: tar stopped at offset {stopped_at}, before what was read")
    remainder = bytes(stream.tail[stopped_at - tail_start:]) + rest
    block = remainder[:512]
    if any(block):
        where = f" after entry \"{escape(walker.last)}\"" if walker.last else ""
        raise CorruptImage(
            f"{label}: invalid tar header at offset {stopped_at}{where} (corrupt or truncated layer)"
        )
    return sum(1 for b in remainder[512:] if b)


class _Walker:
    """Turns tar members into entries; keeps only compact facts (tarfile's member list is cleared)."""

    def __init__(self, label: str, elf_reader: ElfReader | None, hash_content: bool,
                 offload: _Offload | None = None) -> None:
        self.label = label
        self.elf_reader = elf_reader
        self.hash_content = hash_content
        self.offload = offload or _Offload()
        # entries whose digest or ELF facts come from the helper threads: (index, hash, facts)
        self.late: list[tuple[int, hashlib._Hash | None, Future[ElfFacts] | None]] = []
        self.entries: list[Entry] = []
        self.files: dict[str, bytes] = {}
        self.skipped: list[Skipped] = []
        self.overlay_whiteouts: list[str] = []
        self.last = ""
        self.end_offset: int | None = None
        self.stream: LayerStream | None = None
        self.xattr_sets: dict[Xattrs, Xattrs] = {}
        self.count = 0
        # Modes and owners repeat across a layer: one int object each, not one per entry (an int above 256
        # is 32 bytes; 0o644 is 420), issue 7's bytes per entry.
        self._ints: dict[int, int] = {}

    def walk(self, stream: LayerStream) -> None:
        self.stream = stream
        stream.budget = MAX_HEADER_BYTES
        try:
            # "r:" on a forward-only stream: tarfile seeks only forward here (to skip data and padding)
            tar = tarfile.open(fileobj=stream, mode="r:", tarinfo=FastTarInfo)  # type: ignore[call-overload]  # noqa: SIM115
        except tarfile.ReadError:
            if stream.plain_size == 0:
                return  # a 0-byte (or empty-compressed) blob is an empty layer (RELIABILITY.md #34)
            raise
        except TAR_PARSE_ERRORS as err:
            raise _malformed(err) from err
        with tar:
            for member in tar_members(tar, stream):
                tar.members = []  # CPython gh-102120: the member list grows without bound
                stream.budget = None  # reading content is bounded by the caps in _file
                self._member(tar, member)
                stream.budget = MAX_HEADER_BYTES  # what tarfile may read to reach the next member
            self.end_offset = tar.offset

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.last = member.name
        self.count += 1
        if self.count > MAX_ENTRIES:
            raise LimitExceeded(f"{self.label}: more than {MAX_ENTRIES} entries in one layer (cap)")
        if len(member.name) > PATH_MAX // 4 and len(member.name.encode("utf-8", "surrogateescape")) > PATH_MAX:
            what = f"{self.label} entry \"{escape(member.name[:200])}…\""
            self.skipped.append(Skipped(what, f"name longer than {PATH_MAX} bytes (PATH_MAX): not in the view"))
            return
        path = normalise(member.name)
        if path is None:
            raise CorruptImage(f"{self.label}: entry \"{escape(member.name)}\": path climbs above the root")
        if path == "/" and not member.isdir():
            self.skipped.append(Skipped(f"{self.label} entry \"/\"", "non-directory at the root"))
            return
        base = path.rpartition("/")[2]  # posixpath.basename of a normal path
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, path, base)
            return
        if "/" + WHITEOUT_PREFIX + WHITEOUT_PREFIX in path:
            return  # inside AUFS metadata (.wh..wh.plnk/123, .wh..wh.orph/…): hidden like the marker itself
        entry = self._entry(tar, member, path)
        if entry is not None:
            # Most members have no PAX header, and most PAX headers no xattr (they carry long names, sub-second times):
            # one C-level scan of the keys decides before any Python work.
            if member.pax_headers and XATTR_PREFIX in "\n".join(member.pax_headers):
                entry = self._with_xattrs(member, entry)
            self.entries.append(entry)

    def _with_xattrs(self, member: tarfile.TarInfo, entry: Entry) -> Entry:
        """The entry with its extended attributes (file capabilities among them), bounded per entry (#66)."""
        xattrs, dropped = from_pax(member.pax_headers)
        if dropped:
            what = f"{self.label} entry \"{escape(member.name)}\""
            self.skipped.append(Skipped(what, f"{dropped} more extended attributes not recorded "
                                              f"(cap: {MAX_XATTRS} per entry)"))
        if not xattrs:
            return entry
        # equal sets (an SELinux label on every file) share one tuple
        return replace(entry, xattrs=self.xattr_sets.setdefault(xattrs, xattrs))

    def _whiteout(self, member: tarfile.TarInfo, path: str, base: str) -> None:
        parent = posixpath.dirname(path)
        if base == OPAQUE_MARKER:
            self.entries.append(Entry(parent, EntryType.OPAQUE))
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): hidden, never a file
        target = base[len(WHITEOUT_PREFIX):]
        if target in ("", ".", "..") or not (member.isfile() or member.isdir()) or member.islnk():
            self.skipped.append(Skipped(f"{self.label} entry \"{escape(member.name)}\"", "invalid whiteout entry"))
            return
        self.entries.append(Entry(posixpath.join(parent, target), EntryType.WHITEOUT))

    def _entry(self, tar: tarfile.TarFile, m: tarfile.TarInfo, path: str) -> Entry | None:
        ints = self._ints
        mode, uid, gid = m.mode & 0o7777, m.uid, m.gid
        # (mode, uid, gid), passed by position: keywords and a dict cost ~0.5 us an entry
        owner = ints.setdefault(mode, mode), ints.setdefault(uid, uid), ints.setdefault(gid, gid)
        if m.isdir():
            return Entry(path, EntryType.DIR, *owner)
        if m.issym():
            return Entry(path, EntryType.SYMLINK, *owner, link=m.linkname)
        if m.islnk():
            target = normalise(m.linkname)
            if target is None or target == "/":
                what = f"{self.label} entry \"{escape(m.name)}\""
                self.skipped.append(Skipped(what, "hard link target outside the image"))
                return None
            return Entry(path, EntryType.HARDLINK, *owner, link=target)
        if m.ischr() or m.isblk() or m.isfifo():
            kind = EntryType.CHAR if m.ischr() else EntryType.BLOCK if m.isblk() else EntryType.FIFO
            if kind is EntryType.CHAR and m.devmajor == m.devminor == 0:
                self.overlay_whiteouts.append(path)
            return Entry(path, kind, *owner)
        if m.isreg():
            return self._file(tar, m, path, owner)
        self.skipped.append(Skipped(f"{self.label} entry \"{escape(m.name)}\"", f"unsupported tar type {m.type!r}"))
        return None

    def _file(self, tar: tarfile.TarFile, m: tarfile.TarInfo, path: str, owner: tuple[int, int, int]) -> Entry:
        size = m.size
        if size == 0:
            return Entry(path, EntryType.FILE, *owner)
        if m.issparse():  # holes are never materialised (a 1 TiB realsize would take hours): size from the header
            what = f"{self.label} entry \"{escape(m.name)}\""
            self.skipped.append(Skipped(what, f"sparse file of {size} bytes (apparent): content not read"))
            return Entry(path, EntryType.FILE, *owner, size)
        reader = self.stream
        assert reader is not None  # _file runs only inside walk(), which sets the stream
        reader.seek(m.offset_data)  # a no-op for the stream: tar left it at the data
        head = reader.peek(min(size, HEAD_BYTES))  # more would join the next decoded piece onto this one
        is_elf = head.startswith(b"\x7fELF")
        keep = SMALL_FILES.match(path) is not None and size <= MAX_SMALL_FILE
        whole = is_elf and self.elf_reader is not None and size <= MAX_ELF_BYTES
        digest = None
        late_hash: hashlib._Hash | None = None
        late_elf: Future[ElfFacts] | None = None
        if whole:
            late_hash, late_elf, digest = self._elf_file(reader, path, size, keep)
        elif keep:
            digest = self._keep(reader, size)
        elif size >= LATE_HASH_MIN and self.hash_content:
            late_hash = hashlib.sha256()
            h = late_hash
            if reader.consume(size, lambda view: self.offload.update(h, view)) != size:
                raise tarfile.ReadError("unexpected end of data")
        else:
            digest = self._hash_rest(reader, size)
        if late_hash is not None or late_elf is not None:
            self.late.append((len(self.entries), late_hash, late_elf))
        elf = None
        if is_elf and size > MAX_ELF_BYTES:
            cap = MAX_ELF_BYTES >> 20
            self.skipped.append(Skipped(path, f"ELF file of {size} bytes is over the {cap} MiB parse cap"))
        # Only the kernel's checks read a head (`#!` scripts, ELF ident): other files keep none, sparing up
        # to 289 bytes each.
        head = head[:ELF_HEAD_BYTES] if is_elf else head if head.startswith(b"#!") else b""
        return Entry(path, EntryType.FILE, *owner, size, None, head, digest, elf)

    def _keep(self, reader: LayerStream, size: int) -> str:
        """Keeps a small file the analysers read; returns its digest."""
        data = reader.read(size)
        if len(data) != size:
            raise tarfile.ReadError("unexpected end of data")
        digest = hashlib.sha256(data).hexdigest()
        self.files[digest] = data
        return digest

    def _elf_file(self, reader: LayerStream, path: str, size: int, keep: bool
                  ) -> tuple[hashlib._Hash | None, Future[ElfFacts], str | None]:
        """Sends an ELF member to the parser: streamed into its slot, or read whole for a plain
        reader (and when it is also a small file kept). Returns its late hash, its facts, its digest."""
        elf_reader = self.elf_reader
        assert elf_reader is not None  # only called with a reader
        self.offload.reserve(size)  # before reading: a big file waits for the parser to be idle
        late_hash = digest = None
        try:
            if not keep and isinstance(elf_reader, StreamingElfReader):
                late_hash = hashlib.sha256() if self.hash_content else None
                return late_hash, self._stream_elf(reader, elf_reader, size, late_hash), None
            if keep:
                digest = self._keep(reader, size)
                data = self.files[digest]
            else:
                data = _read_whole(reader, size)
                if self.hash_content:
                    late_hash = hashlib.sha256()
                    self.offload.update(late_hash, data)
            facts = self.offload.parse(elf_reader, path, data, digest or late_hash)  # takes over the reservation
            return late_hash, facts, digest
        except BaseException:
            self.offload.unreserve(size)
            raise

    def _stream_elf(self, reader: LayerStream, elf_reader: StreamingElfReader, size: int,
                    h: hashlib._Hash | None) -> Future[ElfFacts]:
        """Writes a member to the parser as it is inflated (the process never holds it whole), hashing
        the same pieces: into a slot, or, above the ELF byte budget, straight into the parser; the parse
        then takes over the slot or stream and the budget reservation."""
        stream = self.offload.stream(elf_reader, size) if size > _ELF_BUDGET.cap else None
        if stream is None:
            upload = self.offload.upload(elf_reader, size)
            self._fill(reader, size, upload, h)
            return self.offload.parse_upload(upload, h)
        self._fill(reader, size, stream, h)
        return self.offload.parse_stream(stream, h)

    def _fill(self, reader: LayerStream, size: int, target: ElfUpload | ElfStream, h: hashlib._Hash | None) -> None:
        offload = self.offload

        def sink(view: memoryview) -> None:
            target.write(view)
            if h is not None:
                offload.update(h, view)

        try:
            if reader.consume(size, sink) != size:
                raise tarfile.ReadError("unexpected end of data")
        except BaseException:
            target.discard()
            raise

    def finish(self) -> None:
        """Fills in the digests and ELF facts the helper threads produced."""
        self.offload.finish()
        for index, h, facts in self.late:
            entry = self.entries[index]
            self.entries[index] = replace(entry, digest=h.hexdigest() if h else entry.digest,
                                          elf=facts.result() if facts else entry.elf)
        self.late.clear()

    def _hash_rest(self, reader: LayerStream, size: int) -> str | None:
        """Hashes (or, without hash_content, skips) a member's data; tar would skip it anyway."""
        h = hashlib.sha256() if self.hash_content else None
        if reader.consume(size, None if h is None else h.update if size > SMALL_HASH else _held(h)) != size:
            raise tarfile.ReadError("unexpected end of data")
        return h.hexdigest() if h else None


def _held(h: hashlib._Hash) -> Callable[[memoryview], None]:
    """`h.update` in pieces small enough that hashlib keeps the GIL (see SMALL_HASH)."""
    update = h.update

    def sink(view: memoryview) -> None:
        for at in range(0, len(view), UNRELEASED_UPDATE):
            update(view[at:at + UNRELEASED_UPDATE])

    return sink


def _read_whole(reader: LayerStream, size: int) -> bytes:
    """A member's data in one buffer filled piece by piece (joining the pieces would hold it twice)."""
    buf = bytearray(size)
    view = memoryview(buf)
    at = 0

    def fill(piece: memoryview) -> None:
        nonlocal at
        view[at:at + len(piece)] = piece
        at += len(piece)

    if reader.consume(size, fill) != size:
        raise tarfile.ReadError("unexpected end of data")
    view.release()
    return buf  # type: ignore[return-value]  # a bytes-like buffer nobody changes again: spares a copy


# What tarfile raises besides TarError on hostile headers (a sparse map or PAX number that is not one).
TAR_PARSE_ERRORS = (ValueError, OverflowError, IndexError, struct.error)


def _malformed(err: Exception) -> tarfile.ReadError:
    return tarfile.ReadError(f"malformed tar header ({type(err).__name__}: {escape(str(err))[:120]})")


def tar_members(tar: tarfile.TarFile, stream: LayerStream | None = None) -> Iterator[tarfile.TarInfo]:
    """The members, with tarfile's stray exceptions on bad headers turned into ReadError (RELIABILITY.md #61);
    given the layer stream `tar` reads, plain headers are read without tarfile's machinery (tarheader.members)."""
    members = iter(tar) if stream is None else tarheader.members(tar, stream)
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except TAR_PARSE_ERRORS as err:
            raise _malformed(err) from err
        yield member


def verify(scan: LayerScan, *, label: str, digest: str | None, diff_id: str | None, size: int | None) -> None:
    """Compares what passed with what the manifest and config promised (CorruptImage on mismatch)."""
    if size is not None and size != scan.compressed_size:
        raise CorruptImage(f"{label}: got {scan.compressed_size} bytes, want {size}")
    if digest and digest != scan.digest:
        raise CorruptImage(f"{label}: digest mismatch: expected {digest}, got {scan.digest}")
    if diff_id and diff_id != scan.diff_id:
        raise CorruptImage(f"{label}: diff_id mismatch: config says {diff_id}, content is {scan.diff_id}")


def short(digest: str | None) -> str:
    return digest[:19] if digest else "sha256:?"


def check_limit(count: int, cap: int, what: str) -> None:
    if count > cap:
        raise LimitExceeded(f"{what}: {count} is over the cap of {cap}")
