"""``hirn::HirnDeformConv`` (the TensorRT plugin's op) on ONNX Runtime's CPU.

``hirn-export onnx --dcn plugin`` writes graphs whose deformable convolutions are
``HirnDeformConv`` nodes for our TensorRT plugin. ONNX Runtime runs them here through an
onnxruntime-extensions Python op computing ``hirn.model.deform_conv.deform_conv2d`` (the pure
PyTorch DCNv2, FP32), so the graphs TensorRT will parse are tested on any CPU.

onnxruntime-extensions Python ops live only in its domain ``ai.onnx.contrib``, take only
INT64 / FLOAT / STRING attributes and only non-FP16 tensors (an FP16 input aborts the process).
A session therefore gets an in-memory copy of the graph in which each ``HirnDeformConv`` node
moves to that domain, carries its INTS attributes as strings ("1,1"), and, where its tensors
are FP16, is wrapped by Casts to FP32 and back (the plugin accumulates in FP32 as well). The
node's inputs, their order, the weights and every other node stay as exported. The files on
disk are not touched.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from hirn.core.imports import require
from hirn.model.deform_conv import PLUGIN_DOMAIN, PLUGIN_OP

PYOP_DOMAIN = "ai.onnx.contrib"  # onnxruntime_extensions.default_opset_domain()
INTS_ATTRIBUTES = ("stride", "padding", "dilation")
NUM_INPUTS = 5  # input, offset, mask, weight, bias
PARSER_ATTRIBUTES = ("plugin_namespace", "plugin_version")  # read by TensorRT's ONNX parser


def _import_extensions():
    return require("onnxruntime_extensions",
                   "graphs exported with --dcn plugin run on the CPU through "
                   "onnxruntime-extensions: pip install onnxruntime-extensions "
                   "(or export with --dcn onnx)")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _tensor(array: np.ndarray):
    import torch

    # ONNX Runtime may hand over read-only buffers, which torch.from_numpy refuses to wrap.
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def hirn_deform_conv(input, offset, mask, weight, bias, stride: str, padding: str,
                     dilation: str, deformable_groups: int) -> np.ndarray:
    """The op on FP32 numpy arrays; shapes and attributes as in ``plugins/README.md``."""
    import torch

    from hirn.model.deform_conv import deform_conv2d

    taps = weight.shape[2] * weight.shape[3]
    if offset.shape[1] != 2 * deformable_groups * taps:
        raise ValueError(f"HirnDeformConv: offset has {offset.shape[1]} channels, expected "
                         f"2 * deformable_groups ({deformable_groups}) * {taps}")
    with torch.no_grad():
        out = deform_conv2d(_tensor(input), _tensor(offset), _tensor(weight), _tensor(bias),
                            _ints(stride), _ints(padding), _ints(dilation), _tensor(mask))
    return out.numpy()


@functools.cache
def custom_ops_library() -> str:
    """Register the op with onnxruntime-extensions (once per process); its library path."""
    ext = _import_extensions()
    f32, text = ext.PyCustomOpDef.dt_float, ext.PyCustomOpDef.dt_string
    attrs = {name: text for name in INTS_ATTRIBUTES}
    attrs["deformable_groups"] = ext.PyCustomOpDef.dt_int64
    ext.onnx_op(op_type=PLUGIN_OP, inputs=[f32] * NUM_INPUTS, outputs=[f32],
                attrs=attrs)(hirn_deform_conv)
    return ext.get_library_path()


def _initializer_types(graph: onnx.GraphProto) -> dict[str, int]:
    return {t.name: t.data_type for t in graph.initializer}


def cpu_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose ``HirnDeformConv`` nodes the registered Python op runs.

    Raises ``ValueError`` for a node this kernel cannot take (no bias, weight not stored in
    the graph); the exporter writes neither.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    weight_types = _initializer_types(graph)
    nodes = []
    for node in graph.node:
        if node.domain != PLUGIN_DOMAIN or node.op_type != PLUGIN_OP:
            nodes.append(node)
            continue
        if len(node.input) != NUM_INPUTS or not node.input[4]:
            raise ValueError(f"{node.name}: the CPU kernel needs all {NUM_INPUTS} inputs "
                             "(input, offset, mask, weight, bias)")
        dtype = weight_types.get(node.input[3])
        if dtype not in (TensorProto.FLOAT, TensorProto.FLOAT16):
            raise ValueError(f"{node.name}: weight {node.input[3]!r} must be an FP32 or FP16 "
                             "initializer of the graph")
        node.domain = PYOP_DOMAIN
        # The parser's lookup keys are no attributes of the op itself.
        keep = [a for a in node.attribute if a.name not in PARSER_ATTRIBUTES]
        node.ClearField("attribute")
        node.attribute.extend(keep)
        for attr in node.attribute:
            if attr.name in INTS_ATTRIBUTES and attr.type == onnx.AttributeProto.INTS:
                values = list(attr.ints)
                attr.ClearField("ints")
                attr.type = onnx.AttributeProto.STRING
                attr.s = ",".join(str(v) for v in values).encode()
        if dtype == TensorProto.FLOAT:
            nodes.append(node)
            continue
        # FP16 end to end: FP32 copies in, the FP32 result cast back to FP16.
        for i, name in enumerate(list(node.input)):
            cast_name = f"{node.name}/fp32_in{i}"
            nodes.append(helper.make_node("Cast", [name], [cast_name], name=cast_name,
                                          to=TensorProto.FLOAT))
            node.input[i] = cast_name
        output = node.output[0]
        node.output[0] = f"{node.name}/fp32_out"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [output],
                                      name=f"{node.name}/fp16_out", to=TensorProto.FLOAT16))
    graph.ClearField("node")
    graph.node.extend(nodes)
    imports = [o for o in model.opset_import if o.domain not in (PLUGIN_DOMAIN, PYOP_DOMAIN)]
    model.ClearField("opset_import")
    model.opset_import.extend(imports + [helper.make_opsetid(PYOP_DOMAIN, 1)])
    return model


def register_cpu_op(options) -> None:
    """Let sessions made with ``options`` (an ``ort.SessionOptions``) run the Python op."""
    options.register_custom_ops_library(custom_ops_library())


def cpu_model_bytes(path: str | Path) -> bytes:
    """The graph at ``path`` rewritten by :func:`cpu_graph`, for ``ort.InferenceSession``."""
    return cpu_graph(onnx.load(str(path))).SerializeToString()
