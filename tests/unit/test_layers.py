"""The one-pass layer scan: compression by magic bytes, digests, truncation, tar framing, whiteouts."""

from __future__ import annotations

import io
import itertools

import pytest

from imgaudit.errors import CorruptImage
from imgaudit.layers import EntryType, normalise, scan_layer, verify
from tests.builders import Item, d, f, gz, hard, make_layer, opaque, sha, sym, wh, zst

LAYER = make_layer([d("etc"), f("etc/os-release", "ID=debian\n"), d("a"), f("a/x", b"1" * 5000), sym("l", "/a")])


def scan(data: bytes, **kw: object):  # type: ignore[no-untyped-def]
    return scan_layer(io.BytesIO(data), label="layer 1/1 sha256:test", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("compress,kind", [(lambda b: b, "tar"), (gz, "gzip"), (zst, "zstd")])
def test_compression_is_sniffed_and_digests_cover_the_bytes(compress, kind) -> None:  # type: ignore[no-untyped-def]
    blob = compress(LAYER)
    result = scan(blob)
    assert result.compression == kind
    assert result.digest == sha(blob)
    assert result.diff_id == sha(LAYER)
    assert (result.compressed_size, result.size) == (len(blob), len(LAYER))
    assert [e.path for e in result.entries] == ["/etc", "/etc/os-release", "/a", "/a/x", "/l"]


@pytest.mark.parametrize("compress", [gz, zst])
def test_multi_member_streams_decode_every_member(compress) -> None:  # type: ignore[no-untyped-def]
    half = len(LAYER) // 2
    result = scan(compress(LAYER[:half]) + compress(LAYER[half:]))
    assert result.diff_id == sha(LAYER)
    assert len(result.entries) == 5


class _ShortReads(io.BytesIO):
    """A blob whose reads stop at chosen offsets, as a socket's or a pipe's may."""

    def __init__(self, data: bytes, cuts: list[int]) -> None:
        super().__init__(data)
        self.cuts = cuts

    def read(self, size: int | None = -1) -> bytes:
        ahead = [c for c in self.cuts if c > self.tell()]
        want = -1 if size is None or size < 0 else size
        if ahead and (want < 0 or self.tell() + want > ahead[0]):
            want = ahead[0] - self.tell()
        return super().read(want)


@pytest.mark.parametrize("compress", [gz, zst])
@pytest.mark.parametrize("into_magic", [1, 2, 3])
def test_a_chunk_ending_inside_the_next_members_magic_is_not_trailing_data(compress, into_magic) -> None:  # type: ignore[no-untyped-def]
    half = len(LAYER) // 2
    first = compress(LAYER[:half])
    blob = first + compress(LAYER[half:])
    result = scan_layer(_ShortReads(blob, [len(first) + into_magic]), label="layer")
    assert (result.diff_id, len(result.entries), result.trailing_bytes) == (sha(LAYER), 5, 0)


def test_zstd_is_fed_whole_blocks_with_each_call_bounded() -> None:
    from imgaudit.layers import _Inflater

    text = b"".join(b"line %d of a layer that compresses like text\n" % i for i in range(400_000))
    zeros = b"\0" * (64 << 20)  # ~32768:1 in RLE blocks: the bomb-shaped case
    inflater, pieces = _Inflater("zstd"), []
    blob = zst(text) + zst(zeros)
    for at in range(0, len(blob), 1 << 20):
        piece = inflater.feed(blob[at:at + (1 << 20)])
        while piece:
            pieces.append(len(piece))
            piece = inflater.more()
    assert sum(pieces) == len(text) + len(zeros) and inflater.complete
    assert max(pieces) <= 32 * (128 << 10)  # no call decodes more than 32 blocks
    assert len(pieces) < 200  # whole blocks per call, not 1 KiB slices (which took ~1,500 calls here)


def test_highly_compressible_members_decode_past_the_output_cap() -> None:
    # 40 MiB of zeros per member come from a few KiB of gzip: every inflate call stops at its output
    # cap with input left inside the decoder; two members make the cap meet a member boundary too.
    big = make_layer([f("zeros", b"\0" * (40 << 20)), f("z2", b"\0" * (24 << 20) + b"end")])
    half = len(big) // 2
    result = scan(gz(big[:half]) + gz(big[half:]))
    assert result.diff_id == sha(big)
    assert [(e.path, e.size) for e in result.entries] == [("/zeros", 40 << 20), ("/z2", (24 << 20) + 3)]


@pytest.mark.parametrize("blob", [b"", gz(b""), gz(b"\0" * 1024), b"\0" * 1024])
def test_empty_layer_variants_are_empty_not_errors(blob: bytes) -> None:
    assert scan(blob).entries == ()


@pytest.mark.parametrize("compress", [lambda b: b, gz, zst])
def test_every_file_digest_is_its_sha256_whatever_its_size_and_where_pieces_end(compress) -> None:  # type: ignore[no-untyped-def]
    """Small files are hashed in pieces that keep the GIL (layers.SMALL_HASH), larger ones whole or on the helper
    thread: each way must give the file's sha256, also when a file spans two decoded pieces (1 MiB for a plain
    tar, up to 4 MiB inflated)."""
    import random

    rng = random.Random(7)
    sizes = [1, 2046, 2047, 2048, 2049, 4094, 4095, 32767, 32768, 32769, 70000, 300_000]
    contents = {f"s{n}": rng.randbytes(n) for n in sizes}
    pad = rng.randbytes((1 << 20) - 3000)  # the small files after it straddle the first 1 MiB boundary
    files = [f(name, data) for name, data in contents.items()]
    again = [f(f"z{name}", data) for name, data in contents.items()]  # after 4 MiB more: past an inflated piece
    result = scan(compress(make_layer([f("pad", pad), *files, f("again", pad * 4), *again])))
    want = {f"/{z}{name}": sha(data) for name, data in contents.items() for z in ("", "z")}
    got = {e.path: f"sha256:{e.digest}" for e in result.entries if e.path in want}
    assert got == want


@pytest.mark.parametrize("cut", [0.1, 0.6, 0.99])
@pytest.mark.parametrize("compress", [gz, zst, lambda b: b])
def test_truncation_is_detected_and_names_the_layer(cut: float, compress) -> None:  # type: ignore[no-untyped-def]
    blob = compress(LAYER)
    with pytest.raises(CorruptImage, match="layer 1/1 sha256:test"):
        result = scan(blob[: int(len(blob) * cut)])
        verify(result, label="layer 1/1 sha256:test", digest=sha(blob), diff_id=sha(LAYER), size=len(blob))


def test_bad_header_checksum_is_not_silently_the_end() -> None:
    bad = bytearray(LAYER)
    bad[512 + 148] ^= 0x11  # checksum field of the second header
    with pytest.raises(CorruptImage, match="invalid tar header at offset 512"):
        scan(bytes(bad))


def test_bad_gzip_crc_is_caught_by_the_digest() -> None:
    blob = bytearray(gz(LAYER))
    blob[-6] ^= 0xFF  # CRC32 sits in the last 8 bytes
    with pytest.raises(CorruptImage):
        result = scan(bytes(blob))
        verify(result, label="l", digest=sha(gz(LAYER)), diff_id=sha(LAYER), size=None)


def test_flipped_byte_fails_verification() -> None:
    blob = bytearray(LAYER)
    blob[1024 + 10] ^= 1  # inside etc/os-release's data
    result = scan(bytes(blob))
    with pytest.raises(CorruptImage, match="diff_id mismatch"):
        verify(result, label="l", digest=None, diff_id=sha(LAYER), size=None)


def test_trailing_data_is_counted_not_fatal() -> None:
    assert scan(gz(LAYER) + b"junk" * 4).trailing_bytes == 16
    assert scan(LAYER + b"junk").trailing_bytes == 4


def test_not_a_tar_is_corrupt() -> None:
    with pytest.raises(CorruptImage):
        scan(b"this is not a tar file at all" * 40)


def test_path_traversal_entry_is_refused() -> None:
    with pytest.raises(CorruptImage, match=r'entry "\.\./\.\./etc/passwd": path climbs above the root'):
        scan(make_layer([f("../../etc/passwd", "x")]))


def test_a_walk_that_stops_early_leaves_no_decoder_thread_behind() -> None:
    import threading

    # the bad entry comes first, so the decoder is still ahead (and blocked on its full queue) when the
    # walk gives up: close() must unblock and join it
    blob = gz(make_layer([f("../escape", "x"), *(f(f"big{i}", bytes([i]) * (6 << 20)) for i in range(24))]))
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(CorruptImage, match="climbs above the root"):
        scan(blob)
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == [], left


def test_names_are_normalised() -> None:
    assert normalise("./a/b/") == "/a/b"
    assert normalise("/a/./b") == "/a/b"
    assert normalise("a/../b") == "/b"
    assert normalise("../x") is None


def test_every_name_normalises_as_its_parts_say() -> None:
    """A name with no empty, `.` or `..` part skips the part-by-part walk: every name of up to five pieces
    from these must come out as that walk gives it (posix rules, chroot at the root)."""
    def by_parts(name: str) -> str | None:
        parts: list[str] = []
        for part in name.split("/"):
            if part == "..":
                if not parts:
                    return None
                parts.pop()
            elif part not in ("", "."):
                parts.append(part)
        return "/" + "/".join(parts)

    pieces = ["a", ".", "/", "..", "b.c", ".wh.x", "\\", "..."]
    names = ["".join(combo) for k in range(1, 6) for combo in itertools.product(pieces, repeat=k)]
    assert len(names) > 37_000
    assert [n for n in names if normalise(n) != by_parts(n)] == []


def test_whiteouts_and_markers() -> None:
    layer = make_layer([wh("a/x"), opaque("o"), f("o/.wh..wh.plnk"), f("p/.wh..wh..opqX"), f("q/.wh.")])
    result = scan(layer)
    kinds = [(e.path, e.type) for e in result.entries]
    assert ("/a/x", EntryType.WHITEOUT) in kinds
    assert ("/o", EntryType.OPAQUE) in kinds
    # .wh..wh..opqX is not an opaque marker (stereoscope #696); like .wh..wh.plnk it is AUFS metadata
    # that moby's UnpackLayer skips, so neither is listed nor hides anything.
    assert ("/p", EntryType.OPAQUE) not in kinds
    assert all(not p.startswith(("/o/.wh", "/p/")) for p, _ in kinds)
    assert [s.reason for s in result.skipped] == ["invalid whiteout entry"]  # bare .wh. deletes nothing


def test_small_files_and_heads_are_kept() -> None:
    result = scan(make_layer([f("etc/os-release", "ID=alpine\n"), f("bin/app", b"#!/bin/sh\necho hi\n", 0o755)]))
    os_release = result.entries[0]
    assert result.files[os_release.digest or ""] == b"ID=alpine\n"
    assert result.entries[1].head.startswith(b"#!/bin/sh")
    assert result.entries[1].mode == 0o755
    assert os_release.head == b""  # only the kernel's checks read a head: `#!` and ELF files keep one


def test_paths_named_twice_are_known_to_the_scan() -> None:
    result = scan(make_layer([f("a", "1"), f("b", "2"), f("a", "3"), f("c/d", "4"), f("c/d", "5"), f("e", "6")]))
    assert result.repeated == {"/a", "/c/d"}


def test_elf_reader_gets_whole_elf_files() -> None:
    seen: list[tuple[str, int]] = []

    def reader(path: str, data: bytes):  # type: ignore[no-untyped-def]
        seen.append((path, len(data)))

    elf = b"\x7fELF" + b"\x02" * 100_000
    scan(make_layer([f("bin/a", elf), f("bin/b", b"not elf")]), elf_reader=reader)
    assert seen == [("/bin/a", len(elf))]


def test_hardlinks_and_special_files() -> None:
    result = scan(make_layer([f("a", "data"), hard("b", "/a"), Item("run/fifo", "fifo")]))
    assert [(e.path, e.type, e.link) for e in result.entries] == [
        ("/a", EntryType.FILE, None), ("/b", EntryType.HARDLINK, "/a"), ("/run/fifo", EntryType.FIFO, None)]


def test_a_failed_scan_gives_back_the_parser_slots_of_the_files_it_had_queued() -> None:
    """Files queued behind a parse when a scan fails are cancelled (`_Offload.close`); their slots in the shared
    parser were never given back, and once eight were gone the next scan of the process waited for a slot
    forever (found by random layer stacks in one process). Here the queue is held behind a parse that waits."""
    import threading

    from imgaudit.elf import SLOTS, read_elf
    from imgaudit.layers import _Offload

    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 60  # refused by the pre-check, after its upload took a slot
    gate = threading.Event()
    offload = _Offload()
    offload.reserve(len(elf))
    offload.parse(lambda path, data: (gate.wait(), read_elf(path, data))[1], "/first", elf)
    for _ in range(SLOTS):
        offload.reserve(len(elf))  # as the walk does: a parse gives its reservation back, cancelled or not
        upload = offload.upload(read_elf, len(elf))
        upload.write(elf)
        offload.parse_upload(upload)
    closing = threading.Thread(target=offload.close)
    closing.start()  # cancels the queued parses, then waits for the one running
    gate.set()
    closing.join(30)

    def every_slot() -> None:
        again = _Offload()
        uploads = [again.upload(read_elf, len(elf)) for _ in range(SLOTS)]
        for upload in uploads:
            upload.discard()
        again.close()

    taker = threading.Thread(target=every_slot, daemon=True)
    taker.start()
    taker.join(30)
    assert not closing.is_alive() and not taker.is_alive(), "a cancelled parse kept its parser slot"
