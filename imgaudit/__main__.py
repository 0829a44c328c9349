"""`python -m imgaudit` and the `imgaudit` command.

Importing the CLI takes ~0.1 s (click, the model, the sources); a Ctrl-C in that time raised KeyboardInterrupt
inside some module's import and Python printed its traceback (11 of 100 runs interrupted in their first 0.25 s).
Until the CLI is imported, SIGINT ends the process with the line and the exit code the CLI gives: nothing has
been read or written yet, so there is nothing to clean up.

This module imports only what the interpreter has loaded before it runs: `_signal` is the builtin that `signal`
wraps, and importing `signal` itself (0.6 ms) was a window of its own (1 of 200 runs interrupted at a random
moment of their first 1.9 s got a traceback from `import signal`).
"""

import _signal as signal  # type: ignore[import-not-found]  # no stub: the builtin `signal` wraps
import os


def _interrupted_while_starting(signum: int, frame: object) -> None:
    os.write(2, b"imgaudit: interrupted\n")
    os._exit(130)


def main() -> None:
    # Only Python's own handler is replaced: a SIGINT the caller ignores (nohup, `trap '' INT`) stays ignored.
    starting = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if starting:
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from imgaudit.cli import run

    if starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    run()


if __name__ == "__main__":
    main()
