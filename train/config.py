"""The ``hirn-train`` configuration: BasicSR-style YAML parsed into frozen dataclasses.

Option names follow the published recipe (BasicSR's ``train_BasicVSRPP_REDS.yml``
layout). Parsing reports every problem at once: unknown or mistyped keys (with a
"did you mean" suggestion and the section they sit in), wrong types, and values
out of range. BasicSR options that hirn-train has no use for are either accepted
with a warning (harmless ones, e.g. ``io_backend``) or accepted only with the
value hirn-train implements (e.g. ``random_reverse: false``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from hirn.core.constants import MIN_SIZE as MIN_LR_SIZE
from hirn.core.constants import SCALE
from hirn.core.errors import ConfigError

REDS4_CLIPS = ("000", "011", "015", "020")


# BasicSR options accepted for compatibility: harmless ones are ignored (why), the others
# must keep the one value hirn-train implements.
_IGNORED_KEYS = {
    "type": "the layout is chosen by dataroot_lq",
    "io_backend": "frames are read from PNG folders", "prefetch_mode": "not needed",
    "cache_data": "the validation clip is always kept in memory",
    "dataset_enlarge_ratio": "the sampler runs by iteration, not by epoch",
    "num_gpu": "the process count comes from torchrun", "model_type": "always HiRN",
    "wandb": "not supported", "find_unused_parameters": "hirn-train wraps the model itself",
    "cpu_cache_length": "not used in training", "port": "torchrun sets MASTER_PORT",
    "use_tb_logger": "TensorBoard is used whenever it is installed",
}


@dataclass(frozen=True)
class TrainData:
    """``datasets.train``: random crops of consecutive frames."""
    dataroot_gt: str                    # clip folders of frames (or one folder of frames)
    name: str | None = None             # a label
    dataroot_lq: str | None = None      # same layout, x4 smaller; None: MATLAB imresize(GT, 1/4)
    meta_info_file: str | None = None   # lines "<clip> <frames> ..."; None: list the folders
    val_partition: str | None = None    # "REDS4": hold out clips 000, 011, 015, 020
    clips: tuple[str, ...] | None = None  # use only these clips
    num_frame: int = 32                 # consecutive frames per sample
    gt_size: int = 256                  # square GT crop; the LR crop is gt_size / 4
    use_hflip: bool = True
    use_rot: bool = True                # vertical flip and transpose: all 90-degree rotations
    batch_size_per_gpu: int = 2         # per process
    num_worker_per_gpu: int = 2         # DataLoader workers per process
    _FIXED: ClassVar[dict] = {"interval_list": [1], "random_reverse": False,
                              "use_shuffle": True, "test_mode": False}


@dataclass(frozen=True)
class ValData:
    """``datasets.val``: whole clips (or a fixed crop of them) upscaled in one pass."""
    dataroot_gt: str
    name: str | None = None
    dataroot_lq: str | None = None
    clips: tuple[str, ...] | None = None      # default: every clip under dataroot_gt
    num_frame: int = -1                       # first frames of each clip; -1: all
    lq_crop: tuple[int, int, int, int] | None = None  # top, left, height, width in LR pixels


@dataclass(frozen=True)
class Datasets:
    train: TrainData
    val: ValData | None = None


@dataclass(frozen=True)
class Network:
    """``network_g``: HiRN's size and SpyNet's starting weights."""
    type: str = "HiRN"
    mid_channels: int = 64
    num_blocks: int = 7
    spynet_path: str | None = None            # e.g. spynet_sintel_final.pth; None: random
    _FIXED: ClassVar[dict] = {"max_residue_magnitude": 10, "is_low_res_input": True}
    _CHOICES: ClassVar[dict] = {"type": ("HiRN",)}


@dataclass(frozen=True)
class Paths:
    """``path``: start from a checkpoint, or resume a saved state."""
    pretrain_network_g: str | None = None
    strict_load_g: bool = True
    param_key_g: str = "params"
    resume_state: str | None = None


@dataclass(frozen=True)
class Optimizer:
    type: str = "Adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    _CHOICES: ClassVar[dict] = {"type": ("Adam",)}


@dataclass(frozen=True)
class Scheduler:
    type: str = "CosineAnnealingRestartLR"
    periods: tuple[int, ...] = (600000,)
    restart_weights: tuple[float, ...] = (1.0,)
    eta_min: float = 1e-7
    _CHOICES: ClassVar[dict] = {"type": ("CosineAnnealingRestartLR",)}


@dataclass(frozen=True)
class PixelLoss:
    type: str = "CharbonnierLoss"
    loss_weight: float = 1.0
    reduction: str = "mean"
    eps: float = 1e-12
    _CHOICES: ClassVar[dict] = {"type": ("CharbonnierLoss",), "reduction": ("mean", "sum")}


@dataclass(frozen=True)
class Train:
    optim_g: Optimizer = field(default_factory=Optimizer)
    scheduler: Scheduler = field(default_factory=Scheduler)
    pixel_opt: PixelLoss = field(default_factory=PixelLoss)
    total_iter: int = 600000
    fix_flow: int = 5000            # SpyNet frozen while iteration < fix_flow (1-based)
    flow_lr_mul: float = 0.25       # SpyNet's lr = flow_lr_mul * lr
    ema_decay: float = 0.999        # 0: no EMA
    amp: str = "auto"               # auto: bf16 (else fp16) on CUDA, off on CPU
    _FIXED: ClassVar[dict] = {"warmup_iter": -1}
    _CHOICES: ClassVar[dict] = {"amp": ("auto", "bf16", "fp16", "off")}


@dataclass(frozen=True)
class Metric:
    type: str = "calculate_psnr"
    crop_border: int = 0
    test_y_channel: bool = False
    _CHOICES: ClassVar[dict] = {"type": ("calculate_psnr", "calculate_ssim")}


@dataclass(frozen=True)
class Val:
    val_freq: int = 5000
    val_at_start: bool = False      # also score the initial weights (iteration 0)
    metrics: dict[str, Metric] = field(default_factory=lambda: {"psnr": Metric()})
    _FIXED: ClassVar[dict] = {"save_img": False}


@dataclass(frozen=True)
class Logger:
    print_freq: int = 100
    save_checkpoint_freq: int = 5000


@dataclass(frozen=True)
class Dist:
    backend: str | None = None      # None: nccl on CUDA, gloo on CPU
    _CHOICES: ClassVar[dict] = {"backend": (None, "nccl", "gloo")}


@dataclass(frozen=True)
class Config:
    """A whole ``hirn-train`` configuration."""
    datasets: Datasets
    name: str = "hirn"
    scale: int = SCALE
    manual_seed: int = 0
    network_g: Network = field(default_factory=Network)
    path: Paths = field(default_factory=Paths)
    train: Train = field(default_factory=Train)
    val: Val = field(default_factory=Val)
    logger: Logger = field(default_factory=Logger)
    dist_params: Dist = field(default_factory=Dist)
    _CHOICES: ClassVar[dict] = {"scale": (SCALE,)}


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as people write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return "mapping" if dataclasses.is_dataclass(tp) else tp.__name__
    return str(tp).replace("typing.", "")


class _Parser:
    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []
        self.ignored: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    def value(self, value: Any, tp: Any, where: str) -> Any:
        """Check ``value`` against the annotation ``tp``; returns the converted value."""
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            return self.value(value, next(a for a in args if a is not type(None)), where)
        if dataclasses.is_dataclass(tp):
            return self.section(value, tp, where)
        if origin is tuple:
            if not isinstance(value, (list, tuple)):
                return self.error(where, f"expected a list, got {value!r}")
            if len(args) == 2 and args[1] is Ellipsis:
                args = (args[0],) * len(value)
            if len(value) != len(args):
                return self.error(where, f"expected a list of {len(args)} values, got {value!r}")
            return tuple(self.value(v, a, f"{where}[{i}]")
                         for i, (v, a) in enumerate(zip(value, args)))
        if origin is dict:
            if not isinstance(value, dict):
                return self.error(where, f"expected a mapping, got {value!r}")
            return {str(k): self.value(v, args[1], f"{where}.{k}") for k, v in value.items()}
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)  # BasicSR writes counts as "!!float 5e3"
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        hint = " (quote it?)" if tp is str else ""
        return self.error(where, f"expected {_type_name(tp)}, got {value!r} "
                                 f"({type(value).__name__}){hint}")

    def section(self, raw: Any, cls: type, where: str) -> Any:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            return self.error(where, f"expected a mapping of options, got {raw!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        fixed = getattr(cls, "_FIXED", {})
        choices = getattr(cls, "_CHOICES", {})
        kwargs = {}
        for key, value in raw.items():
            here = f"{where}.{key}" if where else str(key)
            if key in names:
                kwargs[key] = self.value(value, hints[key], here)
                if key in choices and kwargs[key] not in choices[key]:
                    self.error(here, f"{value!r} is not supported; choose from "
                                     f"{list(choices[key])}")
            elif key in fixed:
                if value != fixed[key]:
                    self.error(here, f"hirn-train supports only {fixed[key]!r} (got {value!r})")
            elif key in _IGNORED_KEYS:
                self.ignored.append(f"{here} ({_IGNORED_KEYS[key]})")
            else:
                known = names + list(fixed)
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                self.error(here, f"unknown option{hint} (options here: {', '.join(known)})")
        for f in dataclasses.fields(cls):
            if (f.name not in raw and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):
                self.error(f"{where}.{f.name}" if where else f.name, "required option is missing")
        try:
            return cls(**kwargs)
        except TypeError:
            return None  # problems already recorded


def _check(cfg: Config, error) -> None:
    """Cross-field checks that the types alone do not catch."""
    t, tr = cfg.datasets.train, cfg.train
    lq = t.gt_size // SCALE
    if t.gt_size % (2 * SCALE) or lq < MIN_LR_SIZE:
        error("datasets.train.gt_size", f"{t.gt_size} gives an LR crop of {t.gt_size / SCALE:g}"
              f" pixels; the model needs an even LR size of at least {MIN_LR_SIZE}: use a "
              f"multiple of {2 * SCALE} that is at least {SCALE * MIN_LR_SIZE}")
    if t.num_frame < 2:
        error("datasets.train.num_frame", f"{t.num_frame} is too few: at least 2 frames "
              "(one frame trains no alignment)")
    for name in ("batch_size_per_gpu",):
        if getattr(t, name) < 1:
            error(f"datasets.train.{name}", "must be at least 1")
    if t.num_worker_per_gpu < 0:
        error("datasets.train.num_worker_per_gpu", "must be 0 or more")
    if t.val_partition not in (None, "REDS4"):
        error("datasets.train.val_partition", f"{t.val_partition!r} is not supported; use "
              "'REDS4' or leave it out")
    s = tr.scheduler
    if len(s.periods) != len(s.restart_weights):
        error("train.scheduler", f"periods ({len(s.periods)}) and restart_weights "
              f"({len(s.restart_weights)}) must have the same length")
    if any(p <= 0 for p in s.periods):
        error("train.scheduler.periods", "every period must be positive")
    if sum(s.periods) < tr.total_iter:
        error("train.scheduler.periods", f"they cover {sum(s.periods)} iterations, fewer than "
              f"train.total_iter = {tr.total_iter}")
    if tr.total_iter < 1:
        error("train.total_iter", "must be at least 1")
    if not 0 <= tr.ema_decay < 1:
        error("train.ema_decay", f"{tr.ema_decay} is outside [0, 1); 0 turns EMA off")
    if tr.flow_lr_mul < 0 or tr.fix_flow < 0:
        error("train", "fix_flow and flow_lr_mul must not be negative")
    if tr.optim_g.lr <= 0:
        error("train.optim_g.lr", "must be positive")
    for key, freq in (("val.val_freq", cfg.val.val_freq),
                      ("logger.print_freq", cfg.logger.print_freq),
                      ("logger.save_checkpoint_freq", cfg.logger.save_checkpoint_freq)):
        if freq < 1:
            error(key, "must be at least 1")
    v = cfg.datasets.val
    if v is not None and v.lq_crop is not None:
        h, w = v.lq_crop[2:]
        if h % 2 or w % 2 or min(h, w) < MIN_LR_SIZE:
            error("datasets.val.lq_crop", f"crop {h}x{w} must be even and at least "
                  f"{MIN_LR_SIZE} on each side")


def parse_config(raw: Any, source: str = "<config>") -> Config:
    """Build a :class:`Config` from a parsed YAML mapping; raise :class:`ConfigError`."""
    parser = _Parser(source)
    cfg = parser.section(raw, Config, "")
    if cfg is not None and not parser.problems:
        _check(cfg, parser.error)
    if parser.problems:
        count = len(parser.problems)
        raise ConfigError(f"{source}: {count} problem{'s' * (count > 1)}:\n  "
                          + "\n  ".join(parser.problems))
    if parser.ignored:
        warnings.warn(f"{source}: BasicSR options hirn-train ignores: "
                      + "; ".join(parser.ignored), stacklevel=2)
    return cfg


def read_yaml(path: str | Path) -> Any:
    """A YAML file as plain data (``1e-4`` read as a float); :class:`ConfigError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.load(path.read_text(), Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc


def load_config(path: str | Path) -> Config:
    """Read and check a YAML training configuration."""
    return parse_config(read_yaml(path), str(path))


def to_dict(cfg: Config) -> dict:
    """Plain nested dict of a config (for saving next to the run)."""
    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))
