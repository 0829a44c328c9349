"""`entrypoint.parse_shebang` against this host's kernel: random `#!` lines (blanks, tabs, NULs, carriage returns,
lines past 256 bytes, no newline) naming a program that prints the argv the kernel gave it. The kernel's
binfmt_script is the judge of what the interpreter and its one argument are, or that the line is ENOEXEC."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from imgaudit.entrypoint import parse_shebang

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None or os.uname().sysname != "Linux",
                                reason="needs gcc and a Linux kernel")

ARGV_PRINTER = r"""
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) write(1, argv[i], strlen(argv[i]) + 1);
    return 0;
}
"""


@pytest.fixture(scope="module")
def printer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("shebang")
    (where / "p.c").write_text(ARGV_PRINTER)
    subprocess.run(["gcc", "-O1", "-o", str(where / "p"), str(where / "p.c")], check=True, capture_output=True)
    return where / "p"


def _line(rng: random.Random, interp: bytes) -> bytes:
    pieces = [rng.choice([b"", b" ", b"\t", b" \t "]), interp]
    for _ in range(rng.randrange(4)):
        pieces.append(rng.choice([b" ", b"\t", b"-e", b"x", b"\r", b"\0", b"a b", b"  ", b"=" * rng.randrange(1, 300)]))
    pieces.append(rng.choice([b"\n", b"\r\n", b"", b"\0\n", b" \n"]))
    return b"#!" + b"".join(pieces) + rng.choice([b"", b"echo hi\n", b"x" * 300])


def _kernel(script: Path) -> tuple[str, list[bytes]]:
    try:
        out = subprocess.run([str(script)], capture_output=True, check=False, timeout=10).stdout
    except OSError as err:
        return errno.errorcode[err.errno], []
    return "ran", out.split(b"\0")[:-1]


def test_the_interpreter_and_argument_are_the_kernels(printer: Path, tmp_path: Path) -> None:
    rng = random.Random(5)
    interp = str(printer).encode()
    checked = {"ran": 0, "ENOEXEC": 0}
    for i in range(400):
        head = _line(rng, interp if rng.random() < 0.9 else interp + b"/" + b"y" * 250)
        script = tmp_path / f"s{i}"
        script.write_bytes(head)
        script.chmod(0o755)
        outcome, argv = _kernel(script)
        parsed = parse_shebang(head[:256])
        if parsed is None:
            assert outcome == "ENOEXEC", (head, outcome)
        elif parsed[0] != str(printer):
            assert outcome in ("ENOENT", "ENOTDIR", "ENAMETOOLONG"), (head, parsed, outcome)
        else:
            assert outcome == "ran", (head, parsed, outcome)
            expected = [interp, *([parsed[1].encode("utf-8", "surrogateescape")] if parsed[1] is not None else []),
                        str(script).encode()]
            assert argv == expected, (head, parsed)
        checked[outcome] = checked.get(outcome, 0) + 1
    assert checked["ran"] > 100 and checked["ENOEXEC"] + checked.get("ENOENT", 0) > 10, checked
