"""The training loop: the published recipe, one process or many, resumable.

Per iteration (1-based, as BasicSR counts): set SpyNet frozen or trainable,
step the scheduler, read this process's batch, Charbonnier loss, Adam step,
EMA update; then log, validate and save when their frequencies say so.
SIGINT / SIGTERM stop the run at the end of the iteration in progress, with a
resume state (``state.StopSignals``); every process stops at the same iteration.

Work folder (written by rank 0 only, every file atomically)::

    config.yml                    the parsed configuration
    train_log.jsonl               one JSON record per log / validation / event
    models/net_g_<iter>.pth       published format: {"params", "params_ema"}, with the
                                  model options and provenance beside ("model", "provenance")
    models/net_g_latest.pth       the same, at the end of the run
    training_states/<iter>.state  resume state (see ``state.py``)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import signal
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hirn.core.errors import HirnError
from hirn.core.files import atomic_write_text
from hirn.model.checkpoint import load_spynet, load_state, save_checkpoint
from hirn.model.hirn import HiRN

from . import distributed as D
from .config import Config, to_dict
from .data import SampleStream, TrainDataset, load_val_clips
from .ema import EMA
from .schedulers import CosineAnnealingRestartLR
from .state import (
    STATE_DIR,
    STOP_SIGNALS,
    Interruption,
    StopNow,
    StopSignals,
    latest_state,
    rng_states,
    save_state,
    set_rng_states,
    state_path,
)
from .validation import bicubic_scores, validate

LOG_NAME = "train_log.jsonl"
logger = logging.getLogger(__name__)


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = 1e-12,
                     reduction: str = "mean") -> Tensor:
    """``mean(sqrt((pred - target)^2 + eps))`` (or the sum), any equal shapes."""
    loss = torch.sqrt((pred - target) ** 2 + eps)
    return loss.mean() if reduction == "mean" else loss.sum()


def is_flow_param(name: str) -> bool:
    return name.startswith("spynet.")


def set_flow_trainable(model: nn.Module, trainable: bool) -> None:
    for name, p in model.named_parameters():
        if is_flow_param(name):
            p.requires_grad_(trainable)


def build_model(cfg: Config) -> HiRN:
    """HiRN as configured: SpyNet weights, then an optional pretrained checkpoint."""
    net = cfg.network_g
    model = HiRN(mid_channels=net.mid_channels, num_blocks=net.num_blocks)
    if net.spynet_path:
        load_spynet(model, net.spynet_path)
    if cfg.path.pretrain_network_g:
        load_state(model, cfg.path.pretrain_network_g, param_key=cfg.path.param_key_g,
                   strict=cfg.path.strict_load_g)
    return model


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Adam:
    """Adam with two groups: the rest at lr, SpyNet at ``flow_lr_mul`` x lr."""
    opt, mul = cfg.train.optim_g, cfg.train.flow_lr_mul
    rest = [p for n, p in model.named_parameters() if not is_flow_param(n)]
    flow = [p for n, p in model.named_parameters() if is_flow_param(n)]
    groups = [{"params": rest, "lr": opt.lr}, {"params": flow, "lr": opt.lr * mul}]
    return torch.optim.Adam(groups, lr=opt.lr, betas=opt.betas, weight_decay=opt.weight_decay)


def amp_dtype(option: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None on CPU or when off; bf16 where the GPU has it, else fp16."""
    if device.type != "cuda" or option == "off":
        return None
    if option == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[option]


@dataclass
class RunResult:
    iteration: int          # the last iteration done (stopped at once: the latest state's)
    work_dir: Path
    checksums: list[str]    # parameter SHA-256 of each process at the end (stopped at once:
                            # none)
    interrupted: Interruption | None = None  # how a signal stopped the run


class _Log:
    """JSON lines (rank 0) and TensorBoard scalars when TensorBoard is installed."""

    def __init__(self, work_dir: Path, enabled: bool, start_iter: int):
        self.path, self.enabled, self.tb = work_dir / LOG_NAME, enabled, None
        if not enabled:
            return
        if self.path.exists():  # drop what a resumed run will redo
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iter", 0) <= start_iter]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(work_dir / "tb"))
        except ImportError:  # TensorBoard is optional
            self.tb = None

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and "iter" in record:
            for k, v in record.items():
                if k != "iter" and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, record["iter"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def resolve_resume(work_dir: Path, resume: str | None) -> Path | None:
    """``None`` (fresh run), ``auto`` (latest state in work_dir, if any) or a state path."""
    latest = latest_state(work_dir)
    if resume is None:
        if latest is not None or (work_dir / LOG_NAME).exists():
            raise HirnError(f"{work_dir} already holds a run (latest state: {latest}); pass "
                            "--resume auto to continue it, or choose another --work-dir")
        return None
    if resume == "auto":
        return latest
    return Path(resume)


def _start_over(work_dir: Path) -> None:
    """``--resume auto`` without a state: say so, and keep an earlier log rather than cut it
    (it may be all that is left of a run whose states were removed)."""
    log, kept = work_dir / LOG_NAME, ""
    if log.exists():
        n = 1
        while (old := log.with_name(f"{log.stem}.{n}{log.suffix}")).exists():
            n += 1
        log.rename(old)
        kept = f" (the earlier {LOG_NAME} is kept as {old.name})"
    logger.warning("--resume auto: no resume state in %s; starting from iteration 0%s",
                   work_dir / STATE_DIR, kept)


def train(cfg: Config, work_dir: str | Path, *, device: str = "auto", resume: str | None = None,
          stop_after: int | None = None, progress: bool = True) -> RunResult:
    """Run (or continue) a training as configured; returns where it stopped.

    Args:
        work_dir: folder for logs, checkpoints and resume states.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: ``None``, ``"auto"`` or the path of a resume state.
        stop_after: stop (and save a resume state) after this iteration.
        progress: show a progress bar (rank 0).

    SIGINT and SIGTERM (in the main thread) stop the run with a resume state at the end of
    the iteration in progress, or at once before the first iteration or on a second signal;
    ``RunResult.interrupted`` says which.
    """
    d = D.from_env()
    work_dir = Path(work_dir)
    with StopSignals(announce=d.main, repeat_stops=d.world_size == 1) as stop:
        try:
            return _train(cfg, work_dir, d, stop, device, resume, stop_after, progress)
        except StopNow as now:
            state = latest_state(work_dir)
            return RunResult(int(state.stem) if state else 0, work_dir, [],
                             Interruption(now.signum, now.iteration, False, now.during, state))


def _train(cfg: Config, work_dir: Path, d: D.Dist, stop: StopSignals, device: str,
           resume: str | None, stop_after: int | None, progress: bool) -> RunResult:
    dev = D.pick_device(device, d)
    D.init(d, dev, cfg.dist_params.backend)
    asked = resume or cfg.path.resume_state
    resume_path = resolve_resume(work_dir, asked)
    if d.main and resume_path is None and asked == "auto":
        _start_over(work_dir)
    parts = build_parts(cfg, d.rank, dev)
    start = restore(parts, resume_path, cfg, d) if resume_path is not None else 0
    if d.main and resume_path is not None:
        logger.info("resuming from %s (iteration %d)", resume_path, start)
    run = _Run(cfg, work_dir, d, dev, parts, start, stop)
    run.begin(resume_path)
    total = cfg.train.total_iter
    last = run.loop(min(total, stop_after) if stop_after else total, progress)
    return run.finish(last)


@dataclass
class Parts:
    """What a run trains and steps: the model, its EMA and the optimisation state."""

    model: HiRN
    ema: EMA | None
    optimizer: torch.optim.Adam
    scheduler: CosineAnnealingRestartLR
    dtype: torch.dtype | None              # autocast dtype; None: FP32
    scaler: torch.amp.GradScaler | None    # FP16 autocast only

    @property
    def ema_module(self) -> nn.Module | None:
        return self.ema.module if self.ema is not None else None


def build_parts(cfg: Config, rank: int, device: torch.device) -> Parts:
    """Seed, then build the model, EMA, optimiser, scheduler and grad scaler as configured."""
    tr = cfg.train
    torch.manual_seed(cfg.manual_seed)  # same initial weights in every process
    np.random.seed(cfg.manual_seed + rank)
    model = build_model(cfg).to(device)
    ema = EMA(model, tr.ema_decay) if tr.ema_decay > 0 else None
    optimizer = build_optimizer(model, cfg)
    s = tr.scheduler
    scheduler = CosineAnnealingRestartLR(optimizer, s.periods, s.restart_weights, s.eta_min)
    dtype = amp_dtype(tr.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return Parts(model, ema, optimizer, scheduler, dtype, scaler)


def restore(parts: Parts, path: Path, cfg: Config, d: D.Dist) -> int:
    """Load a resume state into ``parts`` and this process's RNGs; return its iteration.

    A state saved by another number of processes, or with another configuration, still
    loads; the difference is logged as a warning.
    """
    from .state import load_state as load_resume_state

    state = load_resume_state(path)
    parts.model.load_state_dict(state["params"])
    if parts.ema is not None and state.get("params_ema") is not None:
        parts.ema.load_state_dict(state["params_ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    if parts.scaler is not None and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    if state.get("world_size") != d.world_size:
        logger.warning("%s was saved by %s processes, this run has %d: training continues, "
                       "but the data order differs from an uninterrupted run", path,
                       state.get("world_size"), d.world_size)
    changed = _changes(state.get("config") or {}, to_dict(cfg))
    if changed:
        logger.warning("the configuration differs from the one %s was saved with: %s", path,
                       "; ".join(changed))
    rngs = state["rng"]
    set_rng_states(rngs[d.rank] if d.rank < len(rngs) else rngs[0])
    return state["iter"]


def checkpoint_entries(cfg: Config, iteration: int) -> dict:
    """``model`` and ``provenance`` entries of a checkpoint written at ``iteration``."""
    train_data, val_data = cfg.datasets.train, cfg.datasets.val
    roots = {"train_gt": train_data.dataroot_gt, "train_lq": train_data.dataroot_lq,
             "val_gt": val_data.dataroot_gt if val_data else None,
             "val_lq": val_data.dataroot_lq if val_data else None}
    return {
        "model": {"mid_channels": cfg.network_g.mid_channels,
                  "num_blocks": cfg.network_g.num_blocks},
        "provenance": {"config": cfg.name, "iteration": iteration,
                       "data_roots": {k: None if v is None else str(v) for k, v in roots.items()},
                       "hirn_version": _hirn_version(),
                       "date": datetime.now(timezone.utc).isoformat(timespec="seconds")},
    }


def _hirn_version() -> str:
    try:
        return metadata.version("hirn")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


class _LogInterval:
    """Loss and time of the iterations since the last log record."""

    def __init__(self):
        self.start = time.time()
        self._reset(self.start)

    def _reset(self, now: float) -> None:
        self.loss, self.count, self.since = torch.zeros(()), 0, now

    def add(self, loss: Tensor) -> None:
        self.loss += loss.detach().cpu()
        self.count += 1

    @contextlib.contextmanager
    def paused(self):
        """Leave the block's time out: ``iter_time`` counts training only."""
        started = time.time()
        yield
        self.since += time.time() - started

    def record(self, it: int, d: D.Dist, scheduler, frozen: bool) -> dict:
        """The log record of the window ending at iteration ``it``; starts a new window."""
        mean_loss = D.mean(self.loss / self.count, d)
        lrs = scheduler.get_last_lr()
        now = time.time()
        record = {"iter": it, "loss": mean_loss, "lr": lrs[0], "lr_flow": lrs[1],
                  "flow_frozen": frozen, "iter_time": (now - self.since) / self.count,
                  "time": now - self.start}
        self._reset(now)
        return record


class _Run:
    """One process's run: its data, logs and the iterations from ``start``."""

    def __init__(self, cfg: Config, work_dir: Path, d: D.Dist, device: torch.device,
                 parts: Parts, start: int, stop: StopSignals):
        self.cfg, self.work_dir, self.d, self.device = cfg, work_dir, d, device
        self.parts, self.start, self.stop = parts, start, stop
        self.stopped = 0  # the signal that stopped the loop (agreed by every process)
        self.log = _Log(work_dir, d.main, start)
        if d.main:
            atomic_write_text(work_dir / "config.yml",
                              yaml.safe_dump(to_dict(cfg), sort_keys=False))
        data_cfg = cfg.datasets.train
        self.dataset = TrainDataset(data_cfg, cfg.manual_seed)
        stream = SampleStream(start, cfg.train.total_iter, data_cfg.batch_size_per_gpu, d.rank,
                              d.world_size)
        self.loader = DataLoader(self.dataset, batch_size=data_cfg.batch_size_per_gpu,
                                 sampler=stream, num_workers=data_cfg.num_worker_per_gpu,
                                 worker_init_fn=_leave_signals_to_main,
                                 pin_memory=device.type == "cuda", persistent_workers=False)
        self.val_clips = (load_val_clips(cfg.datasets.val) if cfg.datasets.val and d.main
                          else [])
        self.frozen: bool | None = None  # SpyNet frozen in the current phase
        self.net: nn.Module = parts.model  # the model, DDP-wrapped under torchrun
        self.window = _LogInterval()

    def begin(self, resume_path: Path | None) -> None:
        """Log the start; at iteration 0, also the bicubic (and maybe initial) scores."""
        d, cfg, dtype = self.d, self.cfg, self.parts.dtype
        self.log.write({"event": "start", "iter": self.start, "world_size": d.world_size,
                        "device": str(self.device),
                        "amp": str(dtype).removeprefix("torch.") if dtype else "off",
                        "samples_per_iter": d.world_size * cfg.datasets.train.batch_size_per_gpu,
                        "train_keys": len(self.dataset), "resumed_from": str(resume_path or "")})
        if self.val_clips and self.start == 0:
            record = {"iter": 0, **{f"val_{k}_bicubic": v
                                    for k, v in bicubic_scores(self.val_clips, cfg).items()}}
            if cfg.val.val_at_start:
                record.update({f"val_{k}": v for k, v in self._scores(self.parts.model).items()})
            self.log.write(record)

    def loop(self, last: int, progress: bool) -> int:
        """Iterations ``start + 1 .. last``: step, then log, validate and save when due.
        Returns the last iteration done."""
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.train.total_iter, initial=self.start,
                   disable=not (progress and self.d.main), dynamic_ncols=True, desc="hirn-train")
        self.window = _LogInterval()
        it = self.start
        batches = iter(self.loader)
        self.parts.model.train()
        self.stop.during = "training"
        for it in range(self.start + 1, last + 1):
            self.stop.iteration = it
            self._set_flow_phase(it)
            self.window.add(self._step(batches))
            bar.update(1)
            # Here, between iterations, the state is whole; all processes agree to stop.
            self.stopped = D.agree_stop(self.stop.signum, self.d, self.device)
            end = it == last or bool(self.stopped)
            if it % cfg.logger.print_freq == 0 or end:
                self._log_window(it, bar)
            # A run asked to stop does not wait for a validation (which moves no weights
            # and draws no random numbers: the resumed run is the same without it).
            if self.val_clips and it % cfg.val.val_freq == 0 and not self.stopped:
                with self.window.paused():
                    self._validate(it)
            if it % cfg.logger.save_checkpoint_freq == 0 or end:
                with self.window.paused():
                    self._save(it)
                if not self.stopped:  # a signal during this save: stop at the state saved
                    self.stopped = D.agree_stop(self.stop.signum, self.d, self.device)
                    if self.stopped and self.window.count:
                        self._log_window(it, bar)
            if self.stopped:
                break
        self.stop.during = "done"
        bar.close()
        return it

    def _log_window(self, it: int, bar) -> None:
        record = self.window.record(it, self.d, self.parts.scheduler, self.frozen)
        self.log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")

    def _set_flow_phase(self, it: int) -> None:
        """Freeze SpyNet before ``fix_flow``, train it from there."""
        frozen = it < self.cfg.train.fix_flow
        if frozen != self.frozen:
            # Changing which parameters need grads means a new DDP reducer.
            set_flow_trainable(self.parts.model, not frozen)
            self.frozen, self.net = frozen, D.wrap(self.parts.model, self.d, self.device)

    def _step(self, batches) -> Tensor:
        """One iteration: scheduler, next batch, loss, optimiser and EMA; returns the loss."""
        parts, tr, dev = self.parts, self.cfg.train, self.device
        with warnings.catch_warnings():
            # BasicSR steps the scheduler before the optimiser, on purpose: iteration k
            # trains at lr(k), lr(0) being the initial lr.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_sch"))
            parts.scheduler.step()
        batch = next(batches)
        lq = batch["lq"].to(dev, non_blocking=True)
        gt = batch["gt"].to(dev, non_blocking=True)
        autocast = (torch.autocast(dev.type, dtype=parts.dtype) if parts.dtype
                    else contextlib.nullcontext())
        with autocast:
            out = self.net(lq)
        loss = tr.pixel_opt.loss_weight * charbonnier_loss(
            out.float(), gt, tr.pixel_opt.eps, tr.pixel_opt.reduction)
        parts.optimizer.zero_grad(set_to_none=True)
        if parts.scaler is not None:
            parts.scaler.scale(loss).backward()
            parts.scaler.step(parts.optimizer)
            parts.scaler.update()
        else:
            loss.backward()
            parts.optimizer.step()
        if parts.ema is not None:
            parts.ema.update(parts.model)
        return loss

    def _scores(self, model: nn.Module) -> dict[str, float]:
        return validate(model, self.val_clips, self.cfg, self.device)

    def _validate(self, it: int) -> None:
        record = {"iter": it, **{f"val_{k}": v for k, v in self._scores(self.parts.model).items()}}
        if self.parts.ema is not None:
            record.update({f"val_{k}_ema": v
                           for k, v in self._scores(self.parts.ema.module).items()})
        self.log.write(record)

    def _save(self, it: int) -> None:
        """Published-format weights and a resume state (RNG states of every process)."""
        d, cfg, parts = self.d, self.cfg, self.parts
        with self.stop.saving():
            rngs = D.gather(rng_states(), d)
            if d.main:
                self._save_weights(self.work_dir / "models" / f"net_g_{it}.pth", it)
                save_state(state_path(self.work_dir, it), {
                    "iter": it, "params": parts.model.state_dict(),
                    "params_ema": parts.ema.state_dict() if parts.ema is not None else None,
                    "optimizer": parts.optimizer.state_dict(),
                    "scheduler": parts.scheduler.state_dict(),
                    "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
                    "rng": rngs, "world_size": d.world_size, "config": to_dict(cfg),
                    # Where the data stream continues (see data.SampleStream).
                    "next_sample": it * d.world_size * cfg.datasets.train.batch_size_per_gpu})
            D.barrier(d)

    def _save_weights(self, path: Path, it: int) -> None:
        save_checkpoint(path, self.parts.model, self.parts.ema_module,
                        **checkpoint_entries(self.cfg, it))

    def finish(self, it: int) -> RunResult:
        """The final checkpoint (when the run is complete), the end record and checksums."""
        d, interrupted = self.d, None
        if self.stopped:
            interrupted = Interruption(self.stopped, it, True, "training",
                                       state_path(self.work_dir, it))
            self.log.write({"event": "interrupted", "iter": it, "signal": interrupted.name})
        if d.main and it == self.cfg.train.total_iter:
            self._save_weights(self.work_dir / "models" / "net_g_latest.pth", it)
        sums = D.gather(D.checksum(self.parts.model), d)
        self.log.write({"event": "end", "iter": it, "param_sha256": sums,
                        "time": time.time() - self.window.start})
        self.log.close()
        D.barrier(d)
        return RunResult(it, self.work_dir, sums, interrupted)


def _leave_signals_to_main(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT / SIGTERM: the main process stops at an iteration
    boundary, and a terminal's Ctrl-C reaches every process of the group (a worker that
    died of it would fail the batch the main process is waiting for)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every option that differs between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changes(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
