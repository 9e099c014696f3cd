"""The interface every backend implements: run a named per-step graph.

The driver calls only these methods and never asks which backend it has.
Arrays are backend-native (numpy arrays on the CPU, torch tensors on CUDA) and
stay on the backend's device between steps; only ``to_numpy`` copies back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hirn.core.errors import BackendError, ModelFolderError
from hirn.core.graphs import graph_specs

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
DEFAULT_BATCH = 4  # frames per call of the batchable graphs, unless a window needs fewer

# /proc/cpuinfo flags of CPUs that compute bfloat16 natively (AMD Zen 4+, Intel Xeon since
# Sapphire Rapids); elsewhere bfloat16 is emulated, many times slower than FP32
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs the graphs, and how. ``hirn-run`` options map onto these fields;
    each backend's ``from_config`` checks the ones it reads and refuses the ones it lacks."""

    backend: str | None = "torch"         # torch | onnxruntime | openvino | tensorrt
                                          # (None: not inferred)
    checkpoint: Path | None = None        # torch: a .pth checkpoint of any HiRN size
    onnx_dir: Path | None = None          # onnxruntime, openvino: a folder from hirn-export onnx
    engines_dir: Path | None = None       # tensorrt: a folder from hirn-export engine
    device: str = "cpu"                   # cpu | cuda | cuda:N | gpu | gpu:N (openvino)
    precision: str | None = None          # fp32 | fp16 | bf16 (None: fp32, an ONNX folder's
                                          # own for onnxruntime)
    threads: int | None = None            # CPU threads (None: the library's default)
    batch_size: int = DEFAULT_BATCH       # frames per call of the batchable graphs
    cuda_graphs: bool = False             # torch, tensorrt: replay steps as CUDA graphs
    compile_steps: bool = False           # torch: torch.compile the step modules
                                          # (the demo); a real run refuses

    @property
    def weights(self) -> Path | None:
        """The checkpoint or folder given, whichever it is; None when none was."""
        return self.checkpoint or self.onnx_dir or self.engines_dir


def refuse_compile(config: BackendConfig, backend: str) -> None:
    """``--compile`` is the torch backend's alone; ``backend`` is the one refusing it."""
    if config.compile_steps:
        raise BackendError(f"--compile applies to the torch backend only (this run uses "
                           f"{backend}): leave it out")


def check_onnx_config(config: BackendConfig, backend: str) -> None:
    """Refuse the options that the backends reading an ONNX folder lack (``backend``: the
    one refusing), before any folder is read."""
    refuse_compile(config, backend)
    if config.cuda_graphs:
        raise BackendError("--cuda-graphs applies to the torch and tensorrt backends only: "
                           f"leave it out with --onnx (the {backend} backend)")
    if config.onnx_dir is None:
        raise BackendError(f"the {backend} backend needs --onnx DIR "
                           "(make one with: hirn-export onnx CHECKPOINT -o DIR)")


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively, from Linux's CPU flags (False where they
    cannot be read)."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


class Runner(ABC):
    """Runs the per-step graphs of one model on one device.

    Every runner also says where its arrays live and what a feature map costs, so that
    callers (the memory check) need not probe arrays:

    Attributes:
        device: ``"cpu"`` or ``"cuda:N"`` (the tensorrt runner: a ``torch.device`` whose
            ``str()`` is that).
        element_size: bytes per feature-map value: 4 in FP32, 2 in FP16. Frames, flows
            and HR outputs are FP32 in every precision.
    """

    name = "base"
    device: str
    element_size: int

    def __init__(self, graph_inputs: Mapping[str, Sequence[str]], mid_channels: int,
                 batchable: Mapping[str, bool] | None = None):
        """Args:
            graph_inputs: graph name -> its input names, in order.
            mid_channels: feature channels of the model.
            batchable: graph name -> whether it takes a batch of frames (None: all do);
                the recurrent steps take one frame at a time.
        """
        self.graph_inputs = {name: list(inputs) for name, inputs in graph_inputs.items()}
        self.mid_channels = mid_channels
        self.batchable = dict(batchable or {})

    closed = False

    def run(self, graph: str, *inputs):
        """Run ``graph`` on positional ``inputs`` (in the graph's input order); one output."""
        if self.closed:
            raise RuntimeError(f"the {self.name} runner was closed: make a new one")
        expected = self.graph_inputs.get(graph)
        if expected is None:
            raise KeyError(f"{self.name} backend has no graph {graph!r}; "
                           f"available: {sorted(self.graph_inputs)}")
        if len(inputs) != len(expected):
            raise TypeError(f"graph {graph} takes {len(expected)} inputs {list(expected)}, "
                            f"got {len(inputs)}")
        if not self.batchable.get(graph, True) and inputs[0].shape[0] != 1:
            raise ValueError(f"graph {graph} takes one frame at a time, got a batch of "
                             f"{inputs[0].shape[0]}")
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

    def close(self) -> None:
        """Release what the runner holds (sessions, compiled graphs, engines, device memory)
        now rather than at garbage collection; closing twice does nothing."""
        if not self.closed:
            self._close_impl()
            self.closed = True

    def _close_impl(self) -> None:  # noqa: B027 (a runner that holds nothing needs no close)
        """Drop the backend's own objects; the base holds none."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ManifestRunner(Runner):
    """A runner of an exported folder (ONNX graphs or TensorRT engines): the graphs' inputs,
    which take batches and which are missing are read from its manifest here, once."""

    def _take_manifest(self, folder: str | Path, manifest: dict) -> None:
        """Keep ``folder`` and its checked ``manifest``; refuse a folder without every graph
        the model needs."""
        self.folder, self.manifest = Path(folder), manifest
        graphs = manifest["graphs"]
        needed = [s.name for s in graph_specs(manifest["model"]["mid_channels"])]
        if missing := [name for name in needed if name not in graphs]:
            raise ModelFolderError(f"{self.folder} lacks the graphs {missing}; export the "
                                   "whole model again (hirn-export)")
        Runner.__init__(self, {name: [t["name"] for t in g["inputs"]]
                               for name, g in graphs.items()},
                        manifest["model"]["mid_channels"],
                        batchable={name: g.get("batchable", True) for name, g in graphs.items()})


class HostArrays:
    """The array methods of runners whose arrays are numpy arrays on the host (mixed in
    before :class:`Runner`)."""

    def from_numpy(self, frames: np.ndarray):
        return np.ascontiguousarray(frames, dtype=np.float32)

    def to_numpy(self, array) -> np.ndarray:
        return np.asarray(array, dtype=np.float32)

    def concat(self, arrays: Sequence):
        return np.concatenate(arrays, axis=0)

    def split(self, array) -> list:
        return [array[i:i + 1] for i in range(array.shape[0])]
