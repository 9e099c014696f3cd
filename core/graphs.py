"""The per-step graphs: their names, inputs and outputs, and the modules behind them.

One :class:`GraphSpec` per exported graph. Tensors are ``[batch, channels,
height, width]`` with symbolic ``batch``, ``height``, ``width`` (x4 for the
HR output). Frames, flows and the HR output are FP32 in every precision;
feature maps are FP16 in FP16 graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import SCALE
from .schedule import BRANCHES

FRAME, FEATURE, FLOW, OUTPUT = "frame", "feature", "flow", "output"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    kind: str       # frame | feature | flow | output: decides channels, scale and dtype
    channels: int

    def dtype(self, precision: str) -> str:
        return "float16" if self.kind == FEATURE and precision == "fp16" else "float32"

    def shape(self) -> list[int | str]:
        scale = f"*{SCALE}" if self.kind == OUTPUT else ""
        return ["batch", self.channels, f"height{scale}", f"width{scale}"]


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batchable: bool  # frames are independent along the batch axis

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


def step_graph_name(branch: str, aligned: bool) -> str:
    return f"step_{branch}" if aligned else f"step_{branch}_first"


def graph_specs(mid_channels: int) -> tuple[GraphSpec, ...]:
    """Every graph of a model with ``mid_channels`` feature channels, in export order."""
    c = mid_channels
    feature = lambda name: TensorSpec(name, FEATURE, c)  # noqa: E731
    flow = lambda name: TensorSpec(name, FLOW, 2)  # noqa: E731
    frame = lambda name: TensorSpec(name, FRAME, 3)  # noqa: E731
    specs = [
        GraphSpec("encode", (frame("frames"),), (feature("spatial"),), True),
        GraphSpec("flow", (frame("ref"), frame("supp")), (flow("flow"),), True),
        GraphSpec("compose", (flow("flow_a"), flow("flow_b")), (flow("flow"),), True),
    ]
    for k, branch in enumerate(BRANCHES):
        base = (feature("current"), *(feature(b) for b in BRANCHES[:k]))
        aligned = (feature("feat_a"), feature("feat_b"), flow("flow_a"), flow("flow_b"))
        out = (feature("feature"),)
        specs.append(GraphSpec(step_graph_name(branch, False), base, out, False))
        specs.append(GraphSpec(step_graph_name(branch, True), base + aligned, out, False))
    specs.append(GraphSpec("decode", (frame("lq"), feature("spatial"), *(feature(b) for b in
                                                                        BRANCHES)),
                           (TensorSpec("hr", OUTPUT, 3),), True))
    return tuple(specs)
