"""One source for fix texts: a finding whose fix carries nothing of its own (no path, symbol, version or command
built for it) gives the rule catalogue's fix word for word, the text `docs/rules.md` and SARIF's rule help show,
so the two cannot drift apart (too-many-layers once had). One image, built in the test from real tar bytes and
ELF fixtures, trips every such rule through the real analysers; the budgets are applied to its size."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from fuzz import hostile as h
from imgaudit.audit import Loaded, audit
from imgaudit.checks import bloat
from imgaudit.checks.size import size_facts
from imgaudit.elf import read_elf
from imgaudit.image import Image, ImageConfig, Layer, Platform
from imgaudit.layers import LayerScan, scan_layer
from imgaudit.policy import Budgets, budget_findings
from imgaudit.report import Finding
from imgaudit.rootfs import RootFS
from imgaudit.rules import rule
from tests.builders import DEFAULT_ENV, Item, f, make_layer, sym, wh
from tests.unit.test_ldcache import OLD

FIX = Path(__file__).resolve().parents[2] / "fixtures" / "build"
HOST_LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")
pytestmark = pytest.mark.skipif(not (FIX / "ssl" / "ssl-app").exists() or not HOST_LIBC.exists(),
                                reason="run scripts/build-fixtures (with libssl-dev); needs the host's glibc")
NET_BIND = {"security.capability": bytes.fromhex("0100000200040000000000000000000000000000")}
MB = 1_000_000

# The rules whose findings say nothing the rule page does not: their fix must be the page's.
CATALOGUE_FIXES = frozenset({
    "too-many-layers", "overlay-whiteout-in-tar", "file-capabilities", "capability-dropped", "ld-cache-stale",
    "no-ca-certificates", "libc-mismatch", "other",
    "apt-lists", "apt-archives", "apk-cache", "pip-cache", "npm-cache", "cargo-registry", "go-cache", "cargo-target",
    "toolchain-rust", "toolchain-gcc", "toolchain-binaries", "dev-headers", "static-archives", "docs-man-locales",
    "unstripped-elf", "removed-later", "rewritten-later", "duplicate-entry", "duplicate-content",
    "budget-size", "budget-compressed-size", "budget-layers", "budget-efficiency", "budget-wasted",
    "budget-user-wasted", "budget-reclaimable",
})


def blob(seed: int, n: int = MB) -> bytes:
    """n bytes, different for every seed (so only the copies meant as duplicates are)."""
    return (seed.to_bytes(4, "big") * (n // 4 + 1))[:n]


def leftovers() -> list[Item]:
    dirs = ("var/lib/apt/lists", "var/cache/apt", "var/cache/apk", "root/.cache/pip", "home/app/.npm",
            "root/.cargo/registry", "root/.cache/go-build", "usr/share/doc", "usr/local/rustup", "usr/lib/gcc",
            "usr/include")
    return [f(f"{d}/x", blob(i)) for i, d in enumerate(dirs)] + [
        f("src/target/release/.fingerprint/app-1/hash", b"1"), f("src/target/release/app", blob(20)),
        f("usr/lib/libfoo.a", blob(21)), f("usr/bin/gcc-12", blob(22), 0o755),
        f("build/big.tar", blob(23)), f("app.bin", blob(24)), f("copy1", blob(25)), f("copy2", blob(25)),
        f("twice", blob(26)), f("twice", blob(27))]  # the same path twice in one layer: duplicate-entry


def startup() -> list[Item]:
    """Runtime glibc (the host's libc.so.6) with a cache that lists none of its libraries, a musl loader that a
    glibc program's interpreter path leads to (gcompat's trick), an OpenSSL client without a CA bundle."""
    static = (FIX / "musl" / "hello-static").read_bytes()
    return [
        f("static", static, 0o755), f("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        f("lib/x86_64-linux-gnu/libc.so.6", HOST_LIBC.read_bytes(), 0o755), f("etc/ld.so.cache", OLD),
        f("lib/ld-musl-x86_64.so.1", static, 0o755), sym("lib64/ld-linux-x86-64.so.2", "/lib/ld-musl-x86_64.so.1"),
        f("usr/bin/glibc-app", (FIX / "glibc" / "hello-dynamic").read_bytes(), 0o755),
        f("usr/bin/ssl-app", (FIX / "ssl" / "ssl-app").read_bytes(), 0o755),
        f("usr/bin/pinger", b"p", 0o755, xattrs=NET_BIND), f("usr/bin/tool", b"t", 0o755, xattrs=NET_BIND),
        f("etc/motd", b"welcome\n"),
    ]


def loaded_from(scans: list[LayerScan], config: ImageConfig) -> Loaded:
    layers = tuple(Layer(i, s.diff_id, s.digest, s.compressed_size) for i, s in enumerate(scans))
    return Loaded(Image("test:fixes", "oci", config, "sha256:" + "1" * 64, layers), tuple(scans), RootFS.build(scans))


def image() -> Loaded:
    later = make_layer([wh("build"), f("app.bin", blob(24), 0o755), f("usr/bin/tool", b"t", 0o755)])
    overlay = h.tar_of(h.member("etc/motd", typeflag=b"3"))  # an overlayfs whiteout (char 0:0) tarred as it is
    tars = [make_layer(startup() + leftovers()), later, overlay]
    tars += [make_layer([f(f"l{i}", str(i))]) for i in range(126 - len(tars))]  # one more than Docker takes
    scans = [scan_layer(io.BytesIO(tar), elf_reader=read_elf) for tar in tars]
    config = ImageConfig(Platform("linux", "amd64"), entrypoint=("/static",), env=(DEFAULT_ENV,), user="ghost")
    return loaded_from(scans, config)


@dataclass(frozen=True)
class SmallDebug:
    """ELF facts of a file with debug sections under the 1 MB a finding of its own needs (bloat.ElfDebug)."""

    debug_bytes: int
    stripped: bool = False
    rust: object | None = None


def unstripped_summary() -> list[Finding]:
    """Small unstripped files are summed into one finding with no path-specific advice."""
    scan = scan_layer(io.BytesIO(make_layer([f("usr/lib/liba.so", b"\x7fELF"), f("usr/lib/libb.so", b"\x7fELF")])))
    scan = replace(scan, entries=tuple(replace(e, elf=SmallDebug(600_000)) for e in scan.entries))  # type: ignore[arg-type]
    loaded = loaded_from([scan], ImageConfig(Platform("linux", "amd64")))
    return bloat.findings(loaded.rootfs, loaded.scans, size_facts(loaded.rootfs, loaded.scans))


def test_findings_without_detail_of_their_own_carry_the_rule_catalogues_fix() -> None:
    report = audit(image())
    budgets = Budgets(max_size=0, max_compressed_size=0, max_layers=1, min_efficiency=1.0, max_wasted=0,
                      max_user_wasted=0.0, max_reclaimable=0)
    findings = report.findings + unstripped_summary() + budget_findings(report.size, budgets)
    assert {x.rule for x in findings} >= CATALOGUE_FIXES, "the image no longer trips every rule it is meant to"
    for finding in findings:
        if finding.rule in CATALOGUE_FIXES:
            assert finding.fix == rule(finding.rule).fix, (finding.rule, finding.path, finding.fix)
    assert (report.entrypoint.failure, report.entrypoint.fix) == ("other", rule("other").fix)  # USER ghost
