"""Hostile inputs of RELIABILITY.md (`../shared/RELIABILITY.md` §3), built in code: raw tar headers patched byte by
byte, compression oddities, hostile JSON documents and not-quite-ELF files. Nothing here is a committed binary;
`scripts/make-fuzz-seeds` writes these as the fuzzers' seed corpus and `tests/unit/test_hostile.py` uses them.

Every fixture is keyed by a name that starts with its catalogue item number (`53-dotdot`, `60-gnu-longname-1gib`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BLOCK = 512


# -- raw tar ------------------------------------------------------------------------------------


def _number(value: int, width: int) -> bytes:
    """A tar numeric field: octal when it fits, else GNU base-256 (negative values too)."""
    digits = width - 1
    if 0 <= value < 8**digits:
        return b"%0*o\0" % (digits, value)
    if value < 0:
        return b"\xff" + (value % (1 << (8 * (width - 1)))).to_bytes(width - 1, "big")
    return b"\x80" + value.to_bytes(width - 1, "big")


def header(
    name: bytes | str,
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = 1700000000,
    linkname: bytes | str = b"",
    devmajor: int = 0,
    devminor: int = 0,
    prefix: bytes = b"",
    size_field: bytes | None = None,
    bad_checksum: bool = False,
) -> bytes:
    """One 512-byte ustar header; `size_field` overrides the 12 size bytes (e.g. garbage), names are truncated."""
    raw_name = name.encode("utf-8", "surrogateescape") if isinstance(name, str) else name
    raw_link = linkname.encode("utf-8", "surrogateescape") if isinstance(linkname, str) else linkname
    h = bytearray(BLOCK)
    h[0:100] = raw_name[:100].ljust(100, b"\0")
    h[100:108] = _number(mode, 8)
    h[108:116] = _number(uid, 8)
    h[116:124] = _number(gid, 8)
    h[124:136] = size_field if size_field is not None else _number(size, 12)
    h[136:148] = _number(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typeflag[:1].ljust(1, b"\0")
    h[157:257] = raw_link[:100].ljust(100, b"\0")
    h[257:265] = b"ustar\x0000"
    h[265:297] = b"root".ljust(32, b"\0")
    h[297:329] = b"root".ljust(32, b"\0")
    h[329:337] = _number(devmajor, 8)
    h[337:345] = _number(devminor, 8)
    h[345:500] = prefix[:155].ljust(155, b"\0")
    checksum = sum(h) + (7 if bad_checksum else 0)
    h[148:156] = b"%06o\0 " % checksum
    return bytes(h)


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def member(name: bytes | str, data: bytes = b"", **kw: object) -> bytes:
    """A header and its padded data; `size` in `kw` overrides the declared size (a lie)."""
    size = kw.pop("size", len(data))
    return header(name, size=size, **kw) + pad(data)  # type: ignore[arg-type]


def pax_records(records: dict[bytes, bytes] | list[tuple[bytes, bytes]]) -> bytes:
    out = []  # joined once: 100 000 records appended to one bytes object took minutes
    for key, value in records.items() if isinstance(records, dict) else records:
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length).encode()) + len(body) != length:
            length += 1
        out.append(str(length).encode() + body)
    return b"".join(out)


def pax(records: dict[bytes, bytes] | list[tuple[bytes, bytes]], *, typeflag: bytes = b"x",
        raw: bytes | None = None, size: int | None = None) -> bytes:
    """A PAX extended header member (`x`, or `g` global); `raw` gives the record bytes verbatim."""
    body = raw if raw is not None else pax_records(records)
    return header(b"PaxHeaders/x", typeflag=typeflag, size=len(body) if size is None else size) + pad(body)


def gnu_long(name: bytes, *, typeflag: bytes = b"L", size: int | None = None) -> bytes:
    body = name + b"\0"
    return header(b"././@LongLink", typeflag=typeflag, size=len(body) if size is None else size) + pad(body)


def end() -> bytes:
    return b"\0" * (2 * BLOCK)


def tar_of(*members: bytes) -> bytes:
    return b"".join(members) + end()


# -- compression --------------------------------------------------------------------------------


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def zst(data: bytes, **params: int) -> bytes:
    import zstandard

    if params:
        cparams = zstandard.ZstdCompressionParameters.from_level(3, **params)
        return zstandard.ZstdCompressor(compression_params=cparams).compress(data)
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def zst_skippable(payload: bytes = b"skip me") -> bytes:
    return struct.pack("<II", 0x184D2A50, len(payload)) + payload


def gz_bad_crc(data: bytes) -> bytes:
    blob = bytearray(gz(data))
    blob[-8] ^= 0xFF  # CRC32 of the trailer
    return bytes(blob)


def gz_bad_isize(data: bytes) -> bytes:
    blob = bytearray(gz(data))
    blob[-1] ^= 0x01
    return bytes(blob)


# -- the layers of sections D and E (plus whiteouts and links of F and G) ----------------------

_ELF_HEAD = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x03\x00\x3e\x00" + b"\0" * 44


def base_members() -> list[bytes]:
    return [member("etc/", typeflag=b"5", mode=0o755), member("etc/os-release", b"ID=alpine\n"),
            member("bin/", typeflag=b"5", mode=0o755), member("bin/app", _ELF_HEAD, mode=0o755)]


def _layers_e() -> dict[str, bytes]:
    base = b"".join(base_members())
    out: dict[str, bytes] = {}
    for i, name in enumerate(["../../etc/passwd", "a/../../b", "/etc/passwd", "./../x", "..", "C:\\x", "\\x",
                              "..\\..\\x", "./../../tmp/imgaudit-canary"]):
        out[f"53-traversal-{i}"] = tar_of(member(name, b"evil"))
    long_name = b"d/" * 2100 + b"f"  # 4 201 bytes
    out.update({
        "54-nul-in-pax-path": tar_of(pax({b"path": b"a\0b"}), member("placeholder", b"x")),
        "54-newline": tar_of(member("a\nb", b"x")),
        "54-ansi": tar_of(member("\x1b[2J\x1b[31mred", b"x"), member("\r::error::x", b"y")),
        "54-invalid-utf8": tar_of(member(b"bad-\xff\xfe-name", b"x")),
        "54-rtl-override": tar_of(member("evil\u202egnp.exe", b"x")),
        "54-long-name-pax": tar_of(pax({b"path": long_name}), member("placeholder", b"x")),
        "54-long-name-gnu": tar_of(gnu_long(long_name), member("placeholder", b"x")),
        "55-dup-file-file": tar_of(member("a", b"one"), member("a", b"two")),
        "55-dup-file-dir": tar_of(member("a", b"one"), member("a/", typeflag=b"5"), member("a/b", b"x")),
        "55-dup-dir-file": tar_of(member("a/", typeflag=b"5"), member("a/b", b"x"), member("a", b"file")),
        "55-dup-dot-slash": tar_of(member("a", b"one"), member("./a", b"two")),
        "56-root-entries": tar_of(member(".", typeflag=b"5", mode=0o700), member("./", typeflag=b"5"),
                                  member("/", typeflag=b"5"), member("a//b", b"x"), member("f/", b"slash")),
        "56-root-as-file": tar_of(member("/", b"not a dir")),
        "57-implied-parents": tar_of(member("etc/dnf/dnf.conf", b"[main]\n")),
        "58-bad-checksum-2nd": base[:BLOCK * 2] + header("x", size=0, bad_checksum=True) + base[BLOCK * 2:] + end(),
        "59-no-end-marker": base,
        "59-cut-in-header": base + header("late", size=3)[:200],
        "59-cut-in-data": base + header("late", size=5000) + b"x" * 100,
        "60-gnu-longname-1gib": gnu_long(b"x", size=1 << 30)[:BLOCK] + b"name\0",
        "60-gnu-longlink-2p40": header(b"././@LongLink", typeflag=b"K", size=1 << 40) + b"l" * 600,
        "60-pax-size-2p88": header(b"PaxHeaders/x", typeflag=b"x", size=(1 << 88) - 1) + b"9 a=b\n" * 100,
        "60-pax-global-1gib": header(b"PaxHeaders/g", typeflag=b"g", size=1 << 30) + b"0" * 1024,
        "60-pax-chain-2000": b"".join(pax({b"comment": b"c"}) for _ in range(2000)) + member("a", b"x") + end(),
        "61-pax-size-disagrees": tar_of(pax({b"size": b"5000"}), member("a", b"short"), member("b", b"next")),
        "61-pax-then-gnu-long": tar_of(pax({b"path": b"pax-name"}), gnu_long(b"gnu-name"), member("m", b"x")),
        "61-pax-zero-length-record": tar_of(pax({}, raw=b"0 \n" + b"\0" * 10), member("a", b"x")),
        "61-pax-record-length-lies": tar_of(pax({}, raw=b"99999 path=x\n"), member("a", b"x")),
        "61-pax-negative-length": tar_of(pax({}, raw=b"-5 path=x\n"), member("a", b"x")),
        "61-pax-mtime-not-number": tar_of(pax({b"mtime": b"yesterday"}), member("a", b"x")),
        "61-pax-size-negative": tar_of(pax({b"size": b"-1"}), member("a", b"x")),
        "61-negative-size-field": tar_of(member("a", b"", size=-1)),
        "61-garbage-size-field": tar_of(header("a", size_field=b"zz\x01zz\0\0\0\0\0\0\0")),
        "61-pax-uid-huge": tar_of(pax({b"uid": b"9" * 40, b"gid": b"-3"}), member("a", b"x")),
        "61-pax-utf8-bad": tar_of(pax({b"path": b"\xff\xfe\xfd"}), member("a", b"x")),
        "61-pax-hdrcharset": tar_of(pax({b"hdrcharset": b"BINARY", b"path": b"\xc3\x28"}), member("a", b"x")),
        "62-old-gnu-sparse-1tib": _old_gnu_sparse(1 << 40),
        "62-pax-sparse-00-1tib": _pax_sparse_0x(1 << 40, b"0.0"),
        "62-pax-sparse-01-1tib": _pax_sparse_0x(1 << 40, b"0.1"),
        "62-pax-sparse-10-1tib": _pax_sparse_10(1 << 40),
        "62-pax-sparse-huge-map": _pax_sparse_10(1 << 30, regions=20000),
        "63-specials": tar_of(member("dev/null", typeflag=b"3", devmajor=1, devminor=3),
                              member("dev/sda", typeflag=b"4", devmajor=8),
                              member("run/fifo", typeflag=b"6"), member("gone", typeflag=b"3")),
        "64-typeflags": tar_of(*(member(f"t/{t!r}", b"data", typeflag=t) for t in
                                 [b"7", b"V", b"M", b"D", b"X", b"\0", b"A", b"Q", b"Z", b"9", b"N", b"I"])),
        "65-size-base256-9gib": header("big", size=9 << 30) + b"\0" * 4096,
        "65-size-zero-data-follows": member("a", b"") + b"garbage!" * 64 + end(),
        "65-huge-mtime-uid": tar_of(member("a", b"x", mtime=1 << 80, uid=(1 << 55) - 1, gid=1 << 40)),
        "65-negative-mtime": tar_of(member("a", b"x", mtime=-(1 << 40))),
        "66-xattr-capability": tar_of(pax({b"SCHILY.xattr.security.capability": b"\x01\0\0\x02" + b"\0" * 16}),
                                      member("bin/ping", b"x", mode=0o755)),
        "66-many-xattrs": tar_of(pax([(b"SCHILY.xattr.user.k%d" % i, b"v") for i in range(3000)]), member("a", b"x")),
        "67-windows-layer": tar_of(member("Files/", typeflag=b"5"), member("Hives/", typeflag=b"5"),
                                   pax({b"MSWINDOWS.rawsd": b"AQAAgBQAAAAkAAAAAAAAAAAAAAA="}),
                                   member("Files/Windows/System32/kernel32.dll", b"MZ\x90\0"),
                                   member("Files\\Program Files\\x.exe", b"MZ")),
    })
    return out


def _old_gnu_sparse(realsize: int) -> bytes:
    """Old GNU sparse (`S`): four (offset, numbytes) slots at 386, isextended at 482, realsize at 483."""
    h = bytearray(header("sparse", typeflag=b"S", size=BLOCK))
    h[257:265] = b"ustar  \0"  # the GNU magic GNU tar writes: Go refuses an `S` header without it
    h[386:398] = _number(realsize - BLOCK, 12)
    h[398:410] = _number(BLOCK, 12)
    h[482] = 0
    h[483:495] = _number(realsize, 12)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return tar_of(bytes(h) + b"s" * BLOCK)


def _pax_sparse_0x(realsize: int, version: bytes) -> bytes:
    if version == b"0.0":
        records = [(b"GNU.sparse.size", str(realsize).encode()), (b"GNU.sparse.numblocks", b"1"),
                   (b"GNU.sparse.offset", str(realsize - BLOCK).encode()), (b"GNU.sparse.numbytes", b"512")]
    else:
        records = [(b"GNU.sparse.size", str(realsize).encode()), (b"GNU.sparse.numblocks", b"1"),
                   (b"GNU.sparse.map", b"%d,512" % (realsize - BLOCK))]
    return tar_of(pax(records), member("sparse", b"s" * BLOCK))


def _pax_sparse_10(realsize: int, regions: int = 1) -> bytes:
    step = realsize // regions
    sparse_map = b"%d\n" % regions + b"".join(b"%d\n%d\n" % (i * step, 1) for i in range(regions))
    records = [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"), (b"GNU.sparse.name", b"sparse"),
               (b"GNU.sparse.realsize", str(realsize).encode())]
    data = pad(sparse_map) + b"s" * regions
    return tar_of(pax(records), member("GNUSparseFile.0/sparse", data))


def _layers_fg() -> dict[str, bytes]:
    wh = b"".join
    return {
        "69-whiteout-missing": tar_of(member(".wh.missing")),
        "70-whiteout-readd": tar_of(member(".wh.etc"), member("etc/", typeflag=b"5"), member("etc/new", b"n")),
        "70-readd-whiteout": tar_of(member("etc/new", b"n"), member(".wh.etc")),
        "71-opaque-first": tar_of(member("etc/.wh..wh..opq"), member("etc/mine", b"m")),
        "71-opaque-last": tar_of(member("etc/mine", b"m"), member("etc/.wh..wh..opq")),
        "71-opaque-root": tar_of(member(".wh..wh..opq"), member("top", b"t")),
        "72-malformed-whiteouts": tar_of(*(member(f"etc/{n}") for n in
                                           [".wh.", ".wh..", ".wh...", ".wh..wh..opqX", ".wh..wh.plnk/123",
                                            ".wh..wh.aufs"])),
        "72-whiteout-kinds": tar_of(member("etc/.wh.os-release/", typeflag=b"5"), member("bin/.wh.app", b"data"),
                                    member("bin/.wh.sym", typeflag=b"2", linkname="/x"),
                                    member(".wh.", b"")),
        "73-whiteouts-in-base": tar_of(*base_members(), member(".wh.x"), member("etc/.wh..wh..opq")),
        "74-opaque-under-symlink": tar_of(member("link/.wh..wh..opq"), member("link/.wh.os-release")),
        "75-under-lower-symlink": tar_of(member("link/passwd", b"root:x:0:0::/root:/bin/sh\n")),
        "76-type-changes": tar_of(member("etc", b"now a file"), member("bin", typeflag=b"2", linkname="/usr/bin")),
        "78-symlink-targets": tar_of(member("abs", typeflag=b"2", linkname="/etc/os-release"),
                                     member("rel", typeflag=b"2", linkname="etc/os-release"),
                                     member("climb", typeflag=b"2", linkname="../../../../etc/shadow"),
                                     member("var/run", typeflag=b"2", linkname="/run")),
        "79-symlink-loops": tar_of(member("a", typeflag=b"2", linkname="b"), member("b", typeflag=b"2", linkname="a"),
                                   member("self", typeflag=b"2", linkname="self"),
                                   *(member(f"c{i}", typeflag=b"2", linkname=f"c{i + 1}") for i in range(45)),
                                   member("dir/loop", typeflag=b"2", linkname="../dir/loop/x")),
        "80-hardlinks": tar_of(member("f", b"content"), member("h1", typeflag=b"1", linkname="f"),
                               member("h2", typeflag=b"1", linkname="/f"), member("h3", typeflag=b"1", linkname="h1"),
                               member("h4", typeflag=b"1", linkname="missing"),
                               member("h5", typeflag=b"1", linkname="etc"),
                               member("h6", typeflag=b"1", linkname="../../../../etc/passwd"),
                               member("h7", typeflag=b"1", linkname="/")),
        "81-hardlink-whiteout": wh([member(".wh.gone", typeflag=b"1", linkname="f"),
                                    member("hw", typeflag=b"1", linkname=".wh.gone")]) + end(),
        "99-canary": tar_of(member("../../../../tmp/imgaudit-canary-x", b"canary"),
                            member("/tmp/imgaudit-canary-y", b"canary"),
                            member("x", typeflag=b"2", linkname="/tmp"), member("x/canary", b"canary"),
                            member("pw", typeflag=b"1", linkname="/etc/passwd")),
        "105-terminal-injection": tar_of(member("\x1b[2J\x1b[H", b"x"), member("a\rb", b"x"),
                                         member("\n::error::pwned", b"x"), member("=cmd|' /C calc'!A0", b"x")),
    }


def layers() -> dict[str, bytes]:
    """Plain tar bytes (maybe invalid) of every hostile layer, by name."""
    return {**_layers_e(), **_layers_fg()}


def compressed_layers() -> dict[str, bytes]:
    """Stored blobs of section D: compression oddities around a small valid layer."""
    plain = tar_of(*base_members())
    half = len(plain) // 2
    return {
        "34-empty-0-bytes": b"",
        "34-gzip-of-nothing": gz(b""),
        "34-gzip-1024-zeros": gz(b"\0" * 1024),
        "34-no-end-marker": b"".join(base_members()),
        "46-gzip-cut-10": gz(plain)[: len(gz(plain)) // 10],
        "46-gzip-cut-60": gz(plain)[: len(gz(plain)) * 6 // 10],
        "46-gzip-cut-99": gz(plain)[: len(gz(plain)) * 99 // 100],
        "47-gzip-bad-crc": gz_bad_crc(plain),
        "47-gzip-bad-isize": gz_bad_isize(plain),
        "48-gzip-multi-member": gz(plain[:half]) + gz(plain[half:]),
        "48-gzip-many-members": b"".join(gz(plain[i:i + 100]) for i in range(0, len(plain), 100)),
        "49-garbage-after-gzip": gz(plain) + b"garbage after the stream",
        "49-garbage-after-tar": gz(plain + b"junk" * 100),
        "50-zstd-multi-frame": zst(plain[:half]) + zst(plain[half:]),
        "50-zstd-skippable": zst_skippable() + zst(plain[:half]) + zst_skippable() + zst(plain[half:]),
        "50-zstd-window-2gib": zst(plain, window_log=31),
        "50-zstd-bad-checksum": zst(plain)[:-1] + bytes([zst(plain)[-1] ^ 0xFF]),
        "50-zstd-cut": zst(plain)[:-7],
        "52-gzip-of-gzip": gz(gz(plain)),
        "52-bzip2": _bz2(plain),
        "52-xz": _xz(plain),
        "52-lz4-magic": b"\x04\x22\x4d\x18" + b"\0" * 64,
        "52-not-a-tar": b"hello, this is not a tar archive\n" * 40,
    }


def _bz2(data: bytes) -> bytes:
    import bz2

    return bz2.compress(data)


def _xz(data: bytes) -> bytes:
    import lzma

    return lzma.compress(data)


def gzip_bomb(declared: int = 10 << 30, chunk: int = 64 << 20) -> bytes:
    """~`declared` bytes of zeros in one tar member, as multi-member gzip built from one compressed chunk:
    about 10 MiB stored for 10 GiB (RELIABILITY.md #51). Built in well under a second."""
    head = header("bomb", size=declared)
    zeros = gz(b"\0" * chunk)
    count, rest = divmod(declared, chunk)
    tail = b"\0" * rest + b"\0" * (-declared % BLOCK) + end()
    return gz(head) + zeros * count + gz(tail)


# -- images and JSON (sections B and C) ---------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def config_doc(diff_ids: list[str], **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"architecture": "amd64", "os": "linux",
                              "config": {"Entrypoint": ["/bin/app"], "Env": ["PATH=/bin"]},
                              "rootfs": {"type": "layers", "diff_ids": diff_ids},
                              "history": [{"created_by": "ADD x"} for _ in diff_ids]}
    doc.update(extra)
    return doc


def json_documents() -> dict[str, bytes]:
    """Configs, manifests, indexes and manifest.json documents, valid and hostile (#26, #31, #15, #24, #38)."""
    good = tar_of(*base_members())
    diff = sha(good)
    blob = gz(good)
    cfg = json.dumps(config_doc([diff])).encode()
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                                "config": {"mediaType": OCI_CONFIG, "digest": sha(cfg), "size": len(cfg)},
                                "layers": [{"mediaType": OCI_LAYER, "digest": sha(blob), "size": len(blob)}]}
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 100,
                            "platform": {"os": "linux", "architecture": "amd64"},
                            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    archive_manifest = [{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]
    out: dict[str, bytes] = {
        "config-good": cfg,
        "manifest-good": json.dumps(manifest).encode(),
        "index-good": json.dumps(index).encode(),
        "archive-manifest-good": json.dumps(archive_manifest).encode(),
        "oci-layout-good": b'{"imageLayoutVersion":"1.0.0"}',
        "26-more-layers-than-diff-ids": json.dumps(config_doc([])).encode(),
        "31-deep-nesting": b"[" * 100_000 + b"]" * 100_000,
        "31-deep-nesting-objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        "31-nan": cfg.replace(b'"amd64"', b"NaN"),
        "31-infinity": b'{"architecture": Infinity, "os": -Infinity}',
        "31-1e400": cfg.replace(b'"os": "linux"', b'"os": 1e400'),
        "31-duplicate-keys": b'{"os": "linux", "os": "windows", "architecture": "amd64", "rootfs": {}, "rootfs": []}',
        "31-lone-surrogate": b'{"os": "\\ud800", "architecture": "amd64", "config": {"Env": ["A=\\udfff"]}}',
        "31-bad-utf8": b'{"os": "\xff\xfe"}',
        "31-size-minus-1": json.dumps({**manifest, "layers": [{**manifest["layers"][0], "size": -1}]}).encode(),
        "31-size-2p70": json.dumps({**manifest, "layers": [{**manifest["layers"][0], "size": 2**70}]}).encode(),
        "31-size-float": json.dumps({**manifest, "layers": [{**manifest["layers"][0], "size": 1.5}]}).encode(),
        "31-size-bool": json.dumps({**manifest, "layers": [{**manifest["layers"][0], "size": True}]}).encode(),
        "31-types-swapped": json.dumps({"architecture": 1, "os": [], "config": "x", "rootfs": 3}).encode(),
        "31-env-not-strings": json.dumps(config_doc([diff], config={"Env": [1, None]})).encode(),
        "31-history-not-list": json.dumps(config_doc([diff], history={"a": 1})).encode(),
        "31-empty": b"",
        "31-bom": b"\xef\xbb\xbf" + cfg,
        "38-object-not-array": json.dumps(archive_manifest[0]).encode(),
        "38-empty-array": b"[]",
        "38-several-images": json.dumps(archive_manifest * 3).encode(),
        "39-config-traversal": json.dumps([{**archive_manifest[0], "Config": "../../etc/passwd"}]).encode(),
        "39-layer-absolute": json.dumps([{**archive_manifest[0], "Layers": ["/etc/shadow"]}]).encode(),
        "24-index-nested-self": json.dumps({**index, "manifests": [{**index["manifests"][0],
                                                                     "mediaType": OCI_INDEX}]}).encode(),
        "24-no-matching-platform": json.dumps({**index, "manifests": [
            {**index["manifests"][0], "platform": {"os": "windows", "architecture": "arm"}},
            {**index["manifests"][0], "digest": "sha256:" + "b" * 64,
             "platform": {"os": "unknown", "architecture": "unknown"}}]}).encode(),
        "85-ten-thousand-manifests": json.dumps({**index, "manifests": [
            {**index["manifests"][0], "digest": f"sha256:{i:064x}"} for i in range(10_000)]}).encode(),
    }
    for i, digest in enumerate(["sha256:../../etc/passwd", "sha256:XYZ", "sha256:" + "A" * 64, "sha256:" + "a" * 63,
                                "md5:" + "a" * 32, "", None, 5, "sha256:" + "a" * 64 + "\n"]):
        out[f"15-bad-digest-{i}"] = json.dumps({**manifest, "layers": [{**manifest["layers"][0],
                                                                         "digest": digest}]}).encode()
    return out


# -- ELF (section I) ----------------------------------------------------------------------------


def not_quite_elf() -> dict[str, bytes]:
    """#90: files that look like ELF (or are named like a library) but are not one."""
    return {
        "90-four-bytes": b"\x7fELF",
        "90-after-ident": b"\x7fELF\x02\x01\x01" + b"\0" * 9,
        "90-bad-class": b"\x7fELF\x07\x01\x01" + b"\0" * 57,
        "90-bad-data": b"\x7fELF\x02\x09\x01" + b"\0" * 57,
        "90-ld-script": b"/* GNU ld script */\nOUTPUT_FORMAT(elf64-x86-64)\nGROUP ( /lib/libc.so.6 )\n",
        "90-header-only": _ELF_HEAD,
    }


def elf_mutations(data: bytes, seed: int) -> Iterator[tuple[str, bytes]]:
    """Deterministic hostile variants of one ELF file (#91): truncations, bit flips, header offsets and
    counts pointed out of bounds, dynamic and version-table entries pointed past the end."""
    import random

    rng = random.Random(seed)
    is64 = len(data) > 4 and data[4] == 2
    order = "<" if len(data) > 5 and data[5] == 1 else ">"
    size = len(data)
    for frac in (0.05, 0.2, 0.5, 0.8, 0.95, 0.999):
        yield f"truncate-{frac}", data[: int(size * frac)]
    for i in range(8):
        buf = bytearray(data)
        for _ in range(1 + i * 3):
            pos = rng.randrange(size)
            buf[pos] ^= 1 << rng.randrange(8)
        yield f"bitflip-{i}", bytes(buf)
    for i in range(3):
        buf = bytearray(data)
        pos = rng.randrange(min(size, 4096))
        buf[pos:pos + 8] = rng.randbytes(8)
        yield f"header-region-{i}", bytes(buf)
    fields = ({"phoff": (32, "Q"), "shoff": (40, "Q"), "phnum": (56, "H"), "shnum": (60, "H"), "shstrndx": (62, "H"),
               "phentsize": (54, "H")} if is64 else
              {"phoff": (28, "I"), "shoff": (32, "I"), "phnum": (44, "H"), "shnum": (48, "H"), "shstrndx": (50, "H"),
               "phentsize": (42, "H")})
    for name, (offset, fmt) in fields.items():
        for value in (0, 1, 0x7FFF, 0xFFFF, size - 1, size + 4096):
            buf = bytearray(data)
            limit = (1 << (8 * struct.calcsize(fmt))) - 1
            struct.pack_into(order + fmt, buf, offset, min(value, limit))
            yield f"{name}-{value}", bytes(buf)
    yield from _section_mutations(data, is64, order, rng)


def _section_mutations(data: bytes, is64: bool, order: str, rng: object) -> Iterator[tuple[str, bytes]]:
    """Section headers of the dynamic, version and hash tables pointed at bogus offsets and sizes."""
    import random

    assert isinstance(rng, random.Random)
    try:
        shoff, = struct.unpack_from(order + ("Q" if is64 else "I"), data, 40 if is64 else 32)
        shentsize, shnum = struct.unpack_from(order + "HH", data, 58 if is64 else 46)
    except struct.error:
        return
    # sh_type values: DYNAMIC 6, GNU_HASH 0x6ffffff6, VERSYM 0x6fffffff, VERNEED 0x6ffffffe, VERDEF 0x6ffffffd,
    # DYNSYM 11, STRTAB 3, NOTE 7
    interesting = {6, 0x6FFFFFF6, 0x6FFFFFFF, 0x6FFFFFFE, 0x6FFFFFFD, 11, 3, 7}
    off_fmt, size_fmt = ("Q", "Q") if is64 else ("I", "I")
    off_at, size_at, link_at = (24, 32, 40) if is64 else (16, 20, 24)
    for index in range(min(shnum, 64)):
        base = shoff + index * shentsize
        if base + shentsize > len(data) or shentsize < (64 if is64 else 40):
            break
        (sh_type,) = struct.unpack_from(order + "I", data, base + 4)
        if sh_type not in interesting:
            continue
        for label, at, fmt, value in (("offset-past-end", off_at, off_fmt, len(data) + 0x1000),
                                      ("offset-huge", off_at, off_fmt, (1 << (31 if not is64 else 62)) - 1),
                                      ("size-huge", size_at, size_fmt, (1 << (31 if not is64 else 40)) - 1),
                                      ("size-odd", size_at, size_fmt, 3),
                                      ("link-bogus", link_at, "I", 0xFFFF),
                                      ("offset-random", off_at, off_fmt, rng.randrange(len(data)))):
            buf = bytearray(data)
            struct.pack_into(order + fmt, buf, base + at, value)
            yield f"sh{index}-type{sh_type:x}-{label}", bytes(buf)


# -- a tiny tar writer for fixtures that are valid archives -------------------------------------


def tar_archive(files: dict[str, bytes], *, links: dict[str, tuple[bytes, str]] | None = None) -> bytes:
    """A plain tar of regular files, plus links (`name: (typeflag, target)`) for archive-member tricks (#37)."""
    parts = [member(name, data) for name, data in files.items()]
    parts += [member(name, typeflag=flag, linkname=target) for name, (flag, target) in (links or {}).items()]
    return tar_of(*parts)


def write_all(out: Path, items: dict[str, bytes], *, prefix: bytes = b"") -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, data in items.items():
        (out / name).write_bytes(prefix + data)
    return len(items)


def every_tar_fixture() -> dict[str, bytes]:
    """Plain layers and stored blobs in one table (names are unique across both)."""
    return {**layers(), **compressed_layers()}


def names_by_item() -> dict[int, list[str]]:
    """Catalogue item number → fixture names, for docs/reliability.md and sanity checks."""
    out: dict[int, list[str]] = {}
    for table in (layers(), compressed_layers(), json_documents(), not_quite_elf()):
        for name in table:
            head = name.split("-", 1)[0]
            if head.isdigit():
                out.setdefault(int(head), []).append(name)
    return out


_Builder = Callable[[], dict[str, bytes]]
TABLES: dict[str, _Builder] = {"layers": layers, "compressed": compressed_layers, "json": json_documents,
                               "elf": not_quite_elf}


def stdlib_tar_ok(data: bytes) -> bool:
    """Whether CPython's tarfile lists `data` without error (to sanity-check fixtures, not imgaudit)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            tar.getmembers()
    except (tarfile.TarError, EOFError):
        return False
    return True


# -- images whose stored bytes may differ from what their manifest promises (the integrity matrix) -----

SOURCES = ("docker-legacy", "docker-oci", "oci-dir", "oci-archive")
TRANSPORTS = {"docker-legacy": "docker-archive", "docker-oci": "docker-archive", "oci-dir": "oci",
              "oci-archive": "oci-archive"}


class Blob:
    """One layer as stored (`stored`) and as promised (`digest`, `size`, `diff_id`); `member_size` makes a
    docker-archive member header claim more bytes than the archive holds (the layer must then be last)."""

    def __init__(self, plain: bytes, stored: bytes | None = None, *, digest: str | None = None,
                 size: int | None = None, diff_id: str | None = None, member_size: int | None = None,
                 media_type: str | None = None) -> None:
        self.plain = plain
        self.stored = gz(plain) if stored is None else stored
        good = self.stored if stored is not None else gz(plain)
        self.digest = digest or sha(good)
        self.size = len(good) if size is None else size
        self.diff_id = diff_id or sha(plain)
        self.member_size = member_size
        self.media_type = media_type or (OCI_LAYER if self.stored[:2] == b"\x1f\x8b" or stored is None
                                         else "application/vnd.oci.image.layer.v1.tar")


def image_parts(blobs: list[Blob], *, config: bytes | None = None, **config_extra: object) -> tuple[bytes, bytes]:
    """Config and OCI manifest bytes for `blobs`."""
    cfg = config if config is not None else json.dumps(config_doc([b.diff_id for b in blobs], **config_extra)).encode()
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha(cfg), "size": len(cfg)},
                "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in blobs]}
    return cfg, json.dumps(manifest).encode()


def write_image(source: str, path: Path, blobs: list[Blob], *, config: bytes | None = None,
                manifest: bytes | None = None, **config_extra: object) -> str:
    """Writes the image in one of SOURCES at `path`; returns the imgaudit reference."""
    cfg, man = image_parts(blobs, config=config, **config_extra)
    man = manifest if manifest is not None else man
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha(man), "size": len(man),
         "annotations": {"org.opencontainers.image.ref.name": "latest",
                         "io.containerd.image.name": "docker.io/library/x:1"}}]}).encode()
    layout = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index,
              "blobs/sha256/" + sha(cfg)[7:]: cfg, "blobs/sha256/" + sha(man)[7:]: man}
    if source == "oci-dir":
        (path / "blobs" / "sha256").mkdir(parents=True)
        for name, data in layout.items():
            (path / name).write_bytes(data)
        for blob in blobs:
            (path / "blobs" / "sha256" / blob.digest[7:]).write_bytes(blob.stored)
        return f"oci:{path}"
    members: list[bytes] = []
    if source == "oci-archive":
        members += [member(name, data) for name, data in layout.items()]
        names = ["blobs/sha256/" + b.digest[7:] for b in blobs]
    elif source == "docker-oci":
        members += [member(name, data) for name, data in layout.items()]
        names = ["blobs/sha256/" + b.digest[7:] for b in blobs]
        entry = {"Config": "blobs/sha256/" + sha(cfg)[7:], "RepoTags": ["x:1"], "Layers": names}
        members.append(member("manifest.json", json.dumps([entry]).encode()))
    else:
        names = [f"layer{i}/layer.tar" for i in range(len(blobs))]
        entry = {"Config": sha(cfg)[7:] + ".json", "RepoTags": ["x:1"], "Layers": names}
        members += [member(sha(cfg)[7:] + ".json", cfg), member("manifest.json", json.dumps([entry]).encode())]
    cut = False
    for name, blob in zip(names, blobs, strict=True):
        if blob.member_size is not None:
            members.append(header(name, size=blob.member_size) + blob.stored)
            cut = True
        else:
            members.append(member(name, blob.stored))
    path.write_bytes(b"".join(members) + (b"" if cut else end()))
    return f"{TRANSPORTS[source]}:{path}"


def corruptions(plain: bytes, source: str) -> dict[str, Blob]:
    """The integrity matrix of issue 7 for one layer: each case is a Blob that must be refused (exit 3)."""
    good = gz(plain)
    mid = len(good) // 2
    flipped = good[:mid] + bytes([good[mid] ^ 0x40]) + good[mid + 1:]
    legacy = source == "docker-legacy"
    early = _ends_early(plain)
    return {
        "wrong-digest": Blob(plain, good, digest=sha(good + b"x")) if not legacy else
        Blob(plain, good, diff_id=sha(plain + b"x")),
        "flipped-byte": Blob(plain, flipped, digest=sha(good), size=len(good)),
        "truncated-10": Blob(plain, good[: len(good) // 10], digest=sha(good), size=len(good)),
        "truncated-60": Blob(plain, good[: len(good) * 6 // 10], digest=sha(good), size=len(good)),
        "truncated-99": Blob(plain, good[: len(good) * 99 // 100], digest=sha(good), size=len(good)),
        "trailing-data": Blob(plain, good + b"trailing garbage", digest=sha(good), size=len(good)),
        "wrong-size": Blob(plain, good, member_size=len(good) + 4096) if legacy else
        Blob(plain, good, size=len(good) + 1),
        "bad-crc": Blob(plain, gz_bad_crc(plain), digest=sha(gz_bad_crc(plain)), size=len(gz_bad_crc(plain))),
        "tar-ends-early": Blob(plain, gz(early), digest=sha(gz(early)), size=len(gz(early)), diff_id=sha(plain)),
    }


def _ends_early(plain: bytes) -> bytes:
    """The same length as `plain`, but an end-of-archive marker stands where its last member began and
    different bytes follow: only a digest over the whole stream (drained past the marker) tells."""
    with tarfile.open(fileobj=io.BytesIO(plain), mode="r:") as tar:
        last = tar.getmembers()[-1].offset
    junk = bytes((i * 7 + 1) % 251 for i in range(len(plain) - last - 1024))
    return plain[:last] + b"\0" * 1024 + junk


def _zstd_big_window(payload: bytes) -> bytes:
    """A zstd frame that declares a 2 GiB window (not single-segment; window descriptor exponent 21, so
    2**(10+21)) and holds `payload` as one raw block (RELIABILITY.md #50)."""
    block = ((len(payload) << 3) | 1).to_bytes(3, "little")  # last block, raw
    return b"\x28\xb5\x2f\xfd" + b"\x00" + bytes([21 << 3]) + block + payload


ZSTD_WINDOW_2GIB = _zstd_big_window(tar_of(*base_members()))
