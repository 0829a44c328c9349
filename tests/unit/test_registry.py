"""The text-only parts of registry pulls: challenges, realms, tokens, Retry-After, Content-Range, redaction,
credentials from a Docker config, and how manifests and transport errors are told apart."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import time
from pathlib import Path

import pytest
import requests

from imgaudit.errors import AuthenticationFailed, CorruptImage, SourceUnavailable, UsageError
from imgaudit.sources import auth
from imgaudit.sources import registry as reg
from imgaudit.sources.auth import Challenge, RegistryOptions, check_realm, parse_challenges, parse_token
from imgaudit.sources.manifest import INDEX_TYPES
from imgaudit.sources.stall import Stalled

# -- WWW-Authenticate ---------------------------------------------------------------------------


def test_bearer_challenge_with_quoted_commas_in_scope() -> None:
    header = ('Bearer realm="https://auth.example.com/token",service="registry.example.com",'
              'scope="repository:a/b:pull,push"')
    (challenge,) = parse_challenges(header)
    assert challenge.scheme == "bearer"
    assert challenge.get("realm") == "https://auth.example.com/token"
    assert challenge.get("service") == "registry.example.com"
    assert challenge.get("scope") == "repository:a/b:pull,push"


def test_several_challenges_in_one_header_and_bearer_wins() -> None:
    challenges = parse_challenges('Basic realm="Registry Realm", Bearer realm="https://a/t",service=s')
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].get("realm") == "Registry Realm"
    assert challenges[1].get("service") == "s"
    picked = auth.pick_challenge(challenges)
    assert picked is not None and picked.scheme == "bearer"


def test_challenge_edge_cases() -> None:
    assert parse_challenges("") == []
    assert parse_challenges('Basic') == [Challenge("basic")]
    (c,) = parse_challenges('BEARER Realm = "x\\"y" , error="insufficient_scope"')
    assert c.get("realm") == 'x"y' and c.get("error") == "insufficient_scope"
    assert auth.pick_challenge(parse_challenges('Negotiate abc, NTLM')) is None


# -- realms -------------------------------------------------------------------------------------


def test_https_realm_is_accepted() -> None:
    assert check_realm("https://auth.docker.io/token", "docker.io", registry_tls=True) == \
        "https://auth.docker.io/token"


@pytest.mark.parametrize("realm", [
    None, "", "http://auth.example.com/token", "https://169.254.169.254/latest", "https://[::1]/t",
    "https://10.0.0.5/token", "https://0.0.0.0/token", "https://user:pw@auth.example.com/token",
    "ftp://auth.example.com/token", "https:///token", "https://[auth.example.com/token", "https://pw]x/token",
])
def test_unsafe_realms_are_refused_for_a_public_registry(realm: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as err:
        check_realm(realm, "registry.example.com", registry_tls=True)
    assert "pw" not in str(err.value)


def test_local_registry_may_use_a_local_http_realm() -> None:
    assert check_realm("http://127.0.0.1:5001/token", "127.0.0.1:5000", registry_tls=False)
    with pytest.raises(AuthenticationFailed):  # but not a link-local one
        check_realm("http://169.254.169.254/token", "127.0.0.1:5000", registry_tls=False)
    with pytest.raises(AuthenticationFailed):  # nor plain http when the registry speaks TLS
        check_realm("http://127.0.0.1:5001/token", "127.0.0.1:5000", registry_tls=True)


def test_host_of_and_is_local() -> None:
    assert auth.host_of("127.0.0.1:5000") == "127.0.0.1"
    assert auth.host_of("[::1]:5000") == "::1"
    assert auth.host_of("docker.io") == "docker.io"
    assert auth.is_local("localhost") and auth.is_local("10.1.2.3") and not auth.is_local("8.8.8.8")


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "token", "ttl"), [
    ({"token": "t1"}, "t1", 60.0),
    ({"access_token": "t2", "expires_in": 300}, "t2", 300.0),
    ({"token": "t3", "access_token": "other", "expires_in": -5}, "t3", 60.0),
    ({"token": "t4", "expires_in": True}, "t4", 60.0),
    ({"token": "t5", "expires_in": 10**400}, "t5", 86400.0),  # float() of it overflowed
    ({"token": "t6", "expires_in": float("inf")}, "t6", 86400.0),
])
def test_token_responses(body: dict[str, object], token: str, ttl: float) -> None:
    assert parse_token(json.dumps(body).encode(), "r") == (token, ttl)


@pytest.mark.parametrize("body", [b"", b"[]", b"{}", b'{"token": ""}', b'{"token": 5}', b'{"token": "a\\nb"}'])
def test_unusable_token_responses(body: bytes) -> None:
    with pytest.raises(AuthenticationFailed, match="no usable token"):
        parse_token(body, "r")


# -- Retry-After, Content-Range -------------------------------------------------------------------


def test_retry_after_values() -> None:
    now = time.time()
    assert reg.parse_retry_after("1") == 1.0
    assert reg.parse_retry_after(" 86400 ") == 86400.0
    ahead = email.utils.formatdate(now + 5, usegmt=True)
    delay = reg.parse_retry_after(ahead, now)
    assert delay is not None and 3.5 <= delay <= 5.5
    assert reg.parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now) is None  # past
    for garbage in (None, "", "soon", "-1", "1.5", "Mon, 99 Foo 2020"):
        assert reg.parse_retry_after(garbage, now) is None


def test_content_range() -> None:
    assert reg.parse_content_range("bytes 100-199/200") == (100, 199, 200)
    assert reg.parse_content_range("bytes 0-0/*") == (0, 0, None)
    for bad in (None, "", "bytes 5-4/10", "bytes 0-10/10", "bytes */10", "items 0-1/2",
                "bytes 100-199/200, bytes 100-199/200", "bytes=100-199/200"):
        assert reg.parse_content_range(bad) is None


def test_resume_accepts_only_the_exact_rest_of_the_blob() -> None:
    assert reg.resume_matches("bytes 100-199/200", 100, 200)
    assert reg.resume_matches("bytes 100-199/*", 100, 200)
    assert not reg.resume_matches("bytes 0-199/200", 100, 200)  # another start: never stitch
    assert not reg.resume_matches("bytes 100-150/200", 100, 200)  # ends early
    assert not reg.resume_matches("bytes 100-199/300", 100, 200)  # another blob
    assert not reg.resume_matches(None, 100, 200)


# -- redaction ----------------------------------------------------------------------------------


def test_redact_url_keeps_only_allowlisted_query_values_and_drops_userinfo() -> None:
    url = ("https://user:secret@storage.example.com/blob?X-Amz-Signature=abc&X-Amz-Credential=k&digest=sha256:1"
           "&scope=repository:a:pull")
    out = reg.redact_url(url)
    assert "secret" not in out and "abc" not in out and "=k" not in out
    assert out.startswith("https://REDACTED@storage.example.com/blob?")
    assert "digest=sha256:1" in out and "scope=repository:a:pull" in out


def test_redact_text_covers_exception_messages() -> None:
    text = ("HTTPSConnectionPool(host='s3', port=443): Max retries exceeded with url: /b?sig=SECRET&n=5 "
            "(Caused by https://u:PW@h/x?token=T2) Authorization: Bearer eyJabc.def Basic dXNlcjpwdw==")
    out = reg.redact_text(text)
    for secret in ("SECRET", "PW", "T2", "eyJabc", "dXNlcjpwdw"):
        assert secret not in out
    assert "n=5" in out


@pytest.mark.parametrize("url", ["https://u:SECRET@[::1/x?sig=SECRET", "http://[bad/b?token=SECRET", "v://\x07[{",
                                 "https://h]SECRET/x"])
def test_redaction_of_a_url_no_parser_accepts_keeps_the_scheme_only(url: str) -> None:
    """urlsplit raises "Invalid IPv6 URL" for an unbalanced bracket in the host: the json harness reached it with
    an exception message quoting such a URL (thirteenth round), an internal error where a redacted line belongs."""
    assert reg.redact_url(url) == url.partition("://")[0] + "://REDACTED"
    assert "SECRET" not in reg.redact_text(f"InvalidURL: Failed to parse: {url} (while fetching a blob)")


def test_credentials_never_show_in_repr() -> None:
    creds = auth.Credentials("--username/--password-stdin", "alice", "hunter2")
    options = RegistryOptions("alice", "hunter2")
    assert "hunter2" not in repr(creds) and "alice" not in repr(creds)
    assert "hunter2" not in repr(options)
    assert creds.basic() == "Basic " + base64.b64encode(b"alice:hunter2").decode()


# -- credentials from the Docker config ---------------------------------------------------------


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: dict[str, object]) -> None:
    (tmp_path / "config.json").write_text(json.dumps(content))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def test_override_wins_over_the_docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(tmp_path, monkeypatch, {"auths": {"r:5000": {"auth": base64.b64encode(b"cfg:pw").decode()}}})
    creds = auth.find_credentials("r:5000", RegistryOptions("cli", "pw2"))
    assert creds is not None and (creds.username, creds.password) == ("cli", "pw2")
    assert creds.origin == "--username/--password-stdin"


def test_username_without_password_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        auth.find_credentials("r:5000", RegistryOptions("cli", None))


def test_auths_entry_matched_by_host_even_with_a_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(tmp_path, monkeypatch, {"auths": {"https://r:5000": {"auth": base64.b64encode(b"u:p").decode()}}})
    creds = auth.find_credentials("r:5000", RegistryOptions())
    assert creds is not None and (creds.username, creds.password, creds.origin) == ("u", "p", "Docker config")
    assert auth.find_credentials("other:5000", RegistryOptions()) is None


def test_docker_hub_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = "https://index.docker.io/v1/"
    _config(tmp_path, monkeypatch, {"auths": {key: {"auth": base64.b64encode(b"hub:pw").decode()}}})
    creds = auth.find_credentials("docker.io", RegistryOptions())
    assert creds is not None and creds.username == "hub"


def test_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "docker-credential-unit"
    answer = json.dumps({"ServerURL": "r:5000", "Username": "h", "Secret": "s3"})
    helper.write_text(f"#!/bin/sh\nread s\necho '{answer}'\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _config(tmp_path, monkeypatch, {"credHelpers": {"r:5000": "unit"}})
    creds = auth.find_credentials("r:5000", RegistryOptions())
    assert creds is not None and (creds.username, creds.password) == ("h", "s3")
    assert creds.origin == "credential helper docker-credential-unit"


def test_broken_credential_helper_names_only_the_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper = tmp_path / "docker-credential-broken"
    helper.write_text("#!/bin/sh\necho 'secret-in-output' ; exit 1\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    _config(tmp_path, monkeypatch, {"credsStore": "broken"})
    with pytest.raises(SourceUnavailable) as err:
        auth.find_credentials("r:5000", RegistryOptions())
    assert "secret-in-output" not in str(err.value) and "docker login" in str(err.value)


def test_identity_token_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _config(tmp_path, monkeypatch, {"auths": {"r:5000": {"identitytoken": "refresh"}}})
    creds = auth.find_credentials("r:5000", RegistryOptions())
    assert creds is not None and creds.identity_token == "refresh"


# -- manifests and errors -----------------------------------------------------------------------


def _reply(content_type: str, body: bytes, status: int = 200) -> reg.Reply:
    return reg.Reply(status, requests.structures.CaseInsensitiveDict({"Content-Type": content_type}), body)


def test_manifest_type_detection() -> None:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert reg.manifest_type(_reply("application/vnd.oci.image.index.v1+json", index), "w") in INDEX_TYPES
    assert reg.manifest_type(_reply("application/json", index), "w") in INDEX_TYPES
    media_type = "application/vnd.oci.image.manifest.v1+json"
    oci = json.dumps({"schemaVersion": 2, "mediaType": media_type}).encode()
    assert reg.manifest_type(_reply("application/octet-stream", oci), "w") == media_type


@pytest.mark.parametrize(("content_type", "body", "message"), [
    ("application/vnd.docker.distribution.manifest.v1+prettyjws", b"{}", "schema 1"),
    ("text/html; charset=utf-8", b"<html>", "not an image manifest (got text/html)"),
    ("application/json", b"[1, 2]", "not an image manifest"),
    ("application/json", b"{not json", "invalid manifest JSON"),
])
def test_manifests_refused_with_a_clear_line(content_type: str, body: bytes, message: str) -> None:
    with pytest.raises(CorruptImage, match=message.replace("(", r"\(").replace(")", r"\)")):
        reg.manifest_type(_reply(content_type, body), "w")


def test_error_codes_and_tags_are_read_defensively() -> None:
    body = json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN"}, {"code": "\x1b[2J"}, {"nope": 1}]}).encode()
    assert reg.error_codes(body) == ["MANIFEST_UNKNOWN", "\\x1b[2J"]
    assert reg.error_codes(b"<html>") == [] and reg.error_codes(b'{"errors": 5}') == []
    assert reg.tag_list(b'{"tags": ["b", "a", 3]}') == ["a", "b"]
    assert reg.tag_list(b'{"tags": null}') == []


# -- Docker-Content-Digest is advice (RELIABILITY.md #12) ---------------------------------------

MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


def test_content_digest_header_is_checked_against_the_bytes() -> None:
    assert not reg.content_digest_disagrees(None, MANIFEST) and not reg.content_digest_disagrees("", MANIFEST)
    assert not reg.content_digest_disagrees(DIGEST, MANIFEST)
    assert not reg.content_digest_disagrees("sha512:" + hashlib.sha512(MANIFEST).hexdigest(), MANIFEST)
    for wrong in ("sha256:" + hashlib.sha256(b"other").hexdigest(), DIGEST.upper(), "sha256:", "garbage",
                  "sha512:" + "0" * 128, "md5:" + hashlib.md5(MANIFEST).hexdigest()):
        assert reg.content_digest_disagrees(wrong, MANIFEST), wrong


def _manifest_client(header: str | None, body: bytes = MANIFEST) -> reg.RegistryClient:
    client = _client()
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
    if header is not None:
        headers["Docker-Content-Digest"] = header
    reply = reg.Reply(200, requests.structures.CaseInsensitiveDict(headers), body)
    client.fetch = lambda *_a, **_kw: reply  # type: ignore[method-assign]
    return client


@pytest.mark.parametrize("header", [None, DIGEST])
def test_manifest_without_or_with_the_right_header_is_quiet(header: str | None,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    assert _manifest_client(header).manifest("v1", "w", digest=None) == (MANIFEST, reg.OCI_MANIFEST)
    assert caplog.records == []


def test_manifest_by_tag_with_a_wrong_header_warns_once_and_keeps_the_bytes(caplog: pytest.LogCaptureFixture) -> None:
    body, _ = _manifest_client("sha256:\x1b[2Jbad").manifest("v1", "w", digest=None)
    assert body == MANIFEST
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelname == "WARNING" and "\n" not in message and "\x1b" not in message
    assert "Docker-Content-Digest" in message and "sha256:\\x1b[2Jbad" in message and DIGEST in message


@pytest.mark.parametrize("header", [None, "sha256:" + "1" * 64, DIGEST])
def test_manifest_by_digest_is_refused_when_the_bytes_differ_whatever_the_header(header: str | None) -> None:
    wanted = "sha256:" + "1" * 64
    with pytest.raises(CorruptImage, match=f"sent manifest {DIGEST} when asked for {wanted}"):
        _manifest_client(header).manifest(wanted, "w", digest=wanted)


def test_names_and_hosts() -> None:
    assert reg.split_repository("127.0.0.1:5000/team/app") == ("127.0.0.1:5000", "team/app")
    assert reg.api_host("docker.io") == "registry-1.docker.io"
    assert reg.api_host("ghcr.io") == "ghcr.io"


# -- transport errors ---------------------------------------------------------------------------


def _client(registry: str = "registry.example.com") -> reg.RegistryClient:
    return reg.RegistryClient(registry, "team/app", RegistryOptions(), reg.RetryPolicy(base=0.0))


def test_refused_connection_is_not_retried_and_says_so() -> None:
    err = requests.exceptions.ConnectionError(ConnectionRefusedError(111, "Connection refused"))
    assert not reg._retryable(err)
    message = str(_client().transport_error(err, "https://registry.example.com/v2/?sig=SECRET"))
    assert "connection refused" in message and "SECRET" not in message


def test_untrusted_certificate_message() -> None:
    err = requests.exceptions.SSLError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                                       "certificate in certificate chain (_ssl.c:1006)")
    out = _client().transport_error(err, "https://registry.example.com/v2/")
    assert isinstance(out, reg.UntrustedCertificate)
    assert "self-signed certificate in certificate chain" in str(out) and "--ca-cert" in str(out)


def test_resets_are_retried_and_timeouts_are_not() -> None:
    assert reg._retryable(requests.exceptions.ConnectionError(ConnectionResetError(104, "reset")))
    assert not reg._retryable(requests.exceptions.ReadTimeout("slow"))  # RELIABILITY.md #21: final, one line
    assert not reg._retryable(requests.exceptions.ConnectionError(Stalled("sent 3 bytes in 60 s")))


def test_insecure_applies_to_loopback_and_the_named_registry_only() -> None:
    assert _client("127.0.0.1:5000").insecure and _client("localhost:5000").insecure
    assert not _client("registry.example.com").insecure
    named = reg.RegistryClient("registry.example.com", "a", RegistryOptions(insecure=True))
    assert named._verify("https://registry.example.com/v2/") is False
    assert named._verify("https://storage.example.com/blob") is True  # a redirect target stays verified


def test_ca_cert_is_used_for_the_registry_only() -> None:
    client = reg.RegistryClient("registry.example.com", "a", RegistryOptions(ca_cert="/ca.pem"))
    assert client._verify("https://registry.example.com/v2/") == "/ca.pem"
    assert client._verify("https://storage.example.com/blob") is True


def test_authorization_only_for_the_registry_origin() -> None:
    client = _client()
    client._basic = "Basic abc"
    assert client._sign("https://registry.example.com/v2/team/app/blobs/sha256:1") == {"Authorization": "Basic abc"}
    assert client._sign("https://storage.example.com/blob") == {}
    assert client._sign("http://registry.example.com/v2/") == {}  # another scheme is another origin


# -- redirects (a fake session records what each hop was sent) -----------------------------------


class _FakeResponse:
    def __init__(self, status: int, location: str | None = None) -> None:
        self.status_code = status
        self.headers = requests.structures.CaseInsensitiveDict({"Location": location} if location else {})
        self.is_redirect = location is not None

    def close(self) -> None:
        pass


def _fake_session(client: reg.RegistryClient, answers: dict[str, _FakeResponse],
                  sent: list[tuple[str, dict[str, str]]]) -> None:
    def get(url: str, *, headers: dict[str, str], **_kw: object) -> _FakeResponse:
        sent.append((url, headers))
        return answers[url]

    client.session.get = get  # type: ignore[method-assign,assignment]


def test_redirect_to_storage_drops_authorization() -> None:
    client = _client()
    client._basic = "Basic c2VjcmV0"
    blob = "https://registry.example.com/v2/team/app/blobs/sha256:1"
    storage = "https://storage.example.com/b?X-Amz-Signature=sig"
    sent: list[tuple[str, dict[str, str]]] = []
    _fake_session(client, {blob: _FakeResponse(307, storage), storage: _FakeResponse(200)}, sent)
    resp = client._send(blob, {"Accept-Encoding": "identity"}, client._sign)
    assert resp.status_code == 200
    assert sent[0][1]["Authorization"] == "Basic c2VjcmV0"
    assert "Authorization" not in sent[1][1] and sent[1][1]["Accept-Encoding"] == "identity"


def test_redirect_downgrade_to_http_is_refused() -> None:
    client = _client()
    blob = "https://registry.example.com/v2/team/app/blobs/sha256:1"
    sent: list[tuple[str, dict[str, str]]] = []
    _fake_session(client, {blob: _FakeResponse(302, "http://storage.example.com/b?sig=SECRET")}, sent)
    with pytest.raises(SourceUnavailable, match="downgrade") as err:
        client._send(blob, {}, client._sign)
    assert "SECRET" not in str(err.value)


def test_redirect_loop_is_bounded() -> None:
    client = _client()
    hop = "https://registry.example.com/v2/loop"
    sent: list[tuple[str, dict[str, str]]] = []
    _fake_session(client, {hop: _FakeResponse(307, hop)}, sent)
    with pytest.raises(SourceUnavailable, match="more than 10 redirects"):
        client._send(hop, {}, client._sign)
    assert len(sent) == reg.MAX_REDIRECTS + 1
