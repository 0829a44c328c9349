"""The fast header decoder (imgaudit/tarheader.py) against stdlib's `TarInfo.frombuf`: for real headers of
every format and for hostile mutations of them, the member or the error must be the one stdlib gives."""

from __future__ import annotations

import random
import tarfile
from typing import Any

import pytest

from imgaudit.tarheader import FastTarInfo

SLOTS = tuple(tarfile.TarInfo.__slots__)
MISSING = object()


def outcome(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[Any, ...]:
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as err:  # every error must match too
        return "error", type(err).__name__, str(err)
    return "ok", tuple(getattr(info, slot, MISSING) for slot in SLOTS)


def headers() -> list[bytes]:
    out = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        for name, kind, extra in [
            ("usr/lib/x86_64-linux-gnu/libc.so.6", tarfile.REGTYPE, {"size": 1_922_136}),
            ("etc/", tarfile.DIRTYPE, {}),
            ("usr/share/" + "d" * 90 + "/" + "f" * 90, tarfile.REGTYPE, {"size": 7}),  # ustar prefix
            ("lib64/ld-linux-x86-64.so.2", tarfile.SYMTYPE, {"linkname": "/lib/x86_64-linux-gnu/ld.so"}),
            ("bin/sh", tarfile.LNKTYPE, {"linkname": "bin/dash"}),
            ("dev/null", tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
            ("run/fifo", tarfile.FIFOTYPE, {}),
            ("app/.wh..wh..opq", tarfile.REGTYPE, {}),
            ("ünïcode/naïve-ファイル", tarfile.REGTYPE, {"size": 3, "uname": "bäckup"}),
            ("big", tarfile.REGTYPE, {"size": 9 << 33, "uid": 1 << 22}),  # base-256 in GNU
        ]:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = kind, 1_700_000_000, 0o4755
            for key, value in extra.items():
                setattr(info, key, value)
            try:
                out.append(info.tobuf(fmt, "utf-8", "surrogateescape")[:tarfile.BLOCKSIZE])
            except ValueError:
                continue  # too long or too big for ustar
    v7 = bytearray(out[0])
    v7[0:100] = b"old/dir/".ljust(100, b"\0")
    v7[156:157] = tarfile.AREGTYPE
    out.append(_with_checksum(v7))
    return out


def _with_checksum(buf: bytearray) -> bytes:
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def test_real_headers_decode_as_stdlib_does(monkeypatch: pytest.MonkeyPatch) -> None:
    cases = headers()
    assert len(cases) >= 25
    fast = []
    plain = FastTarInfo._plain.__func__  # type: ignore[attr-defined]

    def counted(cls: type[FastTarInfo], buf: bytes, *args: Any) -> FastTarInfo:
        fast.append(buf)
        return plain(cls, buf, *args)  # type: ignore[no-any-return]

    monkeypatch.setattr(FastTarInfo, "_plain", classmethod(counted))
    for buf in cases:
        assert outcome(FastTarInfo, buf) == outcome(tarfile.TarInfo, buf), buf[:100]
    assert len(fast) >= 20  # the fast path decoded them, not the fallback


NASTY = [b"\0", b" ", b"\x1c", b"\t", b"_", b"+", b"-", b"8", b"9", b"x", b"\x80", b"\xff", b"\xe9", b"7", b"0"]


def test_mutated_headers_decode_or_fail_as_stdlib_does() -> None:
    rng = random.Random(7)
    cases = headers()
    checked = 0
    for _ in range(20_000):
        buf = bytearray(rng.choice(cases))
        for _ in range(rng.randint(1, 4)):
            at = rng.choice((rng.randrange(512), rng.randrange(100, 160), rng.randrange(329, 345)))
            buf[at : at + 1] = rng.choice(NASTY)
        if rng.random() < 0.7:  # most past the checksum, to reach the field decoding
            buf = bytearray(_with_checksum(buf)) if rng.random() < 0.9 else buf
        data = bytes(buf[:512].ljust(512, b"\0"))
        assert outcome(FastTarInfo, data) == outcome(tarfile.TarInfo, data), data[:160]
        checked += 1
    assert checked == 20_000


def test_short_empty_and_zero_blocks_raise_stdlib_errors() -> None:
    for buf in (b"", b"\0" * 100, b"\0" * 512):
        assert outcome(FastTarInfo, buf) == outcome(tarfile.TarInfo, buf)
        assert outcome(FastTarInfo, buf)[0] == "error"


def test_a_checksum_off_by_adler32s_modulus_is_refused_as_stdlib_refuses_it() -> None:
    """The fast path sums an ASCII header through Adler-32 (exact below 65,521): a checksum that is right only
    modulo 65,521 must fail, on a header under the modulus and on one over it (non-ASCII), where the sum is exact."""
    heavy = bytearray(headers()[0])
    for start, end in ((157, 257), (265, 329), (345, 500)):  # non-ASCII link, owner names, prefix
        heavy[start:end] = b"\xe9" * (end - start)
    heavy = bytearray(_with_checksum(heavy))
    assert sum(heavy) > 65_521
    assert outcome(FastTarInfo, bytes(heavy)) == outcome(tarfile.TarInfo, bytes(heavy))
    assert outcome(FastTarInfo, bytes(heavy))[0] == "ok"
    for buf in [*headers(), bytes(heavy)]:
        true_sum = sum(buf[:148]) + 256 + sum(buf[156:])
        for wrong in (true_sum + 65_521, true_sum - 65_521):
            if wrong <= 0:
                continue
            bad = bytearray(buf)
            bad[148:156] = b"%07o\0" % wrong
            assert outcome(FastTarInfo, bytes(bad)) == outcome(tarfile.TarInfo, bytes(bad))
            assert outcome(FastTarInfo, bytes(bad))[0] == "error"


def test_octal_fields_read_before_are_looked_up_and_the_memo_stays_bounded() -> None:
    """A layer whose every header carries a new mtime must not grow the memo without end, and a field read
    from the memo decodes as stdlib decodes it."""
    from imgaudit import tarheader

    info = tarfile.TarInfo("f")
    for mtime in range(2 * tarheader._Numbers.CAP + 5):
        info.mtime = 1_700_000_000 + mtime
        buf = info.tobuf(tarfile.USTAR_FORMAT)[:tarfile.BLOCKSIZE]
        assert FastTarInfo.frombuf(buf, "utf-8", "surrogateescape").mtime == info.mtime
        assert len(tarheader._NUMBERS) <= tarheader._Numbers.CAP
    again = FastTarInfo.frombuf(buf, "utf-8", "surrogateescape")
    assert buf[136:148] in tarheader._NUMBERS and again.mtime == info.mtime
    assert outcome(FastTarInfo, buf) == outcome(tarfile.TarInfo, buf)


def walked(data: bytes, *, plain_here: bool) -> tuple[Any, ...]:
    """A layer stream's members as the scan takes them: every member's slots, the data the walk reads of some
    (all of one, part of the next, none of the third, as files, links and cut-off reads do), then where tar and
    the stream ended, or the error and where."""
    import io

    from imgaudit.layers import LayerStream
    from imgaudit.tarheader import members

    stream = LayerStream(io.BytesIO(data))
    seen: list[tuple[Any, ...]] = []
    try:
        tar = tarfile.open(fileobj=stream, mode="r:", tarinfo=FastTarInfo)  # type: ignore[call-overload]  # noqa: SIM115
        for index, member in enumerate(members(tar, stream) if plain_here else iter(tar)):
            tar.members = []
            seen.append(tuple(getattr(member, slot, MISSING) for slot in SLOTS))
            if member.isreg() and member.size:
                stream.seek(member.offset_data)
                stream.consume((member.size, member.size // 2, 0)[index % 3])
        read = stream.tell() - tar.offset  # what the scan's end check reads back: the bytes from where tar stopped
        end = bytes(stream.tail[len(stream.tail) - read:]) if 0 <= read <= len(stream.tail) else None
        return "ok", seen, tar.offset, stream.tell(), end
    except Exception as err:
        return "error", seen, type(err).__name__, str(err), stream.tell()
    finally:
        stream.close()


def test_plain_headers_read_past_tarfile_give_what_iterating_tarfile_gives() -> None:
    """tarheader.members reads plain headers itself and leaves the rest to `tar.next()`: over every hostile tar of
    fuzz/hostile.py, the builders' layers in each format, and 3,000 of them with headers mutated (types among them,
    to extension, sparse and device types), it must yield the same members, stop at the same offsets and fail
    with the same error as iterating tarfile."""
    from fuzz import hostile as h
    from imgaudit.layers import _sniff
    from tests.builders import d, f, hard, make_layer, sym

    items = [d("etc"), f("etc/os-release", "ID=debian\n"), f("a/x", b"1" * 5000), sym("l", "/a"), hard("h", "a/x"),
             f("usr/share/" + "d" * 90 + "/" + "f" * 90, b"7" * 700), f("big", b"\0" * 70_000), d("old/")]
    corpus = [data for data in h.layers().values() if _sniff(data) == "tar"]
    items += [f(f"many/{i}", b"m" * (i * 37)) for i in range(60)]
    corpus += [make_layer(items, fmt=fmt) for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)]
    # A PAX 1.0 sparse member of size 0 whose map tarfile reads anyway: the stream is then past the offset where
    # tarfile looks for the next header, and a plain header lies where the stream is. It must not be read.
    sparse = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.realsize", b"4096")]
    corpus.append(h.tar_of(h.pax(sparse), h.header("GNUSparseFile.0/s", size=0) + h.pad(b"1\n0\n1\n"),
                           h.member("after", b"x")))
    rng = random.Random(11)
    mutated = []
    for _ in range(3_000):
        buf = bytearray(rng.choice(corpus))
        blocks = max(1, len(buf) // 512)
        for _ in range(rng.randint(1, 3)):
            block = rng.randrange(min(blocks, 40)) * 512
            at = block + rng.choice((156, 156, rng.randrange(512), rng.randrange(100, 160), rng.randrange(329, 345)))
            if at < len(buf):
                buf[at:at + 1] = rng.choice((*NASTY, b"x", b"g", b"L", b"K", b"S", b"3", b"6", b"5", b"1", b"2"))
            if rng.random() < 0.8 and block + 512 <= len(buf):
                buf[block:block + 512] = _with_checksum(bytearray(buf[block:block + 512]))
        if rng.random() < 0.2:
            del buf[rng.randrange(len(buf)):]
        mutated.append(bytes(buf))
    plain_read = 0
    for data in corpus + mutated:
        want = walked(data, plain_here=False)
        assert walked(data, plain_here=True) == want, data[:600]
        plain_read += len(want[1])
    assert plain_read > 8_000  # 11,002 when written  # the cases reach members, not only first-header errors
