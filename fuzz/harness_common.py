"""What the four harnesses share: the repository on `sys.path`, the crash rule, a fake image around fuzzed
scans, and the report renderers every run goes through.

The rule (issue 7): any exception that is not an `ImgauditError` is a crash; atheris then prints the
traceback and writes the input as `crash-<sha1>`. A hang is an input that runs over libFuzzer's
`-timeout` (5 s in `scripts/fuzz`). Invariants that must hold for every input raise `Broken`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

INSTRUMENT = ["imgaudit", "tarfile", "fuzz"]


class Broken(AssertionError):
    """An invariant of imgaudit failed on a fuzzed input (a bug even though nothing raised)."""


def guarded(body: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The libFuzzer entry point: ImgauditError (a documented refusal, exit 2 or 3) is a pass."""
    from imgaudit.errors import ImgauditError

    def test_one_input(data: bytes) -> None:
        try:
            body(data)
        except ImgauditError as err:
            message = str(err)
            if "\n" in message or "\r" in message:
                raise Broken(f"error message is not one line: {message!r}") from err

    return test_one_input


def fuzz(body: Callable[[bytes], None]) -> None:
    """Run under atheris (libFuzzer flags from argv); files given instead of a corpus dir are replayed."""
    import atheris

    atheris.Setup(sys.argv, guarded(body))
    atheris.Fuzz()


def check_report(report: object) -> None:
    """Every output format renders, JSON is strict (no NaN) and names stay one line in text."""
    from imgaudit.ci import Gate, render_as
    from imgaudit.policy import build_policy
    from imgaudit.report import Report

    assert isinstance(report, Report)
    gate = Gate(build_policy({}))
    for fmt in ("json", "table", "sarif", "junit", "markdown"):
        text = render_as(fmt, report, gate)
        if fmt == "json":
            json.loads(text, parse_constant=_no_constant)
        if fmt == "table" and "\x1b" in text:
            raise Broken("raw escape character in the table output")


def _no_constant(name: str) -> object:
    raise Broken(f"{name} in JSON output")


def fake_image(scans: tuple[object, ...], *, entrypoint: tuple[str, ...] = ("/bin/app",),
               env: tuple[str, ...] = ("PATH=/usr/bin:/bin",), working_dir: str = "/") -> object:
    """An `Image` model around already-made scans (the fuzzed part is the layers, not the config)."""
    from imgaudit.image import Image, ImageConfig, Layer, Platform
    from imgaudit.layers import LayerScan

    layers = []
    for index, scan in enumerate(scans):
        assert isinstance(scan, LayerScan)
        layers.append(Layer(index, scan.diff_id, scan.digest, scan.compressed_size, created_by=f"RUN step {index}"))
    config = ImageConfig(Platform("linux", "amd64"), entrypoint=entrypoint, cmd=("serve",), env=env,
                         working_dir=working_dir, diff_ids=tuple(layer.diff_id for layer in layers))
    return Image("fuzz:latest", "oci", config, "sha256:" + "0" * 64, tuple(layers))
