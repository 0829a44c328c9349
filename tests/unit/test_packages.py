"""Package databases: dpkg status, distroless status.d, apk installed → name, version, installed bytes."""

from __future__ import annotations

import io

from imgaudit.layers import scan_layer
from imgaudit.packages import apk_packages, control_paragraphs, dpkg_packages, read_packages
from imgaudit.rootfs import RootFS
from tests.builders import Item, f, make_layer

STATUS = """\
Package: libc6
Status: install ok installed
Priority: optional
Installed-Size: 12987
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u7
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: oldconf
Status: deinstall ok config-files
Installed-Size: 40
Version: 1.0

package: dash
status: install ok installed
installed-size: 210
version: 0.5.12-2

Package: nosize
Status: install ok installed
Version: 3
"""

APK = """\
C:Q1abc=
P:musl
V:1.2.5-r0
A:x86_64
S:411323
I:662870
T:the musl c library (libc) implementation

C:Q1def=
P:busybox
V:1.36.1-r29
A:x86_64
I:946376
"""


def fs_of(items: list[Item]) -> RootFS:
    return RootFS.build([scan_layer(io.BytesIO(make_layer(items)))])


def test_control_paragraphs_fold_continuations_and_lower_case_names() -> None:
    paragraphs = list(control_paragraphs(STATUS))
    assert len(paragraphs) == 4
    assert paragraphs[0]["description"].endswith("the system.")
    assert paragraphs[2]["package"] == "dash"


def test_dpkg_status_sizes_are_kib() -> None:
    packages = {p.name: p for p in dpkg_packages(STATUS)}
    assert set(packages) == {"libc6", "dash", "nosize"}  # config-files packages have no files left
    assert packages["libc6"].bytes == 12987 * 1024
    assert packages["libc6"].version == "2.36-9+deb12u7"
    assert packages["dash"].bytes == 210 * 1024
    assert packages["nosize"].bytes == 0


def test_apk_installed_sizes_are_bytes() -> None:
    packages = apk_packages(APK)
    assert [(p.name, p.version, p.bytes) for p in packages] == [("musl", "1.2.5-r0", 662870),
                                                                ("busybox", "1.36.1-r29", 946376)]


def test_read_packages_prefers_dpkg_status_ranked_by_size() -> None:
    db = read_packages(fs_of([f("var/lib/dpkg/status", STATUS)]))
    assert db is not None and db.kind == "dpkg"
    assert [p.name for p in db.packages] == ["libc6", "dash", "nosize"]
    assert db.bytes == (12987 + 210) * 1024


def test_distroless_status_d_skips_md5sums() -> None:
    control = "Package: libssl3\nVersion: 3.0.15-1~deb12u1\nArchitecture: amd64\nInstalled-Size: 6161\n"
    db = read_packages(fs_of([
        f("var/lib/dpkg/status.d/libssl3", control),
        f("var/lib/dpkg/status.d/libssl3.md5sums", "0123456789abcdef  usr/lib/x86_64-linux-gnu/libssl.so.3\n"),
        f("var/lib/dpkg/status.d/base-files", "Package: base-files\nVersion: 12.4+deb12u8\nInstalled-Size: 341\n"),
    ]))
    assert db is not None and db.kind == "dpkg-status.d"
    assert [(p.name, p.bytes) for p in db.packages] == [("libssl3", 6161 * 1024), ("base-files", 341 * 1024)]


def test_apk_database() -> None:
    db = read_packages(fs_of([f("lib/apk/db/installed", APK)]))
    assert db is not None and db.kind == "apk"
    assert db.packages[0].name == "busybox"


def test_no_database() -> None:
    assert read_packages(fs_of([f("app", "x")])) is None
