"""JSON output: the report contract (DESIGN.md §4), stable key order so outputs diff cleanly."""

from __future__ import annotations

import json
import re
from typing import Any

from imgaudit.report import Report

# A tar name that is not UTF-8 holds lone surrogates (surrogateescape); written raw they make the output invalid
# UTF-8 (or fail on a strict stdout). As `\\udcff` escapes they are valid JSON, as in `--output` files.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False)
    try:
        text.encode("utf-8")  # the quick test (a fifth of a regex scan): a lone surrogate cannot be encoded
    except UnicodeEncodeError:
        text = _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text + "\n"


def render(report: Report) -> str:
    return dumps(report.to_dict())
