"""The interface every backend implements: run a named per-step graph.

The driver calls only these methods and never asks which backend it has.
Arrays are backend-native (numpy arrays, OrtValues or torch tensors) and
stay on the backend's device between steps; only ``to_numpy`` copies back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("torch", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs the graphs, and how. ``hirn-run`` options map onto these fields."""

    backend: str = "torch"                # torch | onnxruntime | tensorrt
    checkpoint: Path | None = None        # torch: a .pth checkpoint (None: untrained weights)
    onnx_dir: Path | None = None          # onnxruntime: a folder from hirn-export onnx
    engines_dir: Path | None = None       # tensorrt: a folder from hirn-export engine
    device: str = "cpu"                   # cpu | cuda | cuda:N
    precision: str = "fp32"               # fp32 | fp16 (torch; ONNX folders carry their own)
    threads: int | None = None            # CPU threads (None: the library's default)
    batch_size: int = 4                   # frames per call of the batchable graphs
    cuda_graphs: bool = False             # torch, tensorrt: replay steps as CUDA graphs
    compile_steps: bool = False           # torch: torch.compile the step modules


class Runner(ABC):
    """Runs the per-step graphs of one model on one device."""

    name = "base"

    def __init__(self, graph_inputs: dict[str, Sequence[str]], mid_channels: int):
        self.graph_inputs = dict(graph_inputs)  # graph name -> its input names, in order
        self.mid_channels = mid_channels

    def run(self, graph: str, *inputs):
        """Run ``graph`` on positional ``inputs`` (in the graph's input order); one output."""
        expected = self.graph_inputs.get(graph)
        if expected is None:
            raise KeyError(f"{self.name} backend has no graph {graph!r}; "
                           f"available: {sorted(self.graph_inputs)}")
        if len(inputs) != len(expected):
            raise TypeError(f"graph {graph} takes {len(expected)} inputs {list(expected)}, "
                            f"got {len(inputs)}")
        return self._run_impl(graph, inputs)

    @abstractmethod
    def _run_impl(self, graph: str, inputs: Sequence):
        """Run one graph; inputs are already checked."""

    @abstractmethod
    def from_numpy(self, frames: np.ndarray):
        """Frames ``[B, 3, H, W]`` float32 in [0, 1] onto the device."""

    @abstractmethod
    def to_numpy(self, array) -> np.ndarray:
        """An array back to the host as float32 numpy."""

    @abstractmethod
    def zeros(self, kind: str, batch: int, height: int, width: int):
        """Zeros for a missing ``feature`` or ``flow`` input, in the graphs' dtype."""

    @abstractmethod
    def concat(self, arrays: Sequence):
        """Join arrays along the batch axis."""

    @abstractmethod
    def split(self, array) -> list:
        """Split along the batch axis into arrays of batch 1."""

    def describe(self) -> str:
        return self.name
