"""Random layer stacks through the whole audit: whatever layers collide on (replaced, removed, opaqued, linked
through, looped), every analyser answers and the report keeps its contract.

Coverage-guided fuzzing of archive bytes (fuzz/harness_archive.py) seldom builds a valid image of several
layers whose paths collide: an entry under a symlink loop stopped every run with an internal error until the
eleventh round, found by a generator like this one.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest

from fuzz import hostile as h
from imgaudit import audit, listing
from imgaudit.render.json import render
from tests.builders import make_layer, random_layer

_SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "imgaudit" / "schema" / "report.schema.json").read_text())
REPORT = jsonschema.validators.validator_for(_SCHEMA)(_SCHEMA)  # checked once, not once per report
# Paths the analysers read (loader config, runtimes, package databases, the entrypoint) among plain ones.
NAMES = ["a", "b", "a/x", "a/x/p", "b/q", "lnk", "lnk/z", "etc/ld.so.conf", "etc/ld.so.conf.d/x.conf", "lib",
         "usr/lib", "lib/libc.so.6", "bin/sh", "app", "etc/os-release", "var/lib/dpkg/status",
         "lib/apk/db/installed", "etc/passwd", "usr/share/doc/p", "tmp"]
CONTENTS = ["", "x", "include /etc/ld.so.conf.d/*.conf\n/usr/lib\n", "#!/bin/sh\n", "\x7fELF\x02\x01\x01" + "\0" * 60,
            "ID=alpine\nVERSION_ID=3.20\n", "Package: p\nStatus: install ok installed\n\n"]
TARGETS = ["a", "/b", "../b", "a/x", "nowhere", "usr/lib", "/lib", ".", "..", "/", "lib/libc.so.6"]
ENTRYPOINTS = [["/app"], ["/bin/sh", "-c", "x"], ["a/x"], ["lnk"], ["/lib/libc.so.6"]]


@pytest.mark.parametrize("seed", range(0, 400, 40))
def test_every_analyser_answers_for_random_stacks(tmp_path: Path, seed: int) -> None:
    for rng in (random.Random(s) for s in range(seed, seed + 40)):
        layers = [make_layer(random_layer(rng, NAMES, CONTENTS, TARGETS)) for _ in range(rng.randint(1, 5))]
        blobs = [h.Blob(layer) for layer in layers]
        config = h.config_doc([b.diff_id for b in blobs],
                              config={"Entrypoint": rng.choice(ENTRYPOINTS), "Env": ["PATH=/bin:/usr/bin"]})
        layout = tmp_path / f"{rng.random():.12f}"
        ref = h.write_image("oci-dir", layout, blobs, config=json.dumps(config).encode())
        report = audit.audit(ref, audit.Options(cache=False, keep_parsers=True))  # one LIEF worker for all
        document = json.loads(render(report))
        REPORT.validate(document)
        loaded = audit.load(ref, audit.Options(cache=False, elf=False, keep_parsers=True))
        skipped = loaded.rootfs.skipped
        assert document["complete"] is not bool(skipped)  # nothing else here makes a report incomplete
        assert {(s.what, s.reason) for s in skipped} <= {(i["what"], i["reason"]) for i in document["incomplete"]}
        for layer in range(len(layers)):
            listing.layer_rows(loaded.rootfs, layer)
        listed = {row["path"] for row in listing.final_rows(loaded.rootfs)}
        assert listed == set(loaded.rootfs.nodes) - {"/"}


@pytest.mark.parametrize("seed", range(1000, 1240, 40))
def test_cached_scans_give_the_report_a_fresh_read_gives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          seed: int) -> None:
    """A re-inspection reads each layer's scan and linkage memos back from the cache: for any stack, in any image
    format and at either `--jobs`, its report is the one a read without the cache gives (10,000 stacks gave no
    difference in the twelfth round; this keeps 240 of them)."""
    for rng in (random.Random(s) for s in range(seed, seed + 40)):
        layers = [make_layer(random_layer(rng, NAMES, CONTENTS, TARGETS)) for _ in range(rng.randint(1, 5))]
        blobs = [h.Blob(layer) for layer in layers]
        config = h.config_doc([b.diff_id for b in blobs], config={"Entrypoint": rng.choice(ENTRYPOINTS)})
        source = rng.choice(["oci-dir", "docker-legacy", "oci-archive"])
        ref = h.write_image(source, tmp_path / f"{rng.random():.12f}", blobs, config=json.dumps(config).encode())
        cache = tmp_path / f"cache-{rng.random():.12f}"
        monkeypatch.setenv("IMGAUDIT_CACHE_DIR", str(cache))
        jobs = rng.choice([1, 2])
        fresh = render(audit.audit(ref, audit.Options(cache=False, jobs=jobs, keep_parsers=True)))
        assert render(audit.audit(ref, audit.Options(jobs=jobs, keep_parsers=True))) == fresh  # written
        for report in cache.glob("report-*"):
            report.unlink()
        assert render(audit.audit(ref, audit.Options(jobs=3 - jobs, keep_parsers=True))) == fresh  # scans read back
