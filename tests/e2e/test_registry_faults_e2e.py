"""Registry faults of RELIABILITY.md §3 A against the real distribution server: status codes (#4), huge token,
error and config bodies (#14), `insufficient_scope` (#18), slow loris (#21) and the Accept list (#23). Faults come
from the proxy of registry_server.py in front of the real server, or from its token server: the HTTP servers a
registry cannot be made to imitate (trickling headers, 100 MB bodies) are real servers written there, never a
stand-in for imgaudit's own code. Every run is the CLI in a subprocess; credentials are canaries.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.builders import sha
from tests.unit.test_limits import measure

try:
    from . import registry_server as rs
    from . import test_registry_e2e as base
except ImportError:  # pytest's rootdir-less import mode
    import registry_server as rs  # type: ignore[no-redef,import-not-found]
    import test_registry_e2e as base  # type: ignore[no-redef,import-not-found]

World = base.World
world = base.world  # the same module-scoped world of three registries, one for this module
assert_one_line_error, assert_same_as_archive, inspect_json = (base.assert_one_line_error, base.assert_same_as_archive,
                                                              base.inspect_json)
CANARY, TOKEN_USER = base.CANARY, base.TOKEN_USER

pytestmark = pytest.mark.e2e

# Written out, not imported: the test pins what goes on the wire (distribution answers 404 to an index request
# whose Accept lacks the OCI index type, jjlin/docker-image-extract#2).
ACCEPT = ("application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, "
          "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")


proxy = base.proxy  # the fault proxy in front of the plain registry, one per test


def _config_digest(world: World) -> str:
    body, _ = base._served_manifest(world, "team/app", "v1")
    return str(json.loads(body)["config"]["digest"])


def _gaps(entries: list[dict[str, Any]]) -> list[float]:
    return [b["time"] - a["time"] for a, b in itertools.pairwise(entries)]


# -- #23: the Accept header on every manifest GET -----------------------------------------------


def test_23_every_manifest_get_sends_the_full_accept_list(world: World, proxy: rs.FaultProxy) -> None:
    run = inspect_json(world, f"docker://{proxy.address}/multi:v1", "--platform", "linux/arm64")
    assert_same_as_archive(world, run, "arm64")
    gets = proxy.requests_to(r"/manifests/")
    assert [g["path"].rpartition("/")[2][:7] for g in gets] == ["v1", "sha256:"]  # the index, then arm64's
    assert [g["headers"].get("Accept") for g in gets] == [ACCEPT, ACCEPT]


def test_23_the_real_registry_refuses_an_index_without_the_index_type(world: World) -> None:
    """Why the exact list matters: the same index asked for without the OCI index type is a 404."""
    short = ACCEPT.replace("application/vnd.oci.image.index.v1+json, ", "")
    request = urllib.request.Request(f"http://{world.plain.address}/v2/multi/manifests/v1", headers={"Accept": short})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == 404
    assert b"accept header does not support OCI indexes" in err.value.read()


# -- #4: which statuses are retried --------------------------------------------------------------

RETRIED = [(408, None), (429, "1"), (429, None), (500, None), (502, None), (503, None), (504, None)]


@pytest.mark.parametrize(("status", "retry_after"), RETRIED)
def test_04_retried_status_then_200_gives_the_right_report(world: World, proxy: rs.FaultProxy, status: int,
                                                           retry_after: str | None) -> None:
    config = f"/blobs/{_config_digest(world)}$"
    proxy.faults += [rs.Fault(r"/manifests/v1$", "status", status=status, retry_after=retry_after),
                     rs.Fault(config, "status", status=status, retry_after=retry_after)]
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")
    assert base.other_stderr(run) == ""
    for path in (r"/manifests/v1$", config):
        tries = proxy.requests_to(path)
        assert len(tries) == 2, path
        # Retry-After: 1 is waited exactly; without it the first backoff is 1 s ± 10 %
        assert 0.85 <= _gaps(tries)[0] < 3.0, _gaps(tries)
    assert {e["method"] for e in proxy.log} == {"GET"}


@pytest.mark.parametrize("retry_after", ["3", "date"])
def test_04_retry_after_is_honoured(world: World, proxy: rs.FaultProxy, retry_after: str) -> None:
    value = email.utils.formatdate(time.time() + 4, usegmt=True) if retry_after == "date" else retry_after
    proxy.faults.append(rs.Fault(r"/manifests/v1$", "status", times=1, status=429, retry_after=value))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_same_as_archive(world, run, "app")
    (gap,) = _gaps(proxy.requests_to(r"/manifests/v1$"))
    low, high = (2.7, 3.6) if retry_after == "3" else (1.5, 4.6)  # a date has whole seconds
    assert low <= gap <= high, gap


def test_04_retry_after_over_the_cap_fails_at_once_saying_so(world: World, proxy: rs.FaultProxy) -> None:
    proxy.faults.append(rs.Fault(r"/manifests/", "status", times=100, status=503, retry_after="31"))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, "HTTP 503", proxy.address, "asks to wait 31 s (over the 30 s cap)")
    assert len(proxy.requests_to(r"/manifests/")) == 1 and run.seconds < 15


def _errors(code: str) -> bytes:
    return b'{"errors":[{"code":"%s","message":"from the fault proxy"}]}' % code.encode()


# (status, path, body code, what the one line must say)
REFUSED = [
    (400, r"/manifests/v1$", "NAME_INVALID", ("rejected the request for the manifest v1", "HTTP 400, NAME_INVALID",
                                              "check the reference")),
    (401, r"/manifests/v1$", "UNAUTHORIZED", ("requires authentication", "HTTP 401, UNAUTHORIZED", "docker login")),
    (403, r"/manifests/v1$", "DENIED", ("denied access to team/app", "HTTP 403, DENIED")),
    (404, r"/manifests/v1$", "MANIFEST_UNKNOWN", ("has no tag 'v1'", "check the tag")),
    (404, "config", "BLOB_UNKNOWN", ("has no config sha256:", "BLOB_UNKNOWN")),
]


@pytest.mark.parametrize(("status", "path", "code", "needles"), REFUSED)
def test_04_client_errors_are_not_retried_and_give_one_line(world: World, proxy: rs.FaultProxy, status: int,
                                                            path: str, code: str, needles: tuple[str, ...]) -> None:
    path = f"/blobs/{_config_digest(world)}$" if path == "config" else path
    # a Retry-After on a client error changes nothing: it is not retried
    proxy.faults.append(rs.Fault(path, "status", times=100, status=status, retry_after="1", body=_errors(code)))
    run = inspect_json(world, f"docker://{proxy.address}/team/app:v1")
    assert_one_line_error(run, proxy.address, *needles)
    assert len(proxy.requests_to(path)) == 1
    assert run.seconds < 15


# -- #14: huge token, error and config bodies ------------------------------------------------------

HUGE = 100 << 20


def _peak_run(world: World, ref: str, config_dir: Any = None) -> Any:
    """The CLI with its own peak RSS (VmHWM), credentials from a Docker config so nothing is typed in."""
    env = world.env(**({"DOCKER_CONFIG": str(config_dir)} if config_dir else {}))
    run = measure("inspect", "--format", "json", ref, env=env)
    for secret in (CANARY, "Bearer ey"):
        assert secret not in run.stderr
    return run


def _token_config(world: World) -> Any:
    import base64

    auth = base64.b64encode(f"{TOKEN_USER}:{CANARY}".encode()).decode()
    return base.docker_config(world, "cfg-huge-token", {"auths": {world.token.address: {"auth": auth}}})


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_14_a_100_mb_token_response_is_refused_at_1_mib_in_flat_memory(world: World, chunked: bool) -> None:
    ref, config = f"docker://{world.token.address}/team/app:v1", _token_config(world)
    try:
        world.tokens.huge = (2000, False)  # the same path with a small (unusable) token body: the baseline
        small = _peak_run(world, ref, config)
        world.tokens.huge = (HUGE, chunked)
        huge = _peak_run(world, ref, config)
    finally:
        world.tokens.huge = None
    assert small.code == 3 and "no usable token" in small.stderr, small.stderr
    assert huge.code == 3 and huge.stderr.count("\n") == 1, huge.stderr
    assert huge.stderr.startswith("imgaudit: error: ") and "token" in huge.stderr and "exceeds 1 MiB" in huge.stderr
    assert world.tokens.huge_sent < HUGE // 4, world.tokens.huge_sent
    assert huge.rss_mb - small.rss_mb < 16, (small.rss_mb, huge.rss_mb)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize("target", ["error", "config"])
def test_14_a_100_mb_error_or_config_body_is_cut_or_refused_in_flat_memory(world: World, proxy: rs.FaultProxy,
                                                                           target: str, chunked: bool) -> None:
    ref = f"docker://{proxy.address}/team/app:v1"
    path, status = (r"/manifests/v1$", 403) if target == "error" else (f"/blobs/{_config_digest(world)}$", 200)
    proxy.faults.append(rs.Fault(path, "huge", times=1, status=status, size=2000))
    small = _peak_run(world, ref)
    proxy.faults.append(rs.Fault(path, "huge", times=1, status=status, size=HUGE, chunked=chunked))
    huge = _peak_run(world, ref)
    needle = "denied access to team/app (HTTP 403)" if target == "error" else "exceeds 4 MiB"
    for run in (small, huge) if target == "error" else (huge,):
        assert run.code == 3 and run.stderr.count("\n") == 1 and run.stderr.startswith("imgaudit: error: ")
        assert needle in run.stderr, run.stderr
    sent = proxy.requests_to(path)[-1]["bytes_sent"]
    assert sent < HUGE // 4, sent
    assert huge.rss_mb - small.rss_mb < 16, (small.rss_mb, huge.rss_mb)


# -- #18: insufficient_scope --------------------------------------------------------------------

WIDER = "repository:team/app:pull repository:team/base:pull"


@pytest.fixture
def scoped(world: World) -> Iterator[rs.FaultProxy]:
    """The token registry behind a proxy that wants a token for WIDER on manifests; the registry itself checks
    every token it is handed."""
    server = rs.FaultProxy(world.token.address, forward_auth=True)
    yield server
    server.stop()
    world.tokens.denied = set()


def _token_requests(world: World, before: int) -> list[dict[str, list[str]]]:
    return [urllib.parse.parse_qs(urllib.parse.urlsplit(e["path"]).query) for e in world.tokens.log[before:]]


@pytest.mark.parametrize("status", [401, 403])
def test_18_insufficient_scope_gets_one_token_for_the_wider_scope(world: World, scoped: rs.FaultProxy,
                                                                  status: int) -> None:
    scoped.faults.append(rs.Fault(r"/manifests/", "scope", times=100, status=status, scope=WIDER,
                                  target=world.tokens.realm))
    before = len(world.tokens.log)
    run = inspect_json(world, f"docker://{scoped.address}/team/app:v1", "--username", TOKEN_USER,
                       "--password-stdin", stdin=CANARY)
    assert_same_as_archive(world, run, "app")
    base.assert_no_secrets(run)
    asked = _token_requests(world, before)
    assert [sorted(q["scope"]) for q in asked] == [["repository:team/app:pull"], sorted(WIDER.split())]
    assert len(scoped.requests_to(r"/manifests/")) == 2


@pytest.mark.parametrize("status", [401, 403])
def test_18_a_second_insufficient_scope_is_one_clean_line(world: World, scoped: rs.FaultProxy, status: int) -> None:
    world.tokens.denied = {"team/base"}  # the token server will not grant the wider scope
    scoped.faults.append(rs.Fault(r"/manifests/", "scope", times=100, status=status, scope=WIDER,
                                  target=world.tokens.realm))
    before = len(world.tokens.log)
    run = inspect_json(world, f"docker://{scoped.address}/team/app:v1", "--username", TOKEN_USER,
                       "--password-stdin", stdin=CANARY)
    assert_one_line_error(run, scoped.address, f"HTTP {status}", f"insufficient_scope for {WIDER}")
    assert TOKEN_USER not in run.err
    assert len(_token_requests(world, before)) == 2 and len(scoped.requests_to(r"/manifests/")) == 2



def test_18_a_realm_no_url_parser_accepts_is_one_clean_line(world: World, scoped: rs.FaultProxy) -> None:
    """A bearer challenge whose realm has a bracket its host does not close: urlsplit raised ValueError, an
    internal error (thirteenth round). Nothing is sent anywhere; the line says why."""
    scoped.faults.append(rs.Fault(r"/manifests/", "scope", times=100, status=401, scope=WIDER,
                                  target="https://[tokens.example.com/token"))
    before = len(world.tokens.log)
    run = inspect_json(world, f"docker://{scoped.address}/team/app:v1", "--username", TOKEN_USER,
                       "--password-stdin", stdin=CANARY)
    assert_one_line_error(run, scoped.address, "token realm that is not a URL")
    assert TOKEN_USER not in run.err
    assert len(world.tokens.log) == before + 1  # the first token, for the registry's own realm; none since

# -- #21: slow loris ----------------------------------------------------------------------------

TIMEOUT = 3.0


def _slow(world: World, proxy: rs.FaultProxy, ref: str, *extra: str) -> base.Run:
    return inspect_json(world, f"docker://{proxy.address}/{ref}", *extra,
                        env=world.env(IMGAUDIT_REGISTRY_TIMEOUT=f"{TIMEOUT:g}"))


# (fault, path, what the line says): each byte comes well within the timeout, so no idle timeout would fire
LORIS = [
    ("silent", r"/v2/$", "sent nothing for 3 s"),
    ("trickle-headers", r"/manifests/", "bytes in 3 s (under 1024 bytes/s)"),
    ("trickle-body", r"/manifests/", "bytes in 3 s (under 1024 bytes/s)"),
    ("silent", r"/manifests/", "sent nothing for 3 s"),
]


@pytest.mark.parametrize(("kind", "path", "needle"), LORIS, ids=[f"{k}-{p.strip('/$')}" for k, p, _ in LORIS])
def test_21_slow_loris_ends_in_the_timeout_with_one_line_naming_the_host(world: World, proxy: rs.FaultProxy,
                                                                         kind: str, path: str, needle: str) -> None:
    proxy.faults.append(rs.Fault(path, kind, times=100, interval=0.25))
    run = _slow(world, proxy, "team/app:v1")
    assert_one_line_error(run, f"registry {proxy.address} timed out", needle, "IMGAUDIT_REGISTRY_TIMEOUT")
    assert len(proxy.requests_to(path)) == 1  # a timeout is final: no attempts × timeout
    assert run.seconds < TIMEOUT + 5, run.seconds


def test_21_a_layer_trickled_byte_by_byte_names_the_layer_and_the_host(world: World, proxy: rs.FaultProxy) -> None:
    digest = sha(world.specs["big"].layers[1])
    proxy.faults.append(rs.Fault(f"/blobs/{digest}", "trickle-body", times=100, interval=0.25))
    run = _slow(world, proxy, "big:v1", "--jobs", "2")
    assert_one_line_error(run, "layer 2/2", f"registry {proxy.address} timed out", "under 1024 bytes/s")
    assert len(proxy.requests_to(f"/blobs/{digest}")) == 1
    assert run.seconds < TIMEOUT + 6, run.seconds


def test_21_a_fast_registry_passes_under_a_short_timeout(world: World, proxy: rs.FaultProxy) -> None:
    assert_same_as_archive(world, _slow(world, proxy, "big:v1"), "big")


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan"])
def test_21_a_bad_timeout_setting_is_a_usage_error(world: World, value: str) -> None:
    run = inspect_json(world, f"docker://{world.plain.address}/team/app:v1",
                       env=world.env(IMGAUDIT_REGISTRY_TIMEOUT=value))
    assert run.code == 2 and run.err.count("\n") == 1 and "IMGAUDIT_REGISTRY_TIMEOUT" in run.err, run.err
