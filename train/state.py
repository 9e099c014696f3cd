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
import pickle
import random
import re
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hirn.core.errors import CheckpointError
from hirn.core.files import atomic_file

STATE_DIR = "training_states"
STATE_SUFFIX = ".state"

# States written before the RNG states were made plain keep NumPy's keys as an array, rebuilt
# by this function (NumPy 2 names its module numpy._core, NumPy 1 numpy.core).
_OLDER_NUMPY_RNG_NAMES = ("numpy._core.multiarray._reconstruct",
                          "numpy.core.multiarray._reconstruct")


def rng_states() -> dict:
    """The RNG states of Python, NumPy and PyTorch (and CUDA), as tuples, lists, numbers and
    tensors only: what ``torch.load(..., weights_only=True)`` reads without an allow-list."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": (kind, keys.tolist(), position, has_gauss, gauss),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    # The keys are a list (an array in states written before they were made plain).
    kind, keys, *rest = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
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
    """Read a resume state written by :func:`save_state`, with ``weights_only=True``: a file
    that would call or build anything else (which can run code) is refused, never run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"resume state not found: {path}")
    try:
        state = _load_plain(path)
    except pickle.UnpicklingError as exc:
        name = _refused_global(exc)
        what = (f"loading it would call {name}, which can run any code (a state hirn-train "
                "writes holds only tensors and plain values)" if name else
                f"it is not a file torch.save wrote, which alone is loaded ({_reason(exc)})")
        raise CheckpointError(f"refused resume state {path}: {what}; nothing in it was run: "
                              "resume from a state hirn-train wrote, or start over without "
                              "--resume") from exc
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot read resume state {path}: {_reason(exc)}") from exc
    needed = {"iter", "params", "optimizer", "scheduler", "rng"}
    lacking = sorted(needed - set(state)) if isinstance(state, dict) else sorted(needed)
    if lacking:
        raise CheckpointError(f"{path} is not a hirn-train resume state (it lacks {lacking}); "
                              "to start from weights only, use path.pretrain_network_g")
    return state


def _load_plain(path: Path) -> dict:
    """``torch.load(weights_only=True)``; a state written before the RNG states were plain
    also needs NumPy's array rebuild, and only that."""
    try:
        with warnings.catch_warnings():  # torch's remark on a pickle it did not write
            warnings.filterwarnings("ignore", "Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _refused_global(exc) not in _OLDER_NUMPY_RNG_NAMES:
            raise
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5
        raise CheckpointError(
            f"{path} was written by an older hirn-train (NumPy arrays in its RNG states), which "
            f"torch {torch.__version__} cannot load safely: resume with torch 2.5 or later, or "
            "start over without --resume")
    rebuild = np.empty(0).__reduce__()[0]  # the function NumPy pickles arrays with
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)),
               *((rebuild, name) for name in _OLDER_NUMPY_RNG_NAMES)]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _refused_global(exc: pickle.UnpicklingError) -> str | None:
    """The function or class a weights_only load refused to import, from torch's message."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found[1] if found else None


# Lines torch wraps around what failed in a weights_only load.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _reason(exc: BaseException) -> str:
    """One line of a (often long, multi-line) error from torch: the one that says what failed."""
    lines = [line.removeprefix("WeightsUnpickler error:").strip()
             for line in str(exc).splitlines()]
    said = [line for line in lines if line and not line.startswith(_TORCH_BOILERPLATE)]
    return said[0] if said else type(exc).__name__


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
