"""Resume states: everything a run needs to continue exactly where it stopped.

A state holds the weights, the EMA, optimiser, scheduler and grad-scaler
states, the RNG states of Python, NumPy and PyTorch, and the iteration (the
data position follows from it: see ``data.SampleStream``). Every file is
written to a temporary name and renamed (:mod:`hirn.core.files`), so a crash
never leaves half a file.
"""

from __future__ import annotations

import random
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
