"""Machine-readable outputs validate against their public schemas; text outputs match golden files."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from imgaudit import ci
from imgaudit.dockerfile import map_dockerfile
from imgaudit.policy import Budgets, FailOn, Policy, apply, parse_ignore
from imgaudit.render import junit, markdown
from imgaudit.render.json import render as render_json
from imgaudit.report import Report
from imgaudit.rules import RULES
from tests.unit.reports import report

SCHEMA = Path(__file__).resolve().parents[2] / "imgaudit" / "schema" / "report.schema.json"
NOW = datetime(2026, 1, 2, 3, 4, 5)
POLICY = Policy(budgets=Budgets(max_layers=2, max_size=200_000_000, min_efficiency=0.95),
                ignores=(parse_ignore("apt-lists:/var/lib/*"),))
DOCKERFILE = """\
# syntax=docker/dockerfile:1
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release

FROM debian:bookworm-slim
RUN apt-get update \\
 && apt-get install -y curl
COPY --from=build /src/target/release/app /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]
"""


@pytest.fixture(scope="module")
def sarif_schema(schemas_dir: Path) -> jsonschema.protocols.Validator:
    schema = json.loads((schemas_dir / "sarif-2.1.0.json").read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


@pytest.fixture(scope="module")
def junit_schema(schemas_dir: Path) -> Any:
    xmlschema = pytest.importorskip("xmlschema", reason="pip install -e '.[test]' brings xmlschema")
    return xmlschema.XMLSchema(str(schemas_dir / "junit.xsd"))


def _applied(**kw: Any) -> Report:
    return apply(report(**kw), POLICY)


def _sarif(rep: Report, with_dockerfile: bool = True) -> dict[str, Any]:
    dmap = map_dockerfile("build/Dockerfile", DOCKERFILE, [x.created_by for x in rep.size.layers])
    gate = ci.Gate(POLICY, dmap if with_dockerfile else None)
    doc: dict[str, Any] = json.loads(ci.render_as("sarif", rep, gate))
    return doc


# ---- JSON: the package's own contract ----

@pytest.mark.parametrize("kw", [{}, {"with_findings": False}, {"incomplete": True}])
def test_json_validates_against_report_schema(kw: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    validator.validate(json.loads(render_json(_applied(**kw))))


# ---- SARIF 2.1.0 ----

@pytest.mark.parametrize("kw", [{}, {"with_findings": False}, {"incomplete": True}])
@pytest.mark.parametrize("with_dockerfile", [True, False])
def test_sarif_validates(sarif_schema: Any, kw: dict[str, Any], with_dockerfile: bool) -> None:
    errors = sorted(sarif_schema.iter_errors(_sarif(_applied(**kw), with_dockerfile)), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def test_sarif_rules_and_results() -> None:
    doc = _sarif(_applied())
    run = doc["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    ids = [r["id"] for r in rules]
    assert ids[: len(RULES)] == [r.id for r in RULES]
    assert len(set(ids)) == len(ids)
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
    by_rule = {r["ruleId"]: r for r in run["results"]}
    assert set(by_rule) == {"budget-layers", "budget-efficiency", "missing-interpreter", "no-ca-certificates",
                            "elf-unreadable"}  # apt-lists ignored; size is under its budget
    help_text = rules[ids.index("missing-interpreter")]["help"]["text"]
    assert "exec /app: no such file or directory" in help_text
    assert "--ignore missing-interpreter" in help_text


def test_sarif_points_at_the_dockerfile_line_then_the_image_path() -> None:
    results = {r["ruleId"]: r for r in _sarif(_applied())["runs"][0]["results"]}
    first, second = results["missing-interpreter"]["locations"]
    assert first["physicalLocation"]["artifactLocation"] == {"uri": "build/Dockerfile", "uriBaseId": "%SRCROOT%"}
    assert first["physicalLocation"]["region"] == {"startLine": 10}  # the COPY --from=build line, layer 2
    assert second["physicalLocation"]["artifactLocation"] == {"uri": "usr/local/bin/app", "uriBaseId": "IMAGEROOT"}
    weird = results["elf-unreadable"]["locations"]
    assert weird[0]["physicalLocation"]["region"] == {"startLine": 8}  # layer 1: the multi-line RUN
    assert weird[1]["physicalLocation"]["artifactLocation"]["uri"] == "opt/we%7Crd%20%60name%60%0A%FF%3Cb%3E"
    budget = results["budget-layers"]["locations"]
    assert budget[0]["physicalLocation"]["region"] == {"startLine": 7}  # the final FROM


def test_sarif_without_dockerfile_has_only_image_locations() -> None:
    for result in _sarif(_applied(), with_dockerfile=False)["runs"][0]["results"]:
        assert [loc["physicalLocation"]["artifactLocation"]["uriBaseId"] for loc in result["locations"]] == [
            "IMAGEROOT"]


def test_sarif_fingerprints_ignore_layer_and_wording() -> None:
    one = _sarif(_applied())["runs"][0]["results"]
    rep = _applied()
    rep.findings = [type(f)(f.rule, f.severity, "reworded", f.path, 7, f.fix, f.bytes) for f in rep.findings]
    two = _sarif(rep)["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in one] == [r["partialFingerprints"] for r in two]


def test_sarif_survives_an_uncatalogued_rule(sarif_schema: Any) -> None:
    rep = _applied()
    rep.findings.append(type(rep.findings[0])("brand-new-rule", rep.findings[0].severity, "m"))
    doc = _sarif(rep)
    sarif_schema.validate(doc)
    assert doc["runs"][0]["tool"]["driver"]["rules"][-1]["id"] == "brand-new-rule"


# ---- JUnit ----

@pytest.mark.parametrize("kw", [{}, {"with_findings": False}, {"incomplete": True}])
@pytest.mark.parametrize("fail_on", list(FailOn))
def test_junit_validates(junit_schema: Any, kw: dict[str, Any], fail_on: FailOn) -> None:
    policy = Policy(fail_on=fail_on, budgets=POLICY.budgets, ignores=(parse_ignore("libc-mismatch"),))
    junit_schema.validate(junit.render(apply(report(**kw), policy), policy, now=NOW, hostname="ci"))


def test_junit_one_case_per_check() -> None:
    import xml.etree.ElementTree as ET

    policy = Policy(budgets=Budgets(max_layers=2), ignores=(parse_ignore("libc-mismatch"),))
    root = ET.fromstring(junit.render(apply(report(), policy), policy, now=NOW, hostname="ci"))
    suite = root.find("testsuite")
    assert suite is not None
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert "budget-layers" in cases and "budget-size" not in cases  # only budgets that are set
    assert cases["missing-interpreter"].find("failure") is not None
    assert cases["budget-layers"].find("failure") is not None
    assert cases["no-ca-certificates"].find("failure") is None  # a warning, under --fail-on error
    assert cases["libc-mismatch"].find("skipped") is not None
    assert "apt-lists" in cases  # uncatalogued rules still get a case
    assert suite.get("tests") == str(len(cases)) and suite.get("failures") == "2"
    out = suite.findtext("system-out") or ""
    assert "no-ca-certificates" not in out and "app links OpenSSL" in out
    assert "\\xff" in out  # the undecodable byte is escaped, not emitted as an invalid character


# ---- golden text outputs ----

def _normalise(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_markdown_golden(golden: Any) -> None:
    golden("markdown/failing.md", markdown.render(_applied(incomplete=True), POLICY))
    golden("markdown/passing.md", markdown.render(apply(report(with_findings=False), Policy()), Policy()))


def test_table_golden(golden: Any) -> None:
    golden("table/failing.txt", _normalise(ci.render_as("table", _applied(), ci.Gate(POLICY))))


def test_markdown_neutralises_untrusted_text() -> None:
    text = markdown.render(_applied(), POLICY)
    assert re.search(r"(?<!\\)<script>", text) is None  # escaped in prose…
    assert "\\xff<b>``" in text  # …and literal inside a code span, where markdown renders no HTML
    assert "@octocat" not in text  # a word joiner breaks the mention
    row = next(line for line in text.splitlines() if "elf-unreadable" in line and line.startswith("|"))
    assert row.count(" | ") == 3  # the `|` inside the path and message did not add table cells


@pytest.mark.parametrize(("value", "expected"), [
    ("a`b", "``a`b``"), ("`x`", "`` `x` ``"), ("p|q", "`p\\|q`"), ("line\nnext", "`line\\x0anext`"),
])
def test_markdown_code_spans(value: str, expected: str) -> None:
    assert markdown.code(value) == expected


def test_markdown_keeps_code_spans_of_fixes() -> None:
    assert markdown.text_with_code("run `strip --strip-debug /a_b` <now>") == \
        "run `strip --strip-debug /a_b` \\<now\\>"
    assert markdown.text_with_code("odd ` tick a_b") == "odd \\` tick a\\_b"


# ---- GitHub Actions workflow commands ----

def test_escaping_follows_the_toolkit() -> None:
    assert ci.escape_data("50% done\r\nnext") == "50%25 done%0D%0Anext"
    assert ci.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_annotations_with_dockerfile_lines() -> None:
    rep = _applied()
    dmap = map_dockerfile("Dockerfile", DOCKERFILE, [x.created_by for x in rep.size.layers])
    lines = ci.workflow_commands(rep, dmap)
    assert lines[0] == "::error file=Dockerfile,line=7,title=imgaudit budget-efficiency::" + \
        ci.escape_data(rep.findings[0].message + " Fix: " + (rep.findings[0].fix or ""))
    interp = next(line for line in lines if "missing-interpreter" in line)
    assert interp.startswith("::error file=Dockerfile,line=10,title=imgaudit missing-interpreter::/usr/local/bin/app: ")
    weird = next(line for line in lines if "elf-unreadable" in line)
    assert weird.startswith("::warning ") and "\n" not in weird and "%0A" in weird
    assert not any("apt-lists" in line for line in lines)  # infos are not annotated


def test_annotations_are_capped_per_level() -> None:
    rep = _applied()
    rep.findings = rep.findings[:1] * 25
    lines = ci.workflow_commands(rep, None)
    assert len(lines) == 11
    assert lines[-1].startswith("::notice title=imgaudit::15 more")
    assert "file=" not in lines[0]


# ---- --output ----

@pytest.mark.parametrize(("value", "fmt", "name"), [
    ("out.sarif", "sarif", "out.sarif"), ("x.sarif.json", "sarif", "x.sarif.json"), ("r.json", "json", "r.json"),
    ("junit.xml", "junit", "junit.xml"), ("c.md", "markdown", "c.md"), ("sarif:plain", "sarif", "plain"),
    ("markdown:c.txt", "markdown", "c.txt"),
])
def test_parse_output(value: str, fmt: str, name: str) -> None:
    assert ci.parse_output(value) == ci.Output(fmt, Path(name))


def test_parse_output_needs_a_format() -> None:
    from imgaudit.errors import UsageError

    with pytest.raises(UsageError, match="FORMAT:FILE"):
        ci.parse_output("report")


def test_outputs_refuse_the_input_image(tmp_path: Path) -> None:
    from imgaudit.errors import UsageError
    from tests import builders as b

    image = b.write_docker_archive(tmp_path / "app.tar", {"app:1": b.ImageSpec([b.make_layer([b.f("a", "x")])])})
    before = image.read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        ci.check_outputs([ci.parse_output(f"json:{tmp_path}/./app.tar")], ci.input_paths(f"docker-archive:{image}"))
    with pytest.raises(UsageError, match="refusing to overwrite"):
        ci.check_outputs([ci.Output("json", tmp_path / "layout")], ci.input_paths(f"oci:{tmp_path}/layout:v1"))
    with pytest.raises(UsageError, match="refusing to overwrite"):
        ci.check_outputs([ci.Output("json", image)], ci.input_paths(f"docker-archive:{image}:app:1"))
    with pytest.raises(UsageError, match="refusing to overwrite"):
        ci.check_outputs([ci.Output("json", image)], ci.input_paths(str(image)))
    with pytest.raises(UsageError, match="same file"):
        ci.check_outputs([ci.Output("json", tmp_path / "a"), ci.Output("sarif", tmp_path / "a")], [])
    assert image.read_bytes() == before


def test_outputs_need_an_existing_directory(tmp_path: Path) -> None:
    from imgaudit.errors import UsageError

    with pytest.raises(UsageError, match="no directory"):
        ci.check_outputs([ci.Output("json", tmp_path / "missing" / "r.json")], [])


def test_cli_output_has_no_colour_off_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from imgaudit.cli import main
    from tests import builders as b

    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY"):
        monkeypatch.delenv(name, raising=False)
    b.write_docker_archive(tmp_path / "a.tar", {"a:1": b.ImageSpec([b.make_layer([b.f("x", "1")])], entrypoint=["/x"])})
    result = CliRunner().invoke(main, ["check", "docker-archive:a.tar", "--fail-on", "never", "-o", "r.md",
                                       "-o", "junit:r.xml"])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.stdout and "gate: pass" in result.stdout
    assert (tmp_path / "r.md").read_text().startswith(markdown.MARKER)
    assert (tmp_path / "r.xml").read_text().startswith("<?xml")


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    target.write_text("old")
    ci.write_atomic(target, "new \udcff\n")
    assert target.read_text() == "new \\udcff\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_finish_writes_files_summary_and_annotations(tmp_path: Path) -> None:
    printed: list[str] = []
    errors: list[str] = []
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code = ci.finish(_applied(), ci.Gate(POLICY, now=NOW), fmt="json",
                     outputs=[ci.Output("sarif", tmp_path / "r.sarif"), ci.Output("junit", tmp_path / "j.xml")],
                     env=env, echo=printed.append, echo_err=errors.append)
    assert code == 1
    assert json.loads("".join(printed))["summary"]["errors"] == 3  # stdout stays one JSON document
    assert json.loads((tmp_path / "r.sarif").read_text())["version"] == "2.1.0"
    assert (tmp_path / "j.xml").read_text().startswith("<?xml")
    assert summary.read_text().startswith("earlier step\n" + markdown.MARKER)
    assert all(line.startswith("::") for line in errors)


def test_finish_outside_github_is_quiet(tmp_path: Path) -> None:
    errors: list[str] = []
    code = ci.finish(_applied(), ci.Gate(Policy(fail_on=FailOn.NEVER)), fmt="markdown", outputs=[], env={},
                     echo=lambda _: None, echo_err=errors.append)
    assert code == 0
    assert errors == []
