"""`docker save` archives (legacy `<id>/layer.tar` and Docker ≥ 25's OCI layout inside, kaniko and crane
tarballs), read in place: an uncompressed archive by random access to its members, a compressed one, or
the daemon's save stream, in one streamed pass. Follows containers/image docker/internal/tarfile/reader.go.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, cast

from imgaudit.errors import CorruptImage, LimitExceeded, SourceUnavailable, UsageError, escape
from imgaudit.image import Image, Layer, Platform
from imgaudit.layers import (
    GZIP_MAGIC,
    MAX_HEADER_BYTES,
    ZSTD_MAGIC,
    ZSTD_MAX_WINDOW,
    LayerScan,
    tar_members,
    verify,
)
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner, layer_label
from imgaudit.sources.manifest import (
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_ARCHIVE_MANIFEST,
    MAX_CONFIG,
    MAX_INDEX_DEPTH,
    MAX_MANIFEST,
    Manifest,
    Plan,
    Store,
    blob_name,
    build_image,
    build_layers,
    check_cap,
    check_layer_count,
    check_platform,
    layer_specs_from_names,
    member_name,
    named_digest,
    parse_archive_manifest,
    parse_config,
    parse_index,
    parse_manifest,
    read_blob,
    select_archive_entry,
    sha256,
)

try:  # ISA-L inflates ~3x faster than zlib (DESIGN.md §3b)
    from isal.igzip import IGzipFile as _GzipFile
except ImportError:  # pragma: no cover - isal is a declared dependency
    from gzip import GzipFile as _GzipFile  # type: ignore[assignment]

MAX_MEMBERS = 1_000_000  # an image archive has a few members per layer; past this it is not one
MAX_LINK_HOPS = 4  # archive members that are links: followed a few hops, never in a loop (RELIABILITY.md #37)
MAX_KEPT = 4 << 20  # one non-layer member kept in memory from a stream (configs, manifests)
MAX_KEPT_TOTAL = 64 << 20  # all of them together
HEAD = 512

Planner = Callable[[Store, "str | None", "Platform | None"], Plan]


def load(ref: Reference, *, platform: Platform | None, scanner: Scanner) -> tuple[Image, tuple[LayerScan, ...]]:
    """A docker-archive reference: `ref.path`, the image picked by `ref.named` when the archive holds several."""
    return load_path(ref, platform=platform, scanner=scanner, planner=plan_docker_archive,
                     selector=ref.named if ref.name else None)


def load_path(ref: Reference, *, platform: Platform | None, scanner: Scanner, planner: Planner,
              selector: str | None) -> tuple[Image, tuple[LayerScan, ...]]:
    """An archive file, compressed (one streamed pass) or not (random access to its members)."""
    path = _regular_file(ref)
    with path.open("rb") as raw:
        magic = raw.read(4)
    if magic.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        with path.open("rb") as raw, inflated(raw, magic, ref.display) as stream:
            return load_stream(stream, ref, platform=platform, scanner=scanner, planner=planner, selector=selector)
    store = TarStore(path, ref.display)
    plan = planner(store, selector, platform)
    image = build_image(plan, ref, build_layers(plan, store.size, store.opener))
    return image, scanner.scan_image(image)


@contextmanager
def inflated(raw: BinaryIO, magic: bytes, where: str) -> Iterator[BinaryIO]:
    """The plain bytes of a gzip (`docker save | gzip`) or zstd archive, decoded in process: never an external
    tool (GHSA-x86f-5xw2-fm2r). tarfile asks for 10 KiB at a time, so a 1 MiB buffer sits in front."""
    import zstandard

    try:
        if magic.startswith(GZIP_MAGIC):
            with _GzipFile(fileobj=raw, mode="rb") as plain:  # type: ignore[no-untyped-call]
                yield cast(BinaryIO, io.BufferedReader(plain, 1 << 20))
        else:
            decoder = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
            with decoder.stream_reader(raw, read_across_frames=True) as plain:
                yield cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, plain), 1 << 20))
    except zstandard.ZstdError as err:
        raise CorruptImage(f"{where}: bad zstd data: {escape(str(err))[:200]}") from err


def _regular_file(ref: Reference) -> Path:
    path = Path(ref.path or "")
    if not path.exists():
        raise UsageError(f"no such file: {escape(str(path))}")
    if not path.is_file():
        raise UsageError(f"{escape(str(path))} is not a regular file (want a tar archive)")
    return path


# -- the docker save manifest -------------------------------------------------------------------


def plan_docker_archive(store: Store, selector: str | None, platform: Platform | None) -> Plan:
    """manifest.json → the chosen image's config and layer members (#26 count check, #39 member names only)."""
    where = store.where
    entries = parse_archive_manifest(store.read("manifest.json", MAX_ARCHIVE_MANIFEST, "manifest.json"),
                                     f"{where} manifest.json")
    entry = select_archive_entry(entries, selector, where)
    config_bytes = store.read(entry.config, MAX_CONFIG, "config")
    config_digest = sha256(config_bytes)
    promised = named_digest(entry.config)
    if promised is not None and promised != config_digest:
        raise CorruptImage(f"{where} config {escape(entry.config)}: digest mismatch: name says {promised}, "
                           f"content is {config_digest}")
    config = parse_config(config_bytes, f"{where} config {escape(entry.config)}")
    check_platform(config.platform, platform, where)
    specs = layer_specs_from_names(entry.layers)
    check_layer_count(specs, config, where)
    found = _oci_manifest(store, config_digest)
    if found is None or len(found[1].layers) != len(specs):
        return Plan(config, config_digest, None, specs)
    # Docker ≥ 25 also writes the OCI manifest: it gives the layer digests, sizes and media types.
    specs = tuple(replace(s, digest=d.digest, size=d.size, media_type=d.media_type)
                  for s, d in zip(specs, found[1].layers, strict=True))
    return Plan(config, config_digest, found[0], specs)


def _oci_manifest(store: Store, config_digest: str) -> tuple[str, Manifest] | None:
    """The OCI manifest (digest, parsed) in index.json whose config is `config_digest`, if there is one."""
    if not store.has("index.json"):
        return None
    pending = [(d, 0) for d in parse_index(store.read("index.json", MAX_MANIFEST, "index.json"),
                                           f"{store.where} index.json")]
    seen: set[str] = set()
    while pending:
        desc, depth = pending.pop(0)
        if desc.digest in seen or not store.has(blob_name(desc.digest)) or depth > MAX_INDEX_DEPTH:
            continue  # blobs of other platforms are not saved
        seen.add(desc.digest)
        if desc.media_type in INDEX_TYPES:
            data = read_blob(store, desc, MAX_MANIFEST, "index")
            pending += [(d, depth + 1) for d in parse_index(data, f"{store.where} index {desc.digest[:19]}")]
        elif desc.media_type in MANIFEST_TYPES:
            manifest = parse_manifest(read_blob(store, desc, MAX_MANIFEST, "manifest"),
                                      f"{store.where} manifest {desc.digest[:19]}")
            if manifest.config.digest == config_digest:
                return desc.digest, manifest
    return None


# -- members and links --------------------------------------------------------------------------


def _normal(name: str) -> str | None:
    """Member name as manifest.json spells it; None for names that climb out (never referenced then)."""
    try:
        return member_name(name, "")
    except CorruptImage:
        return None


def follow_links(name: str, links: Mapping[str, tuple[bool, str]], where: str) -> str:
    """The member a name ends at: a symlink's target is relative to its directory, a hard link's to the
    archive root; absolute targets stay inside the archive. A few hops, no loops (g-cr #2232)."""
    seen = {name}
    for _ in range(MAX_LINK_HOPS + 1):
        link = links.get(name)
        if link is None:
            return name
        symbolic, target = link
        joined = posixpath.join(posixpath.dirname(name), target) if symbolic else target
        name = member_name(joined, f"{where} link {escape(name)}")
        if name in seen:
            raise CorruptImage(f"{where}: archive members link in a loop at {escape(name)}")
        seen.add(name)
    raise CorruptImage(f"{where}: more than {MAX_LINK_HOPS} links to follow at {escape(name)}")


class _MemberReader(io.RawIOBase):
    """Read-only view of `size` bytes at `offset` of a file; a short file is a truncated archive."""

    def __init__(self, path: Path, offset: int, size: int, label: str) -> None:
        super().__init__()
        self._file = path.open("rb", buffering=0)
        self._file.seek(offset)
        self._left = size
        self._label = label
        self.span = (offset, size)  # where the member lies in the file (scanner.blob_identity)

    def fileno(self) -> int:
        return self._file.fileno()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._left)
        if want == 0:
            return 0
        got = self._file.readinto(memoryview(buffer)[:want])
        if not got:
            raise CorruptImage(f"{self._label}: the archive ends inside this member (truncated)")
        self._left -= got
        return got

    def close(self) -> None:
        self._file.close()
        super().close()


class TarStore:
    """An uncompressed tar indexed once (headers only); members are read by offset, never extracted."""

    def __init__(self, path: Path, where: str) -> None:
        self.path = path
        self.where = where
        self.members: dict[str, tarfile.TarInfo] = {}
        self.links: dict[str, tuple[bool, str]] = {}
        self._index()

    def _index(self) -> None:
        last = ""
        try:
            with self.path.open("rb") as raw, _HeaderBudget(raw, self.where) as capped, \
                    tarfile.open(fileobj=capped, mode="r:") as tar:
                for count, member in enumerate(tar_members(tar)):
                    tar.members = []  # type: ignore[attr-defined]  # the index below is all we keep (CPython gh-102120)
                    if count >= MAX_MEMBERS:
                        raise LimitExceeded(f"{self.where}: more than {MAX_MEMBERS} archive members")
                    last = member.name
                    self._add(member)
                    capped.budget = MAX_HEADER_BYTES  # member data is skipped by seeking, never read here
        except (tarfile.TarError, EOFError, zlib.error, RecursionError) as err:
            raise CorruptImage(f"{self.where}: not a readable tar archive{_after(last)}: "
                               f"{escape(str(err))[:200] or type(err).__name__}") from err

    def _add(self, member: tarfile.TarInfo) -> None:
        name = _normal(member.name)
        if name is None:
            return
        self.members[name] = member
        self.links.pop(name, None)
        if member.issym() or member.islnk():
            self.links[name] = (member.issym(), member.linkname)

    def _member(self, name: str, what: str) -> tarfile.TarInfo:
        real = follow_links(name, self.links, self.where)
        member = self.members.get(real)
        if member is None:
            raise CorruptImage(f"{self.where}: {what} {escape(name)} is missing from the archive")
        if not member.isreg() or member.issparse():
            raise CorruptImage(f"{self.where}: {what} {escape(name)} is not a regular file")
        return member

    def has(self, name: str) -> bool:
        try:
            self._member(name, "")
        except CorruptImage:
            return False
        return True

    def read(self, name: str, cap: int, what: str) -> bytes:
        member = self._member(name, what)
        check_cap(member.size, cap, f"{self.where} {what} {escape(name)}")
        with self._open(member, f"{self.where} {what} {escape(name)}") as reader:
            return reader.read()

    def size(self, name: str) -> int:
        return self._member(name, "layer").size

    def opener(self, name: str) -> Callable[[], BinaryIO]:
        member = self._member(name, "layer")
        return lambda: self._open(member, f"{self.where} layer {escape(name)}")

    def _open(self, member: tarfile.TarInfo, label: str) -> BinaryIO:
        reader = _MemberReader(self.path, member.offset_data, member.size, label)
        return io.BufferedReader(reader, 1 << 20)


# -- one streamed pass --------------------------------------------------------------------------


def load_stream(fobj: BinaryIO, ref: Reference, *, platform: Platform | None, scanner: Scanner,
                planner: Planner = plan_docker_archive, selector: str | None = None,
                where: str | None = None) -> tuple[Image, tuple[LayerScan, ...]]:
    """Reads an archive once, in order (a gzip-compressed file or the daemon's save stream: re-reading
    would mean inflating twice or spooling to disk). Every layer-like member is scanned as it passes;
    manifest.json may come after the layers, so scans wait, keyed by member name, for the plan."""
    store = StreamStore(where or ref.display, scanner)
    store.walk(fobj)
    plan = planner(store, selector, platform)
    layers = build_layers(plan, store.size)
    return build_image(plan, ref, layers), tuple(store.scan_for(layer, spec.name, len(layers))
                                                 for layer, spec in zip(layers, plan.layers, strict=True))


@dataclass
class StreamStore:
    """What one pass over an archive leaves: layer scans (or the error each gave) and small members."""

    where: str
    scanner: Scanner
    small: dict[str, bytes] = field(default_factory=dict)
    scans: dict[str, LayerScan] = field(default_factory=dict)
    errors: dict[str, CorruptImage] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    links: dict[str, tuple[bool, str]] = field(default_factory=dict)
    kept: int = 0

    def walk(self, fobj: BinaryIO) -> None:
        last = ""
        try:
            with _HeaderBudget(fobj, self.where) as capped, tarfile.open(fileobj=capped, mode="r|") as tar:
                for count, member in enumerate(tar_members(tar)):
                    tar.members = []  # type: ignore[attr-defined]  # CPython gh-102120: the member list grows without bound
                    if count >= MAX_MEMBERS:
                        raise LimitExceeded(f"{self.where}: more than {MAX_MEMBERS} archive members")
                    last = member.name
                    capped.budget = None  # the member's content: layers are scanned, small members capped
                    consumed = self._member(tar, member, count)
                    capped.budget = MAX_HEADER_BYTES + (0 if consumed else max(member.size, 0))
        except (tarfile.TarError, EOFError, OSError, zlib.error, RecursionError) as err:
            raise CorruptImage(f"{self.where}: archive is truncated or corrupt{_after(last)}: "
                               f"{escape(str(err))[:200] or type(err).__name__}") from err
        except SourceUnavailable as err:  # the daemon broke off its save stream: say which layer it was in
            raise type(err)(f"{err}{_after(last)}") from err

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, ordinal: int) -> bool:
        """Records one member; True when its content was read to the end."""
        name = _normal(member.name)
        if name is None or member.isdir():
            return False
        for table in (self.small, self.scans, self.errors, self.sizes, self.links):
            table.pop(name, None)  # a later member of the same name replaces the earlier one
        if member.issym() or member.islnk():
            self.links[name] = (member.issym(), member.linkname)
            return False
        if not member.isreg() or member.issparse():
            return False
        self.sizes[name] = member.size
        fobj = tar.extractfile(member)
        assert fobj is not None  # regular members always have one
        head = fobj.read(HEAD)
        if _layer_like(head) or member.size > MAX_KEPT:
            self._scan(name, cast(BinaryIO, _Prefixed(head, cast(BinaryIO, fobj))), member.size, ordinal)
        else:
            self._keep(name, head + fobj.read())
        return True

    def _scan(self, name: str, raw: BinaryIO, size: int, ordinal: int) -> None:
        layer = self._provisional(name, size, ordinal)
        try:
            self.scans[name] = self.scanner.scan(layer, raw, 0)
        except CorruptImage as err:
            self.errors[name] = err  # fatal only if the chosen image uses this member

    @staticmethod
    def _provisional(name: str, size: int, ordinal: int) -> Layer:
        return Layer(ordinal, "", named_digest(name) if name.startswith("blobs/") else None, size)

    def _keep(self, name: str, data: bytes) -> None:
        self.kept += len(data)
        if self.kept > MAX_KEPT_TOTAL:
            raise LimitExceeded(f"{self.where}: non-layer members exceed {MAX_KEPT_TOTAL >> 20} MiB in all")
        self.small[name] = data

    # -- Store ---------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        try:
            real = follow_links(name, self.links, self.where)
        except CorruptImage:
            return False
        return real in self.sizes

    def read(self, name: str, cap: int, what: str) -> bytes:
        real = follow_links(name, self.links, self.where)
        if real not in self.sizes:
            raise CorruptImage(f"{self.where}: {what} {escape(name)} is missing from the archive")
        check_cap(self.sizes[real], cap, f"{self.where} {what} {escape(name)}")
        if real not in self.small:
            raise CorruptImage(f"{self.where}: {what} {escape(name)} is not a JSON document")
        return self.small[real]

    def size(self, name: str) -> int | None:
        return self.sizes.get(follow_links(name, self.links, self.where))

    def scan_for(self, layer: Layer, name: str, count: int) -> LayerScan:
        """The scan of `layer`'s member, checked against the manifest and config now that they are known."""
        label = layer_label(layer, count)
        real = follow_links(name, self.links, self.where)
        if real in self.errors:
            err = self.errors[real]
            raise CorruptImage(f"{label} ({escape(name)}): {_strip_label(str(err))}") from err
        if real in self.small:  # a layer that did not look like one (old v7 tar, empty blob)
            return self.scanner.scan(layer, io.BytesIO(self.small[real]), count)
        if real not in self.scans:
            raise CorruptImage(f"{self.where}: layer {escape(name)} is missing from the archive")
        scan = self.scans[real]
        verify(scan, label=label, digest=layer.digest, diff_id=layer.diff_id or None, size=layer.size)
        return scan


def _after(member: str) -> str:
    return f" inside or after member {escape(member)[:200]}" if member else ""


class _HeaderBudget(io.RawIOBase):
    """The archive file (or stream) with what tarfile may read between two members capped: extension headers
    and sparse maps get MAX_HEADER_BYTES (CPython reads a declared size in one go, gh-151497); `budget`
    None lifts the cap while a member's own content is read (RELIABILITY.md #60)."""

    def __init__(self, fobj: BinaryIO, where: str) -> None:
        super().__init__()
        self._fobj = fobj
        self._where = where
        self.budget: int | None = MAX_HEADER_BYTES

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fobj.seekable()

    def read(self, size: int | None = -1) -> bytes:
        if self.budget is not None:
            if size is None or size < 0 or size > self.budget:
                raise LimitExceeded(f"{self._where}: tar extension headers exceed the {MAX_HEADER_BYTES >> 20} MiB "
                                    "cap (RELIABILITY.md #60)")
            self.budget -= size
        return self._fobj.read(-1 if size is None else size)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        return self._fobj.seek(pos, whence)

    def tell(self) -> int:
        return self._fobj.tell()


def _strip_label(message: str) -> str:
    """Drops the provisional `layer N/0 …: ` prefix the scan gave before the layer's place was known."""
    prefix, sep, rest = message.partition(": ")
    return rest if sep and prefix.startswith("layer ") else message


def _layer_like(head: bytes) -> bool:
    """Compressed data or a ustar header; JSON documents (configs, manifests) never are."""
    if head.lstrip()[:1] in (b"{", b"["):
        return False
    return head.startswith((GZIP_MAGIC, ZSTD_MAGIC)) or head[257:262] == b"ustar"


class _Prefixed(io.RawIOBase):
    """The bytes already peeked at, then the rest of the member."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            if size is None or size < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._rest.read(size)

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
