"""Real registries on loopback for the e2e tests: the CNCF distribution server (`docker-registry`) in three
configurations (plain HTTP, htpasswd behind TLS, token auth), a token server that signs JWTs the way
distribution's `registry/auth/token` verifies them, and a fault-injecting proxy (RELIABILITY.md §3 A).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.client
import ipaddress
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REGISTRY_BIN = shutil.which("docker-registry")
SKOPEO_BIN = shutil.which("skopeo")
HTPASSWD_BIN = shutil.which("htpasswd")
TOKEN_ISSUER = "imgaudit-test-issuer"
TOKEN_SERVICE = "imgaudit-test-registry"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# -- PKI ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A self-signed CA and a server certificate it signed for the loopback names."""

    ca_cert: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _self_signed_ca(common_name: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "127.0.0.2", "localhost")) -> Pki:
    """CA + server certificate with the hosts as SANs (Go's TLS ignores the CN)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _self_signed_ca("imgaudit test CA")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(_key_pem(key))
    return pki


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    """distribution accepts bcrypt entries only, hence `-B`."""
    assert HTPASSWD_BIN, "apache2-utils (htpasswd) is needed"
    out = subprocess.run([HTPASSWD_BIN, "-Bbn", user, password], check=True, capture_output=True, text=True)
    path.write_text(out.stdout)
    return path


# -- token server -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Signs RS256 JWTs with an `x5c` header: distribution verifies the chain against `rootcertbundle`."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._key, self._cert = _self_signed_ca("imgaudit token signer")
        self.bundle = directory / "token-signer.pem"
        self.bundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def sign(self, subject: str, access: list[dict[str, Any]], ttl: int = 300) -> str:
        now = int(time.time())
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        claims = {"iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE, "exp": now + ttl, "nbf": now - 5,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def _scope_access(scopes: list[str], allow_push: bool) -> list[dict[str, Any]]:
    access = []
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        wanted = [a for a in actions.split(",") if a == "pull" or (allow_push and a in ("push", "delete"))]
        if kind == "repository" and name and wanted:
            access.append({"type": kind, "name": name, "actions": wanted})
    return access


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self.log: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def record(self, handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        entry = {"method": handler.command, "path": handler.path, "headers": dict(handler.headers.items()),
                 "time": time.monotonic()}
        with self.lock:
            self.log.append(entry)
        return entry


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Tests read the recorded log instead of stderr noise."""

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def stream(self, status: int, size: int, *, chunked: bool, headers: dict[str, str] | None = None) -> int:
        """`size` filler bytes in 1 MiB writes (declared, or chunked with no length): memory stays flat on this
        side too. Returns how many bytes went out before the client hung up."""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))))
        self.end_headers()
        piece, sent = b"x" * (1 << 20), 0
        self.close_connection = True
        with contextlib.suppress(OSError):
            while sent < size:
                data = piece[: size - sent]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                sent += len(data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        return sent

    def trickle(self, data: bytes, interval: float, limit: float = 120.0) -> None:
        """`data` one byte per `interval` seconds until sent, the client hangs up, or `limit` seconds pass."""
        self.close_connection = True
        deadline = time.monotonic() + limit
        with contextlib.suppress(OSError):
            for byte in data:
                if time.monotonic() > deadline:
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(interval)

    def hold(self, limit: float = 120.0) -> None:
        """Accept, read the request, send nothing: wait until the client hangs up or `limit` seconds pass."""
        self.close_connection = True
        self.connection.settimeout(limit)
        with contextlib.suppress(OSError):
            while self.connection.recv(1024):
                pass


def jwt_access(authorization: str) -> set[tuple[str, str]]:
    """(repository, action) pairs a bearer JWT grants; its signature is the registry's business."""
    token = authorization.removeprefix("Bearer ")
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return set()
    return {(a["name"], action) for a in claims.get("access", []) for action in a.get("actions", [])}


def scope_pairs(scope: str) -> set[tuple[str, str]]:
    """`repository:a:pull repository:b:pull,push` → {(a, pull), (b, pull), (b, push)}."""
    pairs = set()
    for item in scope.split():
        _, _, rest = item.partition(":")
        name, _, actions = rest.rpartition(":")
        pairs |= {(name, action) for action in actions.split(",")}
    return pairs


class _TokenHandler(_Quiet):
    server: TokenServer

    def do_GET(self) -> None:
        self.server.record(self)
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        user = self._user()
        if user is None:
            self.reply(401, b'{"details":"bad credentials"}', {"Content-Type": "application/json"})
            return
        if self.server.fail_status:
            self.reply(self.server.fail_status, b"token server down")
            return
        if self.server.huge is not None:
            self.server.huge_sent = self.stream(200, self.server.huge[0], chunked=self.server.huge[1],
                                                headers={"Content-Type": "application/json"})
            return
        granted = bool(user) or self.server.anonymous_pull
        access = _scope_access(query.get("scope", []), allow_push=bool(user)) if granted else []
        access = [a for a in access if a["name"] not in self.server.denied]
        token = self.server.issuer.sign(user or "anonymous", access)
        body = json.dumps({"token": token, "access_token": token, "expires_in": 300})
        self.reply(200, body.encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        """The OAuth2 refresh-token grant docker uses for identity tokens (distribution docs/spec/auth/oauth.md)."""
        self.server.record(self)
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        user = self.server.refresh_tokens.get(form.get("refresh_token", [""])[0])
        if form.get("grant_type") != ["refresh_token"] or user is None:
            self.reply(400, b'{"error":"invalid_grant"}', {"Content-Type": "application/json"})
            return
        token = self.server.issuer.sign(user, _scope_access(form.get("scope", []), allow_push=True))
        body = json.dumps({"access_token": token, "expires_in": 300, "refresh_token": "rotated"})
        self.reply(200, body.encode(), {"Content-Type": "application/json"})

    def _user(self) -> str | None:
        """'' for anonymous (if allowed), the user name for good credentials, None to refuse."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return "" if self.server.anonymous else None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.server.users.get(user) == password else None


class TokenServer(_Recorder):
    """The realm of a token-auth registry; `users` may pull and push, anonymous callers may pull."""

    def __init__(self, issuer: TokenIssuer, users: dict[str, str], *, anonymous: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.issuer = issuer
        self.users = users
        self.refresh_tokens: dict[str, str] = {}  # identity token → user
        self.anonymous = anonymous
        self.anonymous_pull = True  # False: anonymous callers get a token granting nothing
        self.fail_status = 0
        self.denied: set[str] = set()  # repositories no token grants anything on
        self.huge: tuple[int, bool] | None = None  # (size, chunked): a 200 of that many filler bytes
        self.huge_sent = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/token"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


# -- the registry -------------------------------------------------------------------------------


@dataclass
class Registry:
    host: str
    port: int
    root: Path
    scheme: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def blob_path(self, digest: str) -> Path:
        hexa = digest.removeprefix("sha256:")
        return self.root / "docker/registry/v2/blobs/sha256" / hexa[:2] / hexa / "data"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _config(root: Path, address: str, *, pki: Pki | None, htpasswd: Path | None,
            token: TokenServer | None) -> str:
    lines = [
        "version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
        "storage:", "  filesystem:", f"    rootdirectory: {root}", "  delete:", "    enabled: false",
        "http:", f"  addr: {address}", f"  secret: {uuid.uuid4().hex}",
    ]
    if pki:
        lines += ["  tls:", f"    certificate: {pki.cert}", f"    key: {pki.key}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: imgaudit-test", f"    path: {htpasswd}"]
    if token:
        lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {TOKEN_SERVICE}",
                  f"    issuer: {TOKEN_ISSUER}", f"    rootcertbundle: {token.issuer.bundle}"]
    return "\n".join(lines) + "\n"


def start_registry(workdir: Path, *, host: str = "127.0.0.1", pki: Pki | None = None,
                   htpasswd: Path | None = None, token: TokenServer | None = None) -> Registry:
    """Starts `docker-registry serve` with its own config and storage under `workdir`; waits until it answers."""
    assert REGISTRY_BIN, "docker-registry is not installed"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port(host)
    root = workdir / "storage"
    config = workdir / "config.yml"
    config.write_text(_config(root, f"{host}:{port}", pki=pki, htpasswd=htpasswd, token=token))
    log_path = workdir / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    registry = Registry(host, port, root, "https" if pki else "http", process, log_path)
    _wait_ready(registry)
    return registry


def _wait_ready(registry: Registry, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if registry.process.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {registry.log_path.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection((registry.host, registry.port), timeout=1):
            return
        time.sleep(0.05)
    registry.stop()
    raise RuntimeError("docker-registry did not start listening")


def skopeo_copy(source: str, dest: str, *, creds: str | None = None, all_images: bool = False,
                preserve_digests: bool = False, cert_dir: Path | None = None) -> None:
    """Pushes with skopeo; `preserve_digests` keeps uncompressed layers as they are (no re-compression)."""
    assert SKOPEO_BIN, "skopeo is not installed"
    cmd = [SKOPEO_BIN, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
    if creds:
        cmd += ["--dest-creds", creds]
    if all_images:
        cmd += ["--all"]
    if preserve_digests:
        cmd += ["--preserve-digests"]
    if cert_dir:
        cmd += ["--dest-cert-dir", str(cert_dir)]
    subprocess.run([*cmd, source, dest], check=True, capture_output=True, timeout=120)


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flips one byte (the middle one by default) of a file in the registry's storage."""
    data = bytearray(path.read_bytes())
    where = len(data) // 2 if offset is None else offset
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))


# -- fault-injecting proxy ----------------------------------------------------------------------


@dataclass
class Fault:
    """A fault applied to the next `times` GETs whose path matches `path` (a regex).

    kinds: `status` (answer `status`, with `Retry-After` when set), `cut` (send the headers and the first `fraction`
    of the body, then drop the connection), `ignore-range` (forward without the Range header, so a resume gets a
    200), `shift-range` (forward a Range request as `bytes=0-`, so a resume gets a 206 of the wrong range), `flip`
    (flip the body's middle byte), `pad` (4 KiB more than the blob, honestly declared), `redirect` (307 to `target`
    + path), `body` (answer 200 with `content_type` and `body`), `digest-header` (forward as is but for `digest`),
    `length` (forward as is but for `length`), `huge` (answer `status` with `size` filler bytes, declared or
    `chunked`), `silent` (read the request, send nothing), `trickle-headers` (the status line and headers one byte
    per `interval` seconds), `trickle-body` (the registry's headers at once, then its body one byte per `interval`
    seconds), `scope` (unless the request's bearer token grants every pair of `scope`, answer `status` with a bearer
    challenge naming `scope` and `error="insufficient_scope"`, realm `target`; else forward).
    `digest`, on any kind that forwards, replaces the registry's `Docker-Content-Digest` (`""` leaves it out);
    `length` its `Content-Length` (the connection then closes after the body, which is sent whole).
    A `status` answer carries `body` when one is given.
    """

    path: str
    kind: str
    times: int = 1
    status: int = 429
    retry_after: str | None = "1"
    fraction: float = 0.5
    target: str = ""
    content_type: str = "application/json"
    body: bytes = b""
    digest: str | None = None
    size: int = 0
    chunked: bool = False
    interval: float = 1.0
    scope: str = ""
    length: str | None = None
    hits: int = field(default=0)


class _ProxyHandler(_Quiet):
    server: FaultProxy
    entry: dict[str, Any]  # this request's record in the server's log

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.entry = self.server.record(self)
        if not self._authorized():
            self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}',
                       {"WWW-Authenticate": 'Basic realm="imgaudit-proxy"', "Content-Type": "application/json"})
            return
        fault = self.server.take_fault(self.path)
        if fault and fault.kind == "status":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self.reply(fault.status, fault.body or b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}',
                       {**headers, "Content-Type": fault.content_type})
            return
        if fault and fault.kind == "huge":
            self.entry["bytes_sent"] = self.stream(fault.status, fault.size, chunked=fault.chunked,
                                                   headers={"Content-Type": fault.content_type})
            return
        if fault and fault.kind == "silent":
            self.hold()
            return
        if fault and fault.kind == "trickle-headers":
            self.trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                         fault.interval)
            return
        if fault and fault.kind == "scope" and not scope_pairs(fault.scope) <= jwt_access(
                self.headers.get("Authorization", "")):
            challenge = (f'Bearer realm="{fault.target}",service="{TOKEN_SERVICE}",scope="{fault.scope}",'
                         'error="insufficient_scope"')
            self.reply(fault.status, b'{"errors":[{"code":"DENIED","message":"insufficient scope"}]}',
                       {"WWW-Authenticate": challenge, "Content-Type": "application/json"})
            return
        if fault and fault.kind == "redirect":
            self.reply(307, b"", {"Location": fault.target + self.path})
            return
        if fault and fault.kind == "body":
            self.reply(200, fault.body, {"Content-Type": fault.content_type})
            return
        self._forward(fault)

    def _authorized(self) -> bool:
        wanted = self.server.require_basic
        if wanted is None or not self.path.startswith("/v2/"):
            return True
        expected = "Basic " + base64.b64encode(f"{wanted[0]}:{wanted[1]}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def _forward(self, fault: Fault | None) -> None:
        conn = http.client.HTTPConnection(self.server.upstream, timeout=30)
        wanted = ("accept", "range", "authorization") if self.server.forward_auth else ("accept", "range")
        headers = {k: v for k, v in self.headers.items() if k.lower() in wanted}
        if fault and fault.kind == "ignore-range":
            headers.pop("Range", None)
        if fault and fault.kind == "shift-range" and "Range" in headers:
            headers["Range"] = "bytes=0-"
        conn.request(self.command, self.path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        declared = int(resp.getheader("Content-Length") or len(body))
        if fault and fault.kind == "pad":
            body += b"\0" * 4096
            declared = len(body)
        self.send_response(resp.status)
        forwarded = {name: resp.getheader(name, "") for name in (
            "Content-Type", "Content-Range", "Docker-Content-Digest", "Location", "WWW-Authenticate",
            "Docker-Distribution-Api-Version")}
        if fault and fault.digest is not None:
            forwarded["Docker-Content-Digest"] = fault.digest
        self.entry["digest_sent"] = forwarded["Docker-Content-Digest"]  # what the client was told
        for name, value in forwarded.items():
            if value:
                self.send_header(name, value)
        if fault and fault.length is not None:
            self.send_header("Content-Length", fault.length)
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(declared))
        self.end_headers()
        if self.command == "HEAD":
            return
        self._send_body(body, fault)

    def _send_body(self, body: bytes, fault: Fault | None) -> None:
        if fault and fault.kind == "flip" and body:
            flipped = bytearray(body)
            flipped[len(body) // 2] ^= 0xFF
            body = bytes(flipped)
        if fault and fault.kind == "trickle-body":
            self.trickle(body, fault.interval)
            return
        if fault and fault.kind == "cut":
            self.wfile.write(body[: int(len(body) * fault.fraction)])
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class FaultProxy(_Recorder):
    """Forwards GET/HEAD to a plain-HTTP registry, applying `faults` in order; records every request.

    `require_basic=(user, password)` makes it answer 401 + `WWW-Authenticate: Basic` like an htpasswd
    registry, so credential handling can be watched on the wire; `forward_auth` passes the client's
    Authorization on, for a registry that checks tokens itself.
    """

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", faults: list[Fault] | None = None,
                 require_basic: tuple[str, str] | None = None, forward_auth: bool = False) -> None:
        super().__init__((host, 0), _ProxyHandler)
        self.upstream = upstream
        self.faults = list(faults or [])
        self.require_basic = require_basic
        self.forward_auth = forward_auth
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.hits < fault.times and re.search(fault.path, path):
                    fault.hits += 1
                    return fault
        return None

    def requests_to(self, pattern: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.log if re.search(pattern, e["path"])]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def running(*servers: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for server in servers:
            server.stop()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
