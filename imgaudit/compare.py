"""`imgaudit compare`: the side-by-side table teams make by hand when choosing a runtime image.

Pure over `Report`s: every number is the one `inspect --format json` prints for the same image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from imgaudit.report import SCHEMA_VERSION, Report


@dataclass(frozen=True)
class ImageColumn:
    """One image of the comparison; field names follow the report contract (DESIGN.md §4)."""

    reference: str
    final_bytes: int
    compressed_bytes: int
    uncompressed_bytes: int
    layers: int
    file_count: int
    libc: str
    libc_version: str | None
    distro: str | None
    distro_version: str | None
    package_db: str | None
    packages: int
    package_bytes: int
    reclaimable_bytes: int
    wasted_bytes: int
    efficiency: float
    entrypoint_verdict: str
    entrypoint_failure: str | None
    errors: int
    warnings: int
    complete: bool


def column(report: Report) -> ImageColumn:
    size, runtime = report.size, report.runtime
    summary = report.summary
    return ImageColumn(
        reference=report.image.reference,
        final_bytes=size.final_bytes,
        compressed_bytes=size.compressed_bytes,
        uncompressed_bytes=size.uncompressed_bytes,
        layers=len(size.layers),
        file_count=size.file_count,
        libc=runtime.libc,
        libc_version=runtime.libc_version,
        distro=runtime.distro.id,
        distro_version=runtime.distro.version_id,
        package_db=size.package_db,
        packages=len(size.packages),
        package_bytes=sum(p.bytes for p in size.packages),
        reclaimable_bytes=size.reclaimable_bytes,
        wasted_bytes=size.wasted_bytes,
        efficiency=size.efficiency,
        entrypoint_verdict=report.entrypoint.verdict,
        entrypoint_failure=report.entrypoint.failure,
        errors=summary.errors,
        warnings=summary.warnings,
        complete=report.complete,
    )


def compare(reports: Sequence[Report]) -> list[ImageColumn]:
    return [column(r) for r in reports]


def smallest(columns: Sequence[ImageColumn]) -> str | None:
    """The reference with the smallest final filesystem, for the summary line."""
    return min(columns, key=lambda c: (c.final_bytes, c.reference)).reference if columns else None


def to_json(columns: Sequence[ImageColumn]) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "images": [asdict(c) for c in columns]}
