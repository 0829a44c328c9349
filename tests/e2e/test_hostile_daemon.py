"""The daemon source under faults (RELIABILITY.md #43, #44 and the integrity matrix on the daemon stream).

A real daemon verifies every layer on `docker load`, so a corrupt image cannot be put into it; instead a fake
Docker API on a unix socket (`DOCKER_HOST=unix://…`, http.server in a thread) answers `/version`,
`/images/<name>/json` and `/images/<id>/get` and breaks the save stream the way a dying daemon does: a clean
close mid-archive, a connection reset inside a chunk, or corrupt bytes. imgaudit runs as the real command line in
a subprocess: exit 3, one line, the layer named, no traceback.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fuzz import hostile as h

REPO = Path(__file__).resolve().parents[2]
IMAGE_ID = "sha256:" + "5" * 64
BASE = h.tar_of(*h.base_members())
TOP = h.tar_of(h.member("srv/", typeflag=b"5"), h.member("srv/data", os.urandom(256 << 10)))


class FakeDaemon(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, archive: bytes, mode: str) -> None:
        self.archive = archive
        self.mode = mode  # close | reset | full | refuse
        self.cut = 0
        self.requests: list[str] = []
        super().__init__(str(path), Handler)


class Handler(BaseHTTPRequestHandler):
    server: FakeDaemon
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # the client address of a unix socket is ''
        pass

    def address_string(self) -> str:
        return "unix"

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.server.requests.append(f"GET {self.path}")
        path = self.path.split("?", 1)[0]
        if path.endswith(("/version", "/_ping")):
            self._json(200, {"ApiVersion": "1.43", "MinAPIVersion": "1.12", "Version": "24.0.0", "Os": "linux",
                             "Arch": "amd64"})
        elif path.endswith(("/app:1/json", f"/images/{IMAGE_ID}/json")):  # docker.io/library/app:1
            self._json(200, {"Id": IMAGE_ID, "RepoTags": ["app:1"], "Os": "linux", "Architecture": "amd64",
                             "Config": {"Entrypoint": ["/bin/app"]},
                             "RootFS": {"Type": "layers", "Layers": [h.sha(BASE), h.sha(TOP)]}})
        elif "/images/" in path and path.endswith("/json"):
            self._json(404, {"message": "No such image: " + path.split("/images/")[1][:-5]})
        elif path.endswith(f"/images/{IMAGE_ID}/get"):
            self._save()
        else:
            self._json(404, {"message": "page not found"})

    def do_POST(self) -> None:
        self.server.requests.append(f"POST {self.path}")  # a pull, tag or load: imgaudit must never send one
        self._json(403, {"message": "read-only fake"})

    do_DELETE = do_PUT = do_POST

    def _save(self) -> None:
        data, mode = self.server.archive, self.server.mode
        if mode == "refuse":
            self._json(500, {"message": "write /var/lib/docker/tmp: no space left on device"})
            return
        cut = self.server.cut if mode in ("close", "reset") else len(data)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        if mode == "close":  # the daemon died: the connection ends cleanly where the bytes stop
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for start in range(0, cut, 65536):
            piece = data[start:min(start + 65536, cut)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        if mode == "reset":  # half a chunk, then RST: requests sees a broken chunked body
            self.wfile.write(b"ffff\r\n" + data[cut:cut + 100])
            self.wfile.flush()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    servers: list[FakeDaemon] = []

    def start(archive: bytes, mode: str, cut: int = 0) -> FakeDaemon:
        server = FakeDaemon(tmp_path / f"docker-{len(servers)}.sock", archive, mode)
        server.cut = cut
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield tmp_path, start
    for server in servers:
        server.shutdown()
        server.server_close()


def _save_archive(tmp_path: Path, top: h.Blob) -> tuple[bytes, h.Blob]:
    """What `docker save` streams (Docker >= 25 shape, uncompressed layers), with layer 2 as given."""
    path = tmp_path / "save.tar"
    h.write_image("docker-oci", path, [h.Blob(BASE, BASE), top])
    return path.read_bytes(), top


def _inspect(socket_path: Path, reference: str = "docker-daemon:app:1") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DOCKER_HOST": f"unix://{socket_path}", "IMGAUDIT_CACHE": "off"}
    return subprocess.run([sys.executable, "-m", "imgaudit", "inspect", "--fail-on", "never", reference],
                          capture_output=True, timeout=120, cwd=REPO, env=env, check=False)


def _one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 3, (result.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("imgaudit: error: "), err
    assert "internal error" not in err and not result.stdout
    return err.strip()


@pytest.mark.parametrize("mode", ["close", "reset"])
@pytest.mark.parametrize("where", [0.2, 0.5, 0.9])
def test_44_daemon_stream_dying_midway_exits_3_naming_the_layer(daemon_socket: Any, mode: str, where: float) -> None:
    tmp_path, start = daemon_socket
    top = h.Blob(TOP, TOP)
    archive, _ = _save_archive(tmp_path, top)
    layer_at = archive.find(TOP[:512])
    cut = layer_at + int(len(TOP) * where)  # inside layer 2's member
    server = start(archive, mode, cut)
    line = _one_line(_inspect(Path(server.server_address)))
    assert top.digest[7:19] in line, line  # the layer's member, blobs/sha256/<digest>, is named
    assert all(r.startswith("GET ") for r in server.requests), server.requests  # item 100: never writes


def test_daemon_stream_with_a_corrupt_layer_is_refused(daemon_socket: Any) -> None:
    """The integrity matrix where a daemon stream can carry it: a flipped byte and a truncated layer member."""
    tmp_path, start = daemon_socket
    for case in ("flipped-byte", "truncated-60", "bad-crc"):
        blob = h.corruptions(TOP, "docker-oci")[case]
        (tmp_path / case).mkdir()
        archive, _ = _save_archive(tmp_path / case, blob)
        server = start(archive, "full")
        line = _one_line(_inspect(Path(server.server_address)))
        assert "layer 2/2" in line, (case, line)


def test_a_healthy_fake_daemon_passes(daemon_socket: Any) -> None:
    tmp_path, start = daemon_socket
    archive, _ = _save_archive(tmp_path, h.Blob(TOP, TOP))
    server = start(archive, "full")
    result = _inspect(Path(server.server_address))
    assert result.returncode == 0, result.stderr
    assert [r.split("?")[0].rsplit("/", 2)[-1] for r in server.requests if "/images/" in r] == ["json", "get"]


def test_43_daemon_refusing_the_export_is_one_line(daemon_socket: Any) -> None:
    _, start = daemon_socket
    server = start(b"", "refuse")
    line = _one_line(_inspect(Path(server.server_address)))
    assert "no space left on device" in line


def test_43_image_not_in_the_daemon(daemon_socket: Any) -> None:
    _, start = daemon_socket
    server = start(b"", "full")
    line = _one_line(_inspect(Path(server.server_address), "docker-daemon:nosuch:1"))
    assert "is not in the Docker daemon" in line


def test_43_unreachable_daemon_exits_3_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.sock"
    line = _one_line(_inspect(missing))
    assert f"cannot reach the Docker daemon at unix://{missing}" in line
    listener = socket.socket(socket.AF_UNIX)  # a socket nobody accepts on: connection refused
    listener.bind(str(tmp_path / "dead.sock"))
    listener.close()
    line = _one_line(_inspect(tmp_path / "dead.sock"))
    assert "cannot reach the Docker daemon" in line
