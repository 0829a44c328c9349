"""Content-addressed cache of layer scans (DESIGN.md §1: a scan depends only on the layer's bytes),
and of whole reports, keyed by the image's config and layer digests.

One file per layer, named by the layer's digest, whether ELF facts were read, and a fingerprint of
the code that made the scan (so an upgrade never reads an old shape). Written atomically (temp file
in the same directory, fsync, rename); verified on read against the sha256 of its payload stored in
the entry: an entry that fails (torn, flipped, old) is deleted and read as a miss. The payload is
`marshal` of plain tuples — no code runs on load, unlike pickle — optionally zstd-compressed; a
scan's entries go in pieces of 4,096, written as they are made, so an entry never exists whole in
memory beside the scan (`_write_scan`). The
directory is capped in size; the least recently used entries (by mtime, touched on every hit) go
first. Failing to read or write the cache never fails an inspection: the first write that fails (disk
full, read-only or missing directory) logs one warning and the cache is left alone for the rest of the
process, so a run never leaves a half-written entry under a digest name (RELIABILITY.md #86).

A report depends only on the image (config and layers) and on the code that analysed it, so it is
cached too, under a fingerprint of every module: re-inspecting a seen image costs reading its
manifest and config. Reports are pickled (they are a tree of the report's dataclasses); loading
accepts imgaudit's own classes only, so an entry can never name another callable. Reports with an
incomplete part are not stored (a parser timeout must not outlive the run that hit it).

Resolutions of binaries are remembered per layer (linkmemo.py says what a memo holds and when it is
trusted), `marshal` again, framed and verified like the rest, under the fingerprint of every module.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import marshal
import os
import pickle
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from imgaudit import __version__
from imgaudit.errors import escape
from imgaudit.layers import Entry, EntryType, LayerScan, Skipped

FORMAT_VERSION = 5  # 2: heads only of ELF and `#!` files, shared mode and owner ints (issue 7); 3: xattrs;
# 4: overlay whiteouts; 5: the payload in length-prefixed pieces
MAGIC = b"IMGAUDIT-SCAN\0"
REPORT_MAGIC = b"IMGAUDIT-RPRT\0"
HASHED_MAGIC = b"IMGAUDIT-HASH\0"
REPORT_SUFFIX = ".report"
LINKS_MAGIC = b"IMGAUDIT-LINK\0"
LINKS_SUFFIX = ".links"
_HEADER = len(MAGIC) + 2 + 32  # magic, version, codec, sha256(payload)
_CODEC_RAW, _CODEC_ZSTD = 0, 1
DEFAULT_MAX_BYTES = 2 << 30
STALE_TEMP_SECONDS = 3600
SUFFIX = ".scan"
HASHED_SUFFIX = ".hashed"
_ENTRY_SUFFIXES = (SUFFIX, REPORT_SUFFIX, HASHED_SUFFIX, LINKS_SUFFIX)
_ENTRY_TYPES = {t.value: t for t in EntryType}
T = TypeVar("T")
log = logging.getLogger(__name__)
# Cache directories a write failed in, for the whole process: several ScanCache objects share a directory
# in one run (the report's and the layers', one per image compared), and it warns once, not once each.
_unwritable: set[Path] = set()
_unwritable_lock = threading.Lock()


def default_dir() -> Path:
    """`$IMGAUDIT_CACHE_DIR`, else `$XDG_CACHE_HOME/imgaudit`, else `~/.cache/imgaudit`."""
    explicit = os.environ.get("IMGAUDIT_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "imgaudit"


def parse_size(text: str) -> int:
    """`512M`, `2G`, `1048576` → bytes (ValueError on anything else)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    value = int(float(number) * scale)
    if value < 0:
        raise ValueError(f"negative size {text!r}")
    return value


# The modules a layer scan's content comes from: the walk, the tar header rules, xattrs, ELF facts, the
# messages of skipped entries, and this format (a test keeps it equal to what layers.py and elf.py import).
SCAN_MODULES = ("cache.py", "elf.py", "errors.py", "layers.py", "paxrules.py", "quickinit.py", "tarheader.py",
                "xattrs.py", "zstdscout.py")


def _fingerprint() -> str:
    """Changes whenever the code that produces a scan (or this format) may change its content."""
    h = hashlib.sha256(f"{FORMAT_VERSION}:{__version__}".encode())
    here = Path(__file__).resolve().parent
    for name in SCAN_MODULES:
        with contextlib.suppress(OSError):
            h.update((here / name).read_bytes())
    return h.hexdigest()[:12]


def _code_fingerprint() -> str:
    """Every module of the package: any change to an analyser changes what a report holds."""
    h = hashlib.sha256(f"{FORMAT_VERSION}:{__version__}".encode())
    here = Path(__file__).resolve().parent
    for path in sorted(here.rglob("*.py")):
        with contextlib.suppress(OSError):
            h.update(path.relative_to(here).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _file_name(digest: str) -> str:
    """`sha256:ab…` as `sha256-ab…`, with nothing a path could trip on."""
    algo, _, hexpart = digest.partition(":")
    return "".join(c for c in f"{algo}-{hexpart}" if c.isalnum() or c == "-")[:140]


def _serving(elf: bool) -> tuple[bool, ...]:
    """The kinds of scan entry that serve a request: one with ELF facts also serves a request without."""
    return (True,) if elf else (False, True)


def report_key(image: Any, *, elf: bool = True) -> str:
    """What a report is a function of: the config (entrypoint, env, platform, history) and the layers."""
    ident = [image.config_digest, [(layer.digest, layer.diff_id) for layer in image.layers], elf]
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()


class ScanCache:
    """Layer scans on disk, keyed by digest. `get`/`put` never raise for cache trouble."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES, *, compress: bool = False) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.compress = compress
        self.fingerprint = _fingerprint()
        self._code: str | None = None
        self.hits = 0
        self.misses = 0

    @classmethod
    def default(cls) -> ScanCache | None:
        """The user's cache, or None when `IMGAUDIT_CACHE=off` (`--no-cache`); `IMGAUDIT_CACHE_MAX`
        (e.g. `4G`) sets the size cap."""
        if os.environ.get("IMGAUDIT_CACHE", "").lower() in ("off", "0", "no", "false"):
            return None
        cap = DEFAULT_MAX_BYTES
        with contextlib.suppress(ValueError):
            cap = parse_size(os.environ.get("IMGAUDIT_CACHE_MAX", "") or str(DEFAULT_MAX_BYTES))
        return cls(default_dir(), cap)

    def path(self, digest: str, *, elf: bool) -> Path:
        return self.root / f"{_file_name(digest)}.{'elf' if elf else 'noelf'}.{self.fingerprint}{SUFFIX}"

    # -- reading -------------------------------------------------------------------------------

    def get(self, digest: str | None, *, elf: bool) -> LayerScan | None:
        """The cached scan of blob `digest`; a scan with ELF facts also serves a request without."""
        if not digest or not self.usable:
            return None
        for with_elf in _serving(elf):
            scan = self._load(self.path(digest, elf=with_elf))
            if scan is not None and scan.digest == digest:
                self.hits += 1
                return scan if with_elf == elf else _without_elf(scan)
        self.misses += 1
        return None

    def has(self, digest: str, *, elf: bool) -> bool:
        """An entry for `digest` is on disk (unverified: `get` may still miss)."""
        return self.usable and any(self.path(digest, elf=e).exists() for e in _serving(elf))

    def _fingerprint_of_code(self) -> str:
        """The fingerprint of every module, hashed on first use (a run that only reads scans never needs it)."""
        if self._code is None:
            self._code = _code_fingerprint()
        return self._code

    def _load(self, path: Path) -> LayerScan | None:
        return _read_entry(path, decode)

    # -- reports -------------------------------------------------------------------------------

    def report_path(self, key: str) -> Path:
        return self.root / f"report-{key[:64]}.{self._fingerprint_of_code()}{REPORT_SUFFIX}"

    def get_report(self, key: str) -> Any | None:
        if not self.usable:
            return None
        return _read_entry(self.report_path(key),
                           lambda blob: _ReportUnpickler(io.BytesIO(_verified(blob, REPORT_MAGIC))).load())

    def put_report(self, key: str, report: Any) -> None:
        if not report.complete or not self.usable:
            return
        try:
            payload = pickle.dumps(report, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, TypeError, AttributeError):
            return
        self._write(self.report_path(key), _framed(REPORT_MAGIC, payload))

    # -- resolutions remembered per layer (linkmemo.py) -----------------------------------------

    def links_path(self, digest: str) -> Path:
        return self.root / f"links-{_file_name(digest)}.{self._fingerprint_of_code()}{LINKS_SUFFIX}"

    def get_links(self, digest: str) -> dict[Any, Any] | None:
        if not self.usable:
            return None
        memos = _read_entry(self.links_path(digest), lambda blob: marshal.loads(_verified(blob, LINKS_MAGIC)))
        return memos if isinstance(memos, dict) else None

    def put_links(self, digest: str, memos: dict[Any, Any]) -> None:
        if self.usable:
            self._write(self.links_path(digest), _framed(LINKS_MAGIC, marshal.dumps(memos)))

    # -- blob hashes by file identity (scanner.blob_identity) ----------------------------------

    def hashed_path(self, identity: str) -> Path:
        return self.root / f"hashed-{identity[:64]}{HASHED_SUFFIX}"

    def hashed(self, identity: str) -> tuple[str, int] | None:
        """The (digest, size) a blob had when its file had this identity; None when not known."""
        if not self.usable:
            return None
        return _read_entry(self.hashed_path(identity), _hash_record)

    def put_hashed(self, identity: str, digest: str, size: int) -> None:
        """A hint for the next run, so a failed write costs nothing and says nothing (a read-only cache
        still serves its scans quietly); other writes evict these tiny records with the rest."""
        if not self.usable:
            return
        payload = json.dumps([digest, size]).encode()
        with contextlib.suppress(OSError):
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomic(self.hashed_path(identity), _framed(HASHED_MAGIC, payload))

    # -- writing -------------------------------------------------------------------------------

    def put(self, scan: LayerScan, *, elf: bool) -> None:
        if self.usable:
            self._write(self.path(scan.digest, elf=elf), lambda f: _write_scan(f, scan, compress=self.compress))

    @property
    def usable(self) -> bool:
        """False once a write in this directory failed in this process: no more reads or writes."""
        return self.root not in _unwritable

    def _write(self, path: Path, content: bytes | Callable[[BinaryIO], None]) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomic(path, content)
        except OSError as err:
            self._give_up(err)
            return
        self.evict()

    def _give_up(self, err: OSError) -> None:
        with _unwritable_lock:
            if self.root in _unwritable:
                return
            _unwritable.add(self.root)
        reason = err.strerror or type(err).__name__
        log.warning("cache %s not used: cannot write there (%s); continuing without it (set IMGAUDIT_CACHE_DIR, "
                    "or --no-cache)", escape(str(self.root)), reason)

    def evict(self) -> None:
        """Deletes least recently used entries until the directory fits the cap; stale temps too."""
        now = time.time()
        entries: list[tuple[float, int, Path]] = []
        for path in _listdir(self.root):
            try:
                st = path.stat()
            except OSError:
                continue
            if path.name.startswith(".tmp-"):
                if now - st.st_mtime > STALE_TEMP_SECONDS:
                    with contextlib.suppress(OSError):
                        path.unlink()
            elif path.name.endswith(_ENTRY_SUFFIXES):
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size

    def clear(self) -> None:
        for path in _listdir(self.root):
            if path.name.endswith(_ENTRY_SUFFIXES) or path.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    path.unlink()


def _listdir(root: Path) -> Iterable[Path]:
    try:
        return list(root.iterdir())
    except OSError:
        return []


def _write_atomic(path: Path, content: bytes | Callable[[BinaryIO], None]) -> None:
    """`content` as bytes, or a function that writes it into the (seekable) temp file."""
    fd, name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, bytes):
                f.write(content)
            else:
                content(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)


# -- format ------------------------------------------------------------------------------------


def encode(scan: LayerScan, *, compress: bool = False) -> bytes:
    out = io.BytesIO()
    _write_scan(out, scan, compress=compress)
    return out.getvalue()


def _write_scan(f: BinaryIO, scan: LayerScan, *, compress: bool) -> None:
    """A scan's entry written piece by piece, its sha256 filled in last. One `marshal.dumps` of a whole scan
    held every entry as a tuple plus marshal's buffer plus the bytes made from it: 62 MiB at once for a
    layer of 130,000 entries (26 MiB written), at the moment its scan is complete (issue 7's peak)."""
    start = f.tell()
    f.write(bytes(_HEADER))
    digest = hashlib.sha256()
    for data in _squeezed(_pieces(scan)) if compress else _pieces(scan):
        digest.update(data)
        f.write(data)
    end = f.tell()
    f.seek(start)
    f.write(_frame_head(MAGIC, _CODEC_ZSTD if compress else _CODEC_RAW, digest.digest()))
    f.seek(end)


def _squeezed(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """The pieces as one zstd frame, compressed as they come."""
    import zstandard

    squeeze = zstandard.ZstdCompressor(level=1).compressobj()
    for piece in pieces:
        yield squeeze.compress(piece)
    yield squeeze.flush()


_PIECE = struct.Struct("<I")
_ROWS_PER_PIECE = 4096


def _pieces(scan: LayerScan) -> Iterator[bytes]:
    """The payload: the scan's fields (the entries by their count), then its entries 4,096 at a time; each a
    length-prefixed `marshal` dump, so a reader loads them from the blob in place."""
    entries = scan.entries
    yield _piece((scan.digest, scan.diff_id, scan.compressed_size, scan.size, scan.compression, len(entries),
                  dict(scan.files), tuple((s.what, s.reason) for s in scan.skipped), scan.trailing_bytes,
                  scan.overlay_whiteouts))
    for at in range(0, len(entries), _ROWS_PER_PIECE):
        yield _piece(tuple(map(_plain_entry, entries[at:at + _ROWS_PER_PIECE])))


def _piece(value: tuple[Any, ...]) -> bytes:
    dumped = marshal.dumps(value)
    return _PIECE.pack(len(dumped)) + dumped


def _framed(magic: bytes, payload: bytes, codec: int = _CODEC_RAW) -> bytes:
    """An entry as `_verified` reads it back: its head, then the payload."""
    return _frame_head(magic, codec, hashlib.sha256(payload).digest()) + payload


def _frame_head(magic: bytes, codec: int, sha256: bytes) -> bytes:
    """Magic, format version, codec, sha256 of the payload as stored (`_HEADER` bytes)."""
    return magic + bytes((FORMAT_VERSION, codec)) + sha256


def _read_entry(path: Path, load: Callable[[bytes], T]) -> T | None:
    """An entry's decoded payload; a torn, flipped or foreign entry is deleted and read as a miss (issue 7:
    verified on read). A hit touches the mtime, the LRU clock."""
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except OSError:
        return None
    try:
        value = load(blob)
    except Exception:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return value


def decode(blob: bytes) -> LayerScan:
    """Raises ValueError (or whatever marshal/the constructors raise) on anything but a sound entry. Each piece
    becomes entries before the next one loads, so a layer's rows never exist all at once beside them."""
    pieces = _unpieced(_verified(blob, MAGIC))
    digest, diff_id, csize, size, compression, count, files, skipped, trailing, overlay_whiteouts = next(pieces)
    entries: list[Entry] = []
    for rows in pieces:
        entries += _entries(rows)
    if len(entries) != count:
        raise ValueError(f"{len(entries)} entries, {count} promised")
    scan = LayerScan(
        digest=digest, diff_id=diff_id, compressed_size=csize, size=size, compression=compression,
        entries=tuple(entries), files=files, skipped=tuple(Skipped(w, r) for w, r in skipped),
        trailing_bytes=trailing, overlay_whiteouts=overlay_whiteouts,
    )
    _ = scan.repeated  # now, while no merged filesystem is held (LayerScan.repeated)
    return scan


def _unpieced(payload: memoryview) -> Iterator[Any]:
    at = 0
    while at < len(payload):
        (size,) = _PIECE.unpack_from(payload, at)
        at += _PIECE.size
        if at + size > len(payload):
            raise ValueError("a piece runs past the payload")
        yield marshal.loads(payload[at:at + size])
        at += size


def _verified(blob: bytes, magic: bytes) -> memoryview:
    """The payload of an entry whose magic, version and sha256 check out (ValueError otherwise)."""
    header = len(magic) + 2 + 32
    if len(blob) < header or not blob.startswith(magic):
        raise ValueError("not a cache entry of this kind")
    version, codec = blob[len(magic)], blob[len(magic) + 1]
    if version != FORMAT_VERSION:
        raise ValueError(f"format version {version}")
    payload = memoryview(blob)[header:]
    if hashlib.sha256(payload).digest() != blob[header - 32:header]:
        raise ValueError("payload digest mismatch")
    if codec == _CODEC_ZSTD:
        import zstandard

        # a streamed frame does not say its size up front, which `decompress` needs
        return memoryview(zstandard.ZstdDecompressor().decompressobj().decompress(payload))
    if codec != _CODEC_RAW:
        raise ValueError(f"codec {codec}")
    return payload


def _hash_record(blob: bytes) -> tuple[str, int]:
    digest, size = json.loads(bytes(_verified(blob, HASHED_MAGIC)))
    if not (isinstance(digest, str) and digest.startswith("sha256:") and isinstance(size, int) and size >= 0):
        raise ValueError("not a hash record")
    return digest, size


class _ReportUnpickler(pickle.Unpickler):
    """Only the package's own classes (the report's dataclasses and enums) may be named."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "imgaudit" or module.startswith("imgaudit."):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"report cache entry names {module}.{name}")


def _plain_entry(e: Entry) -> tuple[Any, ...]:
    return (e.path, e.type.value, e.mode, e.uid, e.gid, e.size, e.link, e.head, e.digest,
            None if e.elf is None else _plain_elf(e.elf), e.xattrs)


def _entries(rows: tuple[Any, ...]) -> list[Entry]:
    types = _ENTRY_TYPES
    from_elf = _elf_from_plain
    return [
        Entry(path, types[kind], mode, uid, gid, fsize, link, head, fdigest,
              None if elf is None else from_elf(elf), xattrs)
        for path, kind, mode, uid, gid, fsize, link, head, fdigest, elf, xattrs in rows
    ]


def _without_elf(scan: LayerScan) -> LayerScan:
    from dataclasses import replace

    entries = tuple(replace(e, elf=None) if e.elf is not None else e for e in scan.entries)
    return replace(scan, entries=entries)


# ElfFacts are flattened field by field, in declaration order; nested values become tuples. The
# fingerprint covers elf.py, so a change to its fields changes the file name and old entries miss.
# Symbols stay the columns they are in memory (elf.Symbols).


def _plain_elf(facts: Any) -> tuple[Any, ...]:
    from dataclasses import fields

    out = []
    for f in fields(facts):
        value = getattr(facts, f.name)
        if f.name == "version_needs":
            value = tuple((v.file, v.version, v.weak) for v in value)
        elif f.name in ("imported_symbols", "exported_symbols"):
            value = (value.joined, value.size, value.slots, value.table, value.weak)
        elif f.name == "rust" and value is not None:
            tls = value.tls
            value = (value.rustc_version, value.rustc_commit, value.target,
                     (tls.library, tls.version, tls.roots) if tls is not None else None)
        out.append(value)
    return tuple(out)


def _elf_from_plain(plain: tuple[Any, ...]) -> Any:
    from imgaudit.elf import ElfFacts, Symbols, VersionNeed, rust_facts_from_plain

    values = dict(zip(_elf_field_names(), plain, strict=True))
    values["version_needs"] = tuple(VersionNeed(*v) for v in values["version_needs"])
    values["imported_symbols"] = Symbols(*values["imported_symbols"])
    values["exported_symbols"] = Symbols(*values["exported_symbols"])
    if values["rust"] is not None:
        values["rust"] = rust_facts_from_plain(*values["rust"])
    return ElfFacts(**values)


_FIELD_NAMES: tuple[str, ...] = ()


def _elf_field_names() -> tuple[str, ...]:
    global _FIELD_NAMES
    if not _FIELD_NAMES:
        from dataclasses import fields

        from imgaudit.elf import ElfFacts

        _FIELD_NAMES = tuple(f.name for f in fields(ElfFacts))
    return _FIELD_NAMES
