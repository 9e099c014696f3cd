"""What ``hirn-run`` shows while it works: a progress bar, notes, and a summary line.

Information lines and notes go to this module's logger; the command decides what reaches
the terminal (:mod:`hirn.core.logs`).
"""

from __future__ import annotations

import logging
import resource
import sys
from contextlib import contextmanager

logger = logging.getLogger(__name__)


def peak_memory() -> str:
    """Peak memory of this process: resident set (and the CUDA allocator's peak, if used)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    text = f"{_size(rss)} RSS"
    torch = sys.modules.get("torch")  # only when a backend already loaded it
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        text += f", {_size(torch.cuda.max_memory_allocated())} CUDA"
    return text


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


def summary(frames: int, seconds: float, output) -> str:
    """``N frames in S s (R frames/s), peak memory M -> OUTPUT``."""
    rate = frames / seconds if seconds > 0 else 0.0
    plural = "" if frames == 1 else "s"
    return (f"{frames} frame{plural} in {seconds:.1f} s ({rate:.2f} frames/s), peak memory "
            f"{peak_memory()} -> {output}")


@contextmanager
def progress_bar(total: int | None, label: str, quiet: bool):
    """A tqdm bar on stderr (frames/s, ETA) while the block runs; shown only on a terminal
    and without ``quiet``. Yields ``update(n)``, safe to call from another thread."""
    from tqdm import tqdm

    # no monitor thread: one thread fewer to start where memory or address space is short
    tqdm.monitor_interval = 0
    bar = tqdm(total=total, desc=label, unit="frame", file=sys.stderr, leave=False,
               disable=True if quiet else None, dynamic_ncols=True, smoothing=0.1)
    try:
        yield bar.update
    finally:
        bar.close()


def info(text: str, quiet: bool = False) -> None:
    """An information line (what is being done), unless quiet; hidden by ``--quiet``."""
    if not quiet:
        logger.info(text)


def note(text: str) -> None:
    """A note about the data (a conversion, something not carried over): a warning, so that
    ``--quiet`` still shows it."""
    logger.warning("note: %s", text)
