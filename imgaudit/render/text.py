"""Human-readable sizes and safe terminal text shared by the text renderers."""

from __future__ import annotations

from imgaudit.errors import escape

UNITS = ("B", "kB", "MB", "GB", "TB")


def human(n: int | None) -> str:
    """Decimal SI units (1 MB = 1,000,000 bytes), the convention `docker images` uses."""
    if n is None:
        return "-"
    value = float(n)
    for unit in UNITS:
        if abs(value) < 1000 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def safe(text: str) -> str:
    """Escapes control characters so names from an image cannot drive the terminal."""
    return escape(text)
