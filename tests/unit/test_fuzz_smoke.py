"""The four atheris harnesses (fuzz/harness_*.py) run for a few seconds each, seeded by scripts/make-fuzz-seeds,
in subprocesses side by side (about 20 s in all): no crash, no hang, no stray traceback. The long runs are
`scripts/fuzz` (issue 7: 10 minutes per harness); its log classifier is checked here on synthetic logs.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
HARNESSES = ("tar", "json", "archive", "elf")
SECONDS = 5

pytest.importorskip("atheris", reason="atheris (pip install atheris) runs the fuzz harnesses")


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("seeds")
    subprocess.run([sys.executable, str(REPO / "scripts" / "make-fuzz-seeds"), "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    return out


def runner() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("fuzz_runner", str(REPO / "scripts" / "fuzz"))
    spec = importlib.util.spec_from_loader("fuzz_runner", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_runner"] = module  # its dataclasses look their module up
    loader.exec_module(module)
    return module


def test_seeds_cover_every_harness_and_many_catalogue_items(seeds: Path) -> None:
    counts = {name: len(list((seeds / name).iterdir())) for name in HARNESSES}
    assert sum(counts.values()) >= 150 and all(counts.values()), counts


def test_every_harness_runs_clean_for_a_few_seconds(seeds: Path, tmp_path: Path) -> None:
    def run(name: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        work = tmp_path / name
        (work / "corpus").mkdir(parents=True)
        cmd = [sys.executable, str(REPO / "fuzz" / f"harness_{name}.py"), str(work / "corpus"), str(seeds / name),
               f"-max_total_time={SECONDS}", "-timeout=5", f"-artifact_prefix={work}/", "-rss_limit_mb=2048",
               "-max_len=1048576", "-print_final_stats=1"]
        env = {"IMGAUDIT_CACHE": "off", "PATH": "/usr/bin:/bin", "HOME": str(work)}
        return name, subprocess.run(cmd, capture_output=True, text=True, errors="replace", cwd=work, env=env,
                                    timeout=SECONDS + 120, check=False)

    with ThreadPoolExecutor(len(HARNESSES)) as pool:
        results = dict(pool.map(run, HARNESSES))
    classify = runner().classify
    for name, result in results.items():
        log = result.stdout + result.stderr
        found = classify(log)
        assert not found, f"harness_{name}: {[(f.kind, f.signature, f.detail) for f in found]}\n{log[-3000:]}"
        assert result.returncode == 0 and "Done " in log, f"harness_{name} exited {result.returncode}\n{log[-3000:]}"
        assert not list((tmp_path / name).glob("crash-*")) and not list((tmp_path / name).glob("timeout-*"))


def test_the_runner_tells_crashes_hangs_and_stray_tracebacks_apart() -> None:
    classify = runner().classify
    crash = ("=== Uncaught Python exception: ===\nTraceback (most recent call last):\n"
             '  File "/r/fuzz/harness_tar.py", line 9, in test\n'
             '  File "/r/imgaudit/layers.py", line 42, in _member\nValueError: bad\n'
             "==1== ERROR: libFuzzer: fuzz target exited\nTest unit written to ./crash-abc\n")
    (finding,) = classify(crash)
    assert (finding.kind, finding.signature, finding.artifact) == ("crash", "ValueError at layers.py:42 _member",
                                                                   "./crash-abc")
    (hang,) = classify("ALARM: working on the last Unit for 6 seconds\n==1== ERROR: libFuzzer: timeout after 6 "
                       "seconds\nTest unit written to ./timeout-1\n")
    assert hang.kind == "hang"
    (stray,) = classify("#100 DONE cov: 1\nException ignored in: <function f>\nTraceback (most recent call last):\n"
                        "Done 100 runs in 1 second(s)\n")
    assert stray.kind == "traceback"
    assert classify("#100 DONE cov: 1 ft: 2\nDone 100 runs in 5 second(s)\n") == []
