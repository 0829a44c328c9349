"""The CI gate: fail threshold, size budgets and ignores, read from flags and config files → exit code.

Settings come from `[tool.imgaudit]` in `pyproject.toml`, `.imgaudit.toml` or dive's `.dive-ci`, found from the
working directory upward, and from flags, which win. Budget comparisons follow dive's `runtime/ci/rules.go`:
a value equal to its threshold passes.
"""

from __future__ import annotations

import fnmatch
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

from imgaudit.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from imgaudit.render.text import human
from imgaudit.report import Finding, Report, Severity, SizeInfo
from imgaudit.rules import rule as catalogued


class FailOn(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    NEVER = "never"


@dataclass(frozen=True)
class Budgets:
    """Limits on the image; None means no limit."""

    max_size: int | None = None
    max_compressed_size: int | None = None
    max_layers: int | None = None
    min_efficiency: float | None = None
    max_wasted: int | None = None
    max_user_wasted: float | None = None
    max_reclaimable: int | None = None


@dataclass(frozen=True)
class Ignore:
    """`RULE[:PATH]`: RULE and PATH are globs (fnmatch: `*` also crosses `/`)."""

    rule: str
    path: str | None = None

    def matches(self, finding: Finding) -> bool:
        if not fnmatch.fnmatchcase(finding.rule, self.rule):
            return False
        if self.path is None:
            return True
        return finding.path is not None and fnmatch.fnmatchcase(finding.path, self.path)

    def covers_rule(self, rule_id: str) -> bool:
        """True when this ignore switches the whole rule off (no PATH)."""
        return self.path is None and fnmatch.fnmatchcase(rule_id, self.rule)

    def __str__(self) -> str:
        return self.rule if self.path is None else f"{self.rule}:{self.path}"


@dataclass(frozen=True)
class Policy:
    fail_on: FailOn = FailOn.ERROR
    budgets: Budgets = field(default_factory=Budgets)
    ignores: tuple[Ignore, ...] = ()
    sources: tuple[str, ...] = ()  # the config files read, for messages and docs


# ---- value parsers: each takes the raw value (str from a flag, str/int/float from TOML) ----

_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    # go-humanize's table, which dive's highestWastedBytes uses: k/kB are decimal, Ki/KiB binary.
    _UNITS[_p] = _UNITS[_p + "b"] = 1000**_i
    _UNITS[_p + "i"] = _UNITS[_p + "ib"] = 1024**_i
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-z]*)\s*$", re.IGNORECASE)
_OFF = {"disabled", "none", "off"}


def parse_size(value: object) -> int:
    """`200MB` (decimal), `1.5GiB` (binary), `1024` (bytes) → bytes, rounded down."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.match(str(value))
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size (use e.g. 200MB, 1.5GiB or a number of bytes)")
    return int(Decimal(match[1]) * _UNITS[match[2].lower()])


def parse_ratio(value: object) -> float:
    """`0.95` or `95%` → 0.95; must lie in [0, 1]."""
    text = str(value).strip()
    try:
        ratio = float(Decimal(text[:-1]) / 100) if text.endswith("%") else float(Decimal(text))
    except (InvalidOperation, ValueError):
        ratio = math.nan
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"cannot read {value!r} as a ratio between 0 and 1 (e.g. 0.95 or 95%)")
    return ratio


def parse_count(value: object) -> int:
    if isinstance(value, bool) or not re.fullmatch(r"\s*[0-9]+\s*", str(value)):
        raise ValueError(f"cannot read {value!r} as a whole number")
    return int(str(value))


def parse_fail_on(value: object) -> FailOn:
    try:
        return FailOn(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"{value!r} is not one of error, warning, never") from None


def parse_ignore(value: str) -> Ignore:
    rule, sep, path = value.strip().partition(":")
    if not rule:
        raise ValueError(f"{value!r}: expected RULE or RULE:PATH")
    if not sep:
        return Ignore(rule)
    # Finding paths are absolute inside the image; accept `usr/lib/*` as well as `/usr/lib/*`.
    return Ignore(rule, path if path.startswith(("/", "*")) else "/" + path)


def parse_ignores(value: object) -> tuple[Ignore, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(x, str) for x in items):
        raise ValueError(f"expected a list of RULE[:PATH] strings, not {value!r}")
    return tuple(parse_ignore(x) for x in items)


def _optional(parse: Callable[[object], Any]) -> Callable[[object], Any]:
    """dive writes `disabled` to switch a rule off; a later layer (a flag) can also switch off a budget."""

    def parse_or_off(value: object) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in _OFF else parse(value)

    return parse_or_off


PARSERS: dict[str, Callable[[object], Any]] = {
    "fail_on": parse_fail_on,
    "max_size": _optional(parse_size),
    "max_compressed_size": _optional(parse_size),
    "max_layers": _optional(parse_count),
    "min_efficiency": _optional(parse_ratio),
    "max_wasted": _optional(parse_size),
    "max_user_wasted": _optional(parse_ratio),
    "max_reclaimable": _optional(parse_size),
    "ignore": parse_ignores,
}

# dive's `.dive-ci` rule names, so a team's existing gate keeps working.
DIVE_NAMES = {
    "lowestEfficiency": "min_efficiency",
    "highestWastedBytes": "max_wasted",
    "highestUserWastedPercent": "max_user_wasted",
}


def canonical_key(key: str) -> str | None:
    name = DIVE_NAMES.get(key, key.replace("-", "_"))
    return name if name in PARSERS else None


def settings_from(raw: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Raw config keys (kebab, snake or dive names; dive's `rules` table) → typed settings; errors name the origin."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "rules" and isinstance(value, Mapping):
            out.update(settings_from(value, f"{origin} rules"))
            continue
        name = canonical_key(key)
        if name is None:
            raise UsageError(f"{origin}: unknown setting {key!r} (known: {', '.join(sorted(PARSERS))})")
        try:
            out[name] = PARSERS[name](value)
        except ValueError as err:
            where = origin if origin.startswith("--") else f"{origin}: {key}"
            raise UsageError(f"{where}: {err}") from err
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Later layers win for single values; ignore lists add up (a flag adds to the config's ignores)."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            out[key] = (*out.get(key, ()), *value) if key == "ignore" else value
    return out


def build_policy(settings: Mapping[str, Any], sources: Iterable[str] = ()) -> Policy:
    budget_keys = {k: v for k, v in settings.items() if k in Budgets.__dataclass_fields__}
    return Policy(
        fail_on=settings.get("fail_on", FailOn.ERROR),
        budgets=Budgets(**budget_keys),
        ignores=tuple(dict.fromkeys(settings.get("ignore", ()))),
        sources=tuple(sources),
    )


# ---- config files ----

def parse_dive_ci(text: str) -> dict[str, str]:
    """The subset of YAML dive's `.dive-ci` uses: `rules:` then `  key: value` lines, `#` comments."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        body = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not body.strip() or body.strip() == "rules:":
            continue
        key, sep, value = body.strip().partition(":")
        if not sep:
            raise ValueError(f"cannot read line {line.strip()!r}")
        if value.strip():
            out[key.strip()] = value.strip().strip("'\"")
    return out


def read_config(path: Path) -> dict[str, Any]:
    """One config file → typed settings. `.dive-ci` by name; TOML otherwise (`[tool.imgaudit]` in pyproject)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        if path.name == ".dive-ci" or path.suffix in (".yaml", ".yml"):
            return settings_from(parse_dive_ci(text), str(path))
        data = tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"{path}: {err}") from err
    if path.name == "pyproject.toml":
        return settings_from(data.get("tool", {}).get("imgaudit", {}), f"{path} [tool.imgaudit]")
    return settings_from(data, str(path))


def _has_tool_table(pyproject: Path) -> bool:
    try:
        return "imgaudit" in tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False  # not ours to judge: a broken pyproject without our table is someone else's problem


def configs_in(directory: Path) -> list[Path]:
    """The config files of one directory, lowest priority first (`.imgaudit.toml` shadows pyproject)."""
    found = [directory / ".dive-ci"] if (directory / ".dive-ci").is_file() else []
    if (directory / ".imgaudit.toml").is_file():
        return [*found, directory / ".imgaudit.toml"]
    pyproject = directory / "pyproject.toml"
    return [*found, pyproject] if pyproject.is_file() and _has_tool_table(pyproject) else found


def discover(start: Path) -> list[Path]:
    """The nearest directory holding a config, from `start` upward; the search stops at a repository root."""
    for directory in (start, *start.parents):
        found = configs_in(directory)
        if found or (directory / ".git").exists():
            return found
    return []


def load_policy(flags: Mapping[str, Any], config: Path | None = None, cwd: Path | None = None) -> Policy:
    """Flags (raw strings, unset ones absent) over `config`, or over the discovered config files."""
    files = [config] if config is not None else discover((cwd or Path.cwd()).resolve())
    layers = [read_config(path) for path in files]
    given: dict[str, Any] = {}
    for key, value in flags.items():  # one at a time, so an error names the flag as typed
        given.update(settings_from({key: value}, "--" + key.replace("_", "-")).items())
    return build_policy(merge(*layers, given), [str(p) for p in files])


# ---- evaluation ----

def user_wasted_ratio(size: SizeInfo) -> float:
    """dive's WastedUserPercent (a ratio, not a percent). Where dive divides by zero (no bytes after the first
    layer) Go gives NaN for 0/0, which passes any threshold, and +Inf otherwise, which fails it."""
    given = getattr(size, "user_wasted_percent", None)  # filled by the size audit (checks/waste.py)
    if given is not None:
        return float(given)
    return 0.0 if size.wasted_bytes == 0 else math.inf


def _over(rule: str, what: str, actual: int, limit: int | None) -> Finding | None:
    if limit is None or actual <= limit:
        return None
    return Finding(rule, Severity.ERROR, f"{what} is {human(actual)} ({actual} bytes), over the budget of "
                   f"{human(limit)} ({limit} bytes)", bytes=actual - limit, fix=catalogued(rule).fix)


def _ratio(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


def budget_findings(size: SizeInfo, budgets: Budgets) -> list[Finding]:
    """One error finding per budget the image breaks; equal to the limit passes, as in dive."""
    found = [
        _over("budget-size", "the image (all layers, uncompressed)", size.uncompressed_bytes, budgets.max_size),
        _over("budget-compressed-size", "the compressed image", size.compressed_bytes, budgets.max_compressed_size),
        _over("budget-wasted", "wasted space (dive's definition)", size.wasted_bytes, budgets.max_wasted),
        _over("budget-reclaimable", "reclaimable space (hidden by later layers)", size.reclaimable_bytes,
              budgets.max_reclaimable),
    ]
    layers = len(size.layers)
    if budgets.max_layers is not None and layers > budgets.max_layers:
        found.append(Finding("budget-layers", Severity.ERROR, f"the image has {layers} layers, over the budget of "
                             f"{budgets.max_layers}", fix=catalogued("budget-layers").fix))
    if budgets.min_efficiency is not None and size.efficiency < budgets.min_efficiency:
        found.append(Finding("budget-efficiency", Severity.ERROR, f"efficiency is {_ratio(size.efficiency)}, "
                             f"under the minimum of {_ratio(budgets.min_efficiency)}",
                             fix=catalogued("budget-efficiency").fix, bytes=size.wasted_bytes))
    ratio = user_wasted_ratio(size)
    if budgets.max_user_wasted is not None and ratio > budgets.max_user_wasted:
        found.append(Finding("budget-user-wasted", Severity.ERROR, f"wasted space is {_ratio(ratio)} of the bytes "
                             f"added after the base layer, over the maximum of {_ratio(budgets.max_user_wasted)}",
                             fix=catalogued("budget-user-wasted").fix, bytes=size.wasted_bytes))
    return [f for f in found if f is not None]


# Budget setting → the rule its breach is reported under.
BUDGET_RULES = {
    "max_size": "budget-size", "max_compressed_size": "budget-compressed-size", "max_layers": "budget-layers",
    "min_efficiency": "budget-efficiency", "max_wasted": "budget-wasted", "max_user_wasted": "budget-user-wasted",
    "max_reclaimable": "budget-reclaimable",
}


def budget_rules_set(budgets: Budgets) -> set[str]:
    return {rule_id for key, rule_id in BUDGET_RULES.items() if getattr(budgets, key) is not None}


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def sort_key(finding: Finding) -> tuple[int, str, str, int, str]:
    """Stable order so outputs diff cleanly: severity, rule, path, layer, message."""
    return (_RANK[finding.severity], finding.rule, finding.path or "", -1 if finding.layer is None else finding.layer,
            finding.message)


def ignored(finding: Finding, policy: Policy) -> bool:
    return any(rule.matches(finding) for rule in policy.ignores)


def apply(report: Report, policy: Policy) -> Report:
    """A copy of `report` with budget breaches added, ignored findings dropped, and findings in stable order."""
    findings = [*report.findings, *budget_findings(report.size, policy.budgets)]
    kept = sorted((f for f in findings if not ignored(f, policy)), key=sort_key)
    return replace(report, findings=kept)


def failing(report: Report, policy: Policy) -> list[Finding]:
    """The findings that reach the `fail_on` threshold (ignores applied again, so this is safe on any report)."""
    levels = {FailOn.ERROR: {Severity.ERROR}, FailOn.WARNING: {Severity.ERROR, Severity.WARNING},
              FailOn.NEVER: set()}[policy.fail_on]
    return [f for f in report.findings if f.severity in levels and not ignored(f, policy)]


def decide(report: Report, policy: Policy) -> int:
    """Exit code of DESIGN.md §5: 1 when a finding reaches the threshold, else 0. Pass the `apply`-ed report."""
    return EXIT_FINDINGS if failing(report, policy) else EXIT_OK


def unknown_ignores(policy: Policy, known: Iterable[str]) -> list[Ignore]:
    """Ignores whose rule pattern matches no catalogued rule: most likely a typo."""
    ids = list(known)
    return [ig for ig in policy.ignores if not any(fnmatch.fnmatchcase(rule_id, ig.rule) for rule_id in ids)]
