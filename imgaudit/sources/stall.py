"""Registry reads that stall or trickle end in time (RELIABILITY.md #21, slow loris; trivy #3661). A socket
read that waits the whole timeout for a byte fails, and so does a window of `timeout` seconds spent waiting
that brings fewer than MIN_RATE bytes a second: one byte a second never trips an idle timeout. This is curl's
`--speed-limit`/`--speed-time`, with the time counted only while imgaudit waits on the socket, so a scanner slow
to read (a large ELF file being parsed) is never blamed on the server. Standard library only: registry.py puts
it under its HTTP connections.
"""

from __future__ import annotations

import io
import math
import os
import socket
import time
from typing import Any, cast

from imgaudit.errors import UsageError

MIN_RATE = 1024  # bytes a second, averaged over each window of waiting
DEFAULT_TIMEOUT = 60.0


def timeout_from_env() -> float:
    """`IMGAUDIT_REGISTRY_TIMEOUT` (seconds, default 60): how long a registry may stall or trickle."""
    text = os.environ.get("IMGAUDIT_REGISTRY_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.1 <= value <= 86400:  # NaN fails too
        raise UsageError(f"IMGAUDIT_REGISTRY_TIMEOUT must be a number of seconds from 0.1 to 86400, not "
                         f"{text[:40]!r}")
    return value


class Stalled(TimeoutError):
    """A response that sent nothing for the whole timeout, or too little over one window; says which."""


class GuardedSocket:
    """Wraps a connected (maybe TLS) socket: every read goes through `recv_into`, which applies both rules.
    A request sent (`sendall`) starts a fresh window: keep-alive connections serve many responses."""

    def __init__(self, sock: Any, timeout: float) -> None:
        self._sock = sock
        self._timeout = timeout
        self._idle = 0.0  # waiting since the last byte
        self._waited = 0.0  # waiting in this window
        self._received = 0  # bytes in this window

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def sendall(self, data: Any, *args: Any) -> None:
        self._idle = self._waited = 0.0
        self._received = 0
        self._sock.sendall(data, *args)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        """How http.client reads a response: through `recv_into` here. The count of open readers is the
        socket's own, as `socket.makefile` keeps it: http.client closes a `Connection: close` socket while its
        response is still being read, and the descriptor must stay open until that reader is done."""
        if mode != "rb":
            return self._sock.makefile(mode, *args, **kwargs)
        self._sock._io_refs += 1
        return io.BufferedReader(socket.SocketIO(cast(socket.socket, self), "rb"))

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        while True:
            self._sock.settimeout(max(min(self._timeout - self._idle, self._timeout - self._waited), 0.001))
            start = time.monotonic()
            try:
                count: int | None = self._sock.recv_into(buffer, nbytes)
            except TimeoutError:
                count = None
            spent = time.monotonic() - start
            self._waited += spent
            self._idle = 0.0 if count else self._idle + spent
            self._received += count or 0
            self._check()
            if count is not None:
                return count

    def _check(self) -> None:
        if self._idle >= self._timeout:
            raise Stalled(f"sent nothing for {self._timeout:g} s")
        if self._waited < self._timeout:
            return
        if self._received < MIN_RATE * self._timeout:
            raise Stalled(f"sent {self._received} bytes in {self._timeout:g} s (under {MIN_RATE} bytes/s)")
        self._waited, self._received = 0.0, 0

