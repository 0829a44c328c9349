"""The `Report`: the JSON contract of DESIGN.md §4 (schema version 1) as plain dataclasses.

Fields may be added, never renamed or removed without a new schema version; `imgaudit/schema/report.schema.json`
is the same contract as a JSON Schema and every test report is validated against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

SCHEMA_VERSION = 1


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


FAILURE_CATEGORIES = (
    "missing-interpreter", "missing-library", "glibc-version", "missing-symbol", "exec-format",
    "script-interpreter-missing", "entrypoint-missing", "not-executable", "other",
)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    message: str
    path: str | None = None
    layer: int | None = None
    fix: str | None = None
    bytes: int | None = None


@dataclass
class PlatformInfo:
    os: str
    architecture: str
    variant: str | None = None


@dataclass
class ImageInfo:
    reference: str
    source: str
    manifest_digest: str | None
    config_digest: str
    platform: PlatformInfo
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""


@dataclass
class Distro:
    id: str | None = None
    version_id: str | None = None
    pretty_name: str | None = None


@dataclass
class RuntimeInfo:
    libc: str = "unknown"
    libc_version: str | None = None
    distro: Distro = field(default_factory=Distro)
    shell: str | None = None


@dataclass
class EntrypointVerdict:
    argv: list[str] = field(default_factory=list)
    path: str | None = None
    verdict: str = "unknown"
    failure: str | None = None
    message: str | None = None
    fix: str | None = None
    capabilities: str | None = None  # the program's file capabilities as getcap prints them (#66)


@dataclass
class RustInfo:
    rustc_version: str | None = None
    rustc_commit: str | None = None
    target: str | None = None
    tls: TlsInfo | None = None


@dataclass
class TlsInfo:
    """The TLS library compiled into a Rust program, and where it takes root certificates from
    ("system": the image's CA bundle; "embedded": webpki-roots or certificates of its own)."""

    library: str
    version: str | None
    roots: str


@dataclass
class BinaryInfo:
    path: str
    role: str
    machine: str
    linking: str
    libc: str
    interpreter: str | None = None
    needed: list[str] = field(default_factory=list)
    resolved: dict[str, str | None] = field(default_factory=dict)
    glibc_required: str | None = None
    rust: RustInfo | None = None
    stripped: bool = True
    debug_bytes: int = 0
    verdict: str = "ok"
    failure: str | None = None
    capabilities: str | None = None  # file capabilities as getcap prints them (`cap_net_raw=ep`), or `invalid …`


@dataclass
class LayerInfo:
    index: int
    digest: str | None
    diff_id: str
    compressed_bytes: int
    uncompressed_bytes: int
    files_added: int = 0
    files_modified: int = 0
    files_removed: int = 0
    created_by: str = ""
    bytes_added: int = 0  # regular-file bytes at paths new in this layer
    bytes_modified: int = 0  # regular-file bytes this layer wrote over existing paths
    bytes_removed: int = 0  # lower-layer regular-file bytes this layer's whiteouts and opaque dirs hid


@dataclass
class FileSize:
    path: str
    bytes: int
    layer: int


@dataclass
class PackageSize:
    name: str
    version: str
    bytes: int


@dataclass
class DirSize:
    path: str
    bytes: int
    files: int


@dataclass
class Inefficiency:
    """dive's "inefficient file": a path in two or more layers, all copies counted."""

    path: str
    count: int
    bytes: int


@dataclass
class ReclaimableItem:
    """Lower-layer bytes the final filesystem does not show, grouped by what hid them."""

    path: str
    bytes: int
    files: int
    layer: int
    hidden_by: int
    reason: str  # overwritten | removed | opaque | replaced | duplicate-entry


@dataclass
class DuplicateGroup:
    """Identical content (same sha256) at several paths of the final filesystem."""

    digest: str
    bytes: int  # size of one copy
    wasted_bytes: int  # all copies but one
    paths: list[str] = field(default_factory=list)


@dataclass
class SizeInfo:
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    final_bytes: int = 0
    file_count: int = 0
    efficiency: float = 1.0
    wasted_bytes: int = 0
    reclaimable_bytes: int = 0
    layers: list[LayerInfo] = field(default_factory=list)
    top_files: list[FileSize] = field(default_factory=list)
    packages: list[PackageSize] = field(default_factory=list)
    user_wasted_percent: float | None = None  # dive's WastedUserPercent (a fraction); None: no user layers
    inefficient_files: list[Inefficiency] = field(default_factory=list)
    reclaimable: list[ReclaimableItem] = field(default_factory=list)
    top_dirs: list[DirSize] = field(default_factory=list)
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    duplicate_bytes: int = 0
    package_db: str | None = None  # dpkg | dpkg-status.d | apk


@dataclass
class Incomplete:
    what: str
    reason: str


@dataclass
class Summary:
    errors: int = 0
    warnings: int = 0
    infos: int = 0


@dataclass
class Report:
    image: ImageInfo
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    entrypoint: EntrypointVerdict = field(default_factory=EntrypointVerdict)
    binaries: list[BinaryInfo] = field(default_factory=list)
    size: SizeInfo = field(default_factory=SizeInfo)
    findings: list[Finding] = field(default_factory=list)
    incomplete: list[Incomplete] = field(default_factory=list)
    tool_version: str = "0.1.0"

    @property
    def complete(self) -> bool:
        return not self.incomplete

    @property
    def summary(self) -> Summary:
        counts = dict.fromkeys(Severity, 0)
        for finding in self.findings:
            counts[finding.severity] += 1
        return Summary(counts[Severity.ERROR], counts[Severity.WARNING], counts[Severity.INFO])

    def to_dict(self) -> dict[str, Any]:
        body = _plain(self)
        body.pop("tool_version")
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "imgaudit", "version": self.tool_version},
            **body,
            "summary": _plain(self.summary),
            "complete": self.complete,
        }


_SCALARS = frozenset({str, int, float, bool, type(None)})
_FIELDS: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, looked up once per class


def _plain(value: Any) -> Any:
    """Dataclasses as dicts in field order, enums as their values, tuples as lists: what `dataclasses.asdict`
    and a second pass over its result gave, at a fraction of the cost (asdict deep-copies every leaf)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    names = _FIELDS.get(kind)
    if names is None:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: _plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [_plain(v) for v in value]
        if not is_dataclass(value) or isinstance(value, type):
            return value
        names = _FIELDS[kind] = tuple(f.name for f in fields(value))
    return {name: _plain(getattr(value, name)) for name in names}
