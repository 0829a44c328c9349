"""Parser for `/etc/ld.so.cache`, the binary file `ldconfig` writes and glibc's `ld.so` reads.

Follows glibc's `sysdeps/generic/dl-cache.h`: the old `ld.so-1.7.0` format (12-byte entries, strings
after the entry array), the new `glibc-ld.so.cache1.1` format (24-byte entries with a hwcap word, strings
relative to the new header), the two back to back (glibc < 2.32 wrote both by default), and the
extension directory of glibc ≥ 2.33 that names the `glibc-hwcaps` subdirectories. Works on bytes only:
the cache read is always the image's, never the host's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache"
NEW_VERSION = b"1.1"
EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GENERATOR = 0
EXTENSION_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62  # DL_CACHE_HWCAP_EXTENSION: low 32 bits index the glibc-hwcaps names
HWCAP_INDEX_MASK = 0xFFFFFFFF
MAX_ENTRIES = 1 << 20

# FLAG_* of dl-cache.h: the low byte is the library kind, the high byte the ABI (`_DL_CACHEDEFAULT_ID`).
FLAG_ELF = 0x0001
FLAG_ELF_LIBC6 = 0x0003
FLAG_TYPE_MASK = 0x00FF
FLAG_REQUIRED_MASK = 0xFF00
_ABI_FLAGS = {
    "x86_64": 0x0300,  # FLAG_X8664_LIB64
    "aarch64": 0x0A00,  # FLAG_AARCH64_LIB64
    "ppc64le": 0x0500,
    "ppc64": 0x0500,
    "s390x": 0x0400,
    "riscv64": 0x1000,  # FLAG_RISCV_FLOAT_ABI_DOUBLE (lp64d, what distributions ship)
}
_OLD_HEADER = struct.Struct("<11sxI")  # magic[11], padding, nlibs
_OLD_ENTRY = struct.Struct("<iII")  # flags, key, value
_NEW_HEADER = struct.Struct("<17s3sIIB3xI12x")  # magic, version, nlibs, len_strings, flags, ext_offset
_NEW_ENTRY = struct.Struct("<iIIIQ")  # flags, key, value, osversion_unused, hwcap
_EXT_HEADER = struct.Struct("<II")  # magic, count
_EXT_SECTION = struct.Struct("<IIII")  # tag, flags, offset, size


class LdCacheError(ValueError):
    """The bytes are not an ld.so.cache glibc would accept (it then ignores the file)."""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One library: `soname` → `path`, for the ABI in `flags`; `hwcaps` names a glibc-hwcaps subdir."""

    soname: str
    path: str
    flags: int
    hwcap: int = 0
    hwcaps: str | None = None

    @property
    def is_baseline(self) -> bool:
        """Loaded on every CPU: no glibc-hwcaps subdirectory and no legacy hwcap bits."""
        return self.hwcap == 0


@dataclass(frozen=True)
class LdCache:
    format: str  # "old", "new" or "compat" (old then new)
    entries: tuple[CacheEntry, ...]
    generator: str | None = None

    def lookup(self, soname: str, machine: str) -> CacheEntry | None:
        """What `_dl_load_cache_lookup` returns for a CPU without optional features: the first entry
        with this name whose flags fit the loader (`_dl_cache_check_flags`: plain ELF or the ABI's
        default), preferring the baseline over glibc-hwcaps variants, which depend on the host CPU."""
        fitting = [e for e in self.entries if e.soname == soname and flags_fit(e.flags, machine)]
        baseline = [e for e in fitting if e.is_baseline]
        chosen = baseline or fitting
        return chosen[0] if chosen else None

    def variants(self, soname: str, machine: str) -> list[CacheEntry]:
        """Every fitting entry (hwcaps ones included) for `imgaudit ldd` to show."""
        return [e for e in self.entries if e.soname == soname and flags_fit(e.flags, machine)]

    def paths(self) -> set[str]:
        return {e.path for e in self.entries}


def flags_fit(flags: int, machine: str) -> bool:
    """`_dl_cache_check_flags`: FLAG_ELF alone, or exactly the loader's `_DL_CACHEDEFAULT_ID`
    (libc6 type | the ABI byte; 32-bit ABIs have no ABI byte)."""
    return flags in (FLAG_ELF, FLAG_ELF_LIBC6 | _ABI_FLAGS.get(machine, 0))


def parse(data: bytes) -> LdCache:
    """Parses either format (or both back to back). Raises LdCacheError when glibc would ignore it."""
    if data.startswith(NEW_MAGIC):
        return _parse_new(data, 0, "new")
    if not data.startswith(OLD_MAGIC):
        raise LdCacheError("no ld.so.cache magic")
    if len(data) < _OLD_HEADER.size:
        raise LdCacheError("truncated header")
    _, nlibs = _OLD_HEADER.unpack_from(data)
    entries_end = _OLD_HEADER.size + nlibs * _OLD_ENTRY.size
    if nlibs > MAX_ENTRIES or entries_end > len(data):
        raise LdCacheError(f"{nlibs} entries do not fit in {len(data)} bytes")
    # glibc's dl-cache.c: a new-format cache may follow the old entries, aligned like the new header.
    new_at = _align(entries_end, 8)
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at, "compat")
    return LdCache("old", _old_entries(data, nlibs, entries_end))


def _align(offset: int, alignment: int) -> int:
    return (offset + alignment - 1) & ~(alignment - 1)


def _old_entries(data: bytes, nlibs: int, strings_at: int) -> tuple[CacheEntry, ...]:
    """Old format: key/value are offsets from the end of the entry array (`cache_data`)."""
    out = []
    for i in range(nlibs):
        flags, key, value = _OLD_ENTRY.unpack_from(data, _OLD_HEADER.size + i * _OLD_ENTRY.size)
        out.append(CacheEntry(_string(data, strings_at + key), _string(data, strings_at + value), flags))
    return tuple(out)


def _parse_new(data: bytes, base: int, fmt: str) -> LdCache:
    if len(data) < base + _NEW_HEADER.size:
        raise LdCacheError("truncated header")
    _, version, nlibs, _, _, ext_offset = _NEW_HEADER.unpack_from(data, base)
    if version != NEW_VERSION:
        raise LdCacheError(f"unsupported cache version {version!r}")
    if nlibs > MAX_ENTRIES or base + _NEW_HEADER.size + nlibs * _NEW_ENTRY.size > len(data):
        raise LdCacheError(f"{nlibs} entries do not fit in {len(data)} bytes")
    hwcaps, generator = _extensions(data, base, ext_offset)
    entries = tuple(_new_entry(data, base, i, hwcaps) for i in range(nlibs))
    return LdCache(fmt, entries, generator)


def _new_entry(data: bytes, base: int, index: int, hwcaps: list[str]) -> CacheEntry:
    """New format: key/value are offsets from the start of the new header."""
    flags, key, value, _, hwcap = _NEW_ENTRY.unpack_from(data, base + _NEW_HEADER.size + index * _NEW_ENTRY.size)
    subdir = None
    if hwcap & HWCAP_EXTENSION:
        idx = hwcap & HWCAP_INDEX_MASK
        subdir = hwcaps[idx] if idx < len(hwcaps) else f"#{idx}"
    return CacheEntry(_string(data, base + key), _string(data, base + value), flags, hwcap, subdir)


def _extensions(data: bytes, base: int, ext_offset: int) -> tuple[list[str], str | None]:
    """The glibc ≥ 2.33 extension directory (`cache_extension`): hwcaps names and the generator.
    `cache_extension_load` takes the extension and section offsets from the file start (they differ
    from the header-relative string offsets only in the compat format)."""
    at = ext_offset
    if ext_offset == 0 or at + _EXT_HEADER.size > len(data):
        return [], None
    magic, count = _EXT_HEADER.unpack_from(data, at)
    if magic != EXTENSION_MAGIC:
        return [], None
    hwcaps: list[str] = []
    generator = None
    for i in range(min(count, 64)):
        pos = at + _EXT_HEADER.size + i * _EXT_SECTION.size
        if pos + _EXT_SECTION.size > len(data):
            break
        tag, _, offset, size = _EXT_SECTION.unpack_from(data, pos)
        body = data[offset:offset + size]
        if tag == EXTENSION_TAG_GENERATOR:
            generator = body.decode("utf-8", "replace")
        elif tag == EXTENSION_TAG_GLIBC_HWCAPS:
            # An array of uint32 string offsets, relative to the new header like every string.
            offsets = struct.unpack_from(f"<{len(body) // 4}I", body)
            hwcaps = [_string(data, base + off) for off in offsets]
    return hwcaps, generator


def _string(data: bytes, offset: int) -> str:
    if not 0 <= offset < len(data):
        raise LdCacheError(f"string offset {offset} outside the file")
    end = data.find(b"\0", offset)
    if end < 0:
        raise LdCacheError(f"unterminated string at {offset}")
    return data[offset:end].decode("utf-8", "surrogateescape")
