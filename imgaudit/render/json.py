"""JSON output: the report contract (DESIGN.md §4), stable key order so outputs diff cleanly."""

from __future__ import annotations

import json
from typing import Any

from imgaudit.report import Report


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def render(report: Report) -> str:
    return dumps(report.to_dict())
