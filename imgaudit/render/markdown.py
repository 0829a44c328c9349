"""Markdown for a pull-request comment or a CI job summary: verdict, size table against budgets, top findings, fixes.

Everything taken from the image (paths, messages, the reference) goes into code spans or is escaped, so an
image cannot inject markup, HTML or @-mentions into a pull request.
"""

from __future__ import annotations

import math
import re

from imgaudit.errors import escape
from imgaudit.policy import Budgets, Policy, failing, user_wasted_ratio
from imgaudit.render.text import human
from imgaudit.report import Finding, Report, Severity

MARKER = "<!-- imgaudit -->"  # lets a bot find and update its previous comment
TOP = 15
_ICON = {Severity.ERROR: "❌", Severity.WARNING: "⚠️", Severity.INFO: "ℹ️"}


def code(text: str) -> str:
    """An inline code span that survives any content: a fence longer than any backtick run, `|` escaped for tables."""
    body = escape(text).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return f"{fence}{pad}{body}{pad}{fence}"


def prose(text: str) -> str:
    """Plain text with markdown and HTML neutralised; a word joiner after `@` keeps GitHub from mentioning anyone."""
    body = re.sub(r"([\\`*_\[\]|<>~])", r"\\\1", escape(text))
    return body.replace("@", "@\u2060")


_CODE_SPAN = re.compile(r"`([^`\n]+)`")


def text_with_code(text: str) -> str:
    """Prose whose `backticked` parts (commands in fixes, names in messages) stay code spans, each re-fenced."""
    out, last = [], 0
    for match in _CODE_SPAN.finditer(text):
        out += [prose(text[last:match.start()]), code(match[1])]
        last = match.end()
    return "".join([*out, prose(text[last:])])


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.1f} %" if math.isfinite(ratio) else "n/a"  # dive divides by zero without user layers


def _row(label: str, value: str, limit: str | None, ok: bool) -> str:
    budget = "—" if limit is None else f"{limit} {'✅' if ok else '❌'}"
    return f"| {label} | {value} | {budget} |"


def _size_row(label: str, actual: int, limit: int | None) -> str:
    return _row(label, human(actual), None if limit is None else f"≤ {human(limit)}", limit is None or actual <= limit)


def size_table(report: Report, budgets: Budgets) -> list[str]:
    size = report.size
    ratio = user_wasted_ratio(size)
    return [
        "| | this image | budget |",
        "|---|---:|---:|",
        _size_row("compressed (pull)", size.compressed_bytes, budgets.max_compressed_size),
        _size_row("all layers, uncompressed", size.uncompressed_bytes, budgets.max_size),
        _row("final filesystem", f"{human(size.final_bytes)} in {size.file_count} files", None, True),
        _row("layers", str(len(size.layers)), None if budgets.max_layers is None else f"≤ {budgets.max_layers}",
             budgets.max_layers is None or len(size.layers) <= budgets.max_layers),
        _row("efficiency", _pct(size.efficiency),
             None if budgets.min_efficiency is None else f"≥ {_pct(budgets.min_efficiency)}",
             budgets.min_efficiency is None or size.efficiency >= budgets.min_efficiency),
        _size_row("wasted (dive)", size.wasted_bytes, budgets.max_wasted),
        _row("wasted ÷ bytes after the base layer", _pct(ratio),
             None if budgets.max_user_wasted is None else f"≤ {_pct(budgets.max_user_wasted)}",
             budgets.max_user_wasted is None or ratio <= budgets.max_user_wasted),
        _size_row("reclaimable", size.reclaimable_bytes, budgets.max_reclaimable),
    ]


def verdict_line(report: Report, policy: Policy) -> str:
    s = report.summary
    counts = f"{s.errors} error(s), {s.warnings} warning(s), {s.infos} info(s)"
    gate = f"`--fail-on {policy.fail_on.value}`"
    if failing(report, policy):
        return f"### ❌ imgaudit: {code(report.image.reference)} fails the gate ({gate}): {counts}"
    return f"### ✅ imgaudit: {code(report.image.reference)} passes the gate ({gate}): {counts}"


def entrypoint_line(report: Report) -> str | None:
    ep = report.entrypoint
    if ep.verdict == "unknown":
        return None
    icon = {"ok": "✅ starts", "fail": "❌ will not start", "warn": "⚠️ may not start"}.get(ep.verdict, ep.verdict)
    line = f"**Entrypoint** {code(' '.join(ep.argv) or '(none)')}: {icon}"
    return line + (f": {code(ep.message)}" if ep.message else "")


def findings_table(findings: list[Finding], top: int = TOP) -> list[str]:
    if not findings:
        return ["No findings."]
    rows = ["| | rule | path | message |", "|---|---|---|---|"]
    rows += [f"| {_ICON[f.severity]} {f.severity.value} | {code(f.rule)} | {code(f.path) if f.path else ''} | "
             f"{text_with_code(f.message)} |" for f in findings[:top]]
    if len(findings) > top:
        rows.append(f"\n_…and {len(findings) - top} more: run `imgaudit inspect --all` for every finding._")
    return rows


def fixes(findings: list[Finding], top: int = TOP) -> list[str]:
    """One bullet per distinct (rule, fix), with up to three of the paths it applies to."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for f in findings:
        if f.fix:
            grouped.setdefault((f.rule, f.fix), []).append(f.path or "")
    out = []
    for (rule_id, fix), paths in list(grouped.items())[:top]:
        named = [code(p) for p in dict.fromkeys(paths) if p]
        where = f" ({', '.join(named[:3])}{', …' if len(named) > 3 else ''})" if named else ""
        out.append(f"- {code(rule_id)}{where}: {text_with_code(fix)}")
    return out


def _section(title: str, body: list[str]) -> list[str]:
    return ["", f"#### {title}", "", *body] if body else []


def render(report: Report, policy: Policy, *, top: int = TOP) -> str:
    img = report.image
    plat = "/".join(p for p in (img.platform.os, img.platform.architecture, img.platform.variant) if p)
    lines = [MARKER, verdict_line(report, policy), ""]
    entry = entrypoint_line(report)
    if entry:
        lines += [entry, ""]
    lines.append(f"**Image** {code(plat)} · config {code(img.config_digest[:19])}"
                 + (f" · manifest {code(img.manifest_digest[:19])}" if img.manifest_digest else ""))
    if not report.complete:
        first = report.incomplete[0]
        lines += ["", f"> ⚠️ Incomplete: {len(report.incomplete)} part(s) not analysed "
                      f"(first: {code(first.what)}: {prose(first.reason)})."]
    shown = [f for f in report.findings if f.severity is not Severity.INFO]
    lines += _section("Size", size_table(report, policy.budgets))
    lines += _section("Findings" if len(shown) <= top else f"Top {top} of {len(shown)} findings",
                      findings_table(shown, top))
    lines += _section("Fixes", fixes(shown, top))
    return "\n".join(lines) + "\n"

