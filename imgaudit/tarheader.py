"""A faster `tarfile.TarInfo.frombuf` for the headers layers are made of.

The layer walk spends more of its own time decoding 512-byte headers than on anything else: stdlib's
`frombuf` calls `nti`/`nts` field by field and sums the block twice through `struct` (18.6 us a header
here; 5.8 us this way: one `struct` unpack, and the checksum's byte sum from Adler-32 when the header is
ASCII). `TarInfo.frombuf` is the one place tarfile builds a member from a header, and
`tarfile.open(..., tarinfo=FastTarInfo)` puts this class there. Headers it is not sure of (base-256
numbers, old GNU sparse, a checksum that is not the plain unsigned sum, anything that fails to parse)
go to stdlib's `frombuf`, so every error and oddity keeps stdlib's behaviour; a differential test holds
the fast path to stdlib's result. `members` iterates a layer's tar, and reads plain headers without tarfile's
machinery around `frombuf`; a differential test holds it to iterating the TarFile.

Extension headers are read as Go's archive/tar reads them, since containerd and Docker apply layers with it
(RELIABILITY.md #61, tests/unit/test_tar_differential.py): a PAX header Go refuses is refused
(imgaudit/paxrules.py); a global `g` header changes nothing, as containerd ignores it (tarfile folds its
records into later `x` headers); of several `x` or GNU `L`/`K` headers before a member the nearest one
counts, a GNU long name or link wins over a PAX `path` or `linkpath`, and an empty PAX value keeps the
header's own (tarfile takes the farthest, the PAX one, and the empty value).
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from imgaudit.paxrules import AmbiguousPax, check

BLOCK = tarfile.BLOCKSIZE
_NUMBER_STARTS = (100, 108, 116, 124, 136, 148, 329, 337)  # mode uid gid size mtime chksum devmajor devminor
# name mode uid gid size mtime (chksum) type linkname (magic version) uname gname devmajor devminor prefix
_USTAR = struct.Struct("100s8s8s8s12s12s8xc100s8x32s32s8s8s155s")
_BASE256 = (0o200, 0o377)  # a number field starting so is binary (tarfile.nti)
_NUMBER_FIELDS = ("mode", "uid", "gid", "size", "mtime", "devmajor", "devminor")
_NUMBERS_BUT_SIZE = tuple(f for f in _NUMBER_FIELDS if f != "size")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_GNU_MAGIC = b"ustar  \0"
# stdlib's header errors that typeshed leaves out: "not a header" (stops the walk) and "after an extension header"
_INVALID: type[tarfile.HeaderError] = tarfile.InvalidHeaderError  # type: ignore[attr-defined]
_SUBSEQUENT: type[tarfile.HeaderError] = tarfile.SubsequentHeaderError  # type: ignore[attr-defined]
_EXTENSIONS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
MAX_SPECIAL = 1 << 20  # Go's cap on the data of a PAX or GNU long name/link header (maxSpecialFileSize)
# Types a header alone describes: no extension data, no sparse map, and tarfile supports each of them.
_PLAIN_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE))


class HeaderOverCap(Exception):
    """An extension header over Go's 1 MiB cap (RELIABILITY.md #60): the scan turns it into LimitExceeded (exit 6).
    Not a tarfile.HeaderError nor a ValueError, so neither tarfile nor the walk takes it for a malformed header."""


def _number(field: bytes | bytearray) -> int:
    """tarfile.nti for an octal field; ValueError where nti fails (and on rarer forms nti accepts: the
    caller then asks stdlib)."""
    end = field.find(b"\0")
    return int((field[:end] if end >= 0 else field).strip() or b"0", 8)


class _Numbers(dict[bytes, int]):
    """Octal fields already read, by their bytes: mode, owner, device numbers and often mtime repeat through a
    layer, and a lookup costs a tenth of `_number`. Bounded, for a layer whose every header differs."""

    CAP = 4096

    def __missing__(self, field: bytes) -> int:
        value = _number(field)  # a ValueError is not kept: the caller asks stdlib
        if len(self) >= self.CAP:
            self.clear()
        self[field] = value
        return value


_NUMBERS = _Numbers()


def _text(field: bytes, encoding: str, errors: str) -> str:
    return field.partition(b"\0")[0].decode(encoding, errors)


class FastTarInfo(tarfile.TarInfo):
    """A TarInfo whose `frombuf` takes a fast path for plain headers."""

    __slots__ = ("_gnu_link", "_gnu_name", "_pax_applied", "_refusal")

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._gnu_name: str | None = None
        self._gnu_link: str | None = None
        self._pax_applied = False
        self._refusal: str | None = None

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> FastTarInfo:
        if len(buf) == BLOCK and buf[156:157] != tarfile.GNUTYPE_SPARSE:
            ascii = buf.isascii()
            if ascii or not any(buf[at] in _BASE256 for at in _NUMBER_STARTS):
                fast = cls._checked(buf, encoding, errors, ascii)
                if fast is not None:
                    return fast
        obj = super().frombuf(buf, encoding, errors)
        obj._refusal = _refusal(obj, buf)  # only here: the fast path's octal numbers cannot pass 2**36
        return obj

    @classmethod
    def _checked(cls, buf: bytes | bytearray, encoding: str, errors: str, ascii: bool) -> FastTarInfo | None:
        """The header decoded by `_plain` if its checksum is the plain unsigned sum, else None (ask stdlib)."""
        # 512 ASCII bytes sum to less than Adler-32's modulus, so its low half is exactly 1 + their sum
        total = (zlib.adler32(buf) & 0xFFFF) - 1 if ascii else sum(buf)
        try:
            chksum = _number(buf[148:156])
            if chksum == total - sum(buf[148:156]) + 256:  # the field counts as eight spaces
                return cls._plain(buf, encoding, errors, chksum)
        except ValueError:
            pass
        return None

    @classmethod
    def _plain(cls, buf: bytes | bytearray, encoding: str, errors: str, chksum: int) -> FastTarInfo:
        """What stdlib's frombuf makes of a header without sparse structs, step for step."""
        name, mode, uid, gid, size, mtime, kind, link, uname, gname, major, minor, prefix = _USTAR.unpack_from(buf)
        obj = cls()
        obj.name = _text(name, encoding, errors)
        numbers = _NUMBERS
        obj.mode = numbers[mode]
        obj.uid = numbers[uid]
        obj.gid = numbers[gid]
        obj.size = _number(size)
        obj.mtime = numbers[mtime]
        obj.chksum = chksum
        obj.type = kind
        obj.linkname = _text(link, encoding, errors)
        obj.uname = _text(uname, encoding, errors)
        obj.gname = _text(gname, encoding, errors)
        obj.devmajor = numbers[major]
        obj.devminor = numbers[minor]
        prefix = _text(prefix, encoding, errors)
        if obj.type == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # V7 tar: a directory is a regular file named with a slash
        if obj.isdir():
            obj.name = obj.name.rstrip("/")
        if prefix and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix + "/" + obj.name  # ustar's split long name
        return obj

    def _proc_member(self, tar: Any) -> tarfile.TarInfo:
        if self._refusal:  # InvalidHeaderError is stdlib's "not a header": the layer is corrupt (exit 3)
            raise _INVALID(self._refusal)
        member: tarfile.TarInfo = super()._proc_member(tar)  # type: ignore[misc]
        return member

    def _proc_pax(self, tar: Any) -> tarfile.TarInfo:
        if self.type == tarfile.SOLARIS_XHDTYPE:  # Go knows only `x` and `g`: `X` is a member of an unknown type
            return self._proc_builtin(tar)  # type: ignore[attr-defined,no-any-return]
        stream: BinaryIO = tar.fileobj
        data = stream.read(self._block(self.size))  # type: ignore[attr-defined]
        _check_cap(self, "PAX header")
        try:
            check(data[:self.size])
        except AmbiguousPax as err:
            raise _SUBSEQUENT(f"ambiguous tar: {err} (Go's archive/tar refuses it)") from None
        if self.type == tarfile.XGLTYPE:
            return self._next(tar)
        tar.fileobj = _Replay(data, stream)  # stdlib's _proc_pax reads the data again, then the next header
        try:
            member: tarfile.TarInfo = super()._proc_pax(tar)  # type: ignore[misc]
        finally:
            tar.fileobj = stream
        return member

    def _proc_gnulong(self, tar: Any) -> tarfile.TarInfo:
        data = tar.fileobj.read(self._block(self.size))  # type: ignore[attr-defined]
        _check_cap(self, "GNU long name or link")
        member = self._next(tar)
        member.offset = self.offset
        value = tarfile.nts(data, tar.encoding, tar.errors)  # type: ignore[attr-defined]
        if isinstance(member, FastTarInfo):
            if self.type == tarfile.GNUTYPE_LONGNAME and member._gnu_name is None:
                member.name = member._gnu_name = value
            elif self.type == tarfile.GNUTYPE_LONGLINK and member._gnu_link is None:
                member.linkname = member._gnu_link = value
        if member.isdir():
            member.name = member.name.rstrip("/")
        return member

    def _next(self, tar: Any) -> tarfile.TarInfo:
        try:
            member: tarfile.TarInfo = self.fromtarfile(tar)
        except tarfile.HeaderError as err:
            raise _SUBSEQUENT(str(err)) from None
        return member

    def _apply_pax_info(self, pax_headers: dict[str, str], encoding: str, errors: str) -> None:
        # _proc_builtin applies the global records to every member: always none here. Of several `x` headers the
        # farther come later: Go keeps only the nearest one.
        if not pax_headers or self._pax_applied:
            return
        self._pax_applied = True
        kept = {k: v for k, v in pax_headers.items() if v != ""} if "" in pax_headers.values() else pax_headers
        super()._apply_pax_info(kept, encoding, errors)  # type: ignore[misc]
        self.pax_headers = dict(pax_headers)
        if self._gnu_name is not None:
            self.name = self._gnu_name.rstrip("/") if self.isdir() else self._gnu_name
        if self._gnu_link is not None:
            self.linkname = self._gnu_link


class _Stream(Protocol):
    def peek(self, size: int) -> bytes: ...
    def read(self, size: int = -1) -> bytes: ...
    def seek(self, pos: int, whence: int = 0) -> int: ...
    def tell(self) -> int: ...


def members(tar: tarfile.TarFile, stream: _Stream) -> Iterator[tarfile.TarInfo]:
    """What iterating `tar` (opened with FastTarInfo on `stream`) yields, and with the same effect on `tar.offset`
    and on the stream, with plain headers read here: tarfile's way around a header (`next`, `fromtarfile`,
    `_proc_member`, `_proc_builtin`, the member list) cost ~2.2 us of the scan thread per member (200,000 members:
    3.49 s before, 3.06 s after). Any other header (an extension, a sparse or device member, an end or a bad
    block) is left to `tar.next()`, which finds the stream where it expects it."""
    member = tar.next()  # the first member, read by tarfile.open
    while member is not None:
        yield member
        member = _plain_next(tar, stream) or tar.next()


def _plain_next(tar: tarfile.TarFile, stream: _Stream) -> FastTarInfo | None:
    """The next member if its header is a plain one `FastTarInfo` decodes alone; else None, and the stream at it.
    What `_proc_builtin` would add is nothing: `tar.pax_headers` (global records) stays empty, since
    `FastTarInfo._proc_pax` passes over `g` headers."""
    at = tar.offset
    if stream.tell() != at:
        # Past the data and padding the walk left. tarfile.next seeks to the byte before the header and reads it;
        # where the stream ends before, the peek below is short and tar.next() says so. A header behind the stream
        # (a hostile sparse map) is refused by the stream either way.
        stream.seek(at)
    buf = stream.peek(BLOCK)
    if len(buf) != BLOCK or buf[156:157] not in _PLAIN_TYPES or not buf.isascii():
        return None
    member = FastTarInfo._checked(buf, tar.encoding, tar.errors, True)
    if member is None:
        return None
    stream.read(BLOCK)
    member.offset = at
    member.offset_data = at + BLOCK
    tar.offset = member.offset_data + (member._block(member.size) if member.isreg() else 0)  # type: ignore[attr-defined]
    if member.isdir():
        member.name = member.name.rstrip("/")
    return member


def _refusal(header: tarfile.TarInfo, buf: bytes | bytearray) -> str | None:
    """Why Go's archive/tar, and so the runtime, refuses a header stdlib reads: a base-256 number past int64,
    an old GNU sparse header without the GNU magic. An extension header's size is left to the cap on what it
    may hold (#60: exit 6)."""
    fields = _NUMBERS_BUT_SIZE if header.type in _EXTENSIONS else _NUMBER_FIELDS
    if any(not _INT64_MIN <= getattr(header, f) <= _INT64_MAX for f in fields):
        return "a number field over 64 bits (Go's archive/tar refuses it)"
    if header.type == tarfile.GNUTYPE_SPARSE and buf[257:265] != _GNU_MAGIC:
        return "old GNU sparse header without the GNU magic (Go's archive/tar refuses it)"
    return None


def _check_cap(header: tarfile.TarInfo, what: str) -> None:
    if header.size > MAX_SPECIAL:
        raise HeaderOverCap(f"{what} of {header.size} bytes at offset {header.offset} is over the 1 MiB cap "
                            "(Go's archive/tar refuses it too; RELIABILITY.md #60)")


class _Replay:
    """The tar stream with `data` put back in front: stdlib's `_proc_pax` reads a header's data itself."""

    def __init__(self, data: bytes, stream: BinaryIO) -> None:
        self._data: bytes | None = data
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        if self._data is not None:
            data, self._data = self._data, None  # stdlib asks for exactly these bytes first
            return data
        return self._stream.read(size)

    def tell(self) -> int:
        return self._stream.tell() - (len(self._data) if self._data is not None else 0)

    def seek(self, pos: int, whence: int = 0) -> int:
        assert self._data is None
        return self._stream.seek(pos, whence)
