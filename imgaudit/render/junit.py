"""JUnit XML (the Apache Ant schema Jenkins, GitLab and most CI dashboards read): one test case per check.

A check is a catalogued rule (a budget rule only when that budget is set). It fails when one of its findings
reaches the `--fail-on` threshold, is skipped when the policy ignores it, and passes otherwise; findings
below the threshold are listed in `system-out`.
"""

from __future__ import annotations

import re
import socket
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from imgaudit.policy import Ignore, Policy, budget_rules_set, failing
from imgaudit.report import Finding, Report
from imgaudit.rules import RULES, Category, Rule, rule


def checks(report: Report, policy: Policy) -> list[tuple[Rule, str | None]]:
    """The checks with a reason when one did not run: start-up and size rules, the budgets that are set, and
    any rule seen in findings. Start-up checks only ran when the entrypoint got a verdict."""
    budgets = budget_rules_set(policy.budgets)
    startup_ran = report.entrypoint.verdict != "unknown" or bool(report.binaries)
    out: list[tuple[Rule, str | None]] = []
    for check in RULES:
        if check.category is Category.BUDGET and check.id not in budgets:
            continue
        ignore = _whole_rule_ignore(check.id, policy.ignores)
        if ignore is not None:
            out.append((check, f"ignored by the policy ({ignore})"))
        elif check.category is Category.STARTUP and not startup_ran:
            out.append((check, "not analysed: the entrypoint has no verdict"))
        else:
            out.append((check, None))
    seen = {c.id for c, _ in out}
    return out + [(rule(rid), None) for rid in sorted({f.rule for f in report.findings} - seen)]


def _whole_rule_ignore(rule_id: str, ignores: tuple[Ignore, ...]) -> Ignore | None:
    return next((ig for ig in ignores if ig.covers_rule(rule_id)), None)


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """XML 1.0 cannot carry control characters or lone surrogates (undecodable names from a tar): `\\xNN` them."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m[0]) & 0xFF:02x}", text)


def _line(finding: Finding) -> str:
    where = finding.path or "image"
    if finding.layer is not None:
        where += f" (layer {finding.layer})"
    text = f"{finding.severity.value}: {where}: {finding.message}"
    return text + (f"\n  fix: {finding.fix}" if finding.fix else "")


def _testcase(suite: ET.Element, check: Rule, fails: list[Finding], skip: str | None) -> None:
    case = ET.SubElement(suite, "testcase", name=check.id, classname=f"imgaudit.{check.category.value}", time="0")
    if fails:
        more = f" (and {len(fails) - 1} more)" if len(fails) > 1 else ""
        failure = ET.SubElement(case, "failure", message=xml_text(fails[0].message + more), type=check.id)
        failure.text = xml_text("\n".join(_line(f) for f in fails) + "\n")
    elif skip is not None:
        ET.SubElement(case, "skipped", message=skip)


def render(report: Report, policy: Policy, *, now: datetime | None = None, hostname: str | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%S")  # the schema allows no zone
    fails = failing(report, policy)
    cases = checks(report, policy)
    failed = {f.rule for f in fails}
    skipped = [c for c, skip in cases if c.id not in failed and skip is not None]
    root = ET.Element("testsuites")
    suite = ET.SubElement(root, "testsuite", name=xml_text(f"imgaudit {report.image.reference}"), package="imgaudit",
                          id="0", timestamp=stamp, hostname=hostname or socket.gethostname() or "localhost",
                          tests=str(len(cases)), failures=str(len(failed)), errors="0", skipped=str(len(skipped)),
                          time="0")
    props = ET.SubElement(suite, "properties")
    img = report.image
    for name, value in (("image", img.reference), ("config_digest", img.config_digest),
                        ("manifest_digest", img.manifest_digest or ""), ("fail_on", policy.fail_on.value),
                        ("complete", str(report.complete).lower())):
        ET.SubElement(props, "property", name=name, value=xml_text(value))
    for check, skip in cases:
        _testcase(suite, check, [f for f in fails if f.rule == check.id], skip)
    below = [f for f in report.findings if f not in fails]
    ET.SubElement(suite, "system-out").text = xml_text("".join(_line(f) + "\n" for f in below))
    ET.SubElement(suite, "system-err").text = xml_text("".join(f"not analysed: {i.what}: {i.reason}\n"
                                                               for i in report.incomplete))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
