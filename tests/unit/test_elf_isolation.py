"""ELF isolation (RELIABILITY.md #90-#95, issue 7): hundreds of mutated ELF files - truncations, bit flips, header
offsets and counts out of bounds, dynamic, symbol and version tables pointed past the end - in one image,
inspected by the real command line. LIEF runs in a worker (imgaudit/elf.py): the main process must not crash,
every file the parser could not read must come back as an `elf-unreadable` finding with its linkage unknown,
and the report must say it is incomplete.

Sources: the fixture binaries (fixtures/build, made by scripts/build-fixtures) and busybox and the musl loader
of the Alpine minirootfs in $IMGAUDIT_CORPUS (default ../shared/corpus).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pytest

from fuzz import hostile as h

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(os.environ.get("IMGAUDIT_CORPUS") or REPO.parent / "shared" / "corpus")
ALPINE = CORPUS / "alpine" / "alpine-minirootfs-3.20.3-x86_64.tar.gz"
FIXTURES = ("glibc/hello-dynamic", "glibc/hello-static-pie", "musl/hello-dynamic", "greet/lib/libgreet.so.1",
            "greet/bin/greet-app-rpath", "rust/hello-svc-stripped", "ssl/ssl-app")
WANT = 600
TIME_BUDGET = 90.0


def sources() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    build = REPO / "fixtures" / "build"
    for name in FIXTURES:
        path = build / name
        if path.is_file():
            out[name.replace("/", "-")] = path.read_bytes()
    if ALPINE.is_file():
        with tarfile.open(ALPINE) as tar:
            for member in ("./bin/busybox", "./lib/ld-musl-x86_64.so.1"):
                fobj = tar.extractfile(member)
                if fobj is not None:
                    out["alpine-" + member.rsplit("/", 1)[1]] = fobj.read()
    return out


def mutants(originals: dict[str, bytes], want: int = WANT) -> dict[str, bytes]:
    """`want` deterministic mutants, spread over the sources; big files get fewer (they cost bytes, not time)."""
    weights = {name: 1 if len(data) > 300_000 else 3 for name, data in originals.items()}
    total = sum(weights.values())
    out: dict[str, bytes] = {}
    for name, data in originals.items():
        quota = want * weights[name] // total + 1
        seed = 0
        while sum(1 for key in out if key.startswith(name + "/")) < quota:
            seed += 1
            for label, mutant in h.elf_mutations(data, seed):
                key = f"{name}/{seed}-{label}"
                if key not in out and mutant[:4] == b"\x7fELF":
                    out[key] = mutant
                if sum(1 for k in out if k.startswith(name + "/")) >= quota:
                    break
    return out


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    originals = sources()
    if len(originals) < 2:
        if os.environ.get("IMGAUDIT_E2E") == "1":
            pytest.fail("no ELF sources: run scripts/build-fixtures and set IMGAUDIT_CORPUS")
        pytest.skip("no ELF sources (fixtures/build or the Alpine rootfs)")
    return mutants(originals)


def test_mutants_are_many_and_distinct(corpus: dict[str, bytes]) -> None:
    assert len(corpus) >= 500
    assert len({h.sha(x) for x in corpus.values()}) >= 450  # a few mutations coincide (a field already 0)
    kinds = Counter(key.split("/", 1)[1].split("-", 2)[1].rstrip("0123456789.") for key in corpus)
    assert {"truncate", "bitflip", "phoff", "shoff", "shnum"} <= set(kinds), kinds


def test_91_mutated_elfs_never_crash_the_main_process_and_each_bad_one_is_reported(
        corpus: dict[str, bytes], tmp_path: Path) -> None:
    names = sorted(corpus)
    half = len(names) // 2
    layers = []
    for part in (names[:half], names[half:]):  # two layers: --jobs 2 scans them at once, sharing the parsers
        members = [h.member("m/", typeflag=b"5")]
        members += [h.member("m/" + key.replace("/", "--"), corpus[key], mode=0o755) for key in part]
        layers.append(h.tar_of(*members))
    ref = h.write_image("oci-dir", tmp_path / "layout", [h.Blob(x, x) for x in layers],
                        config=json.dumps(h.config_doc([h.sha(x) for x in layers],
                                                       config={"Entrypoint": ["/m/none"]})).encode())
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "imgaudit", "inspect", "--format", "json", "--fail-on", "never",
                             "--jobs", "2", ref], capture_output=True, cwd=REPO, timeout=600, check=False,
                            env={**os.environ, "IMGAUDIT_CACHE": "off"})
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in result.stderr and not result.stderr.strip(), result.stderr[-2000:]
    report = json.loads(result.stdout)
    parsed = {b["path"] for b in report["binaries"]}
    unreadable = {f["path"]: f["message"] for f in report["findings"] if f["rule"] == "elf-unreadable"}
    incomplete = {i["what"] for i in report["incomplete"]}
    paths = {"/m/" + key.replace("/", "--") for key in corpus}
    lost = paths - parsed - set(unreadable)
    assert not lost, f"{len(lost)} ELF files neither parsed nor reported, e.g. {sorted(lost)[:5]}"
    assert not parsed & set(unreadable)
    assert set(unreadable) <= incomplete, "an unreadable ELF does not make the report incomplete"
    assert report["complete"] is False and len(unreadable) >= 100
    reasons = Counter(message.split(":", 1)[1].split("(")[0].strip() for message in unreadable.values())
    print(f"\n{len(paths)} mutants in {elapsed:.1f} s: {len(parsed)} parsed, {len(unreadable)} unreadable: "
          f"{dict(reasons.most_common(6))}")
    assert elapsed < TIME_BUDGET, f"{len(paths)} mutated ELF files took {elapsed:.0f} s"


def test_90_not_quite_elf_files_get_a_reason_each() -> None:
    from imgaudit.elf import ElfReader

    with ElfReader(timeout=10) as reader:
        reasons = {name: reader.read("/x", data).error for name, data in h.not_quite_elf().items()}
    assert reasons["90-four-bytes"] == "not a valid ELF (truncated: 4 bytes)"
    assert reasons["90-bad-class"] == "not a valid ELF (bad class byte 0x07)"
    assert reasons["90-bad-data"] == "not a valid ELF (bad data byte 0x09)"
    assert reasons["90-ld-script"] == "GNU ld script"
    assert reasons["90-after-ident"] == "not a valid ELF (truncated header: 16 bytes)"
    assert reasons["90-header-only"] is None  # a bare 64-byte header is a (useless) valid ELF


def test_91_a_worker_that_dies_is_replaced_and_the_file_marked(corpus: dict[str, bytes]) -> None:
    """Kill the LIEF worker mid-run (as a segfault would): that file is marked, the next one parses."""
    from imgaudit import elf

    good = sources()
    sample = next(data for name, data in good.items() if "hello-dynamic" in name or "busybox" in name)
    with elf.ElfReader(timeout=10) as reader:
        assert reader.read("/a", sample).error is None
        crashed = reader._read_op(sample, elf._OP_ABORT)
        assert crashed.error is not None and "crashed" in crashed.error
        assert reader.read("/b", sample).error is None
