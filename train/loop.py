"""The training loop: the published recipe, one process or many, resumable.

Per iteration (1-based, as BasicSR counts): set SpyNet frozen or trainable,
step the scheduler, read this process's batch, Charbonnier loss, Adam step,
EMA update; then log, validate and save when their frequencies say so.

Work folder (written by rank 0 only, every file atomically)::

    config.yml                    the parsed configuration
    train_log.jsonl               one JSON record per log / validation / event
    models/net_g_<iter>.pth       published format: {"params", "params_ema"}
    models/net_g_latest.pth       the same, at the end of the run
    training_states/<iter>.state  resume state (see ``state.py``)
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hirn.core.errors import HirnError

from . import distributed as D
from .checkpoint import load_spynet, load_state, save_checkpoint
from .config import Config, to_dict
from .data import SampleStream, TrainDataset, ValClip, load_val_clips
from .ema import EMA
from .hirn import HiRN
from .schedulers import CosineAnnealingRestartLR
from .state import atomic_text, latest_state, rng_states, save_state, set_rng_states, state_path

LOG_NAME = "train_log.jsonl"


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


def to_uint8(frames: Tensor) -> np.ndarray:
    """``[T, 3, H, W]`` float -> ``[T, H, W, 3]`` uint8, clamped and rounded."""
    return (frames.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu(
    ).numpy()


def score(sr: np.ndarray, gt: np.ndarray, cfg: Config) -> dict[str, float]:
    """Each configured metric on ``[T, H, W, 3]`` uint8 clips: mean over frames."""
    from .metrics import psnr, rgb_to_y, ssim

    out = {}
    for name, m in cfg.val.metrics.items():
        fn = psnr if m.type == "calculate_psnr" else ssim
        values = []
        for a, b in zip(sr, gt):
            if m.test_y_channel:
                a, b = rgb_to_y(a), rgb_to_y(b)
            values.append(fn(a, b, crop_border=m.crop_border))
        out[name] = float(np.mean(values))
    return out


@torch.no_grad()
def validate(model: nn.Module, clips: list[ValClip], cfg: Config,
             device: torch.device) -> dict[str, float]:
    """Metrics of ``model`` (FP32, eval mode) per clip, then averaged over clips."""
    was_training = model.training
    model.eval()
    per_clip = []
    for clip in clips:
        sr = model(clip.lq.to(device))[0]
        per_clip.append(score(to_uint8(sr), clip.gt, cfg))
    model.train(was_training)
    return {k: float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}


def bicubic_scores(clips: list[ValClip], cfg: Config) -> dict[str, float]:
    """The same metrics for MATLAB bicubic x4 upscaling of the validation LR frames."""
    from .imresize import imresize

    per_clip = []
    for clip in clips:
        lq = to_uint8(clip.lq[0])
        per_clip.append(score(np.stack([imresize(f, 4) for f in lq]), clip.gt, cfg))
    return {k: float(np.mean([c[k] for c in per_clip])) for k in per_clip[0]}


@dataclass
class RunResult:
    iteration: int          # the last iteration done
    work_dir: Path
    checksums: list[str]    # parameter SHA-256 of each process at the end


class _Log:
    """JSON lines (rank 0) and TensorBoard scalars when TensorBoard is installed."""

    def __init__(self, work_dir: Path, enabled: bool, start_iter: int):
        self.path, self.enabled, self.tb = work_dir / LOG_NAME, enabled, None
        if not enabled:
            return
        if self.path.exists():  # drop what a resumed run will redo
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("iter", 0) <= start_iter]
            atomic_text(self.path, "".join(line + "\n" for line in kept))
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


def train(cfg: Config, work_dir: str | Path, *, device: str = "auto", resume: str | None = None,
          stop_after: int | None = None, progress: bool = True) -> RunResult:
    """Run (or continue) a training as configured; returns where it stopped.

    Args:
        work_dir: folder for logs, checkpoints and resume states.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: ``None``, ``"auto"`` or the path of a resume state.
        stop_after: stop (and save a resume state) after this iteration.
        progress: show a progress bar (rank 0).
    """
    from tqdm import tqdm

    d = D.from_env()
    dev = D.pick_device(device, d)
    D.init(d, dev, cfg.dist_params.backend)
    work_dir = Path(work_dir)
    tr, data_cfg = cfg.train, cfg.datasets.train
    resume_path = resolve_resume(work_dir, resume or cfg.path.resume_state)

    torch.manual_seed(cfg.manual_seed)  # same initial weights in every process
    np.random.seed(cfg.manual_seed + d.rank)
    model = build_model(cfg).to(dev)
    ema = EMA(model, tr.ema_decay) if tr.ema_decay > 0 else None
    optimizer = build_optimizer(model, cfg)
    s = tr.scheduler
    scheduler = CosineAnnealingRestartLR(optimizer, s.periods, s.restart_weights, s.eta_min)
    dtype = amp_dtype(tr.amp, dev)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    start = 0
    if resume_path is not None:
        from .state import load_state as load_resume_state
        state = load_resume_state(resume_path)
        model.load_state_dict(state["params"])
        if ema is not None and state.get("params_ema") is not None:
            ema.load_state_dict(state["params_ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if state.get("world_size") != d.world:
            warnings.warn(f"{resume_path} was saved by {state.get('world_size')} processes, "
                          f"this run has {d.world}: training continues, but the data order "
                          "differs from an uninterrupted run", stacklevel=2)
        changed = _changes(state.get("config") or {}, to_dict(cfg))
        if changed:
            warnings.warn(f"the configuration differs from the one {resume_path} was saved "
                          f"with: {'; '.join(changed)}", stacklevel=2)
        rngs = state["rng"]
        set_rng_states(rngs[d.rank] if d.rank < len(rngs) else rngs[0])
        start = state["iter"]
    log = _Log(work_dir, d.main, start)
    if d.main:
        atomic_text(work_dir / "config.yml", yaml.safe_dump(to_dict(cfg), sort_keys=False))

    dataset = TrainDataset(data_cfg, cfg.manual_seed)
    stream = SampleStream(start, tr.total_iter, data_cfg.batch_size_per_gpu, d.rank, d.world)
    loader = DataLoader(dataset, batch_size=data_cfg.batch_size_per_gpu, sampler=stream,
                        num_workers=data_cfg.num_worker_per_gpu, pin_memory=dev.type == "cuda",
                        persistent_workers=False)
    val_clips = load_val_clips(cfg.datasets.val) if cfg.datasets.val and d.main else []
    log.write({"event": "start", "iter": start, "world_size": d.world, "device": str(dev),
               "amp": str(dtype).removeprefix("torch.") if dtype else "off",
               "samples_per_iter": d.world * data_cfg.batch_size_per_gpu,
               "train_keys": len(dataset), "resumed_from": str(resume_path or "")})
    if val_clips and start == 0:
        record = {"iter": 0, **{f"val_{k}_bicubic": v
                                for k, v in bicubic_scores(val_clips, cfg).items()}}
        if cfg.val.val_at_start:
            record.update({f"val_{k}": v for k, v in validate(model, val_clips, cfg, dev).items()})
        log.write(record)

    frozen = None
    net = model
    last = min(tr.total_iter, stop_after) if stop_after else tr.total_iter
    bar = tqdm(total=tr.total_iter, initial=start, disable=not (progress and d.main),
               dynamic_ncols=True, desc="hirn-train")
    window_loss, window_n, t_window, t0 = torch.zeros(()), 0, time.time(), time.time()
    it = start
    batches = iter(loader)
    model.train()
    for it in range(start + 1, last + 1):
        want_frozen = it < tr.fix_flow
        if want_frozen != frozen:
            # Changing which parameters need grads means a new DDP reducer.
            set_flow_trainable(model, not want_frozen)
            frozen, net = want_frozen, D.wrap(model, d, dev)
        with warnings.catch_warnings():
            # BasicSR steps the scheduler before the optimiser, on purpose: iteration k
            # trains at lr(k), lr(0) being the initial lr.
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_sch"))
            scheduler.step()
        batch = next(batches)
        lq = batch["lq"].to(dev, non_blocking=True)
        gt = batch["gt"].to(dev, non_blocking=True)
        with torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext():
            out = net(lq)
        loss = tr.pixel_opt.loss_weight * charbonnier_loss(
            out.float(), gt, tr.pixel_opt.eps, tr.pixel_opt.reduction)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model)
        window_loss += loss.detach().cpu()
        window_n += 1
        bar.update(1)

        if it % cfg.logger.print_freq == 0 or it == last:
            mean_loss = D.mean(window_loss / window_n, d)
            lrs = scheduler.get_last_lr()
            now = time.time()
            record = {"iter": it, "loss": mean_loss, "lr": lrs[0], "lr_flow": lrs[1],
                      "flow_frozen": frozen, "iter_time": (now - t_window) / window_n,
                      "time": now - t0}
            log.write(record)
            bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lrs[0]:.3g}")
            window_loss, window_n, t_window = torch.zeros(()), 0, now
        if val_clips and it % cfg.val.val_freq == 0:
            t_val = time.time()
            record = {"iter": it, **{f"val_{k}": v
                                     for k, v in validate(model, val_clips, cfg, dev).items()}}
            if ema is not None:
                record.update({f"val_{k}_ema": v for k, v in
                               validate(ema.module, val_clips, cfg, dev).items()})
            log.write(record)
            t_window += time.time() - t_val  # iter_time counts training only
        if it % cfg.logger.save_checkpoint_freq == 0 or it == last:
            t_save = time.time()
            _save(work_dir, it, cfg, model, ema, optimizer, scheduler, scaler, d)
            t_window += time.time() - t_save
    bar.close()

    if d.main and it == tr.total_iter:
        save_checkpoint(work_dir / "models" / "net_g_latest.pth", model,
                        ema.module if ema is not None else None)
    sums = D.gather(D.checksum(model), d)
    log.write({"event": "end", "iter": it, "param_sha256": sums, "time": time.time() - t0})
    log.close()
    D.barrier(d)
    return RunResult(it, work_dir, sums)


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


def _save(work_dir: Path, it: int, cfg: Config, model: nn.Module, ema: EMA | None, optimizer,
          scheduler, scaler, d: D.Dist) -> None:
    """Published-format weights and a resume state (RNG states of every process)."""
    rngs = D.gather(rng_states(), d)
    if d.main:
        save_checkpoint(work_dir / "models" / f"net_g_{it}.pth", model,
                        ema.module if ema is not None else None)
        save_state(state_path(work_dir, it), {
            "iter": it, "params": model.state_dict(),
            "params_ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rngs,
            "world_size": d.world, "config": to_dict(cfg),
            # Where the data stream continues (see data.SampleStream).
            "next_sample": it * d.world * cfg.datasets.train.batch_size_per_gpu})
    D.barrier(d)
