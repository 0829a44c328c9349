"""Who imgaudit is to a registry and whom it trusts: credentials from the command line or the user's Docker
config (read through the docker SDK's own `docker.auth` and credential-helper code, so `auths`, `credsStore`
and `credHelpers` behave as for `docker pull`), and the text-only parts of registry auth: RFC 7235
`WWW-Authenticate` challenges, bearer realms, and token responses (distribution `docs/spec/auth/token.md`).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import urllib.parse
from dataclasses import dataclass, field

from imgaudit.errors import AuthenticationFailed, SourceUnavailable, UsageError, escape

MAX_TOKEN_BODY = 1 << 20  # containers/image iolimits.MaxAuthTokenBodySize
DEFAULT_TOKEN_TTL = 60.0  # token.md: "expires_in … defaults to 60 seconds"
MAX_TOKEN_TTL = 86400.0  # longer than any run: a 400-digit expires_in overflowed float() (an internal error)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

# The SDK logs user names at DEBUG while parsing `auths`; keep them out of any debug log we enable.
logging.getLogger("docker.auth").setLevel(logging.INFO)


@dataclass(frozen=True)
class RegistryOptions:
    """How to reach registries: a credential override and TLS trust for the registry the reference names."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = None
    insecure: bool = False


@dataclass(frozen=True)
class Credentials:
    """A secret and where it came from; `origin` is the only part ever shown."""

    origin: str
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()


def find_credentials(registry: str, options: RegistryOptions) -> Credentials | None:
    """`--username`/`--password-stdin` first, else what `docker login` stored for `registry`, else None."""
    if options.username is not None or options.password is not None:
        if not options.username or options.password is None:
            raise UsageError("--username and --password-stdin go together")
        return Credentials("--username/--password-stdin", options.username, options.password)
    return _from_docker_config(registry)


def _from_docker_config(registry: str) -> Credentials | None:
    import docker.auth  # type: ignore[import-untyped]
    import docker.errors  # type: ignore[import-untyped]

    try:
        config = docker.auth.load_config()
        entry = config.resolve_authconfig(registry)
        store = config.get_credential_store(registry) if (config.creds_store or config.cred_helpers) else None
    except docker.errors.InvalidConfigFile as err:
        # the SDK's message names only the registry key, never the secret
        raise UsageError(f"cannot read the Docker config: {escape(str(err))[:200]}") from None
    except docker.errors.DockerException:
        # a helper's stderr may echo what it was given: name the helper only
        raise SourceUnavailable(f"the Docker credential helper for {escape(registry)} failed; "
                                f"run `docker login {escape(registry)}` or pass --username") from None
    return _credentials(entry or {}, "credential helper docker-credential-" + store if store else "Docker config")


def _credentials(entry: dict[str, str], origin: str) -> Credentials | None:
    """The SDK spells keys `Username`/`username` depending on where they came from."""
    lowered = {k.lower(): v for k, v in entry.items() if isinstance(v, str)}
    token = lowered.get("identitytoken", "")
    user, password = lowered.get("username", ""), lowered.get("password", "")
    if token:
        return Credentials(origin, user, "", token)
    if user or password:
        return Credentials(origin, user, password)
    return None


# -- challenges ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_GAP = re.compile(r"[\s,]*")
_SPACE = re.compile(r"[ \t]*")


@dataclass(frozen=True)
class Challenge:
    """One `WWW-Authenticate` challenge: a lower-cased scheme and its auth-params (names lower-cased)."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str | None:
        return dict(self.params).get(name)


def parse_challenges(header: str) -> list[Challenge]:
    """RFC 7235 §4.1: several challenges may share one header, and quoted values may hold commas."""
    found: list[tuple[str, list[tuple[str, str]]]] = []
    pos = 0
    while True:
        pos = _GAP.match(header, pos).end()  # type: ignore[union-attr]
        word = _TOKEN.match(header, pos)
        if word is None:
            break
        after = _SPACE.match(header, word.end()).end()  # type: ignore[union-attr]
        if found and header.startswith("=", after):
            value, pos = _param_value(header, after + 1)
            found[-1][1].append((word.group().lower(), value))
        else:
            found.append((word.group().lower(), []))
            pos = word.end()
    return [Challenge(scheme, tuple(params)) for scheme, params in found]


def _param_value(header: str, pos: int) -> tuple[str, int]:
    pos = _SPACE.match(header, pos).end()  # type: ignore[union-attr]
    quoted = _QUOTED.match(header, pos)
    if quoted:
        return re.sub(r"\\(.)", r"\1", quoted.group(1)), quoted.end()
    token = _TOKEN.match(header, pos)
    return (token.group(), token.end()) if token else ("", pos)


def pick_challenge(challenges: list[Challenge]) -> Challenge | None:
    """Bearer over Basic (what docker and containers/image do); other schemes are not spoken here."""
    for scheme in ("bearer", "basic"):
        for challenge in challenges:
            if challenge.scheme == scheme:
                return challenge
    return None


# -- realms and tokens -------------------------------------------------------------------------


def host_of(address: str) -> str:
    """`127.0.0.1:5000` → `127.0.0.1`; `[::1]:5000` → `::1`."""
    return urllib.parse.urlsplit("//" + address).hostname or address


def is_local(host: str) -> bool:
    """A loopback or private address, where a registry's token server may legitimately live too."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private


def check_realm(realm: str | None, registry: str, *, registry_tls: bool) -> str:
    """The token endpoint credentials will be sent to (go-containerregistry #2243/#2285/#2292): https (http
    only when the registry itself is spoken to in clear), no user info, and never a link-local, unspecified
    or multicast literal; a loopback or private literal only for a registry that is itself local."""
    if not realm:
        raise AuthenticationFailed(f"registry {escape(registry)} asked for a bearer token but named no realm")
    try:
        parts = urllib.parse.urlsplit(realm)
    except ValueError:  # "Invalid IPv6 URL": a bracket the host does not close
        raise AuthenticationFailed(f"registry {escape(registry)} names a token realm that is not a URL; "
                                   "refusing to send credentials there") from None
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme != "https" and not (parts.scheme == "http" and not registry_tls):
        raise AuthenticationFailed(f"registry {escape(registry)} names an unsafe token realm {escape(shown)!r} "
                                   "(not https); refusing to send credentials there")
    if not parts.hostname or parts.username or parts.password:
        raise AuthenticationFailed(f"registry {escape(registry)} names an invalid token realm {escape(shown)!r}")
    _check_realm_host(parts.hostname, registry, shown)
    return realm


def _check_realm_host(host: str, registry: str, shown: str) -> None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return  # a DNS name: the same trust as the registry's own name
    unsafe = ip.is_link_local or ip.is_unspecified or ip.is_multicast or ip.is_reserved
    if unsafe or ((ip.is_loopback or ip.is_private) and not is_local(host_of(registry))):
        raise AuthenticationFailed(f"registry {escape(registry)} names an unsafe token realm {escape(shown)!r} "
                                   "(internal address); refusing to send credentials there")


def token_query(challenge: Challenge, scope: str) -> list[tuple[str, str]]:
    """`service` and one `scope` parameter per scope (token.md: "the scope field may be used multiple times"):
    ours, and those the challenge names, space-separated as in RFC 6750 §3. An `insufficient_scope` challenge
    names what the registry wants on top (containers/image `needsRetryWithUpdatedScope`)."""
    query = [("service", service)] if (service := challenge.get("service")) else []
    scopes = [scope, *(challenge.get("scope") or "").split()]
    return query + [("scope", s) for s in dict.fromkeys(scopes)]


def insufficient_scope(challenge: Challenge | None) -> str | None:
    """The scope a bearer challenge with `error="insufficient_scope"` asks for, if it names one."""
    if challenge is None or challenge.scheme != "bearer" or challenge.get("error") != "insufficient_scope":
        return None
    return challenge.get("scope") or None


def parse_token(body: bytes, registry: str) -> tuple[str, float]:
    """(token, lifetime in seconds) from a token server's JSON: `token`, `access_token` or both."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        obj = None
    token = (obj.get("token") or obj.get("access_token")) if isinstance(obj, dict) else None
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise AuthenticationFailed(f"the token server of {escape(registry)} sent no usable token")
    ttl = obj.get("expires_in") if isinstance(obj, dict) else None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:  # NaN is not > 0 either
        return token, DEFAULT_TOKEN_TTL
    return token, float(min(ttl, MAX_TOKEN_TTL))
