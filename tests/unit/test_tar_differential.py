"""Parser differential against Go's archive/tar (RELIABILITY.md #68, and #61's PAX and GNU oddities).

The same layer bytes go through imgaudit's real layer scan (`scan_layer`: decompression, tarfile with
FastTarInfo, the walk into entries) and through tests/differential/tarlist, a stdlib-only Go program that
reads the tar as containerd and Docker apply a layer (Reader.Next, io.Copy of the data). Both views are
reduced to (normalised path, type, size, link target) in stream order and must be equal. A difference is a
failure unless it is listed in AMBIGUOUS below with why the parsers differ and what imgaudit does instead:
there imgaudit must flag the layer (an error, exit 3), never read something else silently.

Go is built once per session from source; without `go` on PATH the module is skipped, unless
IMGAUDIT_REQUIRE_GO=1 (CI, .ci/run) makes that a failure.
"""

from __future__ import annotations

import base64
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

import pytest

from fuzz import hostile as h
from imgaudit.errors import ImgauditError
from imgaudit.layers import EntryType, LayerScan, scan_layer
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
    skipped: tuple[str, ...] = ()  # imgaudit's skipped entries (reasons), for rows Go returns and imgaudit flags


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
    error = None
    for line in done.stdout.decode().splitlines():
        record = json.loads(line)
        if "error" in record:
            error = record["error"]
            continue
        row = _go_row(record)
        if isinstance(row, str):
            flagged.append(row)
        elif row is not None:
            rows.append(row)
    assert (done.returncode != 0) == (error is not None), done.stderr.decode()
    return Outcome(tuple(rows), error, tuple(flagged))


def _raw(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "surrogateescape")


def _norm(name: str) -> str:
    """What imgaudit calls the path: absolute, no `.` or empty parts, no trailing slash. No `..` in this corpus."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    assert ".." not in parts, name
    return "/" + "/".join(parts)


def _go_row(record: dict[str, object]) -> tuple[str, str, int, str | None] | str | None:
    """A Go header as imgaudit's row; None for what both sides ignore; a string for an entry imgaudit must
    list as skipped (its reason), i.e. where it keeps the member out of the view and says so."""
    typeflag = str(record["typeflag"])
    if typeflag == "g":
        return None  # Go hands PAX global headers to the caller; containerd ignores them, tarfile consumes them
    path = _norm(_raw(str(record["name"])))
    link = _raw(str(record["linkname"]))
    kind = TYPES.get(typeflag)
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
        return path, kind, 0, _norm(link)
    return path, kind, int(str(record["size"])) if kind == "file" else 0, link if kind == "symlink" else None


# -- imgaudit's side ------------------------------------------------------------------------------------------


def imgaudit_view(stored: bytes) -> Outcome:
    try:
        scan = scan_layer(io.BytesIO(stored), label="layer 1/1")
    except ImgauditError as err:
        return Outcome((), str(err))
    return Outcome(_rows(scan), None, tuple(s.reason for s in scan.skipped if "trailing data" not in s.reason))


def _rows(scan: LayerScan) -> View:
    def row(e: object) -> tuple[str, str, int, str | None]:
        assert hasattr(e, "path")
        entry = e  # an imgaudit.layers.Entry
        kind: EntryType = entry.type  # type: ignore[attr-defined]
        link = entry.link if kind in (EntryType.SYMLINK, EntryType.HARDLINK) else None  # type: ignore[attr-defined]
        return entry.path, kind.value, entry.size, link  # type: ignore[attr-defined]

    return tuple(row(e) for e in scan.entries)


# -- the comparison -------------------------------------------------------------------------------------------


def compare(tarlist: Path, stored: bytes, plain: bytes, *, ambiguous: str | None = None) -> tuple[Outcome, Outcome]:
    """Asserts both parsers agree: same rows, or both stopped with an error. An `ambiguous` case (a key of
    AMBIGUOUS) must differ in the way listed there and be flagged by imgaudit."""
    go, ours = go_view(tarlist, plain), imgaudit_view(stored)
    if ambiguous is not None:
        AMBIGUOUS[ambiguous].check(go, ours)
        return go, ours
    if go.error is not None or ours.error is not None:
        assert go.error is not None and ours.error is not None, f"only one parser failed: go={go} imgaudit={ours}"
        return go, ours
    assert ours.rows == go.rows
    assert sorted(ours.skipped) == sorted(go.skipped)
    return go, ours


@dataclass(frozen=True)
class Ambiguous:
    """A tar both readers take differently; `why` says how, and imgaudit must stop with `flag` in its error."""

    why: str
    go_accepts: bool
    flag: str

    def check(self, go: Outcome, ours: Outcome) -> None:
        assert (go.error is None) == self.go_accepts, go
        assert ours.error is not None and self.flag in ours.error, ours


AMBIGUOUS: dict[str, Ambiguous] = {}


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
    assert len(layers) >= 3 + 5 and members > 1500, (len(layers), members)
    assert time.monotonic() - started < 60
