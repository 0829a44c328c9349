"""The CI gate: fail threshold, budgets at their exact thresholds, ignores, config discovery and precedence."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from imgaudit.cli import main
from imgaudit.errors import UsageError
from imgaudit.policy import (
    Budgets,
    FailOn,
    Ignore,
    Policy,
    apply,
    budget_findings,
    decide,
    discover,
    load_policy,
    parse_dive_ci,
    parse_ignore,
    parse_ratio,
    parse_size,
)
from imgaudit.report import Finding, Severity
from tests import builders as b
from tests.unit.reports import report, size_info


@pytest.fixture(autouse=True)
def _no_github(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GITHUB_ACTIONS", "GITHUB_STEP_SUMMARY", "GITHUB_OUTPUT"):
        monkeypatch.delenv(name, raising=False)


# ---- values ----

@pytest.mark.parametrize(("text", "expected"), [
    ("200MB", 200_000_000), ("1.5GiB", 1_610_612_736), ("1024", 1024), (1024, 1024), ("20 mb", 20_000_000),
    ("1k", 1000), ("1Ki", 1024), ("1KiB", 1024), ("0", 0), ("2.5kB", 2500), ("1TB", 10**12), ("7B", 7),
])
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["20XB", "-1", "1.2.3", "", "MB", "1 M B", True])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [("0.95", 0.95), ("95%", 0.95), (1, 1.0), ("0", 0.0), (0.2, 0.2)])
def test_parse_ratio(text: object, expected: float) -> None:
    assert parse_ratio(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["1.5", "abc", "-0.1", "150%", "nan"])
def test_parse_ratio_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="ratio"):
        parse_ratio(text)


# ---- budgets trip exactly at their thresholds: equal passes, one more fails ----

SIZE = size_info()
AT_LIMIT = [  # (budget, value equal to the image's, value just past it, rule)
    ("max_size", SIZE.uncompressed_bytes, SIZE.uncompressed_bytes - 1, "budget-size"),
    ("max_compressed_size", SIZE.compressed_bytes, SIZE.compressed_bytes - 1, "budget-compressed-size"),
    ("max_layers", len(SIZE.layers), len(SIZE.layers) - 1, "budget-layers"),
    ("min_efficiency", SIZE.efficiency, math.nextafter(SIZE.efficiency, 1), "budget-efficiency"),
    ("max_wasted", SIZE.wasted_bytes, SIZE.wasted_bytes - 1, "budget-wasted"),
    ("max_reclaimable", SIZE.reclaimable_bytes, SIZE.reclaimable_bytes - 1, "budget-reclaimable"),
]


@pytest.mark.parametrize(("budget", "equal", "past", "rule"), AT_LIMIT)
def test_budget_threshold(budget: str, equal: float, past: float, rule: str) -> None:
    assert budget_findings(SIZE, Budgets(**{budget: equal})) == []
    found = budget_findings(SIZE, Budgets(**{budget: past}))
    assert [f.rule for f in found] == [rule]
    assert found[0].severity is Severity.ERROR


def test_size_budget_reports_the_excess() -> None:
    (finding,) = budget_findings(SIZE, Budgets(max_size=SIZE.uncompressed_bytes - 1))
    assert finding.bytes == 1
    assert "120.0 MB" in finding.message


def test_user_wasted_threshold() -> None:
    size = size_info(user_wasted_percent=0.25)
    assert budget_findings(size, Budgets(max_user_wasted=0.25)) == []
    assert [f.rule for f in budget_findings(size, Budgets(max_user_wasted=math.nextafter(0.25, 0)))] == [
        "budget-user-wasted"]


def test_user_wasted_without_user_layers_follows_dive() -> None:
    # dive divides by zero: 0/0 is NaN (passes), x/0 is +Inf (fails any threshold).
    assert budget_findings(size_info(user_wasted_percent=None, wasted_bytes=0), Budgets(max_user_wasted=0)) == []
    found = budget_findings(size_info(user_wasted_percent=None, wasted_bytes=5), Budgets(max_user_wasted=1))
    assert [f.rule for f in found] == ["budget-user-wasted"]


def test_no_budgets_no_findings() -> None:
    assert budget_findings(SIZE, Budgets()) == []


# ---- fail-on and ignores ----

def _policy(**kw: object) -> Policy:
    return Policy(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("fail_on", "severities", "code"), [
    (FailOn.ERROR, [Severity.ERROR], 1), (FailOn.ERROR, [Severity.WARNING, Severity.INFO], 0),
    (FailOn.WARNING, [Severity.WARNING], 1), (FailOn.WARNING, [Severity.INFO], 0),
    (FailOn.NEVER, [Severity.ERROR], 0), (FailOn.ERROR, [], 0),
])
def test_decide(fail_on: FailOn, severities: list[Severity], code: int) -> None:
    rep = report(with_findings=False)
    rep.findings = [Finding("x", sev, "m") for sev in severities]
    assert decide(rep, _policy(fail_on=fail_on)) == code


def test_apply_adds_budgets_drops_ignored_and_sorts() -> None:
    policy = _policy(budgets=Budgets(max_layers=1), ignores=(parse_ignore("no-ca-certificates"),))
    rules = [f.rule for f in apply(report(), policy).findings]
    assert rules == ["budget-layers", "missing-interpreter", "elf-unreadable", "apt-lists"]
    assert decide(apply(report(), _policy(ignores=(Ignore("missing-interpreter"),))), _policy()) == 0


@pytest.mark.parametrize(("spec", "path", "hit"), [
    ("missing-library", "/usr/lib/x.so", True),
    ("missing-library:/usr/lib/*", "/usr/lib/x.so", True),
    ("missing-library:usr/lib/*", "/usr/lib/x.so", True),  # relative PATH is taken from the image root
    ("missing-library:/usr/lib/*", "/opt/lib/x.so", False),
    ("missing-library:/usr/lib/*", None, False),
    ("missing-*", "/x", True),
    ("budget-size", "/x", False),
])
def test_ignore_matching(spec: str, path: str | None, hit: bool) -> None:
    assert parse_ignore(spec).matches(Finding("missing-library", Severity.ERROR, "m", path=path)) is hit


def test_apply_is_stable_whatever_the_analysers_order() -> None:
    one, two = report(), report()
    two.findings.reverse()
    assert apply(one, Policy()).findings == apply(two, Policy()).findings


# ---- config files and precedence ----

@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".git").mkdir()  # the upward search stops at the repository root
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub" / "deeper")
    return tmp_path


def test_discovers_imgaudit_toml_upward(repo: Path) -> None:
    (repo / ".imgaudit.toml").write_text('fail-on = "warning"\nmax-size = "200MB"\nignore = ["apt-*"]\n')
    policy = load_policy({})
    assert policy.fail_on is FailOn.WARNING
    assert policy.budgets.max_size == 200_000_000
    assert policy.ignores == (Ignore("apt-*"),)
    assert policy.sources == (str(repo / ".imgaudit.toml"),)


def test_pyproject_tool_table_and_skip_without_it(repo: Path) -> None:
    (repo / "pyproject.toml").write_text("[tool.imgaudit]\nmax_layers = 12\n"
                                         "[tool.imgaudit.rules]\nlowestEfficiency = 0.9\n")
    (repo / "sub" / "pyproject.toml").write_text('[project]\nname = "x"\n')  # no [tool.imgaudit]: keep looking
    policy = load_policy({})
    assert policy.budgets.max_layers == 12
    assert policy.budgets.min_efficiency == 0.9


def test_imgaudit_toml_shadows_pyproject_in_the_same_directory(repo: Path) -> None:
    (repo / "pyproject.toml").write_text('[tool.imgaudit]\nmax-layers = 12\n')
    (repo / ".imgaudit.toml").write_text("max-layers = 3\n")
    assert load_policy({}).budgets.max_layers == 3


def test_nearest_directory_wins(repo: Path) -> None:
    (repo / ".imgaudit.toml").write_text("max-layers = 3\n")
    (repo / "sub" / ".imgaudit.toml").write_text("max-wasted = '1MB'\n")
    policy = load_policy({})
    assert policy.budgets == Budgets(max_wasted=1_000_000)


def test_search_stops_at_repository_root(repo: Path) -> None:
    assert discover(repo / "sub" / "deeper") == []


def test_flags_win_and_ignores_add_up(repo: Path) -> None:
    (repo / ".imgaudit.toml").write_text('fail-on = "warning"\nmax-size = "200MB"\nmax-layers = 5\n'
                                         'ignore = ["apt-lists"]\n')
    policy = load_policy({"fail_on": "never", "max_size": "1GiB", "max_layers": "off", "ignore": ("x:/a/*",)})
    assert policy.fail_on is FailOn.NEVER
    assert policy.budgets.max_size == 2**30
    assert policy.budgets.max_layers is None  # `off` lifts the configured budget
    assert policy.ignores == (Ignore("apt-lists"), Ignore("x", "/a/*"))


def test_explicit_config_replaces_discovery(repo: Path) -> None:
    (repo / ".imgaudit.toml").write_text("max-layers = 5\n")
    other = repo / "ci.toml"
    other.write_text("max-reclaimable = '10MB'\n")
    assert load_policy({}, other).budgets == Budgets(max_reclaimable=10_000_000)


@pytest.mark.parametrize(("text", "message"), [
    ("max-sise = 1\n", "unknown setting 'max-sise'"),
    ("max-size = 'big'\n", "max-size: cannot read 'big' as a size"),
    ("fail-on = 'sometimes'\n", "not one of error, warning, never"),
    ("min-efficiency = 2\n", "ratio"),
    ("ignore = [1]\n", "RULE"),
    ("max-size = [\n", "imgaudit.toml"),
])
def test_bad_config_is_a_usage_error(repo: Path, text: str, message: str) -> None:
    (repo / ".imgaudit.toml").write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        load_policy({})


def test_bad_flag_names_the_flag(repo: Path) -> None:
    with pytest.raises(UsageError, match=r"^--max-size: cannot read"):
        load_policy({"max_size": "lots"})


# ---- dive's .dive-ci ----

DIVE_CI = """\
rules:
  # If the efficiency is measured below X%, mark as failed.
  lowestEfficiency: 0.95
  highestWastedBytes: "20MB"   # quoted, with a comment
  highestUserWastedPercent: disabled
"""


def test_parse_dive_ci() -> None:
    assert parse_dive_ci(DIVE_CI) == {"lowestEfficiency": "0.95", "highestWastedBytes": "20MB",
                                      "highestUserWastedPercent": "disabled"}


def test_dive_ci_is_read_and_imgaudit_config_wins(repo: Path) -> None:
    (repo / ".dive-ci").write_text(DIVE_CI)
    policy = load_policy({})
    assert policy.budgets == Budgets(min_efficiency=0.95, max_wasted=20_000_000)
    (repo / ".imgaudit.toml").write_text("lowestEfficiency = 0.5\nhighestUserWastedPercent = 0.1\n")
    policy = load_policy({})
    assert policy.budgets == Budgets(min_efficiency=0.5, max_wasted=20_000_000, max_user_wasted=0.1)
    assert load_policy({"min_efficiency": "97%"}).budgets.min_efficiency == pytest.approx(0.97)


def test_dive_ci_with_unknown_rule(repo: Path) -> None:
    (repo / ".dive-ci").write_text("rules:\n  lowestEfficency: 0.9\n")
    with pytest.raises(UsageError, match="unknown setting 'lowestEfficency'"):
        load_policy({})


# ---- the command line on real (synthetic) images ----

def _archive(tmp_path: Path, spec: b.ImageSpec) -> str:
    return "docker-archive:" + str(b.write_docker_archive(tmp_path / "image.tar", {"app:1": spec}))


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def _image_size(runner: CliRunner, ref: str) -> dict[str, int]:
    result = runner.invoke(main, ["inspect", ref, "--format", "json", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    size = json.loads(result.stdout)["size"]
    return {"max-size": size["uncompressed_bytes"], "max-layers": len(size["layers"])}


def test_cli_budgets_trip_exactly(cli: CliRunner, tmp_path: Path) -> None:
    ref = _archive(tmp_path, b.ImageSpec([b.make_layer([b.f("a", "x" * 5000)]), b.make_layer([b.f("b", "y")])],
                                         entrypoint=["/a"]))
    for flag, value in _image_size(cli, ref).items():
        ok = cli.invoke(main, ["check", ref, "--ignore", "*:/a", f"--{flag}", str(value)])
        assert ok.exit_code == 0, (flag, ok.output)
        over = cli.invoke(main, ["check", ref, "--ignore", "*:/a", f"--{flag}", str(value - 1)])
        assert over.exit_code == 1, (flag, over.output)
        assert f"budget-{flag.removeprefix('max-')}" in over.stdout


def test_cli_config_and_flag_precedence(cli: CliRunner, tmp_path: Path) -> None:
    ref = _archive(tmp_path, b.ImageSpec([b.make_layer([b.f("a", "x")]), b.make_layer([b.f("b", "y")])],
                                         entrypoint=["/a"]))
    (tmp_path / ".imgaudit.toml").write_text("max-layers = 1\nignore = ['*:/a']\n")
    assert cli.invoke(main, ["check", ref]).exit_code == 1
    assert cli.invoke(main, ["check", ref, "--max-layers", "2"]).exit_code == 0
    assert cli.invoke(main, ["check", ref, "--fail-on", "never"]).exit_code == 0
    assert cli.invoke(main, ["check", ref, "--ignore", "budget-layers"]).exit_code == 0


def test_cli_usage_errors_exit_2(cli: CliRunner, tmp_path: Path) -> None:
    ref = _archive(tmp_path, b.ImageSpec([b.make_layer([b.f("a", "x")])]))
    assert cli.invoke(main, ["check", ref, "--max-size", "huge"]).exit_code == 2
    assert cli.invoke(main, ["check", ref, "--fail-on", "sometimes"]).exit_code == 2
    (tmp_path / ".imgaudit.toml").write_text("nonsense = 1\n")
    result = cli.invoke(main, ["check", ref])
    assert result.exit_code == 2
    assert "unknown setting 'nonsense'" in result.stderr


def _linkage_runs() -> bool:
    from imgaudit.audit import _analysers

    return any("linkage" in getattr(fn, "__module__", "") for fn in _analysers())


def test_image_that_will_not_start(cli: CliRunner, tmp_path: Path) -> None:
    """The entrypoint is not in the image: `--fail-on error` exits 1, `--fail-on never` exits 0."""
    if not _linkage_runs():
        pytest.skip("the linkage check (issue 3) is not wired into audit() yet")
    ref = _archive(tmp_path, b.ImageSpec([b.make_layer([b.d("app"), b.f("app/readme", "hi")])],
                                         entrypoint=["/app/server"]))
    failing = cli.invoke(main, ["check", ref, "--fail-on", "error", "--format", "json"])
    assert failing.exit_code == 1, failing.output
    assert "entrypoint-missing" in {f["rule"] for f in json.loads(failing.stdout)["findings"]}
    assert cli.invoke(main, ["check", ref]).exit_code == 1  # error is the default
    assert cli.invoke(main, ["check", ref, "--fail-on", "never"]).exit_code == 0
    assert cli.invoke(main, ["check", ref, "--ignore", "entrypoint-missing"]).exit_code == 0


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().fail_on = FailOn.NEVER  # type: ignore[misc]
