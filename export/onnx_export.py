"""Export a HiRN checkpoint as per-step ONNX graphs plus ``manifest.json``."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from hirn.core.constants import MIN_SIZE, PRECISIONS, SCALE, SIZE_MULTIPLE
from hirn.core.errors import ModelFolderError
from hirn.core.graphs import FLOW, FRAME, OUTPUT, GraphSpec, graph_specs
from hirn.model import HiRN, load_model
from hirn.model.deform_conv import EXPORT_FORMS, PLUGIN_DOMAIN, export_form

from .manifest import FORMAT, FORMAT_VERSION, sha256_of, tool_versions, write_manifest

DEFAULT_OPSET = 19  # the first with the standard DeformConv operator
# Graphs traced at a size unlike any special case (non-square, not a multiple of 32).
SAMPLE_HEIGHT, SAMPLE_WIDTH = 66, 98


@dataclass(frozen=True)
class ExportOptions:
    """How to export; ``hirn-export onnx`` options map onto these fields."""

    dcn: str = "onnx"            # onnx (DeformConv) | decomposed (plain ops) | plugin
    precision: str = "fp32"      # fp32 | fp16 (features FP16; flows, grids, frames FP32)
    opset: int = DEFAULT_OPSET
    overwrite: bool = False      # replace an existing output folder

    def __post_init__(self):
        if self.dcn not in EXPORT_FORMS:
            raise ValueError(f"unknown --dcn {self.dcn!r}; choose from {EXPORT_FORMS}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose from {PRECISIONS}")
        if self.opset < DEFAULT_OPSET and self.dcn == "onnx":
            raise ValueError(f"DeformConv needs opset >= {DEFAULT_OPSET}; got {self.opset}")


def sample_inputs(spec: GraphSpec, precision: str, batch: int = 2,
                  height: int = SAMPLE_HEIGHT, width: int = SAMPLE_WIDTH
                  ) -> tuple[torch.Tensor, ...]:
    """Random inputs of one graph (``batch`` frames where the graph is batchable, else 1)."""
    batch = batch if spec.batchable else 1
    generator = torch.Generator().manual_seed(0)
    tensors = []
    for t in spec.inputs:
        dtype = torch.float16 if t.dtype(precision) == "float16" else torch.float32
        x = torch.rand(batch, t.channels, height, width, generator=generator)
        if t.kind == FLOW:
            x = (x - 0.5) * 4
        tensors.append(x.to(dtype))
    return tuple(tensors)


class _TracedConv(torch.autograd.Function):
    """A convolution that exports as the standard Conv node but computes nothing.

    CPUs have no fast FP16 convolution (a single 64-channel layer takes seconds),
    and tracing needs shapes, not values; the graphs' numbers are checked against
    PyTorch FP32 by the parity tests and benchmarks.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, stride, padding, dilation, groups):
        # Only size-preserving convolutions come here (no shape arithmetic to trace).
        return input.new_zeros(input.shape[0], weight.shape[0], *input.shape[2:])

    @staticmethod
    def symbolic(g, input, weight, bias, stride, padding, dilation, groups):
        kernel = weight.type().sizes()[-2:]
        return g.op("Conv", input, weight, bias, dilations_i=list(dilation), group_i=groups,
                    kernel_shape_i=list(kernel), pads_i=list(padding) * 2, strides_i=list(stride))


@contextmanager
def _cheap_half_convolutions(enabled: bool):
    """While tracing FP16 graphs on the CPU, convolutions export without computing."""
    if not enabled:
        yield
        return
    original = nn.Conv2d._conv_forward

    def traced(self, input, weight, bias):
        kh, kw = self.kernel_size
        same = self.stride == (1, 1) and self.padding == (self.dilation[0] * (kh - 1) // 2,
                                                           self.dilation[1] * (kw - 1) // 2)
        if not same:
            return original(self, input, weight, bias)
        return _TracedConv.apply(input, weight, bias, self.stride, self.padding, self.dilation,
                                 self.groups)

    nn.Conv2d._conv_forward = traced
    try:
        yield
    finally:
        nn.Conv2d._conv_forward = original


def _export_graph(module: nn.Module, spec: GraphSpec, path: Path, options: ExportOptions) -> None:
    axes = {}
    for t in (*spec.inputs, *spec.outputs):
        suffix = "_x4" if t.kind == OUTPUT else ""
        axes[t.name] = {0: "batch", 2: f"height{suffix}", 3: f"width{suffix}"}
    cheap = options.precision == "fp16" and next(module.parameters(), torch.empty(0)).dtype \
        == torch.float16
    with warnings.catch_warnings(), torch.no_grad(), export_form(options.dcn), \
            _cheap_half_convolutions(cheap):
        warnings.simplefilter("ignore", category=DeprecationWarning)
        # strided slices (the wavelet's 2x2 phases) stay Slice nodes: nothing to fold there
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(module, sample_inputs(spec, options.precision), str(path),
                          dynamo=False, opset_version=options.opset,
                          input_names=[t.name for t in spec.inputs],
                          output_names=[t.name for t in spec.outputs], dynamic_axes=axes,
                          do_constant_folding=True)
    model = onnx.load(str(path))
    # Our plugin op has no ONNX schema; everything else is checked in full.
    onnx.checker.check_model(model, full_check=options.dcn != "plugin")


def _describe(spec: GraphSpec, precision: str) -> dict:
    def tensor(t):
        return {"name": t.name, "kind": t.kind, "shape": t.shape(), "dtype": t.dtype(precision)}

    return {"file": spec.filename, "batchable": spec.batchable,
            "inputs": [tensor(t) for t in spec.inputs],
            "outputs": [tensor(t) for t in spec.outputs]}


def export_onnx(checkpoint: str | Path | None, output: str | Path,
                options: ExportOptions = ExportOptions(), model: HiRN | None = None,
                progress=None, graphs: list[str] | None = None) -> dict:
    """Write every per-step graph of a checkpoint (or ``model``) into ``output``.

    The folder appears complete or not at all: graphs are written to a
    temporary folder beside it and renamed into place at the end.

    ``graphs`` limits the export to some graphs (for tests and experiments;
    the runtime needs them all).

    Returns:
        The manifest written as ``output/manifest.json``.
    """
    output = Path(output)
    if output.exists() and not options.overwrite:
        raise ModelFolderError(f"{output} already exists; pass --overwrite to replace it")
    if model is None:
        model = load_model(checkpoint)
    model = model.float().eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        modules = model.step_modules(options.precision)
        specs = [s for s in graph_specs(model.mid_channels) if not graphs or s.name in graphs]
        entries = {}
        for spec in specs:
            if progress:
                progress(spec.name)
            _export_graph(modules[spec.name], spec, staging / spec.filename, options)
            entry = _describe(spec, options.precision)
            entry["sha256"] = sha256_of(staging / spec.filename)
            entry["bytes"] = (staging / spec.filename).stat().st_size
            entries[spec.name] = entry
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "model": {"architecture": "HiRN", "scale": SCALE, "mid_channels": model.mid_channels,
                      "num_blocks": model.num_blocks, "min_size": MIN_SIZE,
                      "size_multiple": SIZE_MULTIPLE},
            "precision": options.precision, "dcn": options.dcn, "opset": options.opset,
            "custom_domains": [PLUGIN_DOMAIN] if options.dcn == "plugin" else [],
            "tensor_kinds": {FRAME: "RGB in [0, 1], float32", FLOW: "pixels (x, y), float32",
                             "feature": "feature maps", OUTPUT: "HR RGB, not clamped, float32"},
            "checkpoint": ({"file": Path(checkpoint).name, "sha256": sha256_of(checkpoint)}
                           if checkpoint else None),
            "tools": tool_versions(), "graphs": entries,
        }
        write_manifest(staging, manifest)
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
