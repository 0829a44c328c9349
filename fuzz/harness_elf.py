#!/usr/bin/env python3
"""Fuzz ELF facts through the isolated LIEF worker (imgaudit/elf.py), then through the loader emulation: the
mutated file is the entrypoint of a tiny image with a musl and a glibc loader, so hostile DT_NEEDED, RPATH
and interpreter strings reach the path search.

Nothing LIEF does may reach this process: a worker crash or hang must come back as `ElfFacts.error`. A quarter
of the inputs are also streamed to the worker (ElfSession.stream) and must get the same facts. The
worker's own timeout is 3 s here, under the 5 s hang limit of `scripts/fuzz`. Worker crashes and timeouts are
counted (contained, not failures) and kept in `$IMGAUDIT_FUZZ_ELF_LOG.<pid>` when that is set (rewritten as
they change: libFuzzer ends the process without running Python's atexit).

    python fuzz/harness_elf.py CORPUS_DIR [SEED_DIR] -max_total_time=60 -timeout=5 -max_len=2000000
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris

from fuzz.harness_common import INSTRUMENT, Broken, check_report, fake_image, fuzz

with atheris.instrument_imports(include=INSTRUMENT):
    from imgaudit.audit import Loaded, audit
    from imgaudit.checks import linkage, size  # noqa: F401 - imported here to be instrumented
    from imgaudit.elf import ElfFacts, ElfReader
    from imgaudit.layers import Entry, EntryType, LayerScan
    from imgaudit.rootfs import RootFS

WORKER_TIMEOUT = 3.0
OUTCOMES: Counter[str] = Counter()
_reader = ElfReader(timeout=WORKER_TIMEOUT)


def _record(outcome: str) -> None:
    OUTCOMES[outcome] += 1
    log = os.environ.get("IMGAUDIT_FUZZ_ELF_LOG")
    if log and (outcome.startswith("worker") or OUTCOMES.total() % 200 == 0):
        Path(f"{log}.{os.getpid()}").write_text(" ".join(f"{k}={v}" for k, v in sorted(OUTCOMES.items())) + "\n")


def read(data: bytes) -> ElfFacts:
    global _reader
    facts = _reader.read("/app", data)
    if facts.error and facts.error.startswith("parser disabled"):
        _reader.close()  # a run of crashing mutants must not switch the parser off for the rest of the run
        _reader = ElfReader(timeout=WORKER_TIMEOUT)
        facts = _reader.read("/app", data)
    _record(_outcome(facts))
    return facts


def _base_entries() -> list[Entry]:
    musl = ElfFacts(elf_class=64, endian="little", machine="x86_64", elf_type="dyn", soname="libc.musl-x86_64.so.1",
                    libc="musl", has_dynamic=True)
    glibc = ElfFacts(elf_class=64, endian="little", machine="x86_64", elf_type="dyn", soname="libc.so.6",
                     libc="glibc", has_dynamic=True, version_defs=("GLIBC_2.2.5", "GLIBC_2.34"))
    return [Entry("/lib", EntryType.DIR, 0o755), Entry("/lib64", EntryType.DIR, 0o755),
            Entry("/lib/ld-musl-x86_64.so.1", EntryType.FILE, 0o755, size=1, head=b"\x7fELF", elf=musl),
            Entry("/lib/libc.musl-x86_64.so.1", EntryType.SYMLINK, 0o777, link="ld-musl-x86_64.so.1"),
            Entry("/lib/libc.so.6", EntryType.FILE, 0o755, size=1, head=b"\x7fELF", elf=glibc),
            Entry("/lib64/ld-linux-x86-64.so.2", EntryType.SYMLINK, 0o777, link="/lib/libc.so.6"),
            Entry("/usr", EntryType.DIR, 0o755), Entry("/usr/lib", EntryType.SYMLINK, 0o777, link="/lib"),
            Entry("/bin", EntryType.DIR, 0o755)]


BASE = _base_entries()


def streamed(data: bytes) -> ElfFacts:
    """The same file streamed into LIEF's buffer (the way in for files above the scan's ELF budget)."""
    stream = _reader.session().stream(len(data))
    stream.write(data)
    return stream.facts()


def _outcome(facts: ElfFacts) -> str:
    """parsed, refused, or a worker crash or timeout (contained: the file gets an error, this process goes on)."""
    if facts.error is None:
        return "parsed"
    if "crashed" in facts.error or "exited unexpectedly" in facts.error:
        return "worker-crash"
    if "timed out" in facts.error:
        return "worker-timeout"
    return "refused"


def _contained(facts: ElfFacts) -> bool:
    return _outcome(facts).startswith("worker")


def test(data: bytes) -> None:
    facts = read(data)
    if not isinstance(facts, ElfFacts):
        raise Broken(f"read_elf returned {type(facts).__name__}")
    if data and len(data) % 4 == 0 and not _contained(facts):  # a quarter of the inputs, both ways in
        other = streamed(data)
        if other != facts and not _contained(other):
            raise Broken(f"streamed and slot facts differ: {other.error!r} against {facts.error!r}")
    if facts.error is None and not all(isinstance(n, str) for n in facts.needed + facts.rpath + facts.runpath):
        raise Broken("ELF facts hold non-string names")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    app = Entry("/bin/app", EntryType.FILE, 0o755, size=len(data), head=data[:256], digest=digest[7:], elf=facts)
    lib = Entry("/lib/libfuzz.so", EntryType.FILE, 0o755, size=len(data), head=data[:256], elf=facts)
    scan = LayerScan(digest, digest, len(data), len(data), "tar", (*BASE, app, lib))
    fs = RootFS.build([scan])
    report = audit(Loaded(fake_image((scan,)), (scan,), fs))  # type: ignore[arg-type]
    check_report(report)
    if facts.error is not None and not any(f.rule == "elf-unreadable" for f in report.findings):
        raise Broken(f"an unreadable ELF is not reported: {facts.error}")
    if facts.error is not None and report.complete:
        raise Broken("an unreadable ELF leaves the report complete")


if __name__ == "__main__":
    fuzz(test)
