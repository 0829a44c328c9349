"""stall.GuardedSocket on real socket pairs (RELIABILITY.md #21): silence and trickles end within the timeout;
a reader that is slow itself, a server that pauses but keeps the pace, and a socket closed under its reader do
not fail. The registry e2e tests run the same guard under the CLI against trickling servers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from imgaudit.errors import UsageError
from imgaudit.sources.stall import DEFAULT_TIMEOUT, GuardedSocket, Stalled, timeout_from_env


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def _send_later(sock: socket.socket, pieces: list[bytes], interval: float) -> threading.Thread:
    def run() -> None:
        for piece in pieces:
            time.sleep(interval)
            try:
                sock.sendall(piece)
            except OSError:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_silence_ends_after_the_timeout(pair: tuple[socket.socket, socket.socket]) -> None:
    reader = GuardedSocket(pair[0], 0.3).makefile("rb")
    start = time.monotonic()
    with pytest.raises(Stalled, match=r"sent nothing for 0.3 s"):
        reader.read(10)
    assert 0.25 < time.monotonic() - start < 1.0


def test_a_byte_at_a_time_ends_after_one_window(pair: tuple[socket.socket, socket.socket]) -> None:
    _send_later(pair[1], [b"x"] * 100, 0.02)  # each byte well within the timeout: no idle timeout fires
    reader = GuardedSocket(pair[0], 0.5).makefile("rb")
    start = time.monotonic()
    with pytest.raises(Stalled, match=r"sent \d+ bytes in 0.5 s \(under 1024 bytes/s\)"):
        reader.read(1000)
    assert time.monotonic() - start < 1.0


def test_a_slow_reader_is_not_blamed_on_the_server(pair: tuple[socket.socket, socket.socket]) -> None:
    pair[1].sendall(b"y" * 10)
    reader = GuardedSocket(pair[0], 0.3).makefile("rb")
    assert reader.read(10) == b"y" * 10
    pair[1].sendall(b"y" * 100)
    time.sleep(1.0)  # the scanner busy elsewhere: by the clock three thin windows pass, but nobody waited
    assert reader.read(100) == b"y" * 100


def test_pauses_at_a_good_pace_pass(pair: tuple[socket.socket, socket.socket]) -> None:
    _send_later(pair[1], [b"z" * 4096] * 8, 0.2)
    reader = GuardedSocket(pair[0], 0.5).makefile("rb")
    assert reader.read(8 * 4096) == b"z" * 8 * 4096


def test_a_request_starts_a_fresh_window(pair: tuple[socket.socket, socket.socket]) -> None:
    guarded = GuardedSocket(pair[0], 0.4)
    reader = guarded.makefile("rb")
    _send_later(pair[1], [b"a"] * 5, 0.05)
    assert reader.read(5) == b"aaaaa"  # 0.25 s of a slow window spent
    guarded.sendall(b"GET / HTTP/1.1\r\n\r\n")  # keep-alive: the next response is judged on its own
    _send_later(pair[1], [b"b" * 300], 0.3)  # 305 bytes over 0.55 s would be too slow for one window
    assert reader.read(300) == b"b" * 300


def test_closing_the_socket_under_its_reader_keeps_the_descriptor(pair: tuple[socket.socket, socket.socket]) -> None:
    """http.client closes a `Connection: close` socket once the response owns the reader."""
    guarded = GuardedSocket(pair[0], 1.0)
    reader = guarded.makefile("rb")
    pair[1].sendall(b"still here")
    guarded.close()
    assert reader.read(10) == b"still here"
    reader.close()
    assert pair[0].fileno() == -1


@pytest.mark.parametrize(("value", "seconds"), [("", DEFAULT_TIMEOUT), ("2.5", 2.5), (" 90 ", 90.0)])
def test_timeout_from_env(monkeypatch: pytest.MonkeyPatch, value: str, seconds: float) -> None:
    monkeypatch.setenv("IMGAUDIT_REGISTRY_TIMEOUT", value)
    assert timeout_from_env() == seconds


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", "1e9"])
def test_bad_timeouts_are_usage_errors(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("IMGAUDIT_REGISTRY_TIMEOUT", value)
    with pytest.raises(UsageError, match="IMGAUDIT_REGISTRY_TIMEOUT"):
        timeout_from_env()
