"""What the commands show on the terminal: one logging setup and one pair of options.

Library modules report through module loggers (``logging.getLogger(__name__)``) and print
nothing; each command (``hirn-train``, ``hirn-export``, ``hirn-run``, ``hirn-eval``) takes
``--quiet`` and ``--log-level`` from :func:`logging_options`, which routes the ``hirn``
loggers to stderr:

- ``INFO``: what a command is doing (the input, the backend, each graph exported);
- ``WARNING``: notes about the data and anything that may not be what was meant.

``--quiet`` is ``--log-level warning`` and also turns progress bars off. A command's result
(a summary line, a table) is its output, printed by the command itself.
Plain Python and click only: ``--help`` works where torch is not installed.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import click

ROOT = "hirn"  # every hirn module's logger is below it
LEVELS = ("debug", "info", "warning", "error")


class _TerminalHandler(logging.Handler):
    """Messages as they are, on whatever ``sys.stderr`` is when they come (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # a handler must never raise into the code that logged
            self.handleError(record)


def setup_logging(level: str | int = logging.INFO) -> None:
    """Route the ``hirn`` loggers to stderr at ``level`` (a name of :data:`LEVELS` or a
    number); a second call replaces the first (one handler, whatever runs in a process)."""
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if isinstance(h, _TerminalHandler)]:
        logger.removeHandler(handler)
    handler = _TerminalHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)


def level_for(quiet: bool, log_level: str | None) -> str:
    """The level a command logs at: ``--log-level`` when given, else warning when quiet."""
    return log_level or ("warning" if quiet else "info")


def logging_options(command: Callable) -> Callable:
    """Give a click command ``-q/--quiet`` and ``--log-level``, and set logging up from them
    before it runs. The command receives ``quiet`` (to turn its progress bars off)."""
    @functools.wraps(command)
    def run(*args, log_level: str | None, **kwargs):
        setup_logging(level_for(kwargs["quiet"], log_level))
        return command(*args, **kwargs)

    run = click.option("--log-level", type=click.Choice(LEVELS, case_sensitive=False),
                       help="how much to report on stderr: info shows what the command is "
                            "doing, warning only notes and warnings [default: info, or warning "
                            "with --quiet]")(run)
    return click.option("-q", "--quiet", is_flag=True,
                        help="no progress bar and no information lines (notes, warnings and "
                             "the command's result are still printed)")(run)
