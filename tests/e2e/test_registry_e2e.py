"""Pulls from a real registry (the CNCF distribution server) with no Docker daemon reachable: plain HTTP,
htpasswd behind TLS with a self-signed CA, and token auth; faults injected by a proxy (RELIABILITY.md §3 A).
The CLI runs through `python -m imgaudit`; a canary password must never appear in what it prints.

Skipped without `docker-registry`, `skopeo` or `htpasswd`, unless IMGAUDIT_E2E=1 (then they fail).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.builders import (
    OCI_INDEX,
    ImageSpec,
    f,
    make_layer,
    oci_blobs,
    sha,
    write_docker_archive,
)

try:
    from . import registry_server as rs
except ImportError:  # pytest's rootdir-less import mode
    import registry_server as rs  # type: ignore[no-redef,import-not-found]

REPO = Path(__file__).resolve().parents[2]
USER = f"user-{uuid.uuid4().hex[:8]}"
CANARY = f"canary-{uuid.uuid4().hex}"
TOKEN_USER = f"tok-{uuid.uuid4().hex[:8]}"
MISSING = [name for name, path in (("docker-registry", rs.REGISTRY_BIN), ("skopeo", rs.SKOPEO_BIN),
                                   ("htpasswd", rs.HTPASSWD_BIN)) if not path]

pytestmark = pytest.mark.e2e


def _require_tools() -> None:
    if not MISSING:
        return
    if os.environ.get("IMGAUDIT_E2E") == "1":
        pytest.fail(f"IMGAUDIT_E2E=1 but {', '.join(MISSING)} not installed")
    pytest.skip(f"{', '.join(MISSING)} not installed; set IMGAUDIT_E2E=1 to make this an error")


# -- images -------------------------------------------------------------------------------------


def _spec(arch: str = "amd64", payload: int = 0) -> ImageSpec:
    """A small image; `payload` adds an incompressible file so a blob is big enough to cut midway."""
    noise = os.urandom(payload) if payload else b""
    base = make_layer([f("etc/os-release", "ID=test\nVERSION_ID=1\n"), f(f"etc/{arch}", arch),
                       f("usr/bin/app", b"#!/bin/sh\necho hi\n", mode=0o755)])
    top = make_layer([f("srv/data.bin", noise), f("srv/arch", arch)])
    return ImageSpec(layers=[base, top], entrypoint=["/usr/bin/app"], architecture=arch,
                     variant="v8" if arch == "arm64" else None, compression="tar")


def _write_multi_layout(root: Path, specs: dict[str, ImageSpec], name: str) -> Path:
    """An OCI layout whose index.json names one image index (`name`) listing one manifest per platform:
    the shape `skopeo copy --all oci:DIR:NAME` pushes as a multi-platform index."""
    blobs, inner = oci_blobs(specs, index_platforms=True)
    blobs[sha(inner)] = inner
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    for digest, data in blobs.items():
        (root / "blobs" / "sha256" / digest[7:]).write_bytes(data)
    top = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": sha(inner), "size": len(inner),
         "annotations": {"org.opencontainers.image.ref.name": name}}]}
    (root / "index.json").write_text(json.dumps(top))
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return root


# -- the world: three registries with images pushed ---------------------------------------------


@dataclass
class World:
    tmp: Path
    pki: rs.Pki
    plain: rs.Registry
    tls: rs.Registry
    token: rs.Registry
    tokens: rs.TokenServer
    archives: dict[str, Path]  # image name → docker-archive of the same image
    specs: dict[str, ImageSpec]
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # image name → its archive's report

    def env(self, **extra: str) -> dict[str, str]:
        """No daemon, no user Docker config, no scan cache (a cached layer would never be fetched)."""
        config = self.tmp / "empty-docker-config"
        config.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "IMGAUDIT_"))}
        env.update(DOCKER_HOST="unix:///nonexistent.sock", DOCKER_CONFIG=str(config), IMGAUDIT_CACHE="off")
        env.update(extra)
        return env


def _push_all(world: World) -> None:
    plain_a = world.archives["app"]
    for reg, creds in ((world.plain, None), (world.tls, f"{USER}:{CANARY}"), (world.token, f"{TOKEN_USER}:{CANARY}")):
        rs.skopeo_copy(f"docker-archive:{plain_a}", f"docker://{reg.address}/team/app:v1", creds=creds,
                       preserve_digests=True)
    rs.skopeo_copy(f"docker-archive:{world.archives['big']}", f"docker://{world.plain.address}/big:v1",
                   preserve_digests=True)
    layout = _write_multi_layout(world.tmp / "multi", {"amd": world.specs["amd64"], "arm": world.specs["arm64"]},
                                 "multi")
    rs.skopeo_copy(f"oci:{layout}:multi", f"docker://{world.plain.address}/multi:v1", all_images=True,
                   preserve_digests=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    _require_tools()
    tmp = tmp_path_factory.mktemp("registries")
    specs = {"app": _spec(), "big": _spec(payload=3 << 20), "amd64": _spec("amd64"), "arm64": _spec("arm64")}
    archives = {name: write_docker_archive(tmp / f"{name}.tar", {f"{name}:v1": spec}, shape="oci")
                for name, spec in specs.items()}
    pki = rs.make_pki(tmp / "pki")
    tokens = rs.TokenServer(rs.TokenIssuer(tmp / "token-keys"), {TOKEN_USER: CANARY})
    started: list[Any] = [tokens]
    try:
        plain = rs.start_registry(tmp / "plain")
        started.append(plain)
        tls = rs.start_registry(tmp / "tls", host="127.0.0.2", pki=pki,
                                htpasswd=rs.write_htpasswd(tmp / "htpasswd", USER, CANARY))
        started.append(tls)
        token = rs.start_registry(tmp / "token", token=tokens)
        started.append(token)
        world = World(tmp, pki, plain, tls, token, tokens, archives, specs)
        _push_all(world)
        yield world
    finally:
        for server in reversed(started):
            server.stop()


# -- running the CLI ----------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.out)


def imgaudit(world: World, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Run:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "imgaudit", *args], check=False, cwd=REPO, env=env or world.env(),
                          input=stdin, capture_output=True, text=True, timeout=300)
    return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def inspect_json(world: World, ref: str, *extra: str, **kw: Any) -> Run:
    return imgaudit(world, "inspect", "--format", "json", *extra, ref, **kw)


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report minus where the image came from (the only fields allowed to differ between sources)."""
    image = dict(report["image"])
    for key in ("source", "reference", "manifest_digest"):
        image.pop(key)
    return {**report, "image": image}


def archive_report(world: World, name: str) -> dict[str, Any]:
    if name not in world.reports:
        run = inspect_json(world, f"docker-archive:{world.archives[name]}")
        assert run.code in (0, 1), run.err
        world.reports[name] = comparable(run.json())
    return world.reports[name]


def assert_same_as_archive(world: World, run: Run, name: str) -> None:
    assert run.code in (0, 1), run.err
    report = run.json()
    assert report["image"]["source"] == "registry"
    assert comparable(report) == archive_report(world, name)


# `skopeo copy --preserve-digests docker-archive:… docker://…` keeps the archive's plain tar layers but lists
# them under Docker's gzip media type, so imgaudit warns once per such layer (RELIABILITY.md #30). The images
# of `team/app` and `big` are pushed so; tests of other output set these lines aside, and only these.
_PRESERVED_LAYER = re.compile(r"imgaudit: warning: layer \d+/\d+ sha256:[0-9a-f]{12}: media type "
                              r"application/vnd\.docker\.image\.rootfs\.diff\.tar\.gzip says gzip but the bytes "
                              r"are tar: read by their magic bytes")


def other_stderr(run: Run) -> str:
    """stderr without the media-type warnings the pushed images are known to earn."""
    return "".join(line for line in run.err.splitlines(keepends=True) if not _PRESERVED_LAYER.fullmatch(line.strip()))


def assert_one_line_error(run: Run, *needles: str) -> None:
    """Exit 3, one `imgaudit: error:` line naming the problem, and no credential anywhere."""
    assert run.code == 3, (run.code, run.out, run.err)
    lines = other_stderr(run).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgaudit: error: "), run.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert_no_secrets(run)


def assert_no_secrets(run: Run) -> None:
    pair = base64.b64encode(f"{USER}:{CANARY}".encode()).decode()
    token_pair = base64.b64encode(f"{TOKEN_USER}:{CANARY}".encode()).decode()
    for secret in (CANARY, pair, token_pair, base64.b64encode(CANARY.encode()).decode(), "Bearer ey"):
        assert secret not in run.out and secret not in run.err, f"{secret!r} leaked"


def docker_config(world: World, name: str, config: dict[str, Any]) -> Path:
    path = world.tmp / name
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


# -- the three registries -----------------------------------------------------------------------


def test_plain_registry_equals_docker_archive(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")
    assert run.json()["image"]["reference"] == f"docker://{world.plain.address}/team/app:v1"


def test_plain_registry_ls_equals_docker_archive(world: World) -> None:
    pulled = imgaudit(world, "ls", "--format", "json", f"docker://{world.plain.address}/team/app:v1")
    local = imgaudit(world, "ls", "--format", "json", f"docker-archive:{world.archives['app']}")
    assert pulled.code == 0 and local.code == 0, pulled.err + local.err
    assert pulled.json() == local.json()


def test_pull_by_digest_rehashes_the_manifest(world: World) -> None:
    first = inspect_json(world, f"docker://{world.plain.address}/team/app:v1")
    digest = first.json()["image"]["manifest_digest"]
    run = inspect_json(world, f"docker://{world.plain.address}/team/app@{digest}")
    assert_same_as_archive(world, run, "app")
    assert run.json()["image"]["manifest_digest"] == digest


def test_tls_htpasswd_with_ca_cert_and_password_stdin(world: World) -> None:
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--username", USER, "--password-stdin",
                       "--ca-cert", str(world.pki.ca_cert), stdin=CANARY + "\n")
    assert_same_as_archive(world, run, "app")
    assert_no_secrets(run)


def test_tls_self_signed_fails_closed_without_ca_cert(world: World) -> None:
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--username", USER, "--password-stdin",
                       stdin=CANARY)
    assert_one_line_error(run, "not trusted", "--ca-cert", world.tls.address)


def test_tls_insecure_flag_skips_verification_for_that_registry(world: World) -> None:
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--insecure", "--username", USER,
                       "--password-stdin", stdin=CANARY)
    assert_same_as_archive(world, run, "app")


def test_tls_credentials_from_docker_config_auths(world: World) -> None:
    auth = base64.b64encode(f"{USER}:{CANARY}".encode()).decode()
    config = docker_config(world, "cfg-auths", {"auths": {world.tls.address: {"auth": auth}}})
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--ca-cert", str(world.pki.ca_cert),
                       env=world.env(DOCKER_CONFIG=str(config)))
    assert_same_as_archive(world, run, "app")
    assert_no_secrets(run)


def test_tls_credentials_from_credential_helper(world: World) -> None:
    bin_dir = world.tmp / "helper-bin"
    bin_dir.mkdir(exist_ok=True)
    helper = bin_dir / "docker-credential-imgaudit-test"
    # The helper protocol (docker-credential-helpers): `get` reads the server URL on stdin.
    helper.write_text(f'#!/bin/sh\nread server\necho "{{\\"ServerURL\\":\\"$server\\",'
                      f'\\"Username\\":\\"{USER}\\",\\"Secret\\":\\"{CANARY}\\"}}"\n')
    helper.chmod(0o755)
    config = docker_config(world, "cfg-helper", {"credHelpers": {world.tls.address: "imgaudit-test"}})
    env = world.env(DOCKER_CONFIG=str(config), PATH=f"{bin_dir}:{os.environ['PATH']}")
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--ca-cert", str(world.pki.ca_cert),
                       env=env)
    assert_same_as_archive(world, run, "app")
    assert_no_secrets(run)


def test_token_auth_with_password_stdin(world: World) -> None:
    before = len(world.tokens.log)
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1", "--username", TOKEN_USER,
                       "--password-stdin", stdin=CANARY)
    assert_same_as_archive(world, run, "app")
    assert_no_secrets(run)
    asked = world.tokens.log[before:]
    assert asked, "no token was requested"
    assert all("scope=repository%3Ateam%2Fapp%3Apull" in e["path"] for e in asked), asked
    assert all(e["headers"].get("Authorization", "").startswith("Basic ") for e in asked)
    assert len(asked) == 1, "the token is cached for the scope"


def test_token_auth_from_docker_config(world: World) -> None:
    auth = base64.b64encode(f"{TOKEN_USER}:{CANARY}".encode()).decode()
    config = docker_config(world, "cfg-token", {"auths": {world.token.address: {"auth": auth}}})
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1", env=world.env(DOCKER_CONFIG=str(config)))
    assert_same_as_archive(world, run, "app")


def test_token_auth_with_an_identity_token(world: World) -> None:
    refresh = f"refresh-{CANARY}"
    world.tokens.refresh_tokens[refresh] = TOKEN_USER
    config = docker_config(world, "cfg-identity", {"auths": {world.token.address: {"identitytoken": refresh}}})
    before = len(world.tokens.log)
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1", "--debug",
                       env=world.env(DOCKER_CONFIG=str(config)))
    assert_same_as_archive(world, run, "app")
    assert_no_secrets(run)
    assert [e["method"] for e in world.tokens.log[before:]] == ["POST"]


# -- multi-platform index -----------------------------------------------------------------------


def test_multi_platform_index_picks_the_requested_platform(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/multi:v1", "--platform", "linux/arm64")
    assert_same_as_archive(world, run, "arm64")
    assert run.json()["image"]["platform"]["architecture"] == "arm64"


def test_multi_platform_index_defaults_to_the_host_platform(world: World) -> None:
    import platform

    if platform.machine() not in ("x86_64", "amd64"):
        pytest.skip("the index holds amd64 and arm64; this test expects an amd64 host")
    run = inspect_json(world, f"docker://{world.plain.address}/multi:v1")
    assert_same_as_archive(world, run, "amd64")


def _put_wide_index(world: World, tag: str, count: int) -> bytes:
    """Pushes to `multi:TAG` an index listing its amd64 manifest and `count - 1` more platforms (all the same
    manifest, which the registry holds, so it accepts the index); returns the bytes it then serves."""
    body, _ = _served_manifest(world, "multi", "v1")
    (amd,) = [m for m in json.loads(body)["manifests"] if m["platform"]["architecture"] == "amd64"]
    manifests = [amd] + [{**amd, "platform": {"os": "linux", "architecture": f"arch{i}"}} for i in range(1, count)]
    data = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).encode()
    request = urllib.request.Request(f"http://{world.plain.address}/v2/multi/manifests/{tag}", data=data,
                                     method="PUT", headers={"Content-Type": OCI_INDEX})
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 201
    served, digest = _served_manifest(world, "multi", tag)
    assert served == data and digest == sha(data)
    return served


@pytest.mark.parametrize(("count", "refused"), [(1000, False), (10_000, True)])
def test_85_index_manifest_count_cap_through_the_registry(world: World, count: int, refused: bool) -> None:
    """RELIABILITY.md #85: an index of 10 000 manifests (1.9 MB, under the 4 MiB byte cap) stops at the count
    cap with one line naming both; 1 000, the cap itself, is read."""
    served = _put_wide_index(world, f"wide{count}", count)
    assert len(served) < 4 << 20
    run = inspect_json(world, f"docker://{world.plain.address}/multi:wide{count}", "--platform", "linux/amd64")
    if refused:
        assert_one_line_error(run, "the index lists 10000 manifests, over the cap of 1000; refusing to read it")
    else:
        assert_same_as_archive(world, run, "amd64")


# -- failures: exit 3, one line, what to do -----------------------------------------------------


def test_unknown_platform(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/multi:v1", "--platform", "linux/s390x")
    assert_one_line_error(run, "linux/s390x", "linux/amd64", "linux/arm64")


def test_missing_repository(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/nope/nothing:v1")
    assert_one_line_error(run, "no repository", "nope/nothing")


def test_missing_tag(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/team/app:v9")
    assert_one_line_error(run, "no tag 'v9'", "v1")


def test_missing_digest(world: World) -> None:
    digest = "sha256:" + "0" * 64
    run = inspect_json(world, f"docker://{world.plain.address}/team/app@{digest}")
    assert_one_line_error(run, "no manifest", digest)


def test_registry_down(world: World) -> None:
    port = rs.free_port()
    run = inspect_json(world, f"docker://127.0.0.1:{port}/team/app:v1")
    assert_one_line_error(run, f"127.0.0.1:{port}", "connection refused")
    assert run.seconds < 30


@pytest.mark.parametrize("debug", [False, True])
def test_wrong_password_htpasswd(world: World, debug: bool) -> None:
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--username", USER, "--password-stdin",
                       "--ca-cert", str(world.pki.ca_cert), *(["--debug"] if debug else []),
                       stdin=CANARY + "-wrong")
    assert run.code == 3
    assert "refused the credentials" in run.err and "--username/--password-stdin" in run.err
    assert USER not in run.err
    assert_no_secrets(run)
    if not debug:
        assert_one_line_error(run)


@pytest.mark.parametrize("debug", [False, True])
def test_wrong_password_token_auth(world: World, debug: bool) -> None:
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1", "--username", TOKEN_USER,
                       "--password-stdin", *(["--debug"] if debug else []), stdin=CANARY + "-wrong")
    assert run.code == 3
    assert "refused the credentials" in run.err and "token server" in run.err
    assert TOKEN_USER not in run.err
    assert_no_secrets(run)


def test_no_credentials_for_a_token_registry(world: World) -> None:
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1")
    assert_one_line_error(run, "requires authentication", "token server", "docker login")


def test_anonymous_token_without_access(world: World) -> None:
    world.tokens.anonymous, world.tokens.anonymous_pull = True, False
    try:
        run = inspect_json(world, f"docker://{world.token.address}/team/app:v1")
    finally:
        world.tokens.anonymous, world.tokens.anonymous_pull = False, True
    assert_one_line_error(run, "requires authentication", "HTTP 401")


def test_no_credentials_for_a_private_registry(world: World) -> None:
    run = inspect_json(world, f"docker://{world.tls.address}/team/app:v1", "--ca-cert", str(world.pki.ca_cert))
    assert_one_line_error(run, "requires authentication", "docker login")


def test_password_stdin_needs_username(world: World) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/team/app:v1", "--password-stdin", stdin=CANARY)
    assert run.code == 2 and "--username" in run.err
    assert_no_secrets(run)


def test_debug_success_prints_no_secret(world: World) -> None:
    run = inspect_json(world, f"docker://{world.token.address}/team/app:v1", "--debug", "--username", TOKEN_USER,
                       "--password-stdin", stdin=CANARY)
    assert run.code in (0, 1), run.err
    assert_no_secrets(run)


# -- integrity ----------------------------------------------------------------------------------


def test_corrupted_blob_in_storage_names_the_layer(world: World, tmp_path: Path) -> None:
    registry = rs.start_registry(tmp_path / "reg")
    try:
        spec = _spec(payload=4096)
        archive = write_docker_archive(tmp_path / "c.tar", {"c:v1": spec}, shape="oci")
        rs.skopeo_copy(f"docker-archive:{archive}", f"docker://{registry.address}/c:v1", preserve_digests=True)
        digest = sha(spec.layers[1])
        rs.flip_byte(registry.blob_path(digest))
        run = inspect_json(world, f"docker://{registry.address}/c:v1")
        assert_one_line_error(run, "layer 2/2", digest, "digest mismatch")
    finally:
        registry.stop()


# -- faults through the proxy -------------------------------------------------------------------


@pytest.fixture
def proxy(world: World) -> Iterator[rs.FaultProxy]:
    server = rs.FaultProxy(world.plain.address)
    yield server
    server.stop()


def _big_layer(world: World) -> str:
    return sha(world.specs["big"].layers[1])


def test_429_twice_then_200_succeeds(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults += [rs.Fault(r"/manifests/", "status", times=2, status=429, retry_after="1"),
                     rs.Fault(r"/blobs/", "status", times=2, status=503, retry_after="1")]
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")
    assert len(proxy.requests_to(r"/manifests/v1$")) == 3
    assert run.seconds >= 4  # four waits of Retry-After: 1
    accept = proxy.requests_to(r"/manifests/")[0]["headers"]["Accept"]
    for media_type in ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json",
                       "application/vnd.docker.distribution.manifest.v2+json"):
        assert media_type in accept
    assert {e["method"] for e in proxy.log} == {"GET"}


def test_429_forever_is_bounded(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "status", times=1000, status=429, retry_after="1"))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "rate limited (HTTP 429)", "after 5 attempts")
    assert len(proxy.requests_to(r"/manifests/")) == 5


def test_retry_after_too_long_fails_fast(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "status", times=1000, status=429, retry_after="86400"))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "asks to wait 86400 s")
    assert run.seconds < 20


def test_cut_blob_resumes_with_range(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults.append(rs.Fault(f"/blobs/{digest}", "cut", times=1, fraction=0.5))
    run = inspect_json(world, f"docker://{proxy.address}/big:v1", "--jobs", "4")
    assert_same_as_archive(world, run, "big")
    ranges = [e["headers"].get("Range") for e in proxy.requests_to(f"/blobs/{digest}")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) > 0


def test_cut_blob_restarts_when_range_is_ignored(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults += [rs.Fault(f"/blobs/{digest}", "cut", times=1, fraction=0.4),
                     rs.Fault(f"/blobs/{digest}", "ignore-range", times=1)]
    run = inspect_json(world, f"docker://{proxy.address}/big:v1")
    assert_same_as_archive(world, run, "big")
    assert len(proxy.requests_to(f"/blobs/{digest}")) == 2


def test_resume_answered_with_another_range_restarts(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults += [rs.Fault(f"/blobs/{digest}", "cut", times=1, fraction=0.6),
                     rs.Fault(f"/blobs/{digest}", "shift-range", times=1)]
    run = inspect_json(world, f"docker://{proxy.address}/big:v1")
    assert_same_as_archive(world, run, "big")
    ranges = [e["headers"].get("Range") for e in proxy.requests_to(f"/blobs/{digest}")]
    assert len(ranges) == 3 and ranges[0] is None and ranges[1] and ranges[2] is None


def test_blob_longer_than_its_descriptor(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults.append(rs.Fault(f"/blobs/{digest}", "pad", times=1))
    run = inspect_json(world, f"docker://{proxy.address}/big:v1")
    assert_one_line_error(run, "layer 2/2", "more than the", "bytes the manifest lists")


def test_blob_corrupted_in_flight(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults.append(rs.Fault(f"/blobs/{digest}", "flip", times=1))
    run = inspect_json(world, f"docker://{proxy.address}/big:v1")
    assert_one_line_error(run, digest, "digest mismatch")


def test_blob_cut_every_time_fails_with_byte_counts(world: World, proxy: rs.FaultProxy) -> None:
    digest = _big_layer(world)
    proxy.faults.append(rs.Fault(f"/blobs/{digest}", "cut", times=1000, fraction=0.0))
    run = inspect_json(world, f"docker://{proxy.address}/big:v1")
    assert_one_line_error(run, "layer 2/2", "got 0 bytes, want")


def test_huge_manifest_is_refused_not_truncated(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "body", body=b" " * (5 << 20)))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "manifest", "exceeds 4 MiB")


@pytest.mark.parametrize(("count", "shown"), [(60_000, "it has 60000 tags: t0000000, t0000001"),
                                              (120_000, "its tag list is over the 1 MiB cap, not shown")])
def test_85_a_megabyte_of_tags_leaves_the_missing_tag_the_error(world: World, proxy: rs.FaultProxy, count: int,
                                                                 shown: str) -> None:
    """Tags are listed only to say which exist when a tag is missing: a list near or over its 1 MiB cap gives
    the same one line, with the count or with the cap."""
    tags = json.dumps({"name": "team/app", "tags": [f"t{i:07d}" for i in range(count)]}).encode()
    assert (len(tags) > 1 << 20) == (count > 100_000)
    proxy.faults.append(rs.Fault(r"/tags/list", "body", body=tags))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:nope")
    assert_one_line_error(run, "has no tag 'nope'", shown, "check the tag")
    assert len(run.err) < 400


def test_pull_by_digest_rejects_another_manifest(world: World, proxy: rs.FaultProxy) -> None:
    wanted = "sha256:" + "1" * 64
    proxy.faults.append(rs.Fault(r"/manifests/sha256:", "body", body=b'{"schemaVersion": 2}'))
    run = inspect_json(world, f"docker://{proxy.address}/team/app@{wanted}")
    assert_one_line_error(run, wanted, sha(b'{"schemaVersion": 2}'))


# -- Docker-Content-Digest: the bytes decide (RELIABILITY.md #12) ---------------------------------

MANIFEST_ACCEPT = ", ".join(("application/vnd.oci.image.index.v1+json",
                             "application/vnd.docker.distribution.manifest.list.v2+json",
                             "application/vnd.oci.image.manifest.v1+json",
                             "application/vnd.docker.distribution.manifest.v2+json"))


def _served_manifest(world: World, repository: str, reference: str) -> tuple[bytes, str]:
    """The manifest bytes the registry itself serves for `reference`, and the Docker-Content-Digest it sends."""
    request = urllib.request.Request(f"http://{world.plain.address}/v2/{repository}/manifests/{reference}",
                                     headers={"Accept": MANIFEST_ACCEPT})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.read(), resp.headers.get("Docker-Content-Digest", "")


def _image_manifest_digest(world: World, repository: str, arch: str | None) -> str:
    """sha256 of the image manifest `v1` resolves to (through the index for `arch`), checked against what the
    honest registry says: the ground truth the faults below must not move."""
    body, sent = _served_manifest(world, repository, "v1")
    assert sent == sha(body)
    if arch is None:
        return sent
    (digest,) = [m["digest"] for m in json.loads(body)["manifests"] if m["platform"]["architecture"] == arch]
    body, sent = _served_manifest(world, repository, digest)
    assert sent == sha(body) == digest
    return digest


# (repository, --platform, the archive whose report the pull must equal): a plain manifest by tag, and an
# index by tag whose platform manifest is then fetched by digest
BY_TAG = [("team/app", None, "app"), ("multi", "arm64", "arm64")]


@pytest.mark.parametrize(("repository", "arch", "archive"), BY_TAG)
def test_12_missing_content_digest_by_tag_is_computed(world: World, proxy: rs.FaultProxy, repository: str,
                                                       arch: str | None, archive: str) -> None:
    expected = _image_manifest_digest(world, repository, arch)
    proxy.faults.append(rs.Fault(r"/manifests/", "digest-header", times=1000, digest=""))
    run = inspect_json(world, f"docker://{proxy.address}/{repository}:v1",
                       *(["--platform", f"linux/{arch}"] if arch else []))
    assert_same_as_archive(world, run, archive)
    assert run.json()["image"]["manifest_digest"] == expected
    assert other_stderr(run) == ""
    manifests = proxy.requests_to(r"/manifests/")
    assert len(manifests) == (2 if arch else 1) and all(e["digest_sent"] == "" for e in manifests)
    assert {e["method"] for e in proxy.log} == {"GET"}


@pytest.mark.parametrize("wrong", [sha(b"other bytes"), "sha256:\x1b[31mnot-a-digest"])
@pytest.mark.parametrize(("repository", "arch", "archive"), BY_TAG)
def test_12_wrong_content_digest_by_tag_warns_and_reports_the_computed_digest(
        world: World, proxy: rs.FaultProxy, repository: str, arch: str | None, archive: str, wrong: str) -> None:
    expected = _image_manifest_digest(world, repository, arch)
    served, _ = _served_manifest(world, repository, "v1")
    proxy.faults.append(rs.Fault(r"/manifests/v1$", "digest-header", times=1000, digest=wrong))
    run = inspect_json(world, f"docker://{proxy.address}/{repository}:v1",
                       *(["--platform", f"linux/{arch}"] if arch else []))
    assert_same_as_archive(world, run, archive)
    assert run.json()["image"]["manifest_digest"] == expected
    lines = other_stderr(run).splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgaudit: warning: ") and "\x1b" not in run.err, run.err
    for needle in ("Docker-Content-Digest", "v1", sha(served), wrong.replace("\x1b", "\\x1b")):
        assert needle in lines[0], lines[0]
    assert [e["digest_sent"] for e in proxy.requests_to(r"/manifests/v1$")] == [wrong]


@pytest.mark.parametrize("header", ["honest", "missing", "wrong"])
def test_12_pull_by_digest_rejects_altered_bytes_whatever_the_header_says(world: World, proxy: rs.FaultProxy,
                                                                           header: str) -> None:
    wanted = _image_manifest_digest(world, "team/app", None)
    served, _ = _served_manifest(world, "team/app", wanted)
    flipped = bytearray(served)
    flipped[len(served) // 2] ^= 0xFF  # what the proxy's `flip` sends
    sent = {"honest": None, "missing": "", "wrong": sha(bytes(flipped))}[header]
    proxy.faults.append(rs.Fault(r"/manifests/sha256:", "flip", digest=sent))
    run = inspect_json(world, f"docker://{proxy.address}/team/app@{wanted}")
    assert_one_line_error(run, wanted, sha(bytes(flipped)))
    (get,) = proxy.requests_to(r"/manifests/")
    assert get["digest_sent"] == (wanted if sent is None else sent)


def test_schema1_manifest_is_refused_clearly(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "body", content_type="application/vnd.docker.distribution"
                                 ".manifest.v1+prettyjws", body=b'{"schemaVersion": 1}'))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "schema 1")


def test_html_instead_of_a_manifest(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "body", content_type="text/html", body=b"<html>login</html>"))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "not an image manifest (got text/html)")


def test_redirect_to_another_host_gets_no_credentials(world: World) -> None:
    storage = rs.FaultProxy(world.plain.address, host="127.0.0.2")
    front = rs.FaultProxy(world.plain.address, require_basic=(USER, CANARY),
                          faults=[rs.Fault(r"/blobs/", "redirect", times=100,
                                           target=f"http://{storage.address}")])
    with rs.running(storage, front):
        run = inspect_json(world, f"docker://{front.address}/team/app:v1", "--debug", "--username", USER,
                           "--password-stdin", stdin=CANARY)
        assert_same_as_archive(world, run, "app")
        assert_no_secrets(run)
        assert storage.requests_to(r"/blobs/"), "nothing was redirected"
        assert all("Authorization" not in e["headers"] for e in storage.log)
        assert any("Authorization" in e["headers"] for e in front.requests_to(r"/manifests/"))




@pytest.mark.parametrize("path", [r"/manifests/v1$", r"/blobs/"])
def test_a_content_length_of_other_digits_is_no_length(world: World, proxy: rs.FaultProxy, path: str) -> None:
    """`Content-Length: ²`: str.isdigit takes it and int() does not (an internal error until the thirteenth
    round). http.client then reads to the end of the connection, and so does imgaudit: the image as it is."""
    proxy.faults.append(rs.Fault(path, "length", times=100, length="\u00b2"))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")
    assert proxy.requests_to(path), "the fault was not reached"


@pytest.mark.parametrize("location", ["http://[bad", "http://u:SECRET@[::1", "//[x]y"])
def test_a_redirect_to_a_malformed_url_is_one_line_of_error(world: World, location: str) -> None:
    """A registry (or a proxy before it) answering a blob GET with a `Location` no URL parser accepts: the
    redirect code and the redaction of URLs in messages both raised ValueError (thirteenth round's fuzzing
    found it in the redaction), an internal error."""
    front = rs.FaultProxy(world.plain.address, faults=[rs.Fault(r"/blobs/", "redirect", times=100,
                                                                   target=location)])
    with rs.running(front):
        run = inspect_json(world, f"docker://{front.address}/team/app:v1")
    assert_one_line_error(run, "redirect")
    assert "SECRET" not in run.err and "Traceback" not in run.err

# -- bare names: the daemon if it has the image, else the registry -------------------------------


def test_bare_name_falls_back_to_the_registry_without_a_daemon(world: World) -> None:
    run = inspect_json(world, f"{world.plain.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")


def test_from_daemon_forces_the_daemon(world: World) -> None:
    run = inspect_json(world, f"{world.plain.address}/team/app:v1", "--from", "daemon")
    assert_one_line_error(run, "Docker daemon")


def test_from_registry_conflicts_with_an_archive(world: World) -> None:
    run = inspect_json(world, f"docker-archive:{world.archives['app']}", "--from", "registry")
    assert run.code == 2 and "--from registry" in run.err
