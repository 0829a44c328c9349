"""Images straight from a registry (OCI distribution-spec pull): `/v2/` ping, manifests by tag or digest,
config and layer blobs streamed into the scanner with no temp file. The one module that speaks HTTP
(`requests`, which the docker SDK brings). Retries, resume, redirects and redaction follow containers/image
(`docker_client.go`, `body_reader.go`) and go-containerregistry (`transport`, `internal/redact`); the cases
are RELIABILITY.md §3 A. Only GET is ever sent to a registry (§2: inputs are never changed).
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import logging
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, TypeVar

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from imgaudit import __version__
from imgaudit.errors import (
    AuthenticationFailed,
    CorruptImage,
    ImageNotFound,
    ImgauditError,
    LimitExceeded,
    SourceUnavailable,
    escape,
)
from imgaudit.image import Image, Platform
from imgaudit.layers import LayerScan
from imgaudit.reference import Reference
from imgaudit.scanner import Scanner
from imgaudit.sources.auth import (
    MAX_TOKEN_BODY,
    Challenge,
    Credentials,
    RegistryOptions,
    check_realm,
    find_credentials,
    host_of,
    insufficient_scope,
    parse_challenges,
    parse_token,
    pick_challenge,
    token_query,
)
from imgaudit.sources.manifest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    INDEX_TYPES,
    MAX_CONFIG,
    MAX_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    LayerSpec,
    Plan,
    build_image,
    build_layers,
    check_cap,
    check_layer_count,
    check_platform,
    layer_specs_from_manifest,
    load_json,
    parse_config,
    parse_manifest,
    resolve_manifest,
    set_aside,
    sha256,
)
from imgaudit.sources.stall import DEFAULT_TIMEOUT, GuardedSocket, Stalled, timeout_from_env

log = logging.getLogger(__name__)
# urllib3 logs every URL at DEBUG, signed query strings of redirected blobs included (g-cr #1408).
logging.getLogger("urllib3.connectionpool").setLevel(logging.INFO)

# Always the full list: a registry answers 404 for an index it may not send (RELIABILITY.md #23).
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                           "application/vnd.docker.distribution.manifest.v1+prettyjws"})
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_ERROR_BODY = 1 << 20  # containers/image iolimits.MaxErrorBodySize
MAX_TAGS_BODY = 1 << 20
SHOWN_ERROR = 200
MAX_REDIRECTS = 10
CHUNK = 1 << 20
RESUME_PROGRESS = 1 << 20  # containers/image body_reader: reconnect after ≥ 1 MiB of progress …
RESUME_INTERVAL = 60.0  # … or ≥ 60 s since the last reconnect
REDACT_KEEP = frozenset({"scope", "service", "mount", "from", "digest", "n", "last"})  # g-cr internal/redact
HUB = "docker.io"
HUB_API = "registry-1.docker.io"

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries: `attempts` tries per request, backoff from `base` doubling with ±10 % jitter, one wait
    at most `max_delay` (a longer Retry-After fails at once, saying so) and all waits within `budget`."""

    attempts: int = 5
    base: float = 1.0
    max_delay: float = 30.0
    budget: float = 60.0
    reconnects: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = DEFAULT_TIMEOUT  # stall.py: nothing for this long, or under 1 KiB/s over it, ends the request

    def backoff(self, attempt: int) -> float:
        delay = self.base * 2.0 ** (attempt - 1)
        return min(delay * random.uniform(0.9, 1.1), self.max_delay)


@dataclass(frozen=True)
class Reply:
    """A fully read (capped) response."""

    status: int
    headers: Mapping[str, str]
    body: bytes


# -- pure helpers (unit-tested) -----------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from `Retry-After` (RFC 9110 §10.2.3: delay-seconds or an HTTP date); None when
    absent, past or garbage, so the caller falls back to its own backoff (containers/image parseRetryAfter)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²": str.isdigit accepts it, int() does not
        return float(min(int(text), 1 << 31))  # a 400-digit delay overflowed float()
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):  # a year of 40 digits overflows
        return None
    if when is None or when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return delay if delay > 0 else None


_CONTENT_RANGE = re.compile(r"^bytes ([0-9]+)-([0-9]+)/([0-9]+|\*)$")  # ASCII digits: \d also takes "١٢"


def parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    """`bytes FIRST-LAST/TOTAL` → (first, last, total or None); None if malformed (RFC 9110 §14.4)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value.strip())
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        return None
    return first, last, total


def resume_matches(value: str | None, offset: int, size: int) -> bool:
    """A resumed blob is accepted only if it starts exactly at `offset` and runs to the end (body_reader.go)."""
    parsed = parse_content_range(value)
    return parsed is not None and parsed[0] == offset and parsed[1] == size - 1 and parsed[2] in (None, size)


def redact_url(url: str) -> str:
    """No user info, and only allowlisted query values: redirected blob URLs carry signatures (g-cr #1408, #1947)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced bracket in the host ("Invalid IPv6 URL"): nothing after the scheme is shown
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://REDACTED" if sep else "REDACTED"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "REDACTED@" + netloc.rpartition("@")[2]
    query = "&".join(
        f"{key}={value if key in REDACT_KEEP else 'REDACTED'}"
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_QUERY_PARAM = re.compile(r"([?&])([^=&\s'\"]+)=([^&\s'\")]*)")
_AUTH = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """Free text (an exception's message) with URLs, query values and auth headers redacted."""
    text = _URL.sub(lambda m: redact_url(m.group()), text)
    text = _QUERY_PARAM.sub(lambda m: m.group() if m.group(2) in REDACT_KEEP else f"{m.group(1)}{m.group(2)}=REDACTED",
                            text)
    return _AUTH.sub(lambda m: f"{m.group(1)} REDACTED", text)


def content_digest_disagrees(header: str | None, body: bytes) -> bool:
    """True when a `Docker-Content-Digest` header names other bytes than `body`. The header is advice, never
    trusted: absent is fine and the digest is always computed from the bytes (go-containerregistry does not
    check it for tags, "so many registries implement this incorrectly", kaniko#298)."""
    if not header:
        return False
    algorithm, _, hexa = header.partition(":")
    if algorithm == "sha512":  # OCI's other registered algorithm: not wrong, just not ours
        return hexa != hashlib.sha512(body).hexdigest()
    return header != sha256(body)


def origin_of(url: str) -> str:
    """RFC 6454 origin (scheme, host, port) as text: where credentials may go."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def api_host(registry: str) -> str:
    """Docker Hub's API lives at registry-1.docker.io; every other registry answers under its own name."""
    return HUB_API if registry == HUB else registry


def split_repository(name: str) -> tuple[str, str]:
    """`127.0.0.1:5000/ns/app` → (`127.0.0.1:5000`, `ns/app`); names come normalised from reference.py."""
    registry, _, repository = name.partition("/")
    return registry, repository


class TransportFault(Exception):
    """A transport error's message, redacted: chained under our errors so `--debug` shows it safely."""


class UntrustedCertificate(SourceUnavailable):
    """TLS verification failed: never a reason to fall back to plain HTTP."""


# -- the client ---------------------------------------------------------------------------------


class _NoNetrc(requests.auth.AuthBase):
    """Set as the session's auth so requests never adds ~/.netrc credentials, least of all on other hosts."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


def _causes(err: BaseException) -> list[BaseException]:
    """The error and what it wraps (requests → urllib3 → OSError), so transport errors can be classified."""
    seen: list[BaseException] = []
    stack: list[object] = [err]
    while stack and len(seen) < 20:
        item = stack.pop()
        if isinstance(item, BaseException) and item not in seen:
            seen.append(item)
            stack += [getattr(item, "reason", None), item.__cause__, item.__context__, *item.args[:1]]
    return seen


def _timed_out(causes: list[BaseException]) -> bool:
    return any(isinstance(c, TimeoutError | requests.exceptions.Timeout | urllib3.exceptions.TimeoutError)
               for c in causes)


def _retryable(err: BaseException) -> bool:
    """Resets and drops are worth another try; refused, DNS and TLS failures are not, and neither is a timeout:
    a server that stalls or trickles would hold the run for attempts × timeout (RELIABILITY.md #21)."""
    causes = _causes(err)
    if _timed_out(causes) or any(isinstance(c, ConnectionRefusedError | requests.exceptions.SSLError
                                            | urllib3.exceptions.NameResolutionError) for c in causes):
        return False
    return isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout
                      | requests.exceptions.ChunkedEncodingError | urllib3.exceptions.HTTPError | OSError)


_TLS_REASON = re.compile(r"certificate verify failed: ([^()'\"]+)")


class _GuardedConnection:
    """Mixed into urllib3's connections: the socket, once connected, reads through stall.GuardedSocket."""

    stall_timeout = DEFAULT_TIMEOUT
    sock: Any

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.sock = GuardedSocket(self.sock, self.stall_timeout)


class _GuardedAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter with pools of guarded connections (urllib3 picks pool classes by scheme)."""

    def __init__(self, stall_timeout: float, **kwargs: Any) -> None:
        self._stall_timeout = stall_timeout  # before super(): HTTPAdapter.__init__ calls init_poolmanager
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        pools: dict[str, type[urllib3.connectionpool.HTTPConnectionPool]] = {}
        for scheme, pool, conn in (
                ("http", urllib3.connectionpool.HTTPConnectionPool, urllib3.connection.HTTPConnection),
                ("https", urllib3.connectionpool.HTTPSConnectionPool, urllib3.connection.HTTPSConnection)):
            guarded = type(f"Guarded{conn.__name__}", (_GuardedConnection, conn),
                           {"stall_timeout": self._stall_timeout})
            pools[scheme] = type(f"Guarded{pool.__name__}", (pool,), {"ConnectionCls": guarded})
        self.poolmanager.pool_classes_by_scheme = pools


class RegistryClient:
    """One registry and repository: auth (anonymous, basic, bearer per scope), retries, redirects, TLS."""

    def __init__(self, registry: str, repository: str, options: RegistryOptions,
                 policy: RetryPolicy | None = None, pool: int = 8) -> None:
        self.registry = registry
        self.repository = repository
        self.scope = f"repository:{repository}:pull"
        self.policy = policy or RetryPolicy(read_timeout=timeout_from_env())
        self.insecure = options.insecure or host_of(registry) in ("localhost", "127.0.0.1", "::1")
        self.ca_cert = options.ca_cert
        self.scheme = "https"
        self._options = options
        self._credentials: Credentials | None = None
        self._credentials_loaded = False
        self._challenge: Challenge | None = None
        self._realm_origin = ""
        self._basic: str | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # scope → (Authorization value, expiry)
        self._lock = threading.Lock()
        self.session = requests.Session()
        self.session.auth = _NoNetrc()
        self.session.headers["User-Agent"] = f"imgaudit/{__version__}"
        adapter = _GuardedAdapter(self.policy.read_timeout, pool_connections=4, pool_maxsize=max(pool, 4),
                                  max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        if self.insecure and not self.ca_cert:
            # verification is off on purpose for this one registry; urllib3 would warn on every request
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.session.close()

    # -- addresses and trust --

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{api_host(self.registry)}"

    def url(self, path: str) -> str:
        return f"{self.origin}/v2/{path}"

    def _same_origin(self, url: str) -> bool:
        return origin_of(url) == self.origin

    def _verify(self, url: str) -> bool | str:
        """--ca-cert and --insecure concern the registry named in the reference (--ca-cert its token realm
        too: private registries' token servers share their CA); other hosts (blob storage a download is
        redirected to) are verified against the system's trust store."""
        if not self._same_origin(url):
            return self.ca_cert or True if origin_of(url) == self._realm_origin else True
        if self.insecure and not (self.ca_cert and not self._options.insecure):
            return False
        return self.ca_cert or True

    def _credentials_for_registry(self) -> Credentials | None:
        """Looked up only when the registry asks: a credential helper is a program run on our behalf."""
        if not self._credentials_loaded:
            self._credentials = find_credentials(self.registry, self._options)
            self._credentials_loaded = True
        return self._credentials

    # -- the exchange: redirects, auth, retries --

    def _send(self, url: str, headers: Mapping[str, str], sign: Callable[[str], dict[str, str]]) -> requests.Response:
        """GET following redirects by hand: Authorization goes only where `sign` says (the registry's own
        origin), an https → http hop is refused, and at most MAX_REDIRECTS hops (CVE-2020-15157)."""
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.session.get(url, headers={**headers, **sign(url)}, stream=True, allow_redirects=False,
                                        timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                                        verify=self._verify(url))
                if not resp.is_redirect:
                    return resp
                resp.close()
                target = urllib.parse.urljoin(url, resp.headers.get("Location", ""))
            except ValueError as err:
                if isinstance(err, requests.RequestException):  # InvalidURL and the like: the caller's to word
                    raise
                # Even without following, requests parses a Location (for `Response.next`); a bracket the host
                # does not close is "Invalid IPv6 URL". The Location is not shown: it may carry a signature.
                raise SourceUnavailable(f"{escape(self.registry)} answered with a redirect to a malformed URL; "
                                        "refusing it") from None
            if url.startswith("https:") and not target.startswith("https:"):
                raise SourceUnavailable(f"{escape(self.registry)} redirected a download from https to "
                                        f"{escape(redact_url(target))}; refusing the downgrade")
            url = target
        raise SourceUnavailable(f"{escape(self.registry)}: more than {MAX_REDIRECTS} redirects for "
                                f"{escape(redact_url(url))}")

    def exchange(self, url: str, headers: Mapping[str, str], consume: Callable[[requests.Response], T], *,
                 sign: Callable[[str], dict[str, str]] | None = None, reauth: bool = True) -> T:
        """One logical GET: a 401 earns one (re-)authentication, 408/429/5xx and dropped connections are
        retried within the policy; `consume` runs inside the loop so a body cut while read is retried too."""
        sign = sign or self._sign
        tries = 0
        waited = 0.0
        authenticated = False
        while True:
            tries += 1
            try:
                resp = self._send(url, headers, sign)
                if reauth and not authenticated and _asks_for_a_token(resp) and self._authenticate(resp):
                    authenticated = True
                    resp.close()
                    continue
                if resp.status_code not in RETRY_STATUS:
                    return consume(resp)
                delay = self._retry_delay(tries, waited, resp, url)
                resp.close()
            except requests.exceptions.RequestException as err:
                delay = self._transport_retry(tries, waited, err, url)
            except urllib3.exceptions.HTTPError as err:
                delay = self._transport_retry(tries, waited, err, url)
            waited += delay
            time.sleep(delay)

    def _retry_delay(self, tries: int, waited: float, resp: requests.Response, url: str) -> float:
        status = resp.status_code
        asked = parse_retry_after(resp.headers.get("Retry-After"))
        delay = asked if asked is not None else self.policy.backoff(tries)
        what = "rate limited (HTTP 429)" if status == 429 else f"HTTP {status}"
        where = escape(urllib.parse.urlsplit(url).netloc.rpartition("@")[2])
        if asked is not None and asked > self.policy.max_delay:
            raise SourceUnavailable(f"{what} by {where}, which asks to wait {asked:.0f} s "
                                    f"(over the {self.policy.max_delay:.0f} s cap); try again later")
        if tries >= self.policy.attempts or waited + delay > self.policy.budget:
            hint = "; try again later" + (", or log in: anonymous pulls get lower limits" if status == 429 else "")
            raise SourceUnavailable(f"{what} from {where} after {tries} attempts{hint}")
        log.info("%s from %s; retrying in %.1f s", what, redact_url(url), delay)
        return delay

    def _transport_retry(self, tries: int, waited: float, err: BaseException, url: str) -> float:
        delay = self.policy.backoff(tries)
        if not _retryable(err) or tries >= self.policy.attempts or waited + delay > self.policy.budget:
            raise self.transport_error(err, url) from TransportFault(redact_text(f"{type(err).__name__}: {err}"))
        log.info("connection to %s failed (%s); retrying in %.1f s", redact_url(url), type(err).__name__, delay)
        return delay

    def transport_error(self, err: BaseException, url: str) -> ImgauditError:
        """One line naming the endpoint and what to do; never the exception text (it may hold a signed URL)."""
        where = escape(urllib.parse.urlsplit(url).netloc.rpartition("@")[2])
        causes = _causes(err)
        tls = next((c for c in causes if isinstance(c, requests.exceptions.SSLError)), None)
        if tls is not None:
            reason = _TLS_REASON.search(str(tls))
            if reason:
                return UntrustedCertificate(
                    f"the TLS certificate of {where} is not trusted ({escape(reason.group(1).strip())}); "
                    "pass --ca-cert FILE, or --insecure to skip verification for this registry")
            return SourceUnavailable(f"TLS handshake with {where} failed; is it an https endpoint?")
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            return SourceUnavailable(f"cannot reach registry {where}: connection refused; is it running, "
                                     "and is the address right?")
        if any(isinstance(c, urllib3.exceptions.NameResolutionError) for c in causes):
            return SourceUnavailable(f"cannot resolve {where}; check the registry name")
        if _timed_out(causes):
            return SourceUnavailable(self.stall_message(causes, where))
        return SourceUnavailable(f"the connection to {where} failed ({escape(type(err).__name__)}); try again later")

    def stall_message(self, causes: list[BaseException], where: str) -> str:
        stalled = next((c for c in causes if isinstance(c, Stalled)), None)
        if stalled is not None:
            what = f"timed out: it {stalled}"
        elif any(isinstance(c, requests.exceptions.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError)
                 for c in causes):
            what = f"timed out: no connection within {self.policy.connect_timeout:g} s"
        else:
            what = f"timed out after {self.policy.read_timeout:g} s"
        return (f"registry {where} {what}; try again later (IMGAUDIT_REGISTRY_TIMEOUT sets the limit, "
                f"now {self.policy.read_timeout:g} s)")

    # -- authentication --

    def _sign(self, url: str) -> dict[str, str]:
        """Authorization for the registry's own origin only, never for a host it redirects to; a bearer token
        is fetched before the first request once /v2/ has named the realm (saves a 401 per request)."""
        if not self._same_origin(url):
            return {}
        with self._lock:
            token = self._tokens.get(self.scope)
            basic = self._basic
        if token and token[1] > time.monotonic():
            return {"Authorization": token[0]}
        if basic:
            return {"Authorization": basic}
        challenge = self._challenge
        if challenge is not None and challenge.scheme == "bearer":
            return {"Authorization": self._bearer(challenge)}
        if challenge is not None and challenge.scheme == "basic":
            creds = self._credentials_for_registry()
            if creds is not None and creds.username:
                self._basic = creds.basic()
                return {"Authorization": self._basic}
        return {}

    def _authenticate(self, resp: requests.Response) -> bool:
        """Answers a 401's challenge; False when there is nothing new to try (the caller reports the 401)."""
        challenge = pick_challenge(parse_challenges(resp.headers.get("WWW-Authenticate", "")))
        if challenge is None:
            return False
        self._challenge = challenge
        wanted = insufficient_scope(challenge)
        if wanted:
            log.info("%s asks for a token with scope %s (insufficient_scope); asking once", escape(self.registry),
                     escape(wanted)[:200])
        if challenge.scheme == "basic":
            creds = self._credentials_for_registry()
            if creds is None or not creds.username or self._basic:
                return False
            self._basic = creds.basic()
            return True
        with self._lock:
            self._tokens.pop(self.scope, None)  # refused or expired: a new one, once per request
        self._bearer(challenge)
        return True

    def _bearer(self, challenge: Challenge) -> str:
        """distribution token.md: GET realm?service&scope with the user's basic credentials (or none). The
        scopes a challenge names are asked for besides ours (an `insufficient_scope` 401 or 403 asks for
        more); the token is cached under the scope our requests need."""
        realm = check_realm(challenge.get("realm"), self.registry,
                            registry_tls=self.scheme == "https" and not self.insecure)
        self._realm_origin = origin_of(realm)
        creds = self._credentials_for_registry()
        query = token_query(challenge, self.scope)
        if creds and creds.identity_token:
            reply = self._oauth_token(realm, query, creds)
        else:
            reply = self._basic_token(realm, query, creds)
        if reply.status in (400, 401, 403):
            raise AuthenticationFailed(self._refused("its token server", reply.status))
        if reply.status != 200:
            raise SourceUnavailable(f"the token server of {escape(self.registry)} answered HTTP {reply.status}; "
                                    "try again later")
        token, ttl = parse_token(reply.body, self.registry)
        value = f"Bearer {token}"
        with self._lock:
            self._tokens[self.scope] = (value, time.monotonic() + max(ttl - 5.0, 1.0))
        return value

    def _basic_token(self, realm: str, query: list[tuple[str, str]], creds: Credentials | None) -> Reply:
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        realm_origin = origin_of(realm)
        header = creds.basic() if creds is not None and creds.username and creds.password else ""

        def sign(target: str) -> dict[str, str]:
            """The user's password goes to the realm's own origin only, not to where it may redirect."""
            return {"Authorization": header} if header and origin_of(target) == realm_origin else {}

        return self.exchange(url, {"Accept": "application/json"}, lambda r: read_reply(r, MAX_TOKEN_BODY, "token"),
                             sign=sign, reauth=False)

    def _oauth_token(self, realm: str, query: list[tuple[str, str]], creds: Credentials) -> Reply:
        """An identity token from `docker login` (distribution docs/spec/auth/oauth.md): one POST of a refresh
        token, never retried (a request with a body is not repeated) and never redirected."""
        form = [*query, ("grant_type", "refresh_token"), ("refresh_token", creds.identity_token),
                ("client_id", "imgaudit")]
        try:
            resp = self.session.post(realm, data=form, stream=True, allow_redirects=False, verify=self._verify(realm),
                                     timeout=(self.policy.connect_timeout, self.policy.read_timeout))
        except requests.exceptions.RequestException as err:
            raise self.transport_error(err, realm) from TransportFault(redact_text(f"{type(err).__name__}: {err}"))
        return read_reply(resp, MAX_TOKEN_BODY, "token")

    def _refused(self, who: str, status: int, detail: str = "") -> str:
        registry = escape(self.registry)
        creds = self._credentials if self._credentials_loaded else None
        if creds is None:
            return (f"{registry} requires authentication ({who} answered HTTP {status}{detail}); run `docker login "
                    f"{registry}` or pass --username and --password-stdin")
        return (f"{registry} refused the credentials from {escape(creds.origin)} ({who} answered HTTP {status}"
                f"{detail}); check the user name and password, or run `docker login {registry}`")

    # -- endpoints --

    def ping(self) -> None:
        """GET /v2/ (distribution spec "determining support"): https, or plain http for an insecure registry
        that does not speak TLS; learns the auth challenge before the first real request."""
        try:
            reply: Reply | None = self._ping_once()
        except UntrustedCertificate:
            raise
        except SourceUnavailable:
            if not self.insecure:
                raise
            reply = None
        if reply is None:  # out of the handler: an http failure must not be classified by the https one
            self.scheme = "http"
            reply = self._ping_once()
        if reply.status == 401:
            self._challenge = pick_challenge(parse_challenges(reply.headers.get("WWW-Authenticate", "")))
        elif reply.status == 404:
            raise SourceUnavailable(f"{escape(self.registry)} does not serve the registry API (/v2/ answered 404); "
                                    "check the registry name")
        elif reply.status >= 400:
            raise SourceUnavailable(f"{escape(self.registry)} answered HTTP {reply.status} to /v2/; try again later")

    def _ping_once(self) -> Reply:
        return self.exchange(self.url(""), {}, lambda r: read_reply(r, MAX_ERROR_BODY, "ping"),
                             sign=lambda _url: {}, reauth=False)

    def fetch(self, path: str, headers: Mapping[str, str], cap: int, what: str) -> Reply:
        return self.exchange(self.url(path), headers, lambda r: read_reply(r, cap, what))

    def manifest(self, reference: str, where: str, *, digest: str | None) -> tuple[bytes, str]:
        """The manifest or index `reference` (tag or digest) names, capped and, by digest, re-hashed: its
        digest is always that of the bytes received, whatever `Docker-Content-Digest` says (RELIABILITY.md #12)."""
        reply = self.fetch(f"{self.repository}/manifests/{reference}", {"Accept": ACCEPT}, MAX_MANIFEST, "manifest")
        if reply.status == 404:
            raise self._missing(reference, where, reply)
        self.check_status(reply, f"the manifest {reference}")
        got = sha256(reply.body)
        if digest and got != digest:
            raise CorruptImage(f"{where}: the registry sent manifest {got} when asked for {digest}")
        header = reply.headers.get("Docker-Content-Digest")
        if content_digest_disagrees(header, reply.body):
            log.warning("%s: ignoring the registry's Docker-Content-Digest %s for manifest %s: the bytes it sent "
                        "hash to %s", where, escape(header or "")[:150], reference, got)
        return reply.body, manifest_type(reply, where)

    def blob_bytes(self, desc: Descriptor, cap: int, what: str, where: str) -> bytes:
        """A small blob (the config) read whole: size and digest checked against its descriptor."""
        check_cap(desc.size, cap, f"{where} {what} {desc.digest}")
        reply = self.fetch(f"{self.repository}/blobs/{desc.digest}", {"Accept-Encoding": "identity"}, cap, what)
        self.check_status(reply, f"{what} {desc.digest}")
        if len(reply.body) != desc.size:
            raise CorruptImage(f"{where} {what} {desc.digest}: got {len(reply.body)} bytes, want {desc.size}")
        got = sha256(reply.body)
        if got != desc.digest:
            raise CorruptImage(f"{where} {what}: digest mismatch: expected {desc.digest}, got {got}")
        return reply.body

    def open_blob(self, digest: str, headers: Mapping[str, str], label: str) -> requests.Response:
        """A blob response left unread (2xx), for BlobReader to stream."""

        def consume(resp: requests.Response) -> requests.Response:
            if resp.status_code in (200, 206):
                return resp
            self.check_status(read_reply(resp, MAX_ERROR_BODY, "error"), label)
            raise SourceUnavailable(f"{label}: unexpected HTTP {resp.status_code}")

        return self.exchange(self.url(f"{self.repository}/blobs/{digest}"), headers, consume)

    def check_status(self, reply: Reply, what: str) -> None:
        if reply.status in (200, 206):
            return
        registry = escape(self.registry)
        found = error_codes(reply.body)
        codes = ", ".join(found) or f"HTTP {reply.status}"
        wanted = _wanted_scope(reply.headers)
        detail = "".join(f", {c}" for c in found)
        if wanted:
            detail += f", insufficient_scope for {escape(wanted)[:200]}"
        if reply.status == 401:
            raise AuthenticationFailed(self._refused("the registry", 401, detail))
        if reply.status == 403:
            raise AuthenticationFailed(f"{registry} denied access to {escape(self.repository)} (HTTP 403{detail}); "
                                       "check that these credentials may pull it")
        if reply.status == 404:
            raise ImageNotFound(f"{registry}/{escape(self.repository)} has no {escape(what)} ({codes})")
        if 400 <= reply.status < 500:
            raise SourceUnavailable(f"{registry} rejected the request for {escape(what)} (HTTP {reply.status}"
                                    f"{detail}); check the reference")
        raise SourceUnavailable(f"{registry} answered {codes} for {escape(what)}; try again later")

    def _missing(self, reference: str, where: str, reply: Reply) -> ImgauditError:
        """404 on a manifest: tell a missing repository from a missing tag (distribution says MANIFEST_UNKNOWN
        for both), by asking for the tag list."""
        repo = f"{escape(self.registry)}/{escape(self.repository)}"
        if reference.startswith("sha256:"):
            return ImageNotFound(f"{where}: {repo} has no manifest {reference}; check the digest")
        try:
            tags = self.fetch(f"{self.repository}/tags/list", {"Accept": "application/json"}, MAX_TAGS_BODY, "tags")
        except LimitExceeded:  # only a hint: the missing tag stays the error (RELIABILITY.md #85)
            return ImageNotFound(f"{where}: {repo} has no tag {escape(reference)!r} (its tag list is over the "
                                 f"{MAX_TAGS_BODY >> 20} MiB cap, not shown); check the tag")
        if tags.status == 404 or "NAME_UNKNOWN" in error_codes(reply.body):
            return ImageNotFound(f"{where}: registry {escape(self.registry)} has no repository "
                                 f"{escape(self.repository)}; check the name (or your access to it)")
        listed = tag_list(tags.body) if tags.status == 200 else []
        hint = ", ".join(escape(t) for t in listed[:10])
        if len(listed) > 10:
            hint = f"it has {len(listed)} tags: {hint}, …"
        elif hint:
            hint = f"it has: {hint}"
        return ImageNotFound(f"{where}: {repo} has no tag {escape(reference)!r}" + (f" ({hint})" if hint else "")
                             + "; check the tag")


def _wanted_scope(headers: Mapping[str, str]) -> str | None:
    return insufficient_scope(pick_challenge(parse_challenges(headers.get("WWW-Authenticate", ""))))


def _asks_for_a_token(resp: requests.Response) -> bool:
    """A 401, or a 403 whose bearer challenge says `insufficient_scope` and names the scope it wants (some
    registries answer 403 there): each earns one new token per request (RELIABILITY.md #18)."""
    return resp.status_code == 401 or (resp.status_code == 403 and _wanted_scope(resp.headers) is not None)


def read_reply(resp: requests.Response, cap: int, what: str) -> Reply:
    """Reads at most `cap` bytes; a success body past the cap is refused, never truncated (CVE-2020-1702).
    Error bodies are only quoted, so they are cut at MAX_ERROR_BODY instead."""
    ok = resp.status_code in (200, 206)
    limit = cap if ok else min(cap, MAX_ERROR_BODY)
    with resp:
        declared = resp.headers.get("Content-Length", "")
        if ok and declared.isascii() and declared.isdigit():
            check_cap(int(declared), cap, f"{what} from {redact_url(resp.url)}")
        body = bytearray()
        for chunk in resp.iter_content(CHUNK):
            body += chunk
            if len(body) > limit:
                if ok:
                    check_cap(len(body), cap, f"{what} from {redact_url(resp.url)}")
                del body[limit:]
                break
    return Reply(resp.status_code, resp.headers, bytes(body))


def error_codes(body: bytes) -> list[str]:
    """The `errors[].code` values of a distribution error body, escaped, for one-line messages."""
    try:
        obj = load_json(body[:MAX_ERROR_BODY], "error", "error")
    except ImgauditError:
        return []
    errors = obj.get("errors") if isinstance(obj, dict) else None
    if not isinstance(errors, list):
        return []
    return [escape(e["code"])[:40] for e in errors[:5] if isinstance(e, dict) and isinstance(e.get("code"), str)]


def tag_list(body: bytes) -> list[str]:
    try:
        obj = load_json(body, "tags", "tags")
    except ImgauditError:
        return []
    tags = obj.get("tags") if isinstance(obj, dict) else None
    return sorted(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else []


def manifest_type(reply: Reply, where: str) -> str:
    """The media type by Content-Type, else by the JSON itself; HTML (a captive portal) and schema 1 are refused
    with a line that says so (RELIABILITY.md #22)."""
    content_type = reply.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type in SCHEMA1_TYPES:
        raise CorruptImage(f"{where}: the registry only has a Docker schema 1 manifest, which imgaudit does not "
                           "read; push the image again with a current Docker or skopeo")
    if content_type.startswith("text/"):
        raise CorruptImage(f"{where}: not an image manifest (got {escape(content_type)[:60]}); is a proxy "
                           "or login page in the way?")
    obj = load_json(reply.body, where, "manifest")
    if not isinstance(obj, dict):
        raise CorruptImage(f"{where}: not an image manifest (JSON {type(obj).__name__})")
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if content_type in INDEX_TYPES or "manifests" in obj:
        return content_type if content_type in INDEX_TYPES else OCI_INDEX
    return content_type or OCI_MANIFEST


# -- blob streams -------------------------------------------------------------------------------


class BlobReader(io.RawIOBase):
    """A layer blob straight off the wire: at most `size` + 1 bytes are ever read (one more proves a blob too
    long), a cut download resumes with `Range: bytes=N-` accepting only a 206 that starts exactly at N, or
    restarts and skips the N bytes already passed on. The scanner hashes what passes: a restart that served
    other bytes fails the digest check, so nothing is stitched silently (containers/image body_reader.go)."""

    def __init__(self, client: RegistryClient, digest: str, size: int, label: str) -> None:
        super().__init__()
        self._client = client
        self._digest = digest
        self._size = size
        self._label = label
        self._resp: requests.Response | None = None
        self._received = 0
        self._reconnects = 0
        self._mark = (0, time.monotonic())

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        want = min(len(buffer), self._size + 1 - self._received)
        while want > 0:
            try:
                if self._resp is None:
                    self._resp = self._connect()
                data = self._resp.raw.read(want)
            except (urllib3.exceptions.HTTPError, requests.exceptions.RequestException, OSError) as err:
                self._reconnect(err)
                continue
            if not data and self._received < self._size:
                self._reconnect(None)  # closed early without an error (no Content-Length to enforce)
                continue
            buffer[: len(data)] = data
            self._received += len(data)
            if self._received > self._size:
                raise CorruptImage(f"{self._label}: the registry sent more than the {self._size} bytes the "
                                   "manifest lists")
            if self._received == self._size:
                log.info("%s: %d bytes fetched", self._label, self._size)
            return len(data)
        return 0

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        super().close()

    def _connect(self) -> requests.Response:
        headers = {"Accept-Encoding": "identity"}  # offsets for Range must be offsets into the blob
        if self._received == 0:
            return self._client.open_blob(self._digest, headers, self._label)
        resp = self._client.open_blob(self._digest, {**headers, "Range": f"bytes={self._received}-"}, self._label)
        if resp.status_code == 206 and resume_matches(resp.headers.get("Content-Range"), self._received, self._size):
            return resp
        log.info("%s: the registry did not resume at byte %d; restarting the download", self._label, self._received)
        if resp.status_code != 200:  # a 206 of another range: ask again for the whole blob
            resp.close()
            resp = self._client.open_blob(self._digest, headers, self._label)
        self._skip(resp, self._received)
        return resp

    def _skip(self, resp: requests.Response, count: int) -> None:
        """A restarted download: the first `count` bytes already went to the scanner."""
        left = count
        while left:
            data = resp.raw.read(min(left, CHUNK))
            if not data:
                resp.close()
                raise SourceUnavailable(f"{self._label}: the restarted download ended at byte {count - left}, "
                                        f"before byte {count} where the first one was cut")
            left -= len(data)

    def _reconnect(self, err: BaseException | None) -> None:
        """Reconnects after a cut if this is the first time, or ≥ 1 MiB or ≥ 60 s passed since the last one
        (body_reader.go), and within the policy's count; else says how far the download got."""
        host = urllib.parse.urlsplit(self._resp.url if self._resp is not None else self._client.origin).netloc
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        causes = _causes(err) if err is not None else []
        if _timed_out(causes):  # never resumed: a stalled server would stall again (RELIABILITY.md #21)
            where = escape(host.rpartition("@")[2])
            raise SourceUnavailable(f"{self._label}: {self._client.stall_message(causes, where)}") from TransportFault(
                redact_text(f"{type(err).__name__}: {err}"))
        progress, since = self._received - self._mark[0], time.monotonic() - self._mark[1]
        first = self._reconnects == 0
        allowed = first or progress >= RESUME_PROGRESS or since >= RESUME_INTERVAL
        if not allowed or self._reconnects >= self._client.policy.reconnects:
            reason = f" ({escape(type(err).__name__)})" if err is not None else ""
            raise SourceUnavailable(f"{self._label}: got {self._received} bytes, want {self._size}: the download "
                                    f"kept breaking{reason}; try again later")
        self._reconnects += 1
        self._mark = (self._received, time.monotonic())
        delay = self._client.policy.base * random.uniform(1.0, 1.1)
        log.info("%s: download cut at byte %d of %d; reconnecting in %.1f s", self._label, self._received,
                 self._size, delay)
        time.sleep(delay)


# -- the source -----------------------------------------------------------------------------------


def load(ref: Reference, *, platform: Platform | None, scanner: Scanner,
         registry: RegistryOptions | None = None) -> tuple[Image, tuple[LayerScan, ...]]:
    """Pulls `ref` (transport `registry`, or a bare name the daemon did not have) and scans every layer."""
    if ref.transport != "registry":
        ref = replace(ref, transport="registry")
    name = ref.name or ""
    host, repository = split_repository(name)
    with RegistryClient(host, repository, registry or RegistryOptions(), pool=scanner.jobs + 2) as client:
        client.ping()
        plan = plan_registry(client, ref, platform)
        layers = build_layers(plan, lambda _name: None, _opener(client, plan))
        image = build_image(plan, ref, layers)
        return image, scanner.scan_image(image)


def plan_registry(client: RegistryClient, ref: Reference, platform: Platform | None) -> Plan:
    """Manifest (or index → platform → manifest) → config, each checked by digest; layers left unread."""
    where = ref.display
    body, media_type = client.manifest(ref.digest or ref.tag or "latest", where, digest=ref.digest)
    manifest_digest = ref.digest or sha256(body)
    if media_type in INDEX_TYPES:
        desc = _pick(client, body, manifest_digest, media_type, where, platform)
        body, _ = client.manifest(desc.digest, where, digest=desc.digest)
        manifest_digest = desc.digest
    manifest = parse_manifest(body, f"{where} manifest {manifest_digest[:19]}")
    config_bytes = client.blob_bytes(manifest.config, MAX_CONFIG, "config", where)
    config = parse_config(config_bytes, f"{where} config {manifest.config.digest[:19]}")
    check_platform(config.platform, platform, where)
    specs = layer_specs_from_manifest(manifest)
    check_layer_count(specs, config, where)
    return Plan(config, manifest.config.digest, manifest_digest, specs, set_aside(manifest, where))


def _pick(client: RegistryClient, index: bytes, digest: str, media_type: str, where: str,
          platform: Platform | None) -> Descriptor:
    """index → (nested indexes) → the platform's manifest, by manifest.py's rules for OCI layouts. The pulled
    index is handed over as the one entry of a synthetic top level: `ref.name` annotations inside a registry's
    index describe its entries, they are not selectors as in a layout's index.json."""
    top = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": media_type, "digest": digest, "size": len(index)}]}).encode()

    def fetch(desc: Descriptor) -> bytes:
        if desc.digest == digest:
            return index
        return client.manifest(desc.digest, where, digest=desc.digest)[0]

    return resolve_manifest(top, where, fetch, ref_name=None, platform=platform)


def _opener(client: RegistryClient, plan: Plan) -> Callable[[str], Callable[[], BinaryIO]]:
    count = len(plan.layers)
    by_name: dict[str, tuple[int, LayerSpec]] = {}
    for index, spec in enumerate(plan.layers):
        by_name.setdefault(spec.name, (index, spec))

    def opener(name: str) -> Callable[[], BinaryIO]:
        index, spec = by_name[name]
        digest, size = spec.digest or "", spec.size or 0
        label = f"layer {index + 1}/{count} {digest[:19]}"
        return lambda: io.BufferedReader(BlobReader(client, digest, size, label), CHUNK)

    return opener
