"""Parser differential against Go's archive/tar (RELIABILITY.md #68, and #61's PAX and GNU oddities).

The same layer bytes go through imgaudit's real layer scan (`scan_layer`: decompression, tarfile with
FastTarInfo, the walk into entries) and through tests/differential/tarlist, a stdlib-only Go program that
reads the tar as containerd and Docker apply a layer (Reader.Next, io.Copy of the data). Both views are
reduced to (normalised path, type, size, link target) in stream order and must be equal, and so must the
entries imgaudit keeps out of its view with a reason (`_go_row` predicts them from Go's headers: whiteouts as
containerd applies them, names over PATH_MAX, a non-directory at the root, unknown types, hard links out of
the image, sparse members; a name climbing above the root must make imgaudit refuse the layer, as containerd
does). A difference is a failure unless it is listed in AMBIGUOUS below with why the parsers differ and what
imgaudit does instead: there imgaudit must flag the layer (an error, exit 3), never read something else
silently, but for the one difference by design listed there.

Corpora: (a) the real layers of ../shared/corpus (three Alpine minirootfs tarballs; the docker-archive,
OCI gzip/zstd/uncompressed, eStargz and kaniko test images), 19 layers and 2 029 members; (b) tests/builders.py
layers in ustar, GNU and PAX (plain, gzip, zstd) and GNU tar's own gnu/oldgnu/posix/ustar/v7 output with long
names and links, a FIFO and a sparse file; (c) every hostile tar of fuzz/hostile.py (#53-#81) and #61's
PAX and GNU oddities in `oddities()`.

Go is built once per session from source; without `go` on PATH the module is skipped, unless
IMGAUDIT_REQUIRE_GO=1 (CI, .ci/run) makes that a failure.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fuzz import hostile as h
from imgaudit.errors import ImgauditError
from imgaudit.layers import PATH_MAX, scan_layer
from tests import builders as b

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus")
TARLIST = REPO / "tests" / "differential" / "tarlist" / "main.go"
ALPINE = ["alpine-minirootfs-3.20.3-x86_64.tar.gz", "alpine-minirootfs-3.12.12-x86_64.tar.gz",
          "alpine-minirootfs-3.20.3-aarch64.tar.gz"]
DIVE = ["test-kaniko-image.tar", "test-oci-gzip-image.tar", "test-oci-zstd-image.tar",
        "test-oci-uncompressed-image.tar", "test-oci-estargz-image.tar"]
TYPES = {"0": "file", "\0": "file", "7": "file", "S": "file", "1": "hardlink", "2": "symlink",
         "3": "char", "4": "block", "5": "dir", "6": "fifo"}

View = tuple[tuple[str, str, int, str | None], ...]


@dataclass(frozen=True)
class Outcome:
    """One parser's reading of a layer: its rows, and the error that stopped it (None: read to the end)."""

    rows: View
    error: str | None
    skipped: tuple[str, ...] = ()  # reasons imgaudit lists entries under (Go: the reasons it must list)
    climbs: bool = False  # Go returned a name whose `..` climbs above the root


# -- Go's side ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tarlist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        reason = "no Go toolchain on PATH (apt-get install golang-go): the archive/tar differential cannot run"
        if os.environ.get("IMGAUDIT_REQUIRE_GO") == "1":
            pytest.fail(reason + ", and IMGAUDIT_REQUIRE_GO=1 forbids skipping it")
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("tarlist") / "tarlist"
    env = dict(os.environ, GO111MODULE="off", CGO_ENABLED="0",
               GOCACHE=os.environ.get("GOCACHE") or str(out.parent / "gocache"))
    subprocess.run([go, "build", "-o", str(out), str(TARLIST)], check=True, env=env, timeout=300)
    return out


def go_view(tarlist: Path, plain: bytes) -> Outcome:
    """Go archive/tar's entries, mapped the way imgaudit's walk maps members (see `_go_row`)."""
    done = subprocess.run([str(tarlist)], input=plain, capture_output=True, timeout=60, check=False)
    rows: list[tuple[str, str, int, str | None]] = []
    flagged: list[str] = []
    error, climbs = None, False
    for line in done.stdout.decode().splitlines():
        record = json.loads(line)
        if "error" in record:
            error = record["error"]
            continue
        try:
            row = _go_row(record)
        except Climbs:
            climbs = True
            continue
        if isinstance(row, str):
            flagged.append(row)
        elif row is not None:
            rows.append(row)
            sparse = record["typeflag"] == "S" or any(k.startswith("GNU.sparse.") for k in record["pax_keys"])
            if sparse and row[2]:  # holes are never read: imgaudit says so
                flagged.append(f"sparse file of {row[2]} bytes (apparent): content not read")
    assert (done.returncode != 0) == (error is not None), done.stderr.decode()
    return Outcome(tuple(rows), error, tuple(flagged), climbs)


def _raw(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "surrogateescape")


class Climbs(Exception):
    """A name whose `..` climbs above the root: containerd refuses to apply it, imgaudit stops on it (exit 3)."""


def _norm(name: str) -> str:
    """What imgaudit calls the path: absolute, no `.` or empty parts, `..` applied, no trailing slash."""
    parts: list[str] = []
    for part in name.split("/"):
        if part == "..":
            if not parts:
                raise Climbs(name)
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/" + "/".join(parts)


def _go_row(record: dict[str, Any]) -> tuple[str, str, int, str | None] | str | None:
    """A Go header as imgaudit's row; None for what both sides ignore; a string for an entry imgaudit keeps
    out of the view and lists as skipped with that reason. The checks go in the walk's order."""
    typeflag = str(record["typeflag"])
    if typeflag == "g":
        return None  # Go hands PAX global headers to the caller; containerd ignores them, and so does imgaudit
    if len(base64.b64decode(record["name"])) > PATH_MAX:
        return f"name longer than {PATH_MAX} bytes (PATH_MAX): not in the view"
    path = _norm(_raw(record["name"]))
    link = _raw(record["linkname"])
    kind = TYPES.get(typeflag)
    if path == "/" and kind != "dir":
        return "non-directory at the root"
    base = posixpath.basename(path)
    if base.startswith(".wh."):  # the OCI whiteout convention, which containerd applies after archive/tar
        if base == ".wh..wh..opq":
            return posixpath.dirname(path), "opaque", 0, None
        if base.startswith(".wh..wh."):
            return None  # AUFS metadata: containerd skips it too
        if kind not in ("file", "dir") or base in (".wh.", ".wh..", ".wh..."):
            return "invalid whiteout entry"
        return posixpath.join(posixpath.dirname(path), base[4:]), "whiteout", 0, None
    if "/.wh..wh." in path:
        return None  # inside AUFS metadata
    if kind is None:
        return f"unsupported tar type {typeflag.encode()!r}"
    if kind == "hardlink":
        try:
            target = _norm(link)
        except Climbs:
            target = "/"
        return (path, kind, 0, target) if target != "/" else "hard link target outside the image"
    return path, kind, int(record["size"]) if kind == "file" else 0, link if kind == "symlink" else None


# -- imgaudit's side ------------------------------------------------------------------------------------------

# Notes on a member's attributes or on the layer as a whole, not on which members there are.
NOT_ABOUT_MEMBERS = ("extended attributes not recorded", "trailing data", "parse cap")


def imgaudit_view(stored: bytes) -> Outcome:
    try:
        scan = scan_layer(io.BytesIO(stored), label="layer 1/1")
    except ImgauditError as err:
        return Outcome((), str(err))
    skipped = tuple(s.reason for s in scan.skipped if not any(n in s.reason for n in NOT_ABOUT_MEMBERS))
    return Outcome(tuple((e.path, e.type.value, e.size, e.link) for e in scan.entries), None, skipped)


# -- the comparison -------------------------------------------------------------------------------------------


def compare(tarlist: Path, stored: bytes, plain: bytes, *, case: str = "") -> tuple[Outcome, Outcome]:
    """Asserts both parsers agree: the same rows and skipped entries, or both stopped with an error. A case
    listed in AMBIGUOUS must differ exactly the way listed there."""
    go, ours = go_view(tarlist, plain), imgaudit_view(stored)
    if case in AMBIGUOUS:
        AMBIGUOUS[case].check(go, ours)
        return go, ours
    if go.climbs:  # containerd refuses the layer ("breakout"); imgaudit too (RELIABILITY.md #53)
        assert ours.error is not None and "climbs above the root" in ours.error, ours
        return go, ours
    if go.error is not None or ours.error is not None:
        assert go.error is not None and ours.error is not None, f"only one parser failed: go={go} imgaudit={ours}"
        return go, ours
    assert ours.rows == go.rows
    assert sorted(ours.skipped) == sorted(go.skipped)
    return go, ours


@dataclass(frozen=True)
class Ambiguous:
    """A tar the two readers take differently, and why. imgaudit must flag it: `flag` in its error, unless
    `ours` gives the rows imgaudit reads instead (a difference by design, explained in `why`)."""

    why: str
    go_rows: View | None = None  # Go reads it, these rows; None: Go refuses it
    flag: str = ""
    ours: View | None = None

    def check(self, go: Outcome, ours: Outcome) -> None:
        assert go.rows == (self.go_rows or ()) and (go.error is None) == (self.go_rows is not None), go
        if self.ours is not None:
            assert ours.error is None and ours.rows == self.ours, ours
        else:
            assert ours.error is not None and self.flag in ours.error, ours


AMBIGUOUS: dict[str, Ambiguous] = {
    "60-pax-chain-2000": Ambiguous(
        "2000 PAX headers before one member: Go keeps the last; CPython's tarfile recurses once per header and "
        "imgaudit refuses the layer (exit 3, RELIABILITY.md #60) rather than hit the recursion limit.",
        go_rows=(("/a", "file", 1, None),), flag="too many tar extension headers"),
}


# -- corpora --------------------------------------------------------------------------------------------------


def plain_of(stored: bytes) -> bytes:
    """The tar inside a stored layer (gzip members and zstd frames all decoded), as containerd feeds archive/tar."""
    if stored[:2] == b"\x1f\x8b":
        return gzip.decompress(stored)
    if stored[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored), read_across_frames=True) as reader:
            return reader.read()
    return stored


def archive_layers(path: Path) -> Iterator[tuple[str, bytes]]:
    """The layer blobs of a docker-archive or an OCI layout in a tar, read in memory in manifest order."""
    with tarfile.open(path) as outer:
        def read(name: str) -> bytes:
            member = outer.extractfile(name)
            assert member is not None
            return member.read()

        names = set(outer.getnames())
        if "manifest.json" in names and "index.json" not in names:
            for image in json.loads(read("manifest.json")):
                for layer in image["Layers"]:
                    yield layer, read(layer)
            return
        pending = [d["digest"] for d in json.loads(read("index.json"))["manifests"]]
        while pending:
            doc = json.loads(read("blobs/sha256/" + pending.pop(0).split(":")[1]))
            pending += [d["digest"] for d in doc.get("manifests", [])]
            for layer in doc.get("layers", []):
                name = "blobs/sha256/" + layer["digest"].split(":")[1]
                yield name, read(name)


def real_layers() -> list[tuple[str, bytes]]:
    out = [(name, (CORPUS / "alpine" / name).read_bytes()) for name in ALPINE]
    for archive in DIVE:
        out += [(f"{archive}:{name}", blob) for name, blob in archive_layers(CORPUS / "dive-test-images" / archive)]
    return out


def test_68_real_layers_read_the_same_in_go_and_imgaudit(tarlist: Path) -> None:
    if not CORPUS.is_dir():
        pytest.fail(f"corpus {CORPUS} not found; set IMGAUDIT_CORPUS")
    started, members = time.monotonic(), 0
    layers = real_layers()
    for label, stored in layers:
        go, ours = compare(tarlist, stored, plain_of(stored))
        assert go.error is None, f"{label}: {go.error}"
        members += len(ours.rows)
    assert len(layers) >= 19 and members >= 2029, (len(layers), members)
    assert time.monotonic() - started < 60


# -- (b) layers of every tar format ---------------------------------------------------------------------------

LONG_DIR = "usr/share/" + "d" * 120 + "/"
ITEMS = [
    b.d("etc"), b.f("etc/os-release", "ID=alpine\n"), b.d(LONG_DIR), b.f(LONG_DIR + "f" * 99, b"x" * 1000),
    b.f("usr/share/" + "p" * 90 + "/" + "q" * 90, b"ustar prefix"),  # splits into ustar's prefix field
    b.sym("lib/ld.so", "/" + LONG_DIR + "f" * 99), b.hard("etc/again", "etc/os-release"),
    b.hard("long-hard", LONG_DIR + "f" * 99), b.Item("run/fifo", "fifo"), b.wh("etc/gone"), b.opaque("var"),
    b.f("ünïcode/naïve-ファイル", b"u"), b.f("bin/ping", b"\x7fELF", xattrs={"security.capability": b"\x01\0\0\x02"}),
    b.f("./dot/slash", b"d"), b.d("trailing/"),
]


@functools.cache
def built_layers() -> dict[str, bytes]:
    """tests/builders.py layers in ustar (names that fit it), GNU and PAX, plain, gzip and zstd."""
    fits = [it for it in ITEMS if len(it.name) <= 255 and len(it.link) <= 100]
    out = {"ustar": b.make_layer(fits, fmt=tarfile.USTAR_FORMAT)}
    for fmt, name in ((tarfile.GNU_FORMAT, "gnu"), (tarfile.PAX_FORMAT, "pax")):
        plain = b.make_layer(ITEMS, fmt=fmt)
        out.update({name: plain, f"{name}.gz": b.gz(plain), f"{name}.zst": b.zst(plain)})
    return out


@pytest.mark.parametrize("name", sorted(built_layers()))
def test_68_built_layers_of_every_format_read_the_same(tarlist: Path, name: str) -> None:
    stored = built_layers()[name]
    go, ours = compare(tarlist, stored, plain_of(stored))
    assert go.error is None and len(ours.rows) >= 13


def gnu_tar_layers(root: Path) -> dict[str, bytes]:
    """GNU tar itself, in each of its formats, over a tree with long names, links, a FIFO and a sparse file."""
    tree = root / "tree"
    (tree / LONG_DIR).mkdir(parents=True)
    (tree / LONG_DIR / ("f" * 99)).write_bytes(b"long")
    (tree / "etc").mkdir()
    (tree / "etc/os-release").write_text("ID=debian\n")
    os.link(tree / "etc/os-release", tree / "etc/again")
    (tree / "link").symlink_to("/" + LONG_DIR + "f" * 99)
    os.mkfifo(tree / "fifo")
    with open(tree / "sparse", "wb") as sparse:
        sparse.seek(8 << 20)
        sparse.write(b"end")
    (tree / "etc/.wh.gone").write_bytes(b"")
    out = {}
    for fmt in ("gnu", "oldgnu", "posix", "ustar", "v7"):
        flags = ["--sparse"] if fmt in ("gnu", "oldgnu", "posix") else []
        done = subprocess.run(["tar", f"--format={fmt}", *flags, "-cf", "-", "-C", str(tree), "."],
                              capture_output=True, check=False)
        out[fmt] = done.stdout  # ustar and v7 leave out the names they cannot hold, and say so on stderr
    return out


def test_68_gnu_tar_layers_of_every_format_read_the_same(tarlist: Path, tmp_path: Path) -> None:
    if shutil.which("tar") is None:
        pytest.fail("GNU tar not found")
    for fmt, plain in gnu_tar_layers(tmp_path).items():
        go, ours = compare(tarlist, plain, plain)
        assert go.error is None and len(ours.rows) >= 6, (fmt, go, ours)
        if fmt in ("gnu", "oldgnu", "posix"):
            assert ("/sparse", "file", (8 << 20) + 3, None) in ours.rows, fmt


# -- (c) PAX and GNU oddities (#61) and every hostile tar of fuzz/hostile.py -----------------------------------


def oddities() -> dict[str, bytes]:
    """#61's oddities beyond fuzz/hostile.py's `61-*` layers, each next to the plain member `a` or `m`."""
    a = h.member("a", b"x")
    link = h.member("s", typeflag=b"2", linkname="short")
    return {
        "pax-size-smaller": h.tar_of(h.pax({b"size": b"2"}), h.member("a", b"x" * 600), h.member("b", b"y")),
        "pax-size-underscore": h.tar_of(h.pax({b"size": b"1_0"}), h.member("a", b"x" * 10)),
        "pax-size-not-utf8": h.tar_of(h.pax({b"size": b"\xff1"}), a),
        "pax-size-plus": h.tar_of(h.pax({b"size": b"+1"}), a),
        "pax-size-spaces": h.tar_of(h.pax({b"size": b" 1"}), a),
        "pax-size-empty": h.tar_of(h.pax({b"size": b""}), a),
        "pax-path-empty": h.tar_of(h.pax({b"path": b""}), a),
        "pax-two-x-headers": h.tar_of(h.pax({b"path": b"first"}), h.pax({b"path": b"second"}), a),
        "pax-then-gnu-long": h.tar_of(h.pax({b"path": b"pax-name"}), h.gnu_long(b"gnu-name"), a),
        "gnu-long-then-pax": h.tar_of(h.gnu_long(b"gnu-name"), h.pax({b"path": b"pax-name"}), a),
        "two-gnu-long": h.tar_of(h.gnu_long(b"first"), h.gnu_long(b"second"), a),
        "pax-linkpath-then-gnu-longlink": h.tar_of(h.pax({b"linkpath": b"pax-target"}),
                                                   h.gnu_long(b"gnu-target", typeflag=b"K"), link),
        "global-path": h.tar_of(h.pax({b"path": b"global"}, typeflag=b"g"), h.pax({b"mtime": b"1"}), a, h.member("b")),
        "global-size": h.tar_of(h.pax({b"size": b"0"}, typeflag=b"g"), h.pax({b"uid": b"1"}), a),
        "global-bad-record": h.tar_of(h.pax({}, typeflag=b"g", raw=b"7 a=b\n"), a),
        "solaris-x": h.tar_of(h.pax({b"path": b"solaris"}, typeflag=b"X"), a),
        "record-length-short": h.tar_of(h.pax({}, raw=b"10 path=abc\n"), a),
        "record-length-long": h.tar_of(h.pax({}, raw=b"13 path=abc\n\n"), a),
        "record-length-plus": h.tar_of(h.pax({}, raw=b"+12 path=abc\n"), a),
        "record-no-newline": h.tar_of(h.pax({}, raw=b"12 path=abcX"), a),
        "record-no-equals": h.tar_of(h.pax({}, raw=b"11 pathabc\n"), a),
        "record-empty-key": h.tar_of(h.pax({}, raw=b"7 =abc\n"), a),
        "record-nul-in-key": h.tar_of(h.pax({}, raw=b"9 a\0b=cd\n"), a),
        "record-nul-in-xattr": h.tar_of(h.pax({b"SCHILY.xattr.user.k": b"a\0b"}), a),
        "record-padding-nul": h.tar_of(h.pax({}, raw=h.pax_records({b"path": b"p"}) + b"\0"), a),
        "mtime-fraction": h.tar_of(h.pax({b"mtime": b"1700000000.123456789"}), a),
        "mtime-dot-only": h.tar_of(h.pax({b"mtime": b"17."}), a),
        "mtime-exponent": h.tar_of(h.pax({b"mtime": b"1e3"}), a),
        "mtime-negative": h.tar_of(h.pax({b"mtime": b"-5.5"}), a),
        "mtime-huge": h.tar_of(h.pax({b"mtime": b"9" * 30}), a),
        "uid-negative": h.tar_of(h.pax({b"uid": b"-3"}), a),
        "uid-int64-max": h.tar_of(h.pax({b"uid": str((1 << 63) - 1).encode()}), a),
        "uid-int64-over": h.tar_of(h.pax({b"uid": str(1 << 63).encode()}), a),
        "sparse-00-out-of-order": h.tar_of(h.pax([(b"GNU.sparse.size", b"10"), (b"GNU.sparse.numblocks", b"1"),
                                                  (b"GNU.sparse.numbytes", b"1"), (b"GNU.sparse.offset", b"0")]), a),
        "pax-over-1mib": h.tar_of(h.pax({b"SCHILY.xattr.user.big": b"v" * (1 << 20)}), a),
        "gnu-long-over-1mib": h.tar_of(h.gnu_long(b"n" * (1 << 20)), a),
        "base256-mtime-over-int64": h.tar_of(h.member("a", b"x", mtime=1 << 80)),
        "base256-mtime-int64-max": h.tar_of(h.member("a", b"x", mtime=(1 << 63) - 1)),
        "base256-size-negative": h.tar_of(h.member("a", b"", size=-(1 << 40))),
    }


@functools.cache
def hostile_tars() -> dict[str, bytes]:
    return {**h.layers(), **oddities()}


@pytest.mark.parametrize("case", sorted(hostile_tars()))
def test_61_every_hostile_tar_reads_as_in_go_or_is_flagged(tarlist: Path, case: str) -> None:
    """Each #53-#81 layer of fuzz/hostile.py and each oddity above: the same members as Go reads, or both
    refuse the layer (imgaudit: one line, exit 3), or a listed ambiguous case; quickly, no stray exception."""
    started = time.monotonic()
    plain = hostile_tars()[case]
    compare(tarlist, plain, plain, case=case)
    assert time.monotonic() - started < 10
