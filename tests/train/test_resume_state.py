"""Resume states load with ``weights_only=True``: a planted state that would run code when
unpickled is refused before anything in it runs, and the RNG states are plain values."""

import os
import pickle
import random
import shlex

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from hirn.train.cli import main
from hirn.train.state import load_state, rng_states, set_rng_states, state_path


class Planted:
    """Unpickled, it would run a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _config(tmp_path):
    (tmp_path / "clips").mkdir()
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump({
        "name": "planted", "datasets": {"train": {"dataroot_gt": str(tmp_path / "clips")}},
        "network_g": {"mid_channels": 8, "num_blocks": 1}, "train": {"total_iter": 1}}))
    return config


@pytest.mark.parametrize("resume, writer, said", [
    ("path", "torch.save", "loading it would call posix.system, which can run any code (a "
     "state hirn-train writes holds only tensors and plain values)"),
    ("auto", "torch.save", "loading it would call posix.system"),
    ("path", "pickle", "it is not a file torch.save wrote, which alone is loaded"),
])
def test_a_state_that_would_run_code_is_refused_unrun(tmp_path, resume, writer, said):
    marker = tmp_path / "ran"
    work = tmp_path / "work"
    planted = state_path(work, 1)
    planted.parent.mkdir(parents=True)
    state = {"iter": 1, "params": {}, "optimizer": {}, "scheduler": {},
             "rng": [Planted(marker)]}
    if writer == "pickle":
        planted.write_bytes(pickle.dumps(state))
    else:
        torch.save(state, planted)
    result = CliRunner().invoke(main, [str(_config(tmp_path)), "--work-dir", str(work),
                                       "--device", "cpu", "--no-progress",
                                       "--resume", str(planted) if resume == "path" else "auto"])
    assert not marker.exists()
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and error[0].startswith(
        f"Error: refused resume state {planted}: {said}"), result.output
    assert error[0].endswith("; nothing in it was run: resume from a state hirn-train wrote, "
                             "or start over without --resume")
    assert "Traceback" not in result.output


def _draws() -> tuple:
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_rng_states_are_plain_and_older_states_still_load(tmp_path):
    """New states load with a plain ``weights_only=True``; states written when NumPy's keys
    were an array load through :func:`load_state` (NumPy's array rebuild allowed, only)."""
    saved = rng_states()
    expected = _draws()
    torch.save(saved, tmp_path / "rng.pt")
    set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == expected

    older = {"python": random.getstate(), "numpy": np.random.get_state(),  # keys: an array
             "torch": torch.get_rng_state()}
    expected = _draws()
    torch.save({"iter": 1, "params": {}, "optimizer": {}, "scheduler": {}, "rng": [older]},
               tmp_path / "1.state")
    set_rng_states(load_state(tmp_path / "1.state")["rng"][0])
    assert _draws() == expected
