"""SARIF 2.1.0 output (OASIS, errata 01) for code-scanning tabs: one rule per finding kind, one result per finding.

Each result points at the path inside the image and, given a Dockerfile, first at the line whose layer
introduced it, so GitHub shows the alert on that line.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import quote

from imgaudit.dockerfile import DockerfileMap
from imgaudit.report import Finding, Report, Severity
from imgaudit.rules import Category, Rule, rule

SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
IMAGE_ROOT = "IMAGEROOT"
# A name the tar could not decode as UTF-8 holds lone surrogates, which no UTF-8 writer accepts; they become
# `\\xNN` as in the terminal output (errors.escape).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def rule_help(r: Rule) -> tuple[str, str]:
    """Help as plain text and markdown: meaning, the predicted runtime error, the fix, how to ignore."""
    parts = [r.description]
    if r.predicts:
        parts.append(f"Predicted error: {r.predicts}")
    parts += [f"Fix: {r.fix}", f"Ignore: {r.ignore_hint()}"]
    md = [r.description]
    if r.predicts:
        md.append(f"**Predicted error:** `{r.predicts}`")
    md += [f"**Fix:** {r.fix}", f"**Ignore:** `--ignore {r.id}` or `ignore = [\"{r.id}\"]` in `[tool.imgaudit]`"]
    return "\n\n".join(parts), "\n\n".join(md)


def rule_descriptor(r: Rule) -> dict[str, Any]:
    text, markdown = rule_help(r)
    return {
        "id": r.id,
        "name": r.name,
        "shortDescription": {"text": r.summary},
        "fullDescription": {"text": r.description},
        "help": {"text": text, "markdown": markdown},
        "defaultConfiguration": {"level": _LEVEL[r.severity]},
        "properties": {"tags": ["container", r.category.value]},
    }


def rules_for(report: Report) -> list[Rule]:
    """The whole catalogue (so code scanning knows every rule), plus any rule an analyser added since."""
    from imgaudit.rules import RULES

    known = {r.id for r in RULES}
    extra = sorted({f.rule for f in report.findings} - known)
    return [*RULES, *(rule(rule_id) for rule_id in extra)]


def image_uri(path: str) -> str:
    """A path inside the image as a relative URI under IMAGEROOT (percent-encoded: image paths are untrusted)."""
    return quote(path.lstrip("/"), safe="/", errors="surrogateescape") or "."  # undecodable bytes → %XX


def _image_location(finding: Finding, report: Report) -> dict[str, Any]:
    path = finding.path or "/"
    text = f"{path} in {report.image.reference}"
    if finding.layer is not None:
        text += f" (layer {finding.layer})"
    return {"physicalLocation": {"artifactLocation": {"uri": image_uri(path), "uriBaseId": IMAGE_ROOT}},
            "message": {"text": text}}


def _dockerfile_location(finding: Finding, report: Report, dockerfile: DockerfileMap,
                         uri: str) -> dict[str, Any] | None:
    line = dockerfile.line_for(finding, startup=rule(finding.rule).category is Category.STARTUP)
    if line is None:
        return None
    layers = report.size.layers
    text = "the instruction that made this layer"
    if finding.layer is not None and 0 <= finding.layer < len(layers):
        text = f"layer {finding.layer}: {layers[finding.layer].created_by}"
    artifact: dict[str, Any] = {"uri": uri}
    if "://" not in uri:
        artifact["uriBaseId"] = "%SRCROOT%"
    return {"physicalLocation": {"artifactLocation": artifact, "region": {"startLine": line}},
            "message": {"text": text}}


def fingerprint(finding: Finding) -> str:
    """Stable across builds (no layer index, no message wording) so code scanning can track one alert."""
    return hashlib.sha256(f"{finding.rule}\0{finding.path or ''}".encode(errors="surrogateescape")).hexdigest()


def result(finding: Finding, index: int, report: Report, dockerfile: DockerfileMap | None,
           dockerfile_uri: str | None) -> dict[str, Any]:
    message = finding.message + (f" Fix: {finding.fix}" if finding.fix else "")
    locations = [_image_location(finding, report)]
    if dockerfile is not None and dockerfile_uri is not None:
        located = _dockerfile_location(finding, report, dockerfile, dockerfile_uri)
        if located is not None:
            locations.insert(0, located)  # GitHub annotates the first location
    for number, location in enumerate(locations):
        location["id"] = number
    out: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": index,
        "level": _LEVEL[finding.severity],
        "message": {"text": message},
        "locations": locations,
        "partialFingerprints": {"imgauditFinding/v1": fingerprint(finding)},
    }
    props = {k: v for k, v in (("layer", finding.layer), ("bytes", finding.bytes)) if v is not None}
    if props:
        out["properties"] = props
    return out


def render(report: Report, *, dockerfile: DockerfileMap | None = None, dockerfile_uri: str | None = None) -> str:
    rules = rules_for(report)
    index = {r.id: i for i, r in enumerate(rules)}
    img = report.image
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "imgaudit", "version": report.tool_version, "semanticVersion": report.tool_version,
                            "rules": [rule_descriptor(r) for r in rules]}},
        "originalUriBaseIds": {IMAGE_ROOT: {"uri": "file:///",
                                            "description": {"text": f"the root filesystem of {img.reference}"}}},
        "invocations": [{"executionSuccessful": True, "toolExecutionNotifications": [
            {"level": "warning", "message": {"text": f"not analysed: {item.what}: {item.reason}"}}
            for item in report.incomplete]}],
        "results": [result(f, index[f.rule], report, dockerfile, dockerfile_uri) for f in report.findings],
        "properties": {"image": {"reference": img.reference, "source": img.source,
                                 "manifest_digest": img.manifest_digest, "config_digest": img.config_digest,
                                 "platform": f"{img.platform.os}/{img.platform.architecture}"
                                             + (f"/{img.platform.variant}" if img.platform.variant else "")},
                       "complete": report.complete},
    }
    text = json.dumps({"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}, indent=2, ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda m: f"\\\\x{ord(m[0]) & 0xFF:02x}", text) + "\n"
