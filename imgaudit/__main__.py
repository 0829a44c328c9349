"""`python -m imgaudit` and the `imgaudit` command.

Importing the CLI takes ~0.1 s (click, the model, the sources); a Ctrl-C in that time raised KeyboardInterrupt
inside some module's import and Python printed its traceback (11 of 100 runs interrupted in their first 0.25 s).
Until the CLI is imported, SIGINT ends the process with the line and the exit code the CLI gives: nothing has
been read or written yet, so there is nothing to clean up.
"""

import os
import signal


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
