"""The ``openvino`` backend: the graphs of ``hirn-export onnx`` through OpenVINO.

On the CPU it runs in bfloat16 where the processor computes it natively (``--precision
bf16``), in f32 otherwise; on Intel GPUs (``--device gpu``) in f32 or f16. Flows and their
composition (:data:`~hirn.core.constants.FP32_GRAPHS`) compile in f32 in every precision.
Arrays are float32 numpy arrays on the host in every precision: OpenVINO converts inside
each graph.

Each graph is read once and compiled once per input shape (static shapes run faster than
dynamic ones on the CPU); compiled models are also cached on disk (OpenVINO's
``CACHE_DIR``), so a later run of the same size skips compiling. OpenVINO's ONNX reader has
no conversion for ``DeformConv``: a frontend extension maps it onto OpenVINO's own
``DeformableConvolution`` (faster than the ``--dcn decomposed`` graphs, which also run:
``benchmarks/results/cpu_speed.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hirn.core.constants import FP32_GRAPHS
from hirn.core.errors import BackendError
from hirn.core.imports import require
from hirn.export.manifest import verify_folder

from .base import BackendConfig, HostArrays, ManifestRunner, check_onnx_config

# OpenVINO's precision hint for each of ours, by device kind
PRECISION_HINTS = {"cpu": {"fp32": "f32", "bf16": "bf16"},
                   "gpu": {"fp32": "f32", "fp16": "f16"}}


def _import_openvino():
    return require("openvino", "the openvino backend needs OpenVINO: pip install openvino")


def openvino_device(device: str) -> str:
    """OpenVINO's name of a ``--device``: ``cpu`` -> ``CPU``, ``gpu:1`` -> ``GPU.1``."""
    kind, _, index = device.partition(":")
    if kind not in PRECISION_HINTS:
        raise BackendError(f"the openvino backend runs on cpu or gpu (Intel graphics), not "
                           f"{device!r}: use --device cpu, or the onnxruntime, torch or "
                           f"tensorrt backends for NVIDIA GPUs")
    return kind.upper() + (f".{index}" if index else "")


def openvino_has_bf16(core) -> bool:
    """Whether OpenVINO computes bfloat16 natively on this CPU (AVX512-BF16 or AMX); where it
    does not, OpenVINO silently runs f32 instead."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def deform_conv_extension():
    """An ONNX frontend extension converting ``DeformConv`` (opset 19: inputs X, W, offset,
    B, mask) to ``DeformableConvolution`` (opset 8) plus the bias."""
    import openvino.opset8 as ops
    from openvino.frontend.onnx import ConversionExtension

    def convert(node):
        x, weight, offset = (node.get_input(i) for i in range(3))
        count = node.get_input_size()
        bias = node.get_input(3) if count > 3 else None
        mask = node.get_input(4) if count > 4 else None
        pads = list(node.get_attribute("pads", [0, 0, 0, 0]))
        # bilinear_interpolation_pad: samples near the border blend with zeros, as
        # DeformConv (and torchvision) do; without it they read zeros outright
        out = ops.deformable_convolution(
            x, offset, weight, list(node.get_attribute("strides", [1, 1])), pads[:2],
            pads[2:], list(node.get_attribute("dilations", [1, 1])), mask,
            group=node.get_attribute("group", 1),
            deformable_group=node.get_attribute("offset_group", 1),
            bilinear_interpolation_pad=True)
        if bias is not None:
            shape = ops.constant(np.array([1, -1, 1, 1], dtype=np.int64))
            out = ops.add(out, ops.reshape(bias, shape, special_zero=False))
        return [out.output(0)]

    return ConversionExtension("DeformConv", convert)


def cache_folder() -> Path:
    """Where compiled models are kept: ``openvino/`` in hirn's cache folder."""
    from hirn.plugins.loader import cache_dir

    return cache_dir() / "openvino"


class OpenVinoRunner(HostArrays, ManifestRunner):
    """OpenVINO on the CPU or an Intel GPU; arrays are float32 numpy arrays."""

    name = "openvino"
    element_size = 4  # features cross between graphs as float32 in every precision

    def __init__(self, folder: str | Path, device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None, cache_dir: Path | None = None,
                 native_bf16: Callable[[object], bool] | None = None):
        """Args:
            folder: a folder from ``hirn-export onnx`` (FP32 graphs, ``--dcn onnx`` or
                ``decomposed``).
            device: ``cpu``, ``gpu`` or ``gpu:N``.
            precision: ``fp32``; ``bf16`` on a CPU that computes it natively; ``fp16`` on
                a GPU.
            threads: CPU inference threads (None: OpenVINO's default).
            cache_dir: where compiled models are cached (None: :func:`cache_folder`).
            native_bf16: whether an OpenVINO core's CPU computes bfloat16 natively (None:
                :func:`openvino_has_bf16`; tests simulate a CPU without it).
        """
        ov = _import_openvino()
        self.precision = precision
        self.ov_device = openvino_device(device)
        self.device = "cpu"  # where the arrays live, whichever device computes
        self._take_manifest(folder, verify_folder(Path(folder)))
        self._check_folder()
        graphs = self.manifest["graphs"]
        self.core = ov.Core()
        if self.ov_device not in self.core.available_devices:
            raise BackendError(f"requested OpenVINO device {self.ov_device}, available: "
                               f"{self.core.available_devices}; use --device cpu")
        self.hint = self._hint(device.partition(":")[0], native_bf16)
        self.core.add_extension(deform_conv_extension())
        self.cache_dir = Path(cache_dir) if cache_dir else cache_folder()
        self.core.set_property({"CACHE_DIR": str(self.cache_dir)})
        if threads and self.ov_device == "CPU":
            self.core.set_property("CPU", {"INFERENCE_NUM_THREADS": threads})
        self.models = {name: self.core.read_model(str(self.folder / g["file"]))
                       for name, g in graphs.items()}
        self.requests = {}  # (graph, input shapes) -> an infer request of a compiled model

    def _check_folder(self) -> None:
        if self.manifest["precision"] != "fp32":
            raise BackendError(f"{self.folder} holds {self.manifest['precision']} graphs; the "
                               "openvino backend reads FP32 graphs and picks its precision with "
                               "--precision: export with hirn-export onnx --precision fp32")
        if self.manifest["dcn"] == "plugin":
            raise BackendError(f"{self.folder} uses the HirnDeformConv plugin op, which "
                               "OpenVINO cannot read: export with --dcn onnx")

    def _hint(self, kind: str, native_bf16: Callable[[object], bool] | None) -> str:
        """OpenVINO's precision hint for the feature graphs, after checking it runs here."""
        hints = PRECISION_HINTS[kind]
        if self.precision not in hints:
            raise BackendError(f"--precision {self.precision} does not run on the OpenVINO "
                               f"{self.ov_device}: choose from {sorted(hints)}")
        if self.precision == "bf16" and not (native_bf16 or openvino_has_bf16)(self.core):
            raise BackendError(
                "--precision bf16 needs a CPU that computes bfloat16 natively (AVX512-BF16 or "
                "AMX: AMD Zen 4 and later, Intel Xeon since Sapphire Rapids); this one does "
                "not (OpenVINO would run f32): use --precision fp32")
        return hints[self.precision]

    @classmethod
    def from_config(cls, config: BackendConfig) -> OpenVinoRunner:
        check_onnx_config(config, "openvino")
        return cls(config.onnx_dir, config.device, config.precision or "fp32", config.threads)

    def _request(self, graph: str, inputs: Sequence[np.ndarray]):
        """The infer request of ``graph`` compiled for these input shapes (compiled once)."""
        key = (graph, *(tuple(x.shape) for x in inputs))
        if key not in self.requests:
            model = self.models[graph]
            model.reshape(dict(zip(self.graph_inputs[graph], (list(x.shape) for x in inputs))))
            hint = "f32" if graph in FP32_GRAPHS else self.hint
            compiled = self.core.compile_model(model, self.ov_device,
                                               {"INFERENCE_PRECISION_HINT": hint,
                                                "PERFORMANCE_HINT": "LATENCY"})
            self.requests[key] = compiled.create_infer_request()
        return self.requests[key]

    def _run_impl(self, graph: str, inputs: Sequence):
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        request = self._request(graph, arrays)
        # the output is copied out: the request reuses its memory on the next call
        return request.infer(arrays, share_inputs=True)[0]

    def zeros(self, kind: str, batch: int, height: int, width: int):
        channels = 2 if kind == "flow" else self.mid_channels
        return np.zeros((batch, channels, height, width), dtype=np.float32)

    def _close_impl(self) -> None:
        self.requests.clear()  # the compiled models go with their requests
        self.models.clear()

    def describe(self) -> str:
        import openvino

        return (f"openvino {openvino.get_version().split('-')[0]} on {self.ov_device} "
                f"({self.precision}, dcn={self.manifest['dcn']})")
