"""Typed errors: each carries a one-line message and the exit code of DESIGN.md §5."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2
EXIT_INSPECT = 3


class ImgauditError(Exception):
    """Base error: `str(err)` is the one line shown after `imgaudit: error: `."""

    exit_code = EXIT_INSPECT


class UsageError(ImgauditError):
    """Bad option or reference."""

    exit_code = EXIT_USAGE


class ImageNotFound(ImgauditError):
    """The source is reachable but does not hold the image asked for."""


class SourceUnavailable(ImgauditError):
    """Daemon or registry unreachable or refusing."""


class AuthenticationFailed(SourceUnavailable):
    """A registry or its token server refused (or needs) credentials; the message never holds them."""


class CorruptImage(ImgauditError):
    """Manifest, config or layer bytes are malformed, truncated or do not match their digest."""


class LimitExceeded(ImgauditError):
    """An input passed a documented resource cap (manifest size, entry count, …)."""


def escape(text: str) -> str:
    """Quote an untrusted string for a one-line message: control characters become `\\xNN`."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code & 0xFF:02x}")
        else:
            out.append(ch)
    return "".join(out)
