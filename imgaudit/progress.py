"""Progress on stderr while layers are read: shown only on a terminal, and only once reading has taken
more than a moment, so pipes, CI logs and quick runs stay clean."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

ProgressFn = Callable[[str, int], None]  # (layer label, stored bytes just read)

DELAY = 0.5


class CountingReader:
    """Passes reads through and reports how many stored bytes went by."""

    def __init__(self, raw: BinaryIO, label: str, report: ProgressFn) -> None:
        self._raw = raw
        self._label = label
        self._report = report

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if data:
            self._report(self._label, len(data))
        return data


class TerminalProgress:
    """A rich progress line (bytes read, rate, current layer) started after DELAY seconds."""

    def __init__(self, delay: float = DELAY) -> None:
        self._start = time.monotonic()
        self._delay = delay
        self._lock = threading.Lock()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, label: str, nbytes: int) -> None:
        if self._bar is None:
            if time.monotonic() - self._start < self._delay:
                return
            self._begin()
        self._bar.update(self._task, advance=nbytes, description=f"reading {label}")

    def _begin(self) -> None:
        with self._lock:
            if self._bar is not None:
                return
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

            # the label carries a digest as the image wrote it: shown as text, never parsed as markup (#105)
            bar = Progress(TextColumn("{task.description}", markup=False), DownloadColumn(), TransferSpeedColumn(),
                           TimeElapsedColumn(), console=Console(stderr=True, emoji=False), transient=True)
            self._task = bar.add_task("reading", total=None)
            bar.start()
            self._bar = bar

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def terminal_progress() -> TerminalProgress | None:
    return TerminalProgress() if sys.stderr.isatty() else None
