"""hirn-train stopped by SIGINT / SIGTERM: a resume state at the iteration reached, the
command that resumes, exit 130 / 143, and a resumed run equal to an uninterrupted one.

The runs are tiny (a 2-frame synthetic clip, an 8-channel HiRN, random SpyNet) and need
nothing from ../shared. Signals are sent once the run's log shows an iteration, never after
a fixed sleep.
"""

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from support import REPO, default_sigint

from hirn.train.cli import interrupted_message
from hirn.train.config import parse_config
from hirn.train.loop import LOG_NAME, train
from hirn.train.state import (
    Interruption,
    StopNow,
    StopSignals,
    latest_state,
    load_state,
    state_path,
)

TOTAL_ITER = 3
RUN_TIMEOUT_S = 240      # one tiny training subprocess, start to exit
POLL_S = 0.05            # how often the test looks at the run's log


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/train/conftest.py


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """One clip of two random 256x256 frames (64x64 LR crops: HiRN's smallest input)."""
    root = tmp_path_factory.mktemp("clips")
    (root / "a").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        frame = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "a" / f"{i:08d}.png"), frame)
    return root


def _raw_config(clips, total_iter: int = TOTAL_ITER, save_freq: int = 100) -> dict:
    return {
        "name": "interrupt", "manual_seed": 5,
        "datasets": {"train": {"dataroot_gt": str(clips), "num_frame": 2, "gt_size": 256,
                               "batch_size_per_gpu": 1, "num_worker_per_gpu": 0}},
        "network_g": {"mid_channels": 8, "num_blocks": 1},
        "train": {"total_iter": total_iter, "fix_flow": 2, "ema_decay": 0.9,
                  "optim_g": {"lr": 1e-3},
                  "scheduler": {"periods": [total_iter], "restart_weights": [1],
                                "eta_min": 1e-5}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": save_freq},
    }


def _start(config, work_dir):
    """``hirn-train`` in a subprocess with the default Ctrl-C handling, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [shutil.which("hirn-train"), str(config), "--work-dir", str(work_dir), "--device", "cpu",
         "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint)


def _wait_for_iteration(proc, work_dir, it: int) -> None:
    """Return once the run's log holds the loss record of iteration ``it``."""
    log, deadline = work_dir / LOG_NAME, time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if log.exists():
            records = [json.loads(line) for line in log.read_text().splitlines()
                       if line.endswith("}")]  # the last line may be half written
            if any("loss" in r and r["iter"] >= it for r in records):
                return
        time.sleep(POLL_S)
    proc.kill()
    pytest.fail(f"no iteration {it} in {log} after {RUN_TIMEOUT_S} s")


def _interrupt(proc, work_dir, signum: int) -> tuple[int, str]:
    """Send ``signum`` once iteration 1 is logged; the exit status and stderr."""
    _wait_for_iteration(proc, work_dir, 1)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    return proc.returncode, err


def _saved_iteration(err: str, work_dir) -> int:
    """The iteration the message says was saved, checked against the file."""
    line = next(x for x in err.splitlines() if "saved its resume state" in x)
    it = int(line.split("stopped after iteration ")[1].split()[0])
    assert line.endswith(str(state_path(work_dir, it))), line
    assert latest_state(work_dir) == state_path(work_dir, it)
    return it


def _resume_command(err: str) -> list[str]:
    lines = [x for x in err.splitlines() if x.startswith("to resume: ")]
    assert len(lines) == 1, err
    return shlex.split(lines[0].removeprefix("to resume: "))


def test_sigint_saves_prints_the_resume_command_and_resumes_bit_for_bit(tmp_path, clips):
    raw = _raw_config(clips)
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    rc, err = _interrupt(_start(config, work), work, signal.SIGINT)
    assert rc == 130, err[-3000:]
    assert "Aborted" not in err and "Traceback" not in err, err[-3000:]
    stopped = _saved_iteration(err, work)
    assert 1 <= stopped < TOTAL_ITER, f"the run ended before the signal came: {err}"
    assert "SIGINT: stopping after iteration" in err  # the request is acknowledged at once
    state = load_state(state_path(work, stopped))
    assert state["iter"] == stopped and state["next_sample"] == stopped
    logged = [r["iter"] for r in map(json.loads, (work / LOG_NAME).read_text().splitlines())
              if r.get("event") == "interrupted"]
    assert logged == [stopped]

    command = _resume_command(err)
    assert command == ["hirn-train", str(config), "--work-dir", str(work), "--resume", "auto",
                       "--device", "cpu", "--no-progress"]
    resumed = subprocess.run([shutil.which(command[0]), *command[1:]], cwd=REPO,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                             text=True, timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {state_path(work, stopped)}" in resumed.stderr

    straight = train(parse_config(raw), tmp_path / "straight", device="cpu", progress=False)
    assert straight.iteration == TOTAL_ITER and straight.interrupted is None
    final = [torch.load(w / "models" / "net_g_latest.pth", weights_only=True)
             for w in (tmp_path / "straight", work)]
    for key in ("params", "params_ema"):
        assert final[0][key].keys() == final[1][key].keys()
        for name in final[0][key]:
            assert torch.equal(final[0][key][name], final[1][key][name]), (key, name)
    # The resumed log holds every iteration once, with the straight run's losses.
    losses = [{r["iter"]: r["loss"] for r in map(json.loads, (w / LOG_NAME).read_text()
                                                  .splitlines()) if "loss" in r}
              for w in (tmp_path / "straight", work)]
    assert losses[0] == losses[1]


def test_sigterm_saves_and_exits_143(tmp_path, clips):
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump(_raw_config(clips, total_iter=50)))
    work = tmp_path / "work"
    rc, err = _interrupt(_start(config, work), work, signal.SIGTERM)
    assert rc == 143, err[-3000:]
    assert "hirn-train: SIGTERM: stopped after iteration" in err
    stopped = _saved_iteration(err, work)
    assert load_state(state_path(work, stopped))["iter"] == stopped
    assert _resume_command(err) == ["hirn-train", str(config), "--work-dir", str(work),
                                    "--resume", "auto", "--device", "cpu", "--no-progress"]


def test_second_signal_while_saving_keeps_the_previous_state(tmp_path, clips, monkeypatch):
    """Ctrl-C twice during the save of iteration 2: the state of iteration 1 stays whole."""
    real_save = torch.save

    def save_interrupted(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iter") == 2 and "optimizer" in obj:
            f.write(b"half a state")
            signal.raise_signal(signal.SIGINT)  # a stop request: the save goes on
            signal.raise_signal(signal.SIGINT)  # a second one: abandon the save
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_interrupted)
    work = tmp_path / "work"
    cfg = parse_config(_raw_config(clips, total_iter=2, save_freq=1))
    result = train(cfg, work, device="cpu", progress=False)
    previous = state_path(work, 1)
    assert result.interrupted == Interruption(signal.SIGINT, 2, False, "saving", previous)
    assert sorted(p.name for p in (work / "training_states").iterdir()) == ["1.state"]
    assert load_state(previous)["iter"] == 1
    message = interrupted_message(result.interrupted, "hirn-train run.yml --resume auto")
    assert "interrupted again while saving iteration 2: that state was not written" in message
    assert f"the latest resume state, {previous}, is intact" in message
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_signal_during_a_periodic_save_stops_at_that_state(tmp_path, clips, monkeypatch):
    """The message says "stopping after iteration 1" while state 1 is being written: the
    run stops there, not one iteration later."""
    real_save = torch.save

    def save_signalled(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iter") == 1 and "optimizer" in obj:
            signal.raise_signal(signal.SIGINT)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_signalled)
    work = tmp_path / "work"
    cfg = parse_config(_raw_config(clips, total_iter=3, save_freq=1))
    result = train(cfg, work, device="cpu", progress=False)
    assert result.interrupted == Interruption(signal.SIGINT, 1, True, "training",
                                              state_path(work, 1))
    assert result.iteration == 1 and latest_state(work) == state_path(work, 1)


def test_second_signal_during_an_iteration_stops_at_once():
    with StopSignals(announce=False) as stop:
        stop.during, stop.iteration = "training", 7
        signal.raise_signal(signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # the first: a request only
        with pytest.raises(StopNow) as now:
            signal.raise_signal(signal.SIGINT)
    assert (now.value.signum, now.value.during, now.value.iteration) == (
        signal.SIGINT, "training", 7)
    with StopSignals(announce=False, repeat_stops=False) as stop:  # torchrun: repeats confirm
        stop.during = "training"
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        assert stop.signum == signal.SIGINT


def test_resume_auto_without_a_state_says_so_and_keeps_the_old_log(tmp_path, clips, caplog):
    work = tmp_path / "work"
    work.mkdir()
    old = '{"iter": 5, "loss": 0.5}\n'
    (work / LOG_NAME).write_text(old)
    cfg = parse_config(_raw_config(clips, total_iter=1))
    with caplog.at_level(logging.WARNING, logger="hirn"):
        result = train(cfg, work, device="cpu", resume="auto", progress=False)
    assert result.iteration == 1
    said = [r.getMessage() for r in caplog.records if "--resume auto" in r.getMessage()]
    assert said == [f"--resume auto: no resume state in {work / 'training_states'}; starting "
                    f"from iteration 0 (the earlier {LOG_NAME} is kept as train_log.1.jsonl)"]
    assert (work / "train_log.1.jsonl").read_text() == old
    assert [json.loads(x)["iter"] for x in (work / LOG_NAME).read_text().splitlines()
            if "loss" in x] == [1]


def _worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of torchrun's worker of ``rank`` (Linux /proc), or None while it starts."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        with contextlib.suppress(OSError):
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_torchrun_stops_every_process_at_the_iteration_one_was_signalled(tmp_path, clips):
    """SIGTERM to rank 1 only: rank 0 learns it through the per-iteration agreement, both
    stop after the same iteration with one resume state, and the replicas stay equal."""
    config = tmp_path / "run.yml"
    config.write_text(yaml.safe_dump(_raw_config(clips, total_iter=50)))
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "hirn.train.cli", str(config), "--work-dir", str(work), "--device", "cpu",
         "--no-progress"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for_iteration(proc, work, 1)
        rank1 = _worker_pid(proc.pid, 1)
        assert rank1 is not None
        os.kill(rank1, signal.SIGTERM)
        _, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped = _saved_iteration(err, work)  # said once, by rank 0, after the agreement
    assert err.count("saved its resume state") == 1
    assert "exitcode:143" in err.replace(" ", ""), err[-3000:]  # torchrun's report on rank 1
    assert _resume_command(err)[:6] == ["torchrun", "--nproc-per-node", "2", "-m",
                                        "hirn.train.cli", str(config)]
    records = [json.loads(line) for line in (work / LOG_NAME).read_text().splitlines()]
    assert [r["iter"] for r in records if r.get("event") == "interrupted"] == [stopped]
    end = records[-1]
    assert end["event"] == "end" and end["iter"] == stopped
    assert len(end["param_sha256"]) == 2 and len(set(end["param_sha256"])) == 1
    state = load_state(state_path(work, stopped))
    assert state["world_size"] == 2 and state["next_sample"] == 2 * stopped
