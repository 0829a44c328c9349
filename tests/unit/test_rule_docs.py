"""The rule catalogue is complete and docs/rules.md is what scripts/gen-rule-docs makes of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from imgaudit.report import FAILURE_CATEGORIES, Severity
from imgaudit.rules import RULES, Category, rule, rule_ids

REPO = Path(__file__).resolve().parents[2]


def test_committed_rule_docs_are_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-rule-docs"), "--check"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + "run scripts/gen-rule-docs and commit docs/rules.md"


def test_every_failure_category_is_a_start_up_rule() -> None:
    for category in FAILURE_CATEGORIES:
        assert rule(category).category is Category.STARTUP, category


def test_rule_ids_unique_and_well_formed() -> None:
    ids = rule_ids()
    assert len(ids) == len(set(ids))
    for r in RULES:
        assert r.id == r.id.lower() and " " not in r.id and ":" not in r.id, r.id  # ':' separates RULE:PATH
        assert r.summary and not r.summary.endswith("."), r.id
        assert r.fix, r.id


def test_start_up_errors_predict_the_runtime_error() -> None:
    for r in RULES:
        if r.category is Category.STARTUP and r.severity is Severity.ERROR:
            assert r.predicts, r.id


def test_uncatalogued_rule_gets_a_generic_entry() -> None:
    assert rule("made-up").category is Category.OTHER
