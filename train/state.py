"""Resume states: everything a run needs to continue exactly where it stopped.

A state holds the weights, the EMA, optimiser, scheduler and grad-scaler
states, the RNG states of Python, NumPy and PyTorch, and the iteration (the
data position follows from it: see ``data.SampleStream``). Every file is
written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hirn.core.errors import CheckpointError

STATE_DIR = "training_states"
STATE_SUFFIX = ".state"


def atomic_write(path: Path, write: Callable[[object], None], mode: str = "wb") -> Path:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text), mode="w")


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
    return atomic_write(path, lambda f: torch.save(state, f))


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
