"""Installed packages and their sizes, read from the image's own package database.

dpkg: `/var/lib/dpkg/status` (deb-control(5) paragraphs; `Installed-Size` is in KiB, dpkg's estimate of
the unpacked size, the number `dpkg-query -W -f '${Installed-Size}'` prints), and distroless's
`/var/lib/dpkg/status.d/<name>` (one control paragraph per file, no dpkg binary in the image).
apk: `/lib/apk/db/installed` (apk-tools' `K:value` records; `I:` is the installed size in bytes).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from imgaudit.rootfs import RootFS

DPKG_STATUS = "/var/lib/dpkg/status"
DPKG_STATUS_D = "/var/lib/dpkg/status.d"
APK_INSTALLED = "/lib/apk/db/installed"
KIB = 1024


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    bytes: int
    architecture: str = ""


@dataclass(frozen=True)
class PackageDB:
    kind: str  # dpkg | dpkg-status.d | apk
    packages: tuple[Package, ...]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.packages)


def control_paragraphs(text: str) -> Iterator[dict[str, str]]:
    """deb-control(5): `Field: value` lines, continuation lines start with a space or tab, paragraphs
    end at a blank line; field names are case-insensitive (kept lower-cased here)."""
    fields: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
        elif line[0] in " \t":
            if last:
                fields[last] += "\n" + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            fields[last] = value.strip()
    if fields:
        yield fields


def _installed(fields: dict[str, str]) -> bool:
    """Status is `want flag state`; dpkg-query -W shows the size of every package whose state is not
    not-installed, and config-files packages have no files left, so only `installed` counts here.
    A paragraph without Status (distroless status.d) describes an installed package."""
    status = fields.get("status")
    return status is None or status.split()[-1:] == ["installed"]


def _kib(value: str | None) -> int:
    try:
        return max(0, int((value or "0").split()[0])) * KIB
    except (ValueError, IndexError):
        return 0


def dpkg_packages(text: str) -> list[Package]:
    return [
        Package(f["package"], f.get("version", ""), _kib(f.get("installed-size")), f.get("architecture", ""))
        for f in control_paragraphs(text)
        if "package" in f and _installed(f)
    ]


def apk_packages(text: str) -> list[Package]:
    """apk-tools' installed database: one record per package, `P:` name, `V:` version, `I:` bytes."""
    out = []
    for record in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in record.splitlines():
            if len(line) > 1 and line[1] == ":":
                fields.setdefault(line[0], line[2:])
        if "P" in fields:
            size = fields.get("I", "0")
            out.append(Package(fields["P"], fields.get("V", ""), int(size) if size.isascii() and size.isdigit() else 0,
                               fields.get("A", "")))
    return out


def _text(fs: RootFS, path: str) -> str | None:
    data = fs.read(path)
    return data.decode("utf-8", "replace") if data is not None else None


def _status_d(fs: RootFS) -> list[Package]:
    out: list[Package] = []
    for name in fs.listdir(DPKG_STATUS_D):
        if name.endswith(".md5sums"):
            continue  # newer distroless images keep each package's md5sums beside its control file
        text = _text(fs, posixpath.join(DPKG_STATUS_D, name))
        if text is not None:
            out.extend(dpkg_packages(text))
    return out


def _merge(first: list[Package], more: list[Package]) -> list[Package]:
    known = {p.name for p in first}
    return first + [p for p in more if p.name not in known]


def read_packages(fs: RootFS) -> PackageDB | None:
    """The image's package database, or None when it has none (scratch, static, hand-made images)."""
    status = _text(fs, DPKG_STATUS)
    status_d = _status_d(fs)
    if status is not None or status_d:
        kind = "dpkg" if status is not None else "dpkg-status.d"
        packages = _merge(dpkg_packages(status or ""), status_d)
        return PackageDB(kind, _ranked(packages))
    apk = _text(fs, APK_INSTALLED)
    if apk is not None:
        return PackageDB("apk", _ranked(apk_packages(apk)))
    return None


def _ranked(packages: list[Package]) -> tuple[Package, ...]:
    return tuple(sorted(packages, key=lambda p: (-p.bytes, p.name)))
