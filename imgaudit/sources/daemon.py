"""The local Docker daemon (or podman's API socket) through the `docker` SDK: the image's `docker save`
stream goes straight through one pass of the scanner, no temp file. Only reads: never pulls, tags or deletes.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
import requests

from imgaudit.errors import ImageNotFound, ImgauditError, SourceUnavailable, escape
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner
from imgaudit.sources.archive import load_stream
from imgaudit.sources.manifest import check_digest, check_platform, parse_config

DEFAULT_HOST = "unix:///var/run/docker.sock"
TIMEOUT = 300  # seconds of silence before giving up; big saves hit the SDK's 60 s default (docker-py #2097)
CHUNK = 1 << 20
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, ConnectionError, TimeoutError)


def load(ref: Reference, *, platform: Platform | None, scanner: Scanner) -> tuple[Image, tuple[LayerScan, ...]]:
    client = connect()
    try:
        attrs = inspect_image(client, ref)
        if not (attrs.get("RootFS") or {}).get("Layers"):
            return _zero_layer_image(attrs, ref, platform), ()
        with ChunkReader(save_stream(client, str(attrs["Id"])), daemon_url()) as stream:
            # Saved by id: one image in the archive, whatever tags it has.
            return load_stream(stream, ref, platform=platform, scanner=scanner)  # type: ignore[arg-type]
    finally:
        client.close()


def daemon_url() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def connect() -> docker.DockerClient:
    """DOCKER_HOST and friends are honoured; the API version is negotiated with the daemon."""
    try:
        return docker.from_env(version="auto", timeout=TIMEOUT)
    except docker.errors.DockerException as err:
        raise SourceUnavailable(
            f"cannot reach the Docker daemon at {escape(daemon_url())}; is it running? (or use docker-archive:FILE)"
        ) from err


def find_image(client: docker.DockerClient, ref: Reference) -> str:
    """The image id for `ref` (a name, name@digest or id prefix: the daemon resolves it as `docker` does)."""
    return str(inspect_image(client, ref)["Id"])


def inspect_image(client: docker.DockerClient, ref: Reference) -> dict[str, Any]:
    """`docker image inspect` of `ref`; ImageNotFound when the daemon does not have it."""
    name = ref.image_id or ref.named or ""
    try:
        return dict(client.images.get(name).attrs)
    except docker.errors.ImageNotFound as err:
        hint = "pull it, or save it and use docker-archive:FILE"
        if ref.bare:
            hint = "imgaudit reads local images only for now: docker pull it, or use docker-archive:FILE"
        raise ImageNotFound(f"image {escape(name)} is not in the Docker daemon at {escape(daemon_url())}; {hint}") \
            from err
    except docker.errors.APIError as err:
        raise SourceUnavailable(f"the Docker daemon refused to look up {escape(name)}: {_explain(err)}") from err
    except _TRANSPORT_ERRORS as err:
        raise SourceUnavailable(
            f"cannot reach the Docker daemon at {escape(daemon_url())}; is it running? (or use docker-archive:FILE)"
        ) from err


def save_stream(client: docker.DockerClient, image_id: str) -> Iterator[bytes]:
    """`docker save` of one image as chunks. Not `images.get(…).save()`: the SDK switches the socket timeout
    off for streams (docker-py `_stream_raw_result`), so a stalled daemon would hang us for ever; here TIMEOUT
    stays on as an idle watchdog for every read (RELIABILITY.md #44)."""
    response = client.api.get(client.api._url("/images/{0}/get", image_id), stream=True, timeout=TIMEOUT)
    with response:
        try:
            response.raise_for_status()
        except requests.exceptions.HTTPError as err:
            docker.errors.create_api_error_from_http_exception(err)  # raises the SDK's typed APIError
        yield from response.iter_content(CHUNK)


def _zero_layer_image(attrs: dict[str, Any], ref: Reference, platform: Platform | None) -> Image:
    """`docker save` refuses an image without layers ("empty export - not implemented", stereoscope #56),
    yet it is valid (RELIABILITY.md #28): its model comes from the inspect data, whose Id is the config
    digest."""
    document = {"os": attrs.get("Os"), "architecture": attrs.get("Architecture"), "variant": attrs.get("Variant"),
                "config": attrs.get("Config"), "rootfs": {"type": "layers", "diff_ids": []}}
    where = f"{ref.display} (inspect)"
    config = parse_config(json.dumps(document).encode(), where)
    check_platform(config.platform, platform, ref.display)
    return Image(reference=ref.display, source=ref.transport, config=config,
                 config_digest=check_digest(attrs.get("Id"), where), layers=())


def _explain(err: docker.errors.APIError) -> str:
    return escape(str(err.explanation or err))[:200]


class ChunkReader(io.RawIOBase):
    """A file over the SDK's chunk generator, so tarfile can walk the save stream as it arrives. Daemon
    and transport errors surface as SourceUnavailable, never as a half-read archive."""

    def __init__(self, chunks: Iterator[bytes], url: str) -> None:
        super().__init__()
        self._chunks = chunks
        self._url = url
        self._buf = b""
        self._pos = 0
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._buf):
            chunk = self._next()
            if chunk is None:
                return 0
            self._buf, self._pos = chunk, 0
            self.received += len(chunk)
        n = min(len(buffer), len(self._buf) - self._pos)
        buffer[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def _next(self) -> bytes | None:
        try:
            return next(self._chunks)
        except StopIteration:
            return None
        except docker.errors.APIError as err:
            raise ImgauditError(f"the Docker daemon could not export the image: {_explain(err)}") from err
        except _TRANSPORT_ERRORS as err:
            raise SourceUnavailable(
                f"the Docker daemon at {escape(self._url)} broke off the image stream after "
                f"{_amount(self.received)}: {escape(str(err))[:200]}"
            ) from err

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()  # releases the HTTP response when we stop early
        super().close()


def _amount(size: int) -> str:
    return f"{size} bytes" if size < (1 << 20) else f"{size / (1 << 20):.1f} MiB"
