#!/usr/bin/env python3
"""Fuzz the JSON documents that name an image's parts: OCI/Docker configs, manifests, indexes (nested through
a fetch that answers with the same bytes), `docker save`'s manifest.json, `oci-layout`, the daemon's inspect
data, and the registry's small answers (token, error and tag-list bodies, WWW-Authenticate, Retry-After,
Content-Range).

The first input byte picks the parser; the rest is the document. A config that parses must also render in
every report format.

    python fuzz/harness_json.py CORPUS_DIR [SEED_DIR] -max_total_time=60 -timeout=5
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

from fuzz.harness_common import INSTRUMENT, Broken, check_report, fake_image, fuzz

with atheris.instrument_imports(include=INSTRUMENT):
    from imgaudit.audit import Loaded, audit, image_info
    from imgaudit.image import Platform
    from imgaudit.reference import parse_reference
    from imgaudit.report import Report
    from imgaudit.rootfs import RootFS
    from imgaudit.sources import archive, auth, daemon, manifest, oci, registry
    from imgaudit.sources.manifest import Descriptor

PLATFORMS = (None, Platform("linux", "amd64"), Platform("linux", "arm64", "v8"), Platform("windows", "amd64"))
REF = parse_reference("oci:/nonexistent")


class MemoryStore:
    """A layout whose every file holds the fuzzed bytes (so indexes nest into themselves)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.where = "fuzz"

    def read(self, name: str, cap: int, what: str) -> bytes:
        manifest.check_cap(len(self.data), cap, f"{self.where} {what} {name}")
        return self.data

    def has(self, name: str) -> bool:
        return True


def _config(body: bytes) -> None:
    config = manifest.parse_config(body, "fuzz config")
    image = fake_image((), entrypoint=config.entrypoint or ("/x",), env=config.env, working_dir=config.working_dir)
    info = image_info(image)  # type: ignore[arg-type]
    report = Report(image=info)
    check_report(report)
    check_report(audit(Loaded(image, (), RootFS.build([]))))  # type: ignore[arg-type]


def _index(body: bytes, platform: Platform | None) -> None:
    def fetch(desc: Descriptor) -> bytes:
        return body

    manifest.resolve_manifest(body, "fuzz", fetch, ref_name=None, platform=platform, host_plat=PLATFORMS[1])


def _archive_manifest(body: bytes) -> None:
    entries = manifest.parse_archive_manifest(body, "fuzz manifest.json")
    for entry in entries:
        manifest.layer_specs_from_names(entry.layers)
        manifest.named_digest(entry.config)
    manifest.select_archive_entry(entries, None, "fuzz")


def _inspect(body: bytes) -> None:
    """The daemon's inspect answer (decoded by the docker SDK, so only well-formed JSON reaches imgaudit)."""
    try:
        attrs = json.loads(body)
    except (ValueError, RecursionError):
        return
    if isinstance(attrs, dict):
        daemon._zero_layer_image(attrs, REF, None)


def _registry(body: bytes, which: int) -> None:
    text = body.decode("utf-8", "replace")
    if which == 0:
        auth.parse_token(body, "registry.example")
    elif which == 1:
        registry.error_codes(body)
        registry.tag_list(body)
    elif which == 2:
        challenges = auth.parse_challenges(text)
        picked = auth.pick_challenge(challenges)
        if picked is not None:
            auth.token_query(picked, "repository:x:pull")
            auth.check_realm(picked.get("realm"), "registry.example", registry_tls=len(body) % 2 == 0)
    elif which == 3:
        registry.parse_retry_after(text, now=1_700_000_000.0)
        registry.parse_content_range(text)
        registry.resume_matches(text, 10, 100)
    else:
        shown = registry.redact_text(text)
        if "\n" in shown and "\n" not in text:
            raise Broken("redaction added a line break")


def test(data: bytes) -> None:
    if not data:
        return
    which, body = data[0], data[1:]
    kind = which % 12
    if kind == 0:
        _config(body)
    elif kind == 1:
        manifest.parse_manifest(body, "fuzz manifest")
    elif kind == 2:
        manifest.parse_index(body, "fuzz index")
    elif kind == 3:
        _index(body, PLATFORMS[(which >> 4) % len(PLATFORMS)])
    elif kind == 4:
        _archive_manifest(body)
    elif kind == 5:
        oci._check_layout_version(MemoryStore(body))
    elif kind == 6:
        oci.plan_oci(MemoryStore(body), None, PLATFORMS[(which >> 4) % len(PLATFORMS)])
    elif kind == 7:
        archive.plan_docker_archive(MemoryStore(body), None, None)
    elif kind == 8:
        _inspect(body)
    else:
        _registry(body, (which >> 4) % 5)


if __name__ == "__main__":
    fuzz(test)
