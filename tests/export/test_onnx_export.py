"""hirn-export onnx: complete, checked graphs equal to the PyTorch step modules."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from support import FP16_GRAPH_RTOL, ONNX_GRAPH_ATOL, REFERENCE_WEIGHTS, needs_shared, run_cli

from hirn.core.errors import ModelFolderError
from hirn.core.graphs import graph_specs
from hirn.export.manifest import FORMAT_VERSION, sha256_of, verify_folder
from hirn.export.onnx_export import SAMPLE_HEIGHT, SAMPLE_WIDTH, ExportOptions, export_onnx
from hirn.train import HiRN, load_model

pytestmark = needs_shared(REFERENCE_WEIGHTS)
GRAPHS = [s.name for s in graph_specs(64)]


@pytest.fixture(scope="module")
def exported(reference_graphs):
    """The reference checkpoint exported by the CLI, once per DCN form."""
    return {dcn: reference_graphs(dcn) for dcn in ("onnx", "decomposed")}


@pytest.fixture(scope="module")
def model():
    return load_model(REFERENCE_WEIGHTS)


def _inputs(spec, height, width, batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in spec["inputs"]:
        x = torch.rand(batch, t["shape"][1], height, width, generator=g)
        out.append((x - 0.5) * 6 if t["kind"] == "flow" else x)
    return out


def test_manifest_describes_every_graph(exported):
    manifest = verify_folder(exported["onnx"])
    assert list(manifest["graphs"]) == GRAPHS
    assert manifest["format_version"] == FORMAT_VERSION and manifest["opset"] == 19
    assert manifest["checkpoint"]["sha256"] == sha256_of(REFERENCE_WEIGHTS)
    assert {"hirn", "torch", "onnx"} <= set(manifest["tools"])
    assert manifest["model"]["mid_channels"] == 64 and manifest["model"]["num_blocks"] == 7
    step = manifest["graphs"]["step_group"]
    assert [t["name"] for t in step["inputs"]] == ["current", "backward", "forward", "feat_a",
                                                   "feat_b", "flow_a", "flow_b"]
    assert step["batchable"] is False and manifest["graphs"]["decode"]["batchable"] is True
    for name, entry in manifest["graphs"].items():
        graph = onnx.load(str(exported["onnx"] / entry["file"]))
        onnx.checker.check_model(graph, full_check=True)
        assert [i.name for i in graph.graph.input] == [t["name"] for t in entry["inputs"]]
        dims = graph.graph.input[0].type.tensor_type.shape.dim
        assert dims[2].dim_param and dims[3].dim_param, f"{name}: H and W must be dynamic"


def test_dcn_forms_use_the_right_operators(exported):
    ops = {dcn: {n.op_type for n in onnx.load(str(folder / "step_backward.onnx")).graph.node}
           for dcn, folder in exported.items()}
    assert "DeformConv" in ops["onnx"]
    assert "DeformConv" not in ops["decomposed"] and "GridSample" in ops["decomposed"]


@pytest.mark.parametrize("dcn", ["onnx", "decomposed"])
@pytest.mark.parametrize("graph", GRAPHS)
def test_graph_matches_its_step_module(exported, model, dcn, graph):
    folder = exported[dcn]
    entry = json.loads((folder / "manifest.json").read_text())["graphs"][graph]
    # Another size and batch than the export traced: the axes really are dynamic.
    batch = 3 if entry["batchable"] else 1
    inputs = _inputs(entry, SAMPLE_HEIGHT + 2, SAMPLE_WIDTH - 30, batch)
    with torch.no_grad():
        expected = model.steps.named()[graph](*inputs).numpy()
    session = ort.InferenceSession(str(folder / entry["file"]), providers=["CPUExecutionProvider"])
    got = session.run(None, {t["name"]: x.numpy() for t, x in zip(entry["inputs"], inputs)})[0]
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= ONNX_GRAPH_ATOL


def test_fp16_graphs_keep_flows_in_fp32(tmp_path):
    torch.manual_seed(0)
    small = HiRN(mid_channels=16, num_blocks=1).eval()
    manifest = export_onnx(None, tmp_path / "fp16", ExportOptions(precision="fp16"), model=small,
                           graphs=["step_backward"])
    step = manifest["graphs"]["step_backward"]
    dtypes = {t["name"]: t["dtype"] for t in step["inputs"]}
    assert dtypes == {"current": "float16", "feat_a": "float16", "feat_b": "float16",
                      "flow_a": "float32", "flow_b": "float32"}
    graph = onnx.load(str(tmp_path / "fp16" / "step_backward.onnx"))
    elem = {i.name: i.type.tensor_type.elem_type for i in graph.graph.input}
    assert elem["current"] == onnx.TensorProto.FLOAT16 and elem["flow_a"] == onnx.TensorProto.FLOAT
    deform = [n for n in graph.graph.node if n.op_type == "DeformConv"]
    assert deform, "the FP16 graph lost its DeformConv"
    # Numbers: close to the FP32 module (the trace computed no convolution).
    inputs = _inputs(step, 64, 80, 1, seed=5)
    with torch.no_grad():
        expected = small.steps.named()["step_backward"](*inputs).numpy()
    session = ort.InferenceSession(str(tmp_path / "fp16" / "step_backward.onnx"))
    feed = {t["name"]: x.numpy().astype(t["dtype"]) for t, x in zip(step["inputs"], inputs)}
    got = session.run(None, feed)[0].astype(np.float32)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= FP16_GRAPH_RTOL * scale


def _corrupt_copy(src, dst, how):
    shutil.copytree(src, dst)
    target = dst / "step_forward.onnx"
    if how == "missing":
        target.unlink()
    elif how == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif how == "altered":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif how == "other_version":
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["format_version"] = FORMAT_VERSION + 1
        (dst / "manifest.json").write_text(json.dumps(manifest))
    elif how == "no_manifest":
        (dst / "manifest.json").unlink()
    return target


@pytest.mark.parametrize("how, message", [
    ("missing", "step_forward.onnx is missing"),
    ("truncated", "step_forward.onnx has 1000 bytes"),
    ("altered", "step_forward.onnx does not match its SHA-256"),
    ("other_version", "format version"),
    ("no_manifest", "no manifest.json"),
])
def test_check_names_the_damaged_file(exported, tmp_path, how, message):
    damaged = tmp_path / "damaged"
    _corrupt_copy(exported["onnx"], damaged, how)
    with pytest.raises(ModelFolderError, match=message):
        verify_folder(damaged)
    result = run_cli("hirn-export", "check", str(damaged))
    assert result.returncode == 1 and message.split()[0] in result.stderr
    assert "Traceback" not in result.stderr


def test_check_accepts_an_intact_folder(exported):
    result = run_cli("hirn-export", "check", str(exported["onnx"]))
    assert result.returncode == 0 and "10 graphs intact" in result.stdout


def test_export_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    existing = tmp_path / "out"
    existing.mkdir()
    result = run_cli("hirn-export", "onnx", str(REFERENCE_WEIGHTS), "-o", str(existing))
    assert result.returncode == 1 and "already exists" in result.stderr

    import hirn.export.onnx_export as onnx_export

    def fail(module, spec, path, options):
        if spec.name == "compose":
            raise RuntimeError("disk full")
        path.write_bytes(b"partial")

    monkeypatch.setattr(onnx_export, "_export_graph", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_onnx(None, tmp_path / "new", model=HiRN(mid_channels=16, num_blocks=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_export_of_a_mismatched_checkpoint_is_a_clear_error(tmp_path):
    """Any model size exports (the checkpoint says which); weights that fit no HiRN do not."""
    state = HiRN(mid_channels=16, num_blocks=2).state_dict()
    del state["conv_last.weight"]
    torch.save({"params": state}, tmp_path / "other.pth")
    result = run_cli("hirn-export", "onnx", str(tmp_path / "other.pth"), "-o",
                     str(tmp_path / "out"))
    assert result.returncode == 1 and "1 missing keys" in result.stderr
    assert "mid_channels=16, num_blocks=2" in result.stderr
    assert not (tmp_path / "out").exists()
