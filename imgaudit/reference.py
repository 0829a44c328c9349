"""Image references as skopeo and podman users type them (containers-transports(5)), with Docker Hub
normalisation following distribution/reference (`alpine` → `docker.io/library/alpine:latest`).
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from imgaudit.errors import UsageError, escape

try:  # ISA-L inflates ~3x faster than zlib (DESIGN.md §3b)
    from isal.igzip import IGzipFile as _GzipFile
except ImportError:  # pragma: no cover - isal is a declared dependency
    from gzip import GzipFile as _GzipFile  # type: ignore[assignment]

TRANSPORTS = ("docker-archive", "oci", "oci-archive", "docker-daemon", "registry")
DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
MAX_NAME = 255
SNIFF_MEMBERS = 100_000  # headers read while sniffing a bare path; an image archive has far fewer

# distribution/reference grammar (reference/regexp.go), restricted to what a pull can name.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}\Z")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}\Z")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_IMAGE_ID_RE = re.compile(r"^(?:sha256:)?[0-9a-f]{12,64}\Z")
_FULL_ID_RE = re.compile(r"^(?:sha256:)?[0-9a-f]{64}\Z")
_OCI_REF_RE = re.compile(r"^[A-Za-z0-9._-]+(?:[:/@+][A-Za-z0-9._-]+)*\Z")


@dataclass(frozen=True)
class Reference:
    """A parsed reference. `name` is fully qualified (`docker.io/library/alpine`); `tag` is the docker-archive
    `name:tag` selector's tag or the OCI `ref.name`; `bare` marks a name typed without a transport."""

    transport: str
    original: str
    path: str | None = None
    name: str | None = None
    tag: str | None = None
    digest: str | None = None
    image_id: str | None = None
    bare: bool = False

    @property
    def named(self) -> str | None:
        """`name:tag` (or `name@digest`) as the daemon and docker-archive RepoTags know it."""
        if self.name is None:
            return None
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag or 'latest'}"

    @property
    def display(self) -> str:
        """The canonical spelling, shown in reports and error messages."""
        if self.transport in ("docker-archive", "oci", "oci-archive"):
            selector = self.named if self.transport == "docker-archive" else self.tag
            return f"{self.transport}:{self.path}" + (f":{selector}" if selector else "")
        target = self.image_id or self.named or ""
        if self.transport == "registry":
            return f"docker://{target}"
        return target if self.bare else f"docker-daemon:{target}"


def parse_reference(text: str) -> Reference:
    """Parses `text`; raises UsageError (one line) when it is not a valid reference."""
    if not text or not text.strip():
        raise UsageError("empty image reference")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UsageError(f"invalid image reference {escape(text)!r}: control characters")
    transport, sep, rest = text.partition(":")
    if sep and transport in ("docker-archive", "oci-archive", "oci"):
        return _parse_path_ref(transport, rest, text)
    if sep and transport == "docker-daemon":
        return _parse_daemon(rest, text)
    if text.startswith("docker://"):
        return _parse_registry(text[len("docker://"):], text)
    if Path(text).exists():
        return _sniff_path(text)
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        raise UsageError(f"no such file or directory: {escape(text)}")
    if _FULL_ID_RE.match(text):  # as `docker inspect` takes it: an image id, never a repository
        return Reference("docker-daemon", text, image_id=text, bare=True)
    name, tag, digest = split_name(text)
    return Reference("docker-daemon", text, name=name, tag=tag, digest=digest, bare=True)


# -- names --------------------------------------------------------------------------------------


def split_name(text: str) -> tuple[str, str | None, str | None]:
    """`NAME[:TAG][@DIGEST]` → (normalised name, tag, digest); tag defaults to `latest` without a digest."""
    rest, _, digest = text.partition("@")
    if "@" in text:
        validate_digest(digest, text)
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise UsageError(f"invalid image reference {escape(text)!r}: bad tag {escape(tag)!r}")
    name = normalise_name(rest, text)
    if tag is None and not digest:
        tag = "latest"
    return name, tag, digest or None


def normalise_name(name: str, original: str | None = None) -> str:
    """`alpine` → `docker.io/library/alpine`; `index.docker.io/x/y` → `docker.io/x/y`."""
    shown = escape(original or name)
    if re.fullmatch(r"[0-9a-f]{64}", name):
        raise UsageError(f"invalid image reference {shown!r}: a 64-hex name is an image id, not a repository")
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        if not _DOMAIN_RE.match(first):
            raise UsageError(f"invalid image reference {shown!r}: bad registry {escape(first)!r}")
        domain, path = first, remainder
    else:
        domain, path = DOCKER_HUB, name
    if domain in HUB_ALIASES:
        domain = DOCKER_HUB
        if "/" not in path:
            path = "library/" + path
    if not _PATH_RE.match(path):
        raise UsageError(f"invalid image reference {shown!r}: names are lowercase letters, digits and . _ - /")
    full = f"{domain}/{path}"
    if len(full) > MAX_NAME:
        raise UsageError(f"invalid image reference {shown!r}: name longer than {MAX_NAME} characters")
    return full


def validate_digest(digest: str, context: str) -> str:
    """Digests are checked before any use: in a path, a URL or a lookup (CVE-2024-3727)."""
    if not DIGEST_RE.match(digest):
        raise UsageError(
            f"invalid digest {escape(digest)!r} in {escape(context)!r}: want sha256: and 64 lowercase hex digits"
        )
    return digest


# -- transports ---------------------------------------------------------------------------------


def _parse_path_ref(transport: str, rest: str, text: str) -> Reference:
    """`PATH[:selector]`: a path may itself hold colons, so an existing whole path wins (as in skopeo the
    selector starts at the first colon otherwise)."""
    if not rest:
        raise UsageError(f"invalid image reference {escape(text)!r}: missing path")
    path, selector = (rest, "") if Path(rest).exists() else _split_first(rest)
    if not path:
        raise UsageError(f"invalid image reference {escape(text)!r}: missing path")
    if transport != "docker-archive":
        if selector and not _OCI_REF_RE.match(selector):
            raise UsageError(f"invalid image reference {escape(text)!r}: bad ref name {escape(selector)!r}")
        return Reference(transport, text, path=path, tag=selector or None)
    if not selector:
        return Reference(transport, text, path=path)
    name, tag, digest = split_name(selector)
    if digest:
        raise UsageError(f"invalid image reference {escape(text)!r}: docker-archive selects by name:tag, not digest")
    return Reference(transport, text, path=path, name=name, tag=tag)


def _split_first(rest: str) -> tuple[str, str]:
    path, _, selector = rest.partition(":")
    return path, selector


def _parse_daemon(rest: str, text: str) -> Reference:
    """`NAME[:TAG]`, `NAME@sha256:…`, or an image id (`sha256:<64hex>` or a hex prefix of at least 12)."""
    if not rest:
        raise UsageError(f"invalid image reference {escape(text)!r}: missing image name")
    if rest.startswith("sha256:"):
        validate_digest(rest, text)
        return Reference("docker-daemon", text, image_id=rest)
    if _IMAGE_ID_RE.match(rest):
        # A hex string may be a repository or an id prefix: the daemon tries the name, then the id.
        return Reference("docker-daemon", text, image_id=rest)
    name, tag, digest = split_name(rest)
    return Reference("docker-daemon", text, name=name, tag=tag, digest=digest)


def _parse_registry(rest: str, text: str) -> Reference:
    if not rest:
        raise UsageError(f"invalid image reference {escape(text)!r}: missing image name")
    name, tag, digest = split_name(rest)
    return Reference("registry", text, name=name, tag=tag, digest=digest)


# -- sniffing a bare path -----------------------------------------------------------------------


def _sniff_path(text: str) -> Reference:
    path = Path(text)
    if path.is_dir():
        if (path / "oci-layout").exists() or (path / "index.json").exists():
            return Reference("oci", text, path=text)
        raise UsageError(f"{escape(text)} is a directory but not an OCI layout (no oci-layout or index.json)")
    names = _archive_names(path)
    if "manifest.json" in names:
        return Reference("docker-archive", text, path=text)
    if {"index.json", "oci-layout"} <= names:
        return Reference("oci-archive", text, path=text)
    raise UsageError(
        f"{escape(text)} is not an image archive (no manifest.json, nor index.json with oci-layout)"
    )


def _archive_names(path: Path) -> set[str]:
    """Top-level member names of a (maybe gzip- or zstd-compressed) tar, headers only; empty if not a tar.
    A compressed stream cannot seek, so the sniff decodes it once (a transport prefix skips this)."""
    import zstandard

    try:
        with path.open("rb") as raw:
            magic = raw.read(4)
            raw.seek(0)
            if magic.startswith(b"\x1f\x8b"):
                with (_GzipFile(fileobj=raw, mode="rb") as plain,  # type: ignore[no-untyped-call]
                      tarfile.open(fileobj=io.BufferedReader(plain, 1 << 20), mode="r|") as tar):
                    return _image_names(tar)
            if magic == b"\x28\xb5\x2f\xfd":
                with (zstandard.ZstdDecompressor(max_window_size=1 << 27).stream_reader(raw, read_across_frames=True)
                      as frames, tarfile.open(fileobj=frames, mode="r|") as tar):
                    return _image_names(tar)
            with tarfile.open(fileobj=raw, mode="r:") as tar:  # a plain tar is skipped through by seeking
                return _image_names(tar)
    except PermissionError as err:
        raise UsageError(f"cannot read {escape(str(path))}: permission denied") from err
    except (OSError, tarfile.TarError, EOFError, zlib.error, zstandard.ZstdError):
        return set()


def _image_names(tar: tarfile.TarFile) -> set[str]:
    wanted = {"manifest.json", "index.json", "oci-layout"}
    found: set[str] = set()
    for count, member in enumerate(tar):
        tar.members = []  # type: ignore[attr-defined]  # CPython gh-102120: the list grows without bound
        name = os.path.normpath(member.name).lstrip("/")
        if name in wanted:
            found.add(name)
        if "manifest.json" in found or count > SNIFF_MEMBERS:
            break
    return found
