"""The PAX record rules of Go's archive/tar, which containerd and Docker apply layers with (RELIABILITY.md #61).

CPython's tarfile is lenient where Go refuses: a record length that lies is read as far as the buffer goes,
a length of 0 or below, a NUL in a path, `mtime=yesterday` (read as 0) or `size=1_0` (read as 10) pass. A
runtime refuses such a layer, so imgaudit must not show a filesystem for it: `check` raises where Go's
`parsePAX`/`mergePAX` return ErrHeader, and the scan reports the layer as corrupt ("ambiguous tar").
tests/unit/test_tar_differential.py holds these rules to Go's own reader.
"""

from __future__ import annotations

import re

from imgaudit.errors import escape

NAME_KEYS = frozenset({"path", "linkpath", "uname", "gname"})
INT_KEYS = frozenset({"uid", "gid", "size"})
TIME_KEYS = frozenset({"atime", "mtime", "ctime"})
_INT = re.compile(r"[+-]?[0-9]+")  # strconv.ParseInt(v, 10, 64)
_TIME = re.compile(r"([+-]?[0-9]+)(?:\.[0-9]*)?")  # parsePAXTime: seconds, then only digits after a dot
_INT64_MAX = (1 << 63) - 1
_SPARSE_PAIR = ("GNU.sparse.offset", "GNU.sparse.numbytes")


class AmbiguousPax(ValueError):
    """A PAX header Go's archive/tar refuses (ErrHeader) and CPython's tarfile reads one way or another."""


def records(body: bytes) -> list[tuple[str, str]]:
    """The (key, value) records of a PAX header's data, split as Go's parsePAXRecord does."""
    out = []
    rest = body
    while rest:
        space = rest.find(b" ")
        digits = rest[:space].decode("ascii", "replace") if space >= 0 else ""
        length = int(digits) if _INT.fullmatch(digits) else -1
        if length < 5 or length > len(rest) or space + 1 >= length - 1:
            raise AmbiguousPax(f"PAX record length {_shown(rest[:space] if space >= 0 else rest)} is wrong")
        record, newline, rest = rest[space + 1:length - 1], rest[length - 1:length], rest[length:]
        key, eq, value = record.partition(b"=")
        if newline != b"\n" or not eq or not key:
            raise AmbiguousPax("PAX record is not `length key=value\\n`")
        text_key = key.decode("utf-8", "surrogateescape")
        if (b"\0" in value) if text_key in NAME_KEYS else (b"\0" in key):
            raise AmbiguousPax(f"PAX record {text_key!r} holds a NUL")
        out.append((text_key, value.decode("utf-8", "surrogateescape")))
    return out


def check(body: bytes) -> None:
    """Raises AmbiguousPax where Go's archive/tar refuses the header whose data is `body`."""
    sparse = 0
    for key, value in records(body):
        if key in _SPARSE_PAIR:  # GNU sparse 0.0: offset/numbytes pairs, strictly alternating
            if key != _SPARSE_PAIR[sparse % 2] or "," in value:
                raise AmbiguousPax("GNU sparse 0.0 records out of order")
            sparse += 1
        elif value == "":
            continue  # Go keeps the header's own value
        elif key in INT_KEYS:
            if not _INT.fullmatch(value) or not -_INT64_MAX - 1 <= int(value) <= _INT64_MAX:
                raise AmbiguousPax(f"PAX {key} {_shown(value)} is not a 64-bit integer")
            if key == "size" and int(value) < 0:
                raise AmbiguousPax(f"PAX size {value} is negative")
        elif key in TIME_KEYS:
            seconds = _TIME.fullmatch(value)
            if seconds is None or not -_INT64_MAX - 1 <= int(seconds.group(1)) <= _INT64_MAX:
                raise AmbiguousPax(f"PAX {key} {_shown(value)} is not a time")


def _shown(text: str | bytes) -> str:
    """At most 40 characters of a hostile record, escaped like every other untrusted text in a message."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    return escape(text[:40])
