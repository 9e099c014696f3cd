"""Resume states: everything a run needs to continue exactly where it stopped, and
stopping on SIGINT / SIGTERM at an iteration boundary with such a state.

A state holds the weights, the EMA, optimiser, scheduler and grad-scaler
states, the RNG states of Python, NumPy and PyTorch, and the iteration (the
data position follows from it: see ``data.SampleStream``). Every file is
written to a temporary name and renamed (:mod:`hirn.core.files`), so a crash
never leaves half a file.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hirn.core.errors import CheckpointError
from hirn.core.files import atomic_file

STATE_DIR = "training_states"
STATE_SUFFIX = ".state"


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def state_path(work_dir: Path, iteration: int) -> Path:
    return Path(work_dir) / STATE_DIR / f"{iteration}{STATE_SUFFIX}"


def save_state(path: Path, state: dict) -> Path:
    """Write a resume state atomically (a crash never leaves half a state)."""
    with atomic_file(path) as f:
        torch.save(state, f)
    return Path(path)


def latest_state(work_dir: Path) -> Path | None:
    """The state with the highest iteration in ``work_dir``, or None."""
    folder = Path(work_dir) / STATE_DIR
    states = [p for p in folder.glob(f"*{STATE_SUFFIX}") if p.stem.isdigit()] \
        if folder.is_dir() else []
    return max(states, key=lambda p: int(p.stem), default=None)


def load_state(path: Path) -> dict:
    """Read a resume state written by :func:`save_state`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state not found: {path}")
    try:
        # RNG states hold NumPy arrays and tuples: not loadable with weights_only.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"cannot read resume state {path}: {exc}") from exc
    needed = {"iter", "params", "optimizer", "scheduler", "rng"}
    lacking = sorted(needed - set(state)) if isinstance(state, dict) else sorted(needed)
    if lacking:
        raise CheckpointError(f"{path} is not a hirn-train resume state (it lacks {lacking}); "
                              "to start from weights only, use path.pretrain_network_g")
    return state


# --- stopping on a signal --------------------------------------------------------------------

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Interruption:
    """How a signal stopped a run."""

    signum: int
    iteration: int        # saved: the iteration saved; else the one in progress
    saved: bool           # the resume state of ``iteration`` was written
    during: str           # where the signal that stopped the run came: setup, training, saving
    state: Path | None    # the state to resume from; None when there is none yet

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopNow(BaseException):
    """Raised by a signal that stops a run at once, without a new resume state.

    Not an ``Exception``: no ``except Exception`` on the way may swallow it.
    """

    def __init__(self, signum: int, during: str, iteration: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.during, self.iteration = signum, during, iteration


class StopSignals:
    """SIGINT and SIGTERM as a request to stop at the next iteration boundary.

    Before the first iteration a signal stops at once (there is nothing to save). During
    training the first signal sets :attr:`signum`; the loop finishes the iteration, saves a
    resume state and stops. A second signal (one process) stops at once: before the save
    nothing new is written, during it the atomic write leaves the previous state intact.
    Under torchrun a repeat only confirms the request: the terminal's Ctrl-C reaches every
    process and torchrun forwards it once more, so every process sees two; torchrun kills
    processes that have not stopped 30 s after it forwarded the signal. Handlers are
    installed in the main thread only and restored on exit.
    """

    def __init__(self, announce: bool = True, repeat_stops: bool = True):
        self.announce = announce          # say on stderr that the request was heard
        self.repeat_stops = repeat_stops  # a second signal stops at once
        self.signum = 0                   # the first signal received; 0: none
        self.during = "setup"             # setup, training, saving or done
        self.iteration = 0                # the iteration in progress
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Mark a save: a second signal here abandons it, the previous state stays intact."""
        before, self.during = self.during, "saving"
        try:
            yield
        finally:
            self.during = before

    def _handle(self, signum: int, frame) -> None:
        first = not self.signum
        if first:
            self.signum = signum
        if self.during == "setup" or (not first and self.repeat_stops
                                      and self.during in ("training", "saving")):
            raise StopNow(signum, self.during, self.iteration)
        if first and self.announce and self.during != "done":
            again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
            _say(f"\nhirn-train: {signal.Signals(signum).name}: stopping after iteration "
                 f"{self.iteration}, with a resume state"
                 + (f" ({again} again stops at once, without it)" if self.repeat_stops else ""))


def _say(line: str) -> None:
    """Write to stderr from a signal handler: an unbuffered write, as the handler may have
    interrupted a buffered write to the same stream (a progress bar's)."""
    try:
        os.write(sys.stderr.fileno(), (line + "\n").encode())
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured stderr)
        pass
