"""TLS stacks compiled into Rust programs (rustls, rust-openssl) and the `no-ca-certificates` rule: a
static rustls client needs no libssl, so only its crate's panic locations say it verifies servers, and
whether it does so with the image's CA bundle or with roots of its own (webpki-roots). The fixtures are
std-only stand-ins built at cargo's registry paths (fixtures/src/rust/tls-svc)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from imgaudit import elf
from imgaudit.audit import audit
from imgaudit.elf import ElfReader, RustTls
from tests.builders import ImageSpec, f, make_layer, write_docker_archive

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "fixtures" / "build" / "rust"
pytestmark = pytest.mark.skipif(not (FIX / "tls-svc-native").exists(), reason="run scripts/build-fixtures (rustc)")
BUNDLE = "etc/ssl/certs/ca-certificates.crt"


def facts(name: str) -> elf.ElfFacts:
    with ElfReader() as reader:
        return reader.read(name, (FIX / name).read_bytes())


def test_rustls_with_the_system_roots_is_recognised() -> None:
    rust = facts("tls-svc-native").rust
    assert rust is not None and rust.tls == RustTls("rustls", "0.23.12", "system")


def test_rustls_with_webpki_roots_carries_its_own() -> None:
    rust = facts("tls-svc-webpki").rust
    assert rust is not None and rust.tls == RustTls("rustls", "0.23.12", "embedded")


def test_a_rust_program_without_tls_has_none() -> None:
    rust = facts("hello-svc-gnu").rust
    assert rust is not None and rust.tls is None


def test_crate_search_wants_a_version_and_is_bounded() -> None:
    """`/rustls-` also starts rustls-webpki and rustls-pki-types; a hostile file may repeat the prefix."""
    body = b"/rustls-pki-types/src/" + b"/rustls-x" * 100_000 + b"/rustls-0.21.0/src/lib.rs"
    area = memoryview(body)  # what the worker searches: a section's content as LIEF holds it
    assert elf._crate(area, "rustls") == (False, None)  # 64 hits looked at, then given up
    assert elf._crate(area[len(body) - 30 :], "rustls") == (True, "0.21.0")
    assert elf._crate(area[:22], "rustls") == (False, None)


def inspect(tmp_path: Path, binary: str, *extra: tuple[str, bytes]) -> dict[str, object]:
    layer = make_layer([f("app", (FIX / binary).read_bytes(), 0o755), *(f(p, body) for p, body in extra)])
    archive = write_docker_archive(tmp_path / "img.tar", {"svc:1": ImageSpec([layer], entrypoint=["/app"])})
    body: dict[str, object] = json.loads(json.dumps(audit(f"docker-archive:{archive}").to_dict()))
    schema = json.loads((REPO / "imgaudit/schema/report.schema.json").read_text())
    jsonschema.validate(body, schema)
    return body


def ca_findings(report: dict[str, object]) -> list[dict[str, str]]:
    return [x for x in report["findings"] if x["rule"] == "no-ca-certificates"]  # type: ignore[attr-defined]


def test_a_rustls_client_without_a_ca_bundle_is_flagged(tmp_path: Path) -> None:
    report = inspect(tmp_path, "tls-svc-native")
    [finding] = ca_findings(report)
    assert finding["path"] == "/app"
    assert finding["message"] == ("embeds rustls 0.23.12, which verifies servers with the system's CA certificates, "
                                  "but the image has no CA bundle (/etc/ssl/certs/ca-certificates.crt)")
    assert "webpki-roots" in finding["fix"] and "ca-certificates" in finding["fix"]
    [app] = [b for b in report["binaries"] if b["path"] == "/app"]  # type: ignore[attr-defined]
    assert app["rust"]["tls"] == {"library": "rustls", "version": "0.23.12", "roots": "system"}


def test_a_ca_bundle_satisfies_it(tmp_path: Path) -> None:
    report = inspect(tmp_path, "tls-svc-native", (BUNDLE, b"-----BEGIN CERTIFICATE-----\n"))
    assert ca_findings(report) == []


def test_webpki_roots_need_no_bundle(tmp_path: Path) -> None:
    report = inspect(tmp_path, "tls-svc-webpki")
    assert ca_findings(report) == []
    [app] = [b for b in report["binaries"] if b["path"] == "/app"]  # type: ignore[attr-defined]
    assert app["rust"]["tls"]["roots"] == "embedded"
