"""action.yml runs as GitHub would run it: each step's script under `bash --noprofile --norc -eo pipefail`, its
`${{ … }}` expressions filled in, with fake `$GITHUB_STEP_SUMMARY` and `$GITHUB_OUTPUT` files."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from imgaudit.render.markdown import MARKER
from tests import builders as b

REPO = Path(__file__).resolve().parents[2]
ACTION = yaml.safe_load((REPO / "action.yml").read_text(encoding="utf-8"))
_EXPR = re.compile(r"\$\{\{\s*([A-Za-z0-9_.-]+)\s*\}\}")


@dataclass
class Run:
    codes: list[int]
    stdout: str
    stderr: str
    summary: str
    outputs: dict[str, str]


def _outputs(path: Path) -> dict[str, str]:
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _expand(text: str, context: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        if match[1] not in context:
            raise AssertionError(f"action.yml uses ${{{{ {match[1]} }}}}, which this test does not provide")
        return context[match[1]]

    return _EXPR.sub(value, text)


def run_action(inputs: dict[str, str], tmp: Path, runner_temp: Path) -> Run:
    """Every step of the composite action in order, stopping at the first failing step as the runner does."""
    missing = [k for k, spec in ACTION["inputs"].items() if spec.get("required") and k not in inputs]
    assert not missing, missing
    context = {f"inputs.{k}": inputs.get(k, str(spec.get("default", ""))) for k, spec in ACTION["inputs"].items()}
    context |= {"github.action_path": str(REPO), "runner.temp": str(runner_temp)}
    summary = tmp / "step_summary.md"
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "IMGAUDIT_", "RUNNER_"))}
    base |= {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary), "RUNNER_TEMP": str(runner_temp),
             "NO_COLOR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    codes: list[int] = []
    out: list[str] = []
    err: list[str] = []
    for step in ACTION["runs"]["steps"]:
        assert step["shell"] == "bash"
        step_output = tmp / f"output_{len(codes)}"
        env = base | {k: _expand(str(v), context) for k, v in step.get("env", {}).items()}
        env["GITHUB_OUTPUT"] = str(step_output)
        script = tmp / f"step_{len(codes)}.sh"
        script.write_text(_expand(step["run"], context), encoding="utf-8")
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], env=env, cwd=tmp,
                              capture_output=True, text=True, timeout=600, check=False)
        codes.append(done.returncode)
        out.append(done.stdout)
        err.append(done.stderr)
        for key, value in _outputs(step_output).items():
            context[f"steps.{step.get('id', '')}.outputs.{key}"] = value
        if done.returncode != 0:
            break
    context |= _unset_outputs(context)
    outputs = {name: _expand(spec["value"], context) for name, spec in ACTION["outputs"].items()}
    return Run(codes, "".join(out), "".join(err), summary.read_text(encoding="utf-8") if summary.exists() else "",
               outputs)


def _unset_outputs(context: dict[str, str]) -> dict[str, str]:
    """An output a step did not set expands to the empty string, as on GitHub."""
    names = {m[1] for spec in ACTION["outputs"].values() for m in _EXPR.finditer(spec["value"])}
    return {name: "" for name in names if name not in context}


@pytest.fixture(scope="module")
def runner_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runner temp dir for the module, so the install step's virtual environment is built once."""
    return tmp_path_factory.mktemp("runner_temp")


DOCKERFILE = "FROM scratch\nCOPY readme /app/readme\nCOPY data /data\nENTRYPOINT [\"/app/server\"]\n"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A checkout with a Dockerfile and the image it built, saved with `docker save` (here: written directly)."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    spec = b.ImageSpec([b.make_layer([b.d("app"), b.f("app/readme", "hi")]), b.make_layer([b.f("data", "x" * 100)])],
                       entrypoint=["/app/server"],
                       created_by=["COPY readme /app/readme # buildkit", "COPY data /data # buildkit"])
    b.write_docker_archive(tmp_path / "image.tar", {"app:1": spec})
    return tmp_path


def test_action_fails_the_step_and_reports_everywhere(workspace: Path, runner_temp: Path, schemas_dir: Path) -> None:
    import jsonschema

    run = run_action({"image": "docker-archive:image.tar", "dockerfile": "Dockerfile", "args": "--max-layers 1"},
                     workspace, runner_temp)
    assert run.codes == [0, 1], run.stderr[-2000:]
    assert (runner_temp / "imgaudit-venv" / "bin" / "imgaudit").exists()
    assert run.outputs == {"sarif": "imgaudit.sarif", "exit-code": "1"}
    # the job log: the table, then annotations on stderr pointing at Dockerfile lines
    assert "gate: FAIL" in run.stdout
    assert "::error file=Dockerfile,line=1,title=imgaudit budget-layers::" in run.stderr
    assert "::error file=Dockerfile,line=4,title=imgaudit entrypoint-missing::" in run.stderr
    # the job summary
    assert run.summary.startswith(MARKER)
    assert "fails the gate" in run.summary and "| layers | 2 | ≤ 1 ❌ |" in run.summary
    # the SARIF file for code scanning
    doc = json.loads((workspace / "imgaudit.sarif").read_text(encoding="utf-8"))
    jsonschema.Draft4Validator(json.loads((schemas_dir / "sarif-2.1.0.json").read_text())).validate(doc)
    rules = {r["ruleId"] for r in doc["runs"][0]["results"]}
    assert {"budget-layers", "entrypoint-missing"} <= rules


def test_action_passes_with_fail_on_never(workspace: Path, runner_temp: Path) -> None:
    run = run_action({"image": "docker-archive:image.tar", "fail-on": "never", "sarif": "", "format": "json"},
                     workspace, runner_temp)
    assert run.codes == [0, 0], run.stderr[-2000:]
    assert run.outputs == {"sarif": "", "exit-code": "0"}
    assert json.loads(run.stdout[run.stdout.index("{"):])["image"]["reference"] == "docker-archive:image.tar"
    assert "passes the gate" in run.summary
    assert not (workspace / "imgaudit.sarif").exists()


def test_action_inputs_cannot_inject_shell(workspace: Path, runner_temp: Path) -> None:
    run = run_action({"image": "docker-archive:image.tar", "fail-on": "never",
                      "args": "--ignore $(touch${IFS}pwned) ; touch pwned2"}, workspace, runner_temp)
    assert not (workspace / "pwned").exists() and not (workspace / "pwned2").exists()
    assert run.codes[-1] == 2  # `;` reached imgaudit as an argument: a usage error, not a command
    assert run.outputs["exit-code"] == "2"


def test_action_metadata() -> None:
    assert ACTION["runs"]["using"] == "composite"
    assert set(ACTION["inputs"]) >= {"image", "fail-on", "format", "sarif", "dockerfile", "args"}
    for step in ACTION["runs"]["steps"]:
        assert "${{" not in step["run"], "inputs must reach scripts through env only"


def test_pre_commit_hook_entry() -> None:
    hooks: list[dict[str, Any]] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    (hook,) = hooks
    assert hook["id"] == "imgaudit" and hook["language"] == "python"
    assert hook["entry"].split()[:2] == ["imgaudit", "check"] and hook["pass_filenames"] is False
