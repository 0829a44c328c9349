"""imgaudit's dynamic symbols against binutils' readelf, an independent reader of the same tables: every import
and export (name, version, weak, hidden) of the built fixtures, the Alpine minirootfs (x86_64 and aarch64, musl)
and this host's shared libraries. The linkage verdicts bind these names, so a name misread is a false
"undefined symbol" (a UTF-8 name once shifted every later one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgaudit.elf import ELF_MAGIC, ElfFacts, ElfReader
from tests.unit.test_elf import ALPINE, CORPUS, elf_fixtures
from tests.unit.test_elf_smoke import elf_members

HOST_LIBS = Path("/usr/lib/x86_64-linux-gnu")
# "  12: 0000000000001139    26 FUNC    GLOBAL DEFAULT   14 u8_hello@@V1 (2)"; a big size is printed in hex
_SYMBOL = re.compile(rb"^\s*\d+: [0-9a-f]+\s+\S+\s+(\S+)\s+(\S+)\s+\S+\s+(\S+)\s?(.*)$")
Row = tuple[str, str | None, bool, bool]

pytestmark = pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")


def readelf_symbols(path: Path, facts: ElfFacts) -> tuple[list[Row], list[Row]]:
    """(imports, exports) as readelf lists .dynsym, in imgaudit's terms: no local symbols, no symbol naming a
    version definition, and `hidden` (`name@V` against `name@@V`) only where V is one the file defines (a
    copy-relocated `stderr@GLIBC_2.2.5` in a program names a version it needs)."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(path)], capture_output=True, check=True,
                         env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "")}).stdout
    imports: list[Row] = []
    exports: list[Row] = []
    table = False
    for line in out.splitlines():
        if line.startswith(b"Symbol table"):
            table = b"'.dynsym'" in line
            continue
        match = _SYMBOL.match(line.replace(b"<OS specific>: 10", b"UNIQUE"))
        if not table or match is None:
            continue
        _, bind, ndx, text = match.groups()
        if bind == b"LOCAL":
            continue
        text = re.sub(rb" \(\d+\)$", b"", text)
        name, _, version = text.replace(b"@@", b"@").partition(b"@")
        row_name, row_version = name.decode("utf-8", "surrogateescape"), version.decode() or None
        if ndx == b"UND":
            imports.append((row_name, row_version, bind == b"WEAK", False))
        elif not (ndx == b"ABS" and row_name in facts.version_defs):
            hidden = b"@@" not in text and b"@" in text and row_version in facts.version_defs
            exports.append((row_name, row_version, bind == b"WEAK", hidden))
    return imports, exports


def imgaudit_symbols(facts: ElfFacts) -> tuple[list[Row], list[Row]]:
    imports = [(s.name, s.version, s.weak, False) for s in facts.imported_symbols]
    exports = [(s.name, s.version, s.weak, s.hidden and s.version in facts.version_defs)
               for s in facts.exported_symbols]
    return imports, exports


def alpine_files(tmp: Path) -> Iterator[Path]:
    """The Alpine minirootfs ELF files, written out for readelf."""
    for rel in ALPINE.values():
        if (CORPUS / rel).exists():
            for name, data in elf_members(CORPUS / rel).items():
                out = tmp / Path(rel).name.split(".tar")[0] / name.lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                yield out


def host_libraries() -> Iterator[Path]:
    for path in sorted(HOST_LIBS.glob("*.so*")) if HOST_LIBS.is_dir() else ():
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as f:
                if f.read(4) == ELF_MAGIC:
                    yield path


def test_dynamic_symbols_match_readelf(fixtures: Path, reader: ElfReader, tmp_path: Path) -> None:
    files = [*elf_fixtures(fixtures), *alpine_files(tmp_path), *host_libraries()]
    assert any(p.name == "libu8.so.1" for p in files), "the UTF-8 fixture was not built"
    differ, compared = [], 0
    for path in files:
        facts = reader.read(str(path), path.read_bytes())
        if facts.error is not None:
            continue  # not a table to compare (an object file LIEF refuses, say): the isolation tests cover errors
        compared += 1
        ours, theirs = imgaudit_symbols(facts), readelf_symbols(path, facts)
        if (sorted(ours[0]), sorted(ours[1])) != (sorted(theirs[0]), sorted(theirs[1])):
            wrong = sorted(set(ours[0] + ours[1]) ^ set(theirs[0] + theirs[1]))[:3]
            differ.append(f"{path}: {wrong}")
    assert compared >= 30, f"only {compared} ELF files compared"
    assert not differ, f"{len(differ)} of {compared} files differ from readelf:\n" + "\n".join(differ[:10])

