"""What an image provides to the programs in it: libc family and version, distro (os-release), shell
and package database. Facts come from the image's own files, never from the host.

glibc: the version definitions and banner of `libc.so.6` (read by elf.py); musl: the banner of its
loader/libc, else the `musl` package of the apk database; distro: os-release(5).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from imgaudit.elf import ElfFacts
from imgaudit.layers import EntryType
from imgaudit.loader import TRIPLETS, facts_of, real_file
from imgaudit.report import Distro, RuntimeInfo
from imgaudit.rootfs import RootFS

OS_RELEASE = ("/etc/os-release", "/usr/lib/os-release")
SHELLS = ("/bin/sh",)
CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Alpine (LibreSSL/OpenSSL default), macOS-style
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
)
_GLIBC_NAMES = re.compile(r"^(?:libc\.so\.6|libc-2\.\d+\.so)$")
_MUSL_NAMES = re.compile(r"^(?:ld-musl-[^/]+\.so\.1|libc\.musl-[^/]+\.so\.1)$")
_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")


@dataclass(frozen=True)
class Libc:
    family: str  # glibc | musl | none | unknown
    version: str | None = None
    path: str | None = None  # libc.so.6 or musl's loader


@dataclass(frozen=True)
class RuntimeFacts:
    libc: Libc
    distro: Distro
    shell: str | None
    package_db: str | None  # dpkg | dpkg-distroless | apk | rpm | None
    ca_bundle: str | None

    def info(self) -> RuntimeInfo:
        return RuntimeInfo(self.libc.family, self.libc.version, self.distro, self.shell)


def runtime_facts(rootfs: RootFS, machine: str = "x86_64") -> RuntimeFacts:
    return RuntimeFacts(find_libc(rootfs, machine), distro(rootfs), shell(rootfs), package_db(rootfs),
                        ca_bundle(rootfs))


def find_libc(rootfs: RootFS, machine: str = "x86_64") -> Libc:
    """glibc wins when both are present (a glibc image with a stray musl loader is still glibc)."""
    glibc = _find(rootfs, _GLIBC_NAMES, machine)
    if glibc is not None:
        facts = facts_of(rootfs, glibc)
        return Libc("glibc", _glibc_version(facts) if facts else None, glibc)
    musl = _find(rootfs, _MUSL_NAMES, machine)
    if musl is not None:
        facts = facts_of(rootfs, musl)
        version = facts.libc_version if facts and facts.libc_version else apk_version(rootfs, "musl")
        return Libc("musl", version, musl)
    return Libc("none")


def _find(rootfs: RootFS, names: re.Pattern[str], machine: str) -> str | None:
    """The first regular file with a libc name in the library dirs (multiarch ones first)."""
    triplets = [t for (m, _), t in TRIPLETS.items() if m == machine]
    dirs = [f"{d}/{t}" for t in triplets for d in ("/lib", "/usr/lib")] + list(_LIB_DIRS)
    for _, real_dir in rootfs.real_dirs(dirs):
        for name in rootfs.listdir(real_dir):
            if names.match(name):
                real = real_file(rootfs, posixpath.join(real_dir, name))
                if real is not None:
                    return real
    return None


def version_key(version: str) -> tuple[int, ...]:
    """`2.34` → (2, 34) for ordering glibc releases; a part that is not ASCII digits (`2.²`) is left out."""
    return tuple(int(p) for p in version.split(".") if p.isascii() and p.isdigit())


def _glibc_version(facts: ElfFacts) -> str | None:
    if facts.libc_version:
        return facts.libc_version
    versions = [v[6:] for v in facts.version_defs if v.startswith("GLIBC_2")]
    return max(versions, key=version_key, default=None)


def apk_version(rootfs: RootFS, package: str) -> str | None:
    """`V:` of package `P:` in the apk database, without the `-rN` revision."""
    data = rootfs.read("/lib/apk/db/installed")
    if data is None:
        return None
    for block in data.decode("utf-8", "replace").split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line[:2])
        if fields.get("P") == package and "V" in fields:
            return fields["V"].rsplit("-r", 1)[0]
    return None


def os_release(rootfs: RootFS) -> dict[str, str]:
    for path in OS_RELEASE:
        data = rootfs.read(path)
        if data is not None:
            return parse_os_release(data.decode("utf-8", "replace"))
    return {}


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines; values may be quoted with " or ' (os-release(5))."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out[key] = value
    return out


def distro(rootfs: RootFS) -> Distro:
    fields = os_release(rootfs)
    return Distro(fields.get("ID"), fields.get("VERSION_ID"), fields.get("PRETTY_NAME"))


def shell(rootfs: RootFS) -> str | None:
    for path in SHELLS:
        real = real_file(rootfs, path)
        if real is not None and rootfs.nodes[real].entry.mode & 0o111:
            return path
    return None


def package_db(rootfs: RootFS) -> str | None:
    if rootfs.get("/var/lib/dpkg/status") is not None:
        return "dpkg"
    node = rootfs.get("/var/lib/dpkg/status.d")
    if node is not None and node.type is EntryType.DIR:
        return "dpkg-distroless"
    if rootfs.get("/lib/apk/db/installed") is not None:
        return "apk"
    if any(rootfs.get(p) is not None for p in ("/var/lib/rpm", "/usr/lib/sysimage/rpm")):
        return "rpm"
    return None


def ca_bundle(rootfs: RootFS) -> str | None:
    for path in CA_BUNDLES:
        real = real_file(rootfs, path)
        if real is not None and rootfs.nodes[real].entry.size > 0:
            return path
    return None
