"""How ``hirn-run`` stops: Ctrl-C, SIGTERM and SIGHUP become one exception, handled where the
output being written can be removed, and each has its exit code.

Loads nothing but the standard library: :func:`hirn_run`, the console script, installs the
loading-time handler before the heavy modules load.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_HUNG_UP = 129  # 128 + SIGHUP: the terminal was closed
EXIT_TERMINATED = 143  # 128 + SIGTERM


def hirn_run() -> None:
    """The ``hirn-run`` console script: Ctrl-C while its modules load (a second or more on a
    cold disk) ends with one line instead of a traceback of the import machinery; the
    command hands Ctrl-C back to Python once it runs."""
    signal.signal(signal.SIGINT, _interrupted_while_loading)
    from hirn.runtime.cli import main

    main()


def _interrupted_while_loading(signum, frame):
    sys.stderr.write("\ninterrupted (Ctrl-C) while hirn-run was starting: nothing was "
                     "written\n")
    raise SystemExit(EXIT_INTERRUPTED)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, or torchrun stopping its other processes) or SIGHUP (the
    terminal closed), handled like Ctrl-C so that the output being written is removed."""

    def __init__(self, said: str, exit_code: int):
        super().__init__(said)
        self.said, self.exit_code = said, exit_code


_STOPS = {signal.SIGTERM: ("terminated", EXIT_TERMINATED),
          signal.SIGHUP: ("hung up (the terminal was closed)", EXIT_HUNG_UP)}


def said_and_code(stop: KeyboardInterrupt) -> tuple[str, int]:
    """What stopped the run, in words, and the exit code that says so."""
    if isinstance(stop, Terminated):
        return stop.said, stop.exit_code
    return "interrupted (Ctrl-C)", EXIT_INTERRUPTED


@contextmanager
def stops_as_interrupts():
    """While the block runs, Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt (the last two
    as :class:`Terminated`); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated(*_STOPS[signum])

    previous = {stop: signal.signal(stop, handler) for stop in _STOPS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for stop, action in previous.items():
            signal.signal(stop, action)
