"""The ``torch`` backend: the model's own step modules, on CPU or CUDA, FP32 or FP16."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from hirn.export.graphs import graph_specs
from hirn.train import HiRN, load_model

from .base import BackendConfig, BackendError, Runner

FP32_GRAPHS = ("flow", "compose")  # flows stay FP32 in every precision


class TorchRunner(Runner):
    """Runs ``HiRN.steps`` modules directly; arrays are torch tensors on ``device``."""

    name = "torch"

    def __init__(self, model: HiRN, device: str = "cpu", precision: str = "fp32"):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("--device cuda was asked but PyTorch sees no CUDA GPU "
                               f"(torch {torch.__version__}); use --device cpu")
        if precision not in ("fp32", "fp16"):
            raise BackendError(f"unknown precision {precision!r}; choose fp32 or fp16")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("FP16 needs a CUDA device; use --precision fp32 on the CPU")
        specs = graph_specs(model.mid_channels)
        super().__init__({s.name: [t.name for t in s.inputs] for s in specs}, model.mid_channels)
        self.device, self.precision = torch.device(device), precision
        model = model.to(self.device).eval()
        self.modules = model.steps.named()
        self.feature_dtype = torch.float16 if precision == "fp16" else torch.float32
        if precision == "fp16":
            half = copy.deepcopy(model).half()
            half.__dict__["_steps"] = None
            self.modules.update({k: v for k, v in half.steps.named().items()
                                 if k not in FP32_GRAPHS})

    @classmethod
    def from_config(cls, config: BackendConfig) -> TorchRunner:
        model = load_model(config.checkpoint) if config.checkpoint else HiRN().eval()
        if config.threads:
            torch.set_num_threads(config.threads)
        return cls(model, config.device, config.precision)

    @torch.no_grad()
    def _run_impl(self, graph: str, inputs: Sequence):
        return self.modules[graph](*inputs)

    def from_numpy(self, frames: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self.device)

    def to_numpy(self, array) -> np.ndarray:
        return array.detach().float().cpu().numpy()

    def zeros(self, kind: str, batch: int, height: int, width: int):
        channels, dtype = ((2, torch.float32) if kind == "flow"
                           else (self.mid_channels, self.feature_dtype))
        return torch.zeros(batch, channels, height, width, dtype=dtype, device=self.device)

    def concat(self, arrays: Sequence):
        return torch.cat(list(arrays), dim=0)

    def split(self, array) -> list:
        return list(array.split(1, dim=0))

    def describe(self) -> str:
        return f"torch {torch.__version__} on {self.device} ({self.precision})"
