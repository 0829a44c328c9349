"""Terminal progress: counts the stored bytes of every layer, stays silent for quick runs."""

from __future__ import annotations

import io

import pytest

from imgaudit.image import Layer
from imgaudit.progress import TerminalProgress
from imgaudit.scanner import Scanner, layer_label
from tests.builders import f, gz, make_layer, sha


def test_scanner_reports_every_stored_byte() -> None:
    plain = make_layer([f("a", b"x" * 50_000)])
    blob = gz(plain)
    seen: list[tuple[str, int]] = []
    layer = Layer(index=0, diff_id=sha(plain), digest=sha(blob), size=len(blob))
    Scanner(progress=lambda label, n: seen.append((label, n))).scan(layer, io.BytesIO(blob), 1)
    assert sum(n for _, n in seen) == len(blob)
    assert {label for label, _ in seen} == {f"layer 1/1 {sha(blob)[:19]}"}


def test_a_stream_label_has_no_count() -> None:
    assert layer_label(Layer(index=3, diff_id="", digest="sha256:" + "a" * 64), 0) == "layer 4 sha256:aaaaaaaaaaaa"


def test_progress_stays_hidden_before_its_delay() -> None:
    progress = TerminalProgress(delay=3600)
    progress("layer 1/1", 10)
    assert progress._bar is None  # nothing drawn for a run shorter than the delay
    progress.close()


def test_a_label_from_the_image_is_drawn_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The label carries a digest as the image wrote it: `[/x` must neither fail the bar (MarkupError) nor
    style it, and `:smile:` stays text (RELIABILITY.md #105)."""
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    monkeypatch.setenv("FORCE_COLOR", "1")  # draw as on a terminal
    progress = TerminalProgress(delay=0)
    for label in ("layer 1/2 [/x [bold]y", "layer 2/2 a] :smile:"):
        progress(label, 10)
        progress._bar.refresh()
    progress.close()
    assert "layer 1/2 [/x [bold]y" in err.getvalue() and "layer 2/2 a] :smile:" in err.getvalue()
