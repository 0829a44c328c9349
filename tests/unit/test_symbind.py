"""Symbol binding answered per object pair and shared across scopes (symbind.py): glibc's `check_match`
rules and musl's, and a cached answer never leaking from one scope into another."""

from __future__ import annotations

from imgaudit.elf import ElfFacts, Symbol, VersionNeed
from imgaudit.symbind import Bindings, Versions

LIB = ElfFacts(imported_symbols=(Symbol("plain"), Symbol("versioned", "V2"), Symbol("weak", weak=True),
                                 Symbol("only_hidden"), Symbol("other_version", "V9")))
VERSIONED = ElfFacts(version_defs=("V1", "V2"),
                     exported_symbols=(Symbol("plain", "V1"), Symbol("versioned", "V2", hidden=True),
                                       Symbol("only_hidden", "V1", hidden=True), Symbol("other_version", "V1")))
UNVERSIONED = ElfFacts(exported_symbols=(Symbol("versioned"), Symbol("other_version")))


def names(symbols: list[Symbol]) -> list[str]:
    return [s.name for s in symbols]


def test_glibc_rules_and_weak_references() -> None:
    glibc = Bindings(use_versions=True)
    # A hidden definition binds only a reference to its version; an unversioned reference needs a
    # default one; a versioned reference to an object without versions binds to any definition.
    assert names(glibc.unbound("lib", LIB, {"lib": LIB, "v": VERSIONED})) == ["only_hidden", "other_version"]
    assert names(glibc.unbound("lib", LIB, {"lib": LIB, "u": UNVERSIONED})) == ["plain", "only_hidden"]
    assert names(glibc.unbound("lib", LIB, {"lib": LIB, "v": VERSIONED, "u": UNVERSIONED})) == ["only_hidden"]


def test_musl_ignores_versions() -> None:
    assert Bindings(use_versions=False).unbound("lib", LIB, {"lib": LIB, "v": VERSIONED}) == []


def test_a_cached_provider_binds_only_in_scopes_that_hold_it() -> None:
    glibc = Bindings(use_versions=True)
    both = {"lib": LIB, "v": VERSIONED, "u": UNVERSIONED}
    assert names(glibc.unbound("lib", LIB, both)) == ["only_hidden"]
    assert names(glibc.unbound("lib", LIB, {"lib": LIB})) == ["plain", "versioned", "only_hidden", "other_version"]
    assert names(glibc.unbound("lib", LIB, {"lib": LIB, "u": UNVERSIONED})) == ["plain", "only_hidden"]
    assert names(glibc.unbound("lib", LIB, both)) == ["only_hidden"]


def test_versions_met_by_each_files_provider() -> None:
    app = ElfFacts(version_needs=(VersionNeed("libv.so", "V1"), VersionNeed("libv.so", "V2"),
                                  VersionNeed("libgone.so", "G1")))
    versions = Versions()
    assert versions.all_met("app", app, {"libv.so": ("v", VERSIONED)}.get)  # libgone.so not loaded: not checked here
    assert not versions.all_met("app", app, {"libv.so": ("u", UNVERSIONED)}.get)  # no version information
    old = ElfFacts(version_defs=("V1",))
    assert not versions.all_met("app", app, {"libv.so": ("old", old)}.get)
    assert versions.all_met("app", app, {"libv.so": ("v", VERSIONED)}.get)
