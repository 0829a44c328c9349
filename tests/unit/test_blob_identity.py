"""A local blob's sha256 is remembered by its file's identity (device, inode, size, mtime, ctime, span):
a warm run does not hash an unchanged file again, and any change to the file, even one that puts
its mtime back, makes the next run hash it again and catch the change."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

from imgaudit import audit as audit_mod
from imgaudit import scanner as scanner_mod
from imgaudit.cache import ScanCache
from imgaudit.errors import CorruptImage
from imgaudit.scanner import blob_identity
from imgaudit.sources.archive import TarStore
from tests.builders import ImageSpec, d, f, gz, make_layer, write_docker_archive, write_oci_archive, write_oci_layout

LAYERS = [
    make_layer([d("etc"), f("etc/os-release", "ID=debian\n"), d("app"), f("app/data", os.urandom(20000))]),
    make_layer([d("app"), f("app/more", os.urandom(30000))]),
]
IMAGES = {"app:1": ImageSpec(LAYERS, entrypoint=["/app/data"])}
WRITERS: dict[str, Callable[[Path], str]] = {
    "oci-archive": lambda tmp: f"oci-archive:{write_oci_archive(tmp / 'img.tar', IMAGES)}",
    "docker-archive": lambda tmp: f"docker-archive:{write_docker_archive(tmp / 'img.tar', IMAGES, shape='oci')}",
    # before Docker 25: plain layer.tar members, no blob digests; a layer's diff_id is its digest
    "docker-archive-legacy": lambda tmp: f"docker-archive:{write_docker_archive(tmp / 'img.tar', IMAGES)}",
    "oci": lambda tmp: f"oci:{write_oci_layout(tmp / 'layout', IMAGES)}",
}


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the blobs hashed in full; files written by the test count as settled at once."""
    monkeypatch.setattr(scanner_mod, "RACY_NS", 0)
    calls: list[int] = []
    real = scanner_mod.blob_digest

    def counting(raw: BinaryIO) -> tuple[str, int]:
        digest, size = real(raw)
        calls.append(size)
        return digest, size

    monkeypatch.setattr(scanner_mod, "blob_digest", counting)
    return calls


def _blob_files(ref: str) -> list[Path]:
    """The files holding the layer blobs: the archive, or the layout's blobs of the layers' size."""
    path = Path(ref.split(":", 1)[1])
    if path.is_file():
        return [path]
    return [p for p in (path / "blobs" / "sha256").iterdir() if p.stat().st_size > 2000]


def _flip_in_place(path: Path, at: int) -> None:
    """One byte changed where it lies, size and mtime put back as they were."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_an_unchanged_image_is_hashed_once_then_remembered(tmp_path: Path, hashes: list[int], source: str) -> None:
    ref = WRITERS[source](tmp_path)
    first = audit_mod.audit(ref).to_dict()
    assert hashes == []  # the cold run hashes while it scans, and remembers
    second = audit_mod.audit(ref).to_dict()
    assert hashes == []  # the cached report still needs both blobs checked: remembered
    third = audit_mod.audit(ref, audit_mod.Options(elf=False)).to_dict()  # layer scans hit, no report
    assert hashes == []
    assert first == second and third["size"] == first["size"]
    assert len(list(ScanCache.default().root.glob("hashed-*"))) == 2  # type: ignore[union-attr]


@pytest.mark.parametrize("source", sorted(WRITERS))
def test_a_byte_flipped_in_place_is_caught_though_the_hash_was_remembered(
    tmp_path: Path, hashes: list[int], source: str
) -> None:
    ref = WRITERS[source](tmp_path)
    audit_mod.audit(ref)  # remembers the blobs' hashes
    for path in _blob_files(ref):
        _flip_in_place(path, _layer_byte(path) if source != "oci" else path.stat().st_size // 2)
    with pytest.raises(CorruptImage, match=r"layer \d"):
        audit_mod.audit(ref)


def _layer_byte(archive: Path) -> int:
    """An offset inside the biggest layer member of an archive."""
    store = TarStore(archive, "x")
    member = max(store.members.values(), key=lambda m: m.size)
    return member.offset_data + member.size // 2


def test_a_file_changed_moments_ago_is_hashed_but_not_vouched_for(tmp_path: Path) -> None:
    ref = WRITERS["oci-archive"](tmp_path)  # RACY_NS as shipped: the archive was written just now
    audit_mod.audit(ref)
    audit_mod.audit(ref)
    assert not list(ScanCache.default().root.glob("hashed-*"))  # type: ignore[union-attr]


def test_identity_follows_every_change_a_file_can_go_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner_mod, "RACY_NS", 0)
    archive = write_docker_archive(tmp_path / "img.tar", IMAGES)
    store = TarStore(archive, "x")
    layer_names = [name for name, m in store.members.items() if m.size > 2000]
    assert len(layer_names) == 2

    def identities() -> list[str | None]:
        out = []
        for name in layer_names:
            with store.opener(name)() as raw:
                out.append(blob_identity(raw))
        return out

    before = identities()
    assert None not in before and before[0] != before[1]  # two members of one file: their spans differ
    assert identities() == before  # reading changes nothing
    _flip_in_place(archive, 0)
    flipped = identities()
    assert flipped[0] != before[0] and flipped[1] != before[1]  # ctime moved though mtime was put back
    copy = shutil.copy2(archive, tmp_path / "copy.tar")
    os.replace(copy, archive)  # same bytes and mtime, another inode
    assert identities() != flipped
    with open(archive, "rb") as fh, os.fdopen(os.dup(fh.fileno()), "rb") as again:
        assert blob_identity(fh) == blob_identity(again)  # whole files have no span
    read, write = os.pipe()
    with os.fdopen(read, "rb") as pipe, os.fdopen(write, "wb"):
        assert blob_identity(pipe) is None  # nothing vouches for a stream's bytes


def test_a_damaged_hash_record_is_a_miss(tmp_path: Path, hashes: list[int]) -> None:
    ref = WRITERS["oci-archive"](tmp_path)
    audit_mod.audit(ref)
    records = sorted(ScanCache.default().root.glob("hashed-*"))  # type: ignore[union-attr]
    assert len(records) == 2
    data = bytearray(records[0].read_bytes())
    data[-3] ^= 0x01  # inside the JSON payload: its sha256 no longer matches
    records[0].write_bytes(bytes(data))
    audit_mod.audit(ref)
    assert len(hashes) == 1  # that blob hashed again, the other one remembered


def test_a_legacy_layer_stored_compressed_is_scanned_not_taken_for_its_plain_twin(
    tmp_path: Path, hashes: list[int]
) -> None:
    """The cache holds the plain layers' scans under their diff_ids; a legacy archive whose members are
    gzip streams of the same tars has the same diff_ids, but its bytes do not hash to them: scanned."""
    plain_ref = WRITERS["docker-archive-legacy"](tmp_path)
    audit_mod.audit(plain_ref)
    spec = IMAGES["app:1"]
    cfg = spec.config()
    gz_archive = tmp_path / "gz.tar"
    with tarfile.open(gz_archive, "w") as tar:
        members = {"c.json": json.dumps(cfg).encode()}
        members |= {f"l{i}/layer.tar": gz(layer) for i, layer in enumerate(LAYERS)}
        members["manifest.json"] = json.dumps(
            [{"Config": "c.json", "RepoTags": ["app:1"], "Layers": [f"l{i}/layer.tar" for i in range(len(LAYERS))]}]
        ).encode()
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    for _ in range(3):
        layers = audit_mod.audit(f"docker-archive:{gz_archive}").to_dict()["size"]["layers"]
        assert [layer["compressed_bytes"] for layer in layers] == [len(gz(layer)) for layer in LAYERS]
        assert [layer["uncompressed_bytes"] for layer in layers] == [len(layer) for layer in LAYERS]
