"""The ``torch`` backend: the model's own step modules, on CPU or CUDA, FP32, FP16 or bf16.

``compile_steps`` runs every step module through ``torch.compile`` (Inductor);
``cuda_graphs`` also replays them from CUDA graphs (``mode="reduce-overhead"``).
Both are off by default: on the CPU, compiling costs minutes and gained nothing
measurable (``benchmarks/torch_backend.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from hirn.core.constants import PRECISIONS
from hirn.core.errors import BackendError
from hirn.core.graphs import graph_specs
from hirn.model import HiRN, load_model
from hirn.model.hirn import HALF_DTYPES

from .base import BackendConfig, Runner, cpu_has_native_bf16


class TorchRunner(Runner):
    """Runs the model's step modules directly; arrays are torch tensors on ``device``."""

    name = "torch"

    def __init__(self, model: HiRN, device: str = "cpu", precision: str = "fp32",
                 compile_steps: bool = False, cuda_graphs: bool = False,
                 native_bf16: Callable[[], bool] | None = None):
        """``native_bf16``: whether this CPU computes bfloat16 natively (None:
        :func:`cpu_has_native_bf16`; tests simulate a CPU without it)."""
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError("--device cuda was asked but PyTorch sees no CUDA GPU "
                               f"(torch {torch.__version__}); use --device cpu")
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendError("FP16 needs a CUDA device; use --precision fp32 on the CPU")
        if precision == "bf16" and not device.startswith("cuda") and not (
                native_bf16 or cpu_has_native_bf16)():
            # emulated bfloat16 convolutions ran 17x slower than FP32 here (AMD EPYC, AVX2)
            raise BackendError(
                "--precision bf16 needs a CPU that computes bfloat16 natively (AVX512-BF16 or "
                "AMX: AMD Zen 4 and later, Intel Xeon since Sapphire Rapids); this one would "
                "emulate it many times slower than FP32: use --precision fp32")
        if cuda_graphs and not device.startswith("cuda"):
            raise BackendError("CUDA graphs need --device cuda; leave --cuda-graphs out on "
                               "the CPU")
        specs = graph_specs(model.mid_channels)
        super().__init__({s.name: [t.name for t in s.inputs] for s in specs}, model.mid_channels,
                         batchable={s.name: s.batchable for s in specs})
        self._device = torch.device(device)
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self.device, self.precision = str(self._device), precision
        model = model.to(self._device).eval()
        if self._device.type == "cuda":
            # A video keeps one frame size: let cuDNN time its convolutions once and keep
            # the fastest.
            torch.backends.cudnn.benchmark = True
        self.modules = model.step_modules(precision)
        self.feature_dtype = HALF_DTYPES.get(precision, torch.float32)
        self.element_size = self.feature_dtype.itemsize
        self.compiled, self.cuda_graphs = compile_steps or cuda_graphs, cuda_graphs
        if self.compiled:
            _raise_recompile_limit(64)
            # Shapes are fixed per clip (a few batch sizes), so static shapes compile best.
            mode = "reduce-overhead" if cuda_graphs else None
            self.modules = {name: torch.compile(module, mode=mode, dynamic=False)
                            for name, module in self.modules.items()}

    @classmethod
    def from_config(cls, config: BackendConfig) -> TorchRunner:
        """The model of ``config.checkpoint`` (any HiRN size), run as ``config`` says."""
        if config.checkpoint is None:  # the CLI fills in the default weights (infer_backend)
            raise BackendError("no weights given: pass --checkpoint FILE (a .pth of HiRN), "
                               "--onnx DIR (from hirn-export onnx) or --engines DIR")
        model = load_model(config.checkpoint)
        if config.threads:
            torch.set_num_threads(config.threads)
        return cls(model, config.device, config.precision or "fp32", config.compile_steps,
                   config.cuda_graphs)

    @torch.no_grad()
    def _run_impl(self, graph: str, inputs: Sequence):
        output = self.modules[graph](*inputs)
        # A CUDA-graph replay reuses its output memory on the next call, while the
        # recurrence keeps earlier features alive: keep a copy.
        return output.clone() if self.cuda_graphs else output

    def from_numpy(self, frames: np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(frames, dtype=np.float32)).to(self._device)

    def to_numpy(self, array) -> np.ndarray:
        return array.detach().float().cpu().numpy()

    def zeros(self, kind: str, batch: int, height: int, width: int):
        channels, dtype = ((2, torch.float32) if kind == "flow"
                           else (self.mid_channels, self.feature_dtype))
        return torch.zeros(batch, channels, height, width, dtype=dtype, device=self._device)

    def concat(self, arrays: Sequence):
        return torch.cat(list(arrays), dim=0)

    def split(self, array) -> list:
        return list(array.split(1, dim=0))

    def _close_impl(self) -> None:
        self.modules = {}  # the model's weights, and compiled or captured graphs with them
        if self._device.type == "cuda":
            torch.cuda.empty_cache()  # hand the cached blocks back to other processes

    def describe(self) -> str:
        extras = "".join([", compiled" if self.compiled else "",
                          ", CUDA graphs" if self.cuda_graphs else ""])
        return f"torch {torch.__version__} on {self.device} ({self.precision}{extras})"


def _raise_recompile_limit(limit: int) -> None:
    """The six propagation steps share one ``forward``, and compiled variants are counted per
    function (8 by default), so a few frame sizes or precisions would exhaust it and fall
    back to eager without an error: allow more."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))
