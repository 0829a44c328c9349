"""ld.so.cache parsing against files written by a real `ldconfig` (glibc 2.36: `ldconfig -r ROOT -c FORMAT`
with /lib/libgreet.so.1 and /lib/glibc-hwcaps/x86-64-v3/libgreet.so.1), plus malformed inputs."""

from __future__ import annotations

import struct

import pytest

from imgaudit import ldcache

OLD = bytes.fromhex(
    "6c642e736f2d312e372e3000010000000303000005000000000000002f6c69622f6c696267726565742e736f2e3100"
)

COMPAT_HWCAPS = bytes.fromhex(
    "6c642e736f2d312e372e30000200000003030000990000007d00000003030000990000006a000000676c6962632d6c64"
    "2e736f2e6361636865312e31020000004700000002000000d00000000000000000000000000000000303000099000000"
    "7d00000000000000000000000000004003030000990000006a0000000000000000000000000000007838362d36342d76"
    "33002f6c69622f6c696267726565742e736f2e31002f6c69622f676c6962632d6877636170732f7838362d36342d7633"
    "2f6c696267726565742e736f2e3100007421a4ea020000000000000000000000fc000000430000000100000000000000"
    "f800000004000000600000006c64636f6e666967202844656269616e20474c49424320322e33362d392b646562313275"
    "31342920737461626c652072656c656173652076657273696f6e20322e3336"
)

NEW_HWCAPS = bytes.fromhex(
    "676c6962632d6c642e736f2e6361636865312e31020000004700000002000000a8000000000000000000000000000000"
    "03030000990000007d00000000000000000000000000004003030000990000006a000000000000000000000000000000"
    "7838362d36342d7633002f6c69622f6c696267726565742e736f2e31002f6c69622f676c6962632d6877636170732f78"
    "38362d36342d76332f6c696267726565742e736f2e3100007421a4ea020000000000000000000000d400000043000000"
    "0100000000000000d000000004000000600000006c64636f6e666967202844656269616e20474c49424320322e33362d"
    "392b64656231327531342920737461626c652072656c656173652076657273696f6e20322e3336"
)
GENERATOR = "ldconfig (Debian GLIBC 2.36-9+deb12u14) stable release version 2.36"


def test_old_format() -> None:
    cache = ldcache.parse(OLD)
    assert cache.format == "old"
    assert [(e.soname, e.path, e.flags) for e in cache.entries] == [("libgreet.so.1", "/lib/libgreet.so.1", 0x303)]
    assert cache.generator is None


@pytest.mark.parametrize(("data", "fmt"), [(COMPAT_HWCAPS, "compat"), (NEW_HWCAPS, "new")])
def test_new_and_compat_formats_with_hwcaps(data: bytes, fmt: str) -> None:
    cache = ldcache.parse(data)
    assert cache.format == fmt
    assert cache.generator == GENERATOR
    assert [(e.path, e.hwcaps) for e in cache.entries] == [
        ("/lib/glibc-hwcaps/x86-64-v3/libgreet.so.1", "x86-64-v3"), ("/lib/libgreet.so.1", None)]
    # The baseline entry is what every CPU gets; the hwcaps one is listed as a variant.
    assert cache.lookup("libgreet.so.1", "x86_64").path == "/lib/libgreet.so.1"
    assert len(cache.variants("libgreet.so.1", "x86_64")) == 2


def test_lookup_checks_the_abi_flags() -> None:
    cache = ldcache.parse(NEW_HWCAPS)
    assert cache.lookup("libgreet.so.1", "aarch64") is None  # FLAG_X8664_LIB64 entries only
    assert cache.lookup("libnope.so.1", "x86_64") is None
    assert ldcache.flags_fit(0x0001, "aarch64")  # plain FLAG_ELF fits every loader
    assert ldcache.flags_fit(0x0A03, "aarch64") and not ldcache.flags_fit(0x0303, "aarch64")


@pytest.mark.parametrize("data", [
    b"", b"not a cache", ldcache.OLD_MAGIC, ldcache.NEW_MAGIC + b"1.1",
    ldcache.OLD_MAGIC + b"\0" + struct.pack("<I", 1000),  # more entries than bytes
    ldcache.NEW_MAGIC + b"9.9" + bytes(40),  # unknown version
])
def test_malformed_caches_raise(data: bytes) -> None:
    with pytest.raises(ldcache.LdCacheError):
        ldcache.parse(data)


def test_string_offset_outside_the_file_raises() -> None:
    data = bytearray(OLD)
    data[20:24] = struct.pack("<I", 10_000)  # the entry's key offset
    with pytest.raises(ldcache.LdCacheError):
        ldcache.parse(bytes(data))
