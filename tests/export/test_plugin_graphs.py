"""``--dcn plugin`` graphs on the CPU: the HirnDeformConv wiring TensorRT will parse equals
the standard DeformConv graphs, graph by graph and over a whole clip through the driver."""

import shutil
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support import PLUGIN_CLIP_ATOL, PLUGIN_FP16_GRAPH_RTOL, PLUGIN_GRAPH_ATOL

from hirn.core.errors import BackendError
from hirn.export.manifest import read_manifest, verify_folder, write_manifest
from hirn.export.onnx_export import ExportOptions, export_onnx
from hirn.model.deform_conv import PLUGIN_DOMAIN, PLUGIN_OP
from hirn.runtime.backends.onnxruntime_backend import OnnxRuntimeRunner
from hirn.runtime.driver import upscale_clip
from hirn.train import HiRN

pytest.importorskip("onnxruntime_extensions",
                    reason="onnxruntime-extensions runs the plugin op on the CPU "
                           "(pip install onnxruntime-extensions)")

from hirn.export import plugin_ops  # noqa: E402

MUTATION_MIN_DIFF = 1e-3  # a wrong DCN attribute must move the output at least this much
ALIGNED = ["step_backward", "step_forward", "step_group"]  # the graphs with a DCN


def _model() -> HiRN:
    torch.manual_seed(0)
    model = HiRN(mid_channels=16, num_blocks=1).eval()
    # Random last offset layers: varied residual offsets and masks (initialised at 0 and 0.5),
    # so that swapped or misread offset/mask channels change the result.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".conv_offset.6." in name:
                p.normal_(0.0, 0.1)
    return model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A complete plugin folder and a DeformConv folder of the same weights.

    Only the three aligned step graphs hold a deformable conv; the other seven export
    identically in both forms, so the DeformConv folder reuses the plugin folder's copies of
    them (this keeps the test fast) and gets its own manifest.
    """
    root = tmp_path_factory.mktemp("plugin_graphs")
    model = _model()
    export_onnx(None, root / "plugin", ExportOptions(dcn="plugin"), model=model)
    export_onnx(None, root / "aligned", ExportOptions(dcn="onnx"), model=model, graphs=ALIGNED)
    shutil.copytree(root / "plugin", root / "onnx")
    manifest, aligned = read_manifest(root / "plugin"), read_manifest(root / "aligned")
    for name in ALIGNED:
        shutil.copy(root / "aligned" / f"{name}.onnx", root / "onnx" / f"{name}.onnx")
        manifest["graphs"][name] = aligned["graphs"][name]
    manifest.update(dcn="onnx", custom_domains=[])
    write_manifest(root / "onnx", manifest)
    verify_folder(root / "onnx")
    return {"plugin": root / "plugin", "onnx": root / "onnx"}


def _inputs(session, height=64, width=80, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        dtype = np.float16 if i.type == "tensor(float16)" else np.float32
        x = rng.random((1, i.shape[1], height, width), dtype=np.float32)
        feeds[i.name] = ((x - 0.5) * 6 if i.name.startswith("flow") else x).astype(dtype)
    return feeds


def _plugin_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    plugin_ops.register_cpu_op(options)
    return ort.InferenceSession(plugin_ops.cpu_graph(model).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _plugin_nodes(model):
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


def test_plugin_nodes_and_their_cpu_rewrite(folders):
    for name, entry in read_manifest(folders["plugin"])["graphs"].items():
        model = onnx.load(str(folders["plugin"] / entry["file"]))
        nodes = _plugin_nodes(model)
        assert len(nodes) == (1 if name in ALIGNED else 0), name
        if not nodes:
            continue
        node = nodes[0]
        assert node.domain == PLUGIN_DOMAIN and len(node.input) == 5
        rewritten = plugin_ops.cpu_graph(model)
        (new,) = _plugin_nodes(rewritten)
        assert new.domain == plugin_ops.PYOP_DOMAIN and list(new.input) == list(node.input)
        attrs = {a.name: (a.s.decode() if a.s else a.i) for a in new.attribute}
        assert attrs == {"stride": "1,1", "padding": "1,1", "dilation": "1,1",
                         "deformable_groups": 16}
        # FP32 graphs: nothing else changes.
        assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]
        assert len(model.graph.node) == len(rewritten.graph.node)


@pytest.mark.parametrize("graph", ALIGNED)
def test_plugin_graph_equals_deformconv_graph(folders, graph):
    plugin = _plugin_session(onnx.load(str(folders["plugin"] / f"{graph}.onnx")))
    reference = ort.InferenceSession(str(folders["onnx"] / f"{graph}.onnx"),
                                     providers=["CPUExecutionProvider"])
    feeds = _inputs(plugin)  # another size than the export traced (66x98)
    out, expected = plugin.run(None, feeds)[0], reference.run(None, feeds)[0]
    assert out.shape == expected.shape == (1, 16, 64, 80)
    assert np.abs(out - expected).max() <= PLUGIN_GRAPH_ATOL


def test_a_wrong_dcn_attribute_is_detected(folders):
    """The comparison above is sensitive to the op: dilation 2 (same output size with
    padding 2) moves the step's output far beyond the tolerance."""
    model = onnx.load(str(folders["plugin"] / "step_backward.onnx"))
    (node,) = _plugin_nodes(model)
    for attr in node.attribute:
        if attr.name in ("dilation", "padding"):
            attr.ints[:] = [2, 2]
    wrong = _plugin_session(model)
    right = _plugin_session(onnx.load(str(folders["plugin"] / "step_backward.onnx")))
    feeds = _inputs(right)
    diff = np.abs(wrong.run(None, feeds)[0] - right.run(None, feeds)[0]).max()
    assert diff >= MUTATION_MIN_DIFF


def test_whole_clip_plugin_folder_equals_deformconv_folder(folders):
    # Three frames already run every graph, the aligned steps and compose included.
    rng = np.random.default_rng(1)
    frames = rng.random((3, 3, 64, 64), dtype=np.float32)
    plugin = OnnxRuntimeRunner(folders["plugin"])
    out = upscale_clip(plugin, frames, batch_size=2)
    expected = upscale_clip(OnnxRuntimeRunner(folders["onnx"]), frames, batch_size=2)
    assert out.shape == (3, 3, 256, 256)
    assert np.abs(out - expected).max() <= PLUGIN_CLIP_ATOL


def test_fp16_plugin_graph_matches_fp16_deformconv_graph(tmp_path):
    """FP16 plugin nodes run in FP32 between Casts on the CPU (the plugin accumulates in FP32;
    its features are FP16, so the tolerance is relative); the offsets reach it in FP32."""
    model = _model()
    for dcn in ("plugin", "onnx"):
        export_onnx(None, tmp_path / dcn, ExportOptions(dcn=dcn, precision="fp16"), model=model,
                    graphs=["step_backward"])
    graph = onnx.load(str(tmp_path / "plugin" / "step_backward.onnx"))
    (node,) = _plugin_nodes(graph)
    types = {v.name: v.type.tensor_type.elem_type
             for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    assert types[node.input[0]] == onnx.TensorProto.FLOAT16
    assert types[node.input[1]] == onnx.TensorProto.FLOAT  # positions stay exact
    rewritten = plugin_ops.cpu_graph(graph)
    casts = [n for n in rewritten.graph.node if n.name.startswith(_plugin_nodes(graph)[0].name)]
    assert [n.op_type for n in casts] == ["Cast"] * 5 + [PLUGIN_OP, "Cast"]
    plugin = _plugin_session(graph)
    reference = ort.InferenceSession(str(tmp_path / "onnx" / "step_backward.onnx"),
                                     providers=["CPUExecutionProvider"])
    feeds = _inputs(plugin)
    out, expected = plugin.run(None, feeds)[0], reference.run(None, feeds)[0]
    assert out.dtype == np.float16
    out, expected = out.astype(np.float32), expected.astype(np.float32)
    spread = expected.max() - expected.min()
    assert np.abs(out - expected).max() <= PLUGIN_FP16_GRAPH_RTOL * spread


def test_cpu_rewrite_refuses_a_node_without_bias(folders):
    model = onnx.load(str(folders["plugin"] / "step_group.onnx"))
    (node,) = _plugin_nodes(model)
    del node.input[4]
    with pytest.raises(ValueError, match="needs all 5 inputs"):
        plugin_ops.cpu_graph(model)


def test_missing_onnxruntime_extensions_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    with pytest.raises(BackendError, match="pip install onnxruntime-extensions"):
        plugin_ops._import_extensions()
