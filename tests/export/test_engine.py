"""hirn-export engine / compare: the plain logic on the CPU; the TensorRT builds (trt mark)."""

import dataclasses
import hashlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from support import COMPARE_FP32_ATOL, run_cli

from hirn.core.graphs import graph_specs
from hirn.export.engine import (
    EngineBuildError,
    EngineOptions,
    build_engines,
    engine_entry,
    engines_manifest,
    fp32_flow_math,
    graph_profile,
    input_shapes,
    network_flags,
    parse_size,
    plan_graphs,
    prepare_folder,
    resolve_options,
)
from hirn.export.engine_cache import (
    ENGINES_NAME,
    EngineFolderError,
    ProfileError,
    atomic_file,
    check_compatible,
    check_shape,
    read_engines_manifest,
    reusable_engine,
    verify_engine_folder,
    write_engines_manifest,
)
from hirn.export.manifest import sha256_of
from hirn.export.onnx_export import ExportOptions, _describe, export_onnx
from hirn.train import HiRN

GPU = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
TRT_VERSION = "10.13.0.35"
SMALL = ["compose", "step_backward"]  # cheap graphs to export: flow math and a DCN


def _options(**changes) -> EngineOptions:
    base = EngineOptions((64, 64), (180, 320), (540, 960), max_batch=4)
    return dataclasses.replace(base, **changes)


def _manifest(precision="fp32", dcn="onnx", mid=16) -> dict:
    """An ONNX folder manifest as export_onnx writes it (graph hashes made up)."""
    graphs = {}
    for spec in graph_specs(mid):
        entry = _describe(spec, precision)
        entry.update(sha256=hashlib.sha256(spec.name.encode()).hexdigest(), bytes=1)
        graphs[spec.name] = entry
    return {"model": {"mid_channels": mid, "min_size": 64, "size_multiple": 2},
            "precision": precision, "dcn": dcn, "opset": 19, "checkpoint": None,
            "graphs": graphs}


def _fake_engine_folder(folder: Path, onnx_manifest: dict, options: EngineOptions) -> dict:
    """An engine folder as build_engines writes it, with made-up engine bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    options = resolve_options(options, onnx_manifest)
    plan = plan_graphs(onnx_manifest, options, TRT_VERSION, GPU, None)
    graphs = {}
    for name, planned in plan.items():
        (folder / planned["file"]).write_bytes(f"engine {planned['key']}".encode())
        graphs[name] = engine_entry(onnx_manifest["graphs"][name], planned, folder, 0)
    manifest = engines_manifest(folder, onnx_manifest, options, TRT_VERSION, GPU, None, graphs)
    write_engines_manifest(folder, manifest)
    return manifest


@pytest.fixture(scope="module")
def small_folders(tmp_path_factory):
    """Two cheap graphs of a small model: FP32 DeformConv and plugin forms, FP16 DeformConv,
    and FP32 DeformConv of other weights."""
    root = tmp_path_factory.mktemp("engine")
    torch.manual_seed(0)
    model = HiRN(mid_channels=16, num_blocks=1)
    other = HiRN(mid_channels=16, num_blocks=1)
    folders = {}
    for key, m, dcn, precision in [("onnx", model, "onnx", "fp32"),
                                   ("plugin", model, "plugin", "fp32"),
                                   ("fp16", model, "onnx", "fp16"),
                                   ("other", other, "onnx", "fp32")]:
        export_onnx(None, root / key, ExportOptions(dcn=dcn, precision=precision), model=m,
                    graphs=SMALL)
        folders[key] = root / key
    return folders


def test_parse_size():
    assert parse_size("180x320") == (180, 320) and parse_size(" 64X96 ") == (64, 96)
    for bad in ("180*320", "180x", "x320", "-64x64", "64x64x3"):
        with pytest.raises(EngineBuildError, match="HxW"):
            parse_size(bad)


@pytest.mark.parametrize("changes, message", [
    ({"min_size": (63, 64)}, "multiples of 2"),
    ({"min_size": (62, 64)}, "at least 64x64"),
    ({"opt_size": (64, 1000)}, "min <= opt <= max"),
    ({"min_size": (200, 64)}, "min <= opt <= max"),
    ({"max_batch": 0}, "--max-batch"),
    ({"workspace_mib": 0}, "--workspace"),
    ({"precision": "fp16"}, "export the folder with hirn-export onnx --precision fp16"),
    ({"dcn": "plugin"}, "export with --dcn plugin"),
    ({"plugin_lib": Path("/x.so")}, "--plugin-lib is for folders exported with --dcn plugin"),
])
def test_option_mistakes_are_explained(changes, message):
    with pytest.raises(EngineBuildError, match=message):
        resolve_options(_options(**changes), _manifest())


def test_options_take_precision_dcn_and_plugin_from_the_folder(tmp_path):
    resolved = resolve_options(_options(), _manifest("fp16", "decomposed"))
    assert (resolved.precision, resolved.dcn, resolved.plugin_lib) == ("fp16", "builtin", None)
    with pytest.raises(EngineBuildError, match="pass --plugin-lib"):
        resolve_options(_options(), _manifest(dcn="plugin"))
    with pytest.raises(EngineBuildError, match="does not exist"):
        resolve_options(_options(plugin_lib=tmp_path / "none.so"), _manifest(dcn="plugin"))
    (tmp_path / "lib.so").write_bytes(b"\x7fELF")
    resolved = resolve_options(_options(plugin_lib=tmp_path / "lib.so"), _manifest(dcn="plugin"))
    assert resolved.dcn == "plugin" and resolved.plugin_lib == (tmp_path / "lib.so").resolve()


def test_profiles_batch_only_the_batchable_graphs():
    manifest = _manifest()
    options = resolve_options(_options(max_batch=3), manifest)
    assert graph_profile(manifest["graphs"]["decode"], options) == {
        "min": [1, 64, 64], "opt": [3, 180, 320], "max": [3, 540, 960]}
    assert graph_profile(manifest["graphs"]["step_group"], options)["max"] == [1, 540, 960]
    shapes = input_shapes(manifest["graphs"]["step_group"],
                          graph_profile(manifest["graphs"]["step_group"], options))
    assert list(shapes) == ["current", "backward", "forward", "feat_a", "feat_b", "flow_a",
                            "flow_b"]
    assert shapes["flow_a"] == ((1, 2, 64, 64), (1, 2, 180, 320), (1, 2, 540, 960))
    assert shapes["current"][2] == (1, 16, 540, 960)


def test_every_build_input_changes_the_engine_key():
    manifest = _manifest()
    options = resolve_options(_options(), manifest)
    base = plan_graphs(manifest, options, TRT_VERSION, GPU, None)
    assert base == plan_graphs(manifest, options, TRT_VERSION, GPU, None)  # deterministic
    assert len({p["key"] for p in base.values()}) == len(base)  # one key per graph
    assert all(p["file"] == f"{name}-{p['key'][:16]}.engine" for name, p in base.items())
    altered = json.loads(json.dumps(manifest))
    altered["graphs"]["decode"]["sha256"] = "f" * 64
    variants = {
        "onnx graph": plan_graphs(altered, options, TRT_VERSION, GPU, None),
        "opt size": plan_graphs(manifest, dataclasses.replace(options, opt_size=(128, 128)),
                                TRT_VERSION, GPU, None),
        "max size": plan_graphs(manifest, dataclasses.replace(options, max_size=(720, 1280)),
                                TRT_VERSION, GPU, None),
        "workspace": plan_graphs(manifest, dataclasses.replace(options, workspace_mib=512),
                                 TRT_VERSION, GPU, None),
        "precision": plan_graphs(manifest, dataclasses.replace(options, precision="fp16"),
                                 TRT_VERSION, GPU, None),
        "dcn": plan_graphs(manifest, dataclasses.replace(options, dcn="plugin"), TRT_VERSION,
                           GPU, None),
        "tensorrt": plan_graphs(manifest, options, "10.13.2.6", GPU, None),
        "gpu name": plan_graphs(manifest, options, TRT_VERSION, {**GPU, "name": "NVIDIA L4"},
                                None),
        "capability": plan_graphs(manifest, options, TRT_VERSION,
                                  {**GPU, "compute_capability": "8.9"}, None),
        "plugin": plan_graphs(manifest, options, TRT_VERSION, GPU, "a" * 64),
    }
    for what, plan in variants.items():
        changed = [name for name in base if plan[name]["key"] != base[name]["key"]]
        expected = ["decode"] if what == "onnx graph" else list(base)
        assert changed == expected, what
    # The batch is part of the batchable graphs' profile only: step engines are kept.
    batch = plan_graphs(manifest, dataclasses.replace(options, max_batch=8), TRT_VERSION, GPU,
                        None)
    assert {n for n in base if batch[n]["key"] != base[n]["key"]} == {
        n for n, g in manifest["graphs"].items() if g["batchable"]}


def test_fp16_folders_keep_flow_math_fp32(small_folders):
    folder = small_folders["fp16"]
    compose = onnx.load(str(folder / "compose.onnx"))
    assert fp32_flow_math(compose, "compose") == [n.name for n in compose.graph.node]
    step = fp32_flow_math(onnx.load(str(folder / "step_backward.onnx")), "step_backward")
    assert len(step) == 2 and all("GridSample" in name for name in step)  # two flow warps


def _grid_sample_graph(grid_type: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    grid = helper.make_tensor_value_info("grid", grid_type, [1, 8, 8, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])
    node = helper.make_node("Cast", ["grid"], ["g"], name="cast", to=grid_type)
    sample = helper.make_node("GridSample", ["x", "g"], ["y"], name="warp")
    return helper.make_model(helper.make_graph([node, sample], "g", [x, grid], [y]),
                             opset_imports=[helper.make_opsetid("", 19)])


def test_fp16_grids_and_fp16_flow_graphs_are_refused():
    assert fp32_flow_math(_grid_sample_graph(TensorProto.FLOAT), "step_group") == ["warp"]
    with pytest.raises(EngineBuildError, match="warp .GridSample. computes flow math in FP16"):
        fp32_flow_math(_grid_sample_graph(TensorProto.FLOAT16), "step_group")
    with pytest.raises(EngineBuildError, match="cast .Cast. computes flow math in FP16"):
        fp32_flow_math(_grid_sample_graph(TensorProto.FLOAT16), "compose")


def test_engine_folder_manifest_cache_and_checks(tmp_path):
    onnx_manifest = _manifest()
    folder = tmp_path / "engines"
    manifest = _fake_engine_folder(folder, onnx_manifest, _options())
    assert verify_engine_folder(folder) == manifest == read_engines_manifest(folder)
    assert manifest["graphs"]["decode"]["profile"]["max"] == [4, 540, 960]
    assert (manifest["tensorrt"], manifest["gpu"], manifest["precision"]) == (
        TRT_VERSION, GPU, "fp32")
    # The cache: same key and intact file -> reused; another key or an altered file -> built.
    key = manifest["graphs"]["encode"]["key"]
    assert reusable_engine(folder, manifest, "encode", key) == manifest["graphs"]["encode"]
    assert reusable_engine(folder, manifest, "encode", "0" * 64) is None
    assert reusable_engine(folder, None, "encode", key) is None
    engine = folder / manifest["graphs"]["encode"]["file"]
    engine.write_bytes(engine.read_bytes()[:-1] + b"!")
    assert reusable_engine(folder, manifest, "encode", key) is None
    with pytest.raises(EngineFolderError, match="altered; rebuild"):
        verify_engine_folder(folder)
    engine.unlink()
    with pytest.raises(EngineFolderError, match="is missing"):
        verify_engine_folder(folder)
    (folder / ENGINES_NAME).write_text("{}")
    with pytest.raises(EngineFolderError, match="not a hirn engine manifest"):
        read_engines_manifest(folder)


def test_engines_run_only_where_they_were_built():
    manifest = {"tensorrt": TRT_VERSION, "gpu": GPU}
    check_compatible(manifest, TRT_VERSION, dict(GPU))
    with pytest.raises(EngineFolderError, match="rebuild them here"):
        check_compatible(manifest, "10.14.1", GPU)
    with pytest.raises(EngineFolderError, match="NVIDIA L4"):
        check_compatible(manifest, TRT_VERSION, {**GPU, "name": "NVIDIA L4"})


def test_shapes_outside_the_profile_are_refused():
    entry = {"profile": {"min": [1, 64, 64], "opt": [4, 180, 320], "max": [4, 540, 960]}}
    check_shape("decode", entry, 4, 540, 960)
    check_shape("decode", entry, 1, 64, 64)
    for batch, h, w in [(5, 64, 64), (1, 62, 64), (1, 64, 962), (0, 64, 64)]:
        with pytest.raises(ProfileError, match="outside the engines' profile"):
            check_shape("decode", entry, batch, h, w)


def test_folder_preparation(tmp_path):
    assert prepare_folder(tmp_path / "new") is None and (tmp_path / "new").is_dir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(EngineBuildError, match="not empty and holds no engines.json"):
        prepare_folder(tmp_path / "other")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EngineBuildError, match="not a folder"):
        prepare_folder(tmp_path / "file")
    manifest = _fake_engine_folder(tmp_path / "engines", _manifest(), _options())
    assert prepare_folder(tmp_path / "engines") == manifest


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "engine.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["engine.bin"]
    with atomic_file(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["engine.bin"]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None,
                    reason="checks the message shown where TensorRT is absent")
def test_cli_without_tensorrt_says_what_to_install(small_folders, tmp_path):
    from click.testing import CliRunner

    from hirn.export.cli import main

    cli = CliRunner()
    result = cli.invoke(main, ["engine", str(small_folders["fp16"]), "-o",
                               str(tmp_path / "engines"), "--min", "64x64", "--opt", "64x96",
                               "--max", "128x128", "--precision", "fp16"])
    assert result.exit_code == 1
    assert "needs TensorRT: pip install tensorrt" in result.output
    assert not (tmp_path / "engines").exists()
    result = cli.invoke(main, ["engine", str(small_folders["fp16"]), "-o", str(tmp_path / "e"),
                               "--min", "64x64", "--opt", "64x96", "--max", "97x128"])
    assert result.exit_code == 1 and "--max 97x128: sizes must be multiples of 2" in result.output
    result = cli.invoke(main, ["compare", str(small_folders["fp16"]), str(tmp_path / "none")])
    assert result.exit_code == 1 and "engine folder not found" in result.output


def _compare(folders, candidate_key, **kwargs):
    pytest.importorskip("polygraphy", reason="compare runs through Polygraphy "
                                             "(pip install polygraphy)")
    from hirn.export.compare import compare_graphs, onnxruntime_runner
    from hirn.export.manifest import read_manifest

    reference = read_manifest(folders["onnx"])
    reference["graphs"] = {k: v for k, v in reference["graphs"].items() if k in SMALL}
    engines = {"precision": "fp32", "graphs": {
        name: {**entry, "onnx_sha256": entry["sha256"],
               "profile": graph_profile(entry, EngineOptions((64, 64), (64, 96), (128, 128)))}
        for name, entry in reference["graphs"].items()}}
    return compare_graphs(folders["onnx"], engines,
                          lambda graph: onnxruntime_runner(folders[candidate_key], graph,
                                                           name="candidate"), **kwargs)


def test_compare_passes_equal_graphs_and_fails_different_ones(small_folders):
    """The harness on the CPU: the plugin graphs stand in for engines of the same weights,
    graphs of other weights for a wrong engine."""
    same = _compare(small_folders, "plugin")
    assert [r.graph for r in same] == SMALL and all(r.passed for r in same)
    assert same[1].max_abs <= COMPARE_FP32_ATOL and same[1].shape == (1, 64, 96)
    assert same[0].shape == (2, 64, 96)  # compose is batchable
    different = _compare(small_folders, "other", height=64, width=64)
    assert not different[1].passed and different[1].max_rel > 1e-2
    with pytest.raises(EngineBuildError, match="outside the engines' profile"):
        _compare(small_folders, "plugin", height=256)


def test_compare_input_generation_and_pairing(small_folders):
    from hirn.export.compare import check_pairing, error_stats, graph_inputs
    from hirn.export.manifest import read_manifest

    manifest = read_manifest(small_folders["fp16"])
    feeds = graph_inputs(manifest["graphs"]["step_backward"], 1, 64, 80)
    assert {k: (v.shape, v.dtype.name) for k, v in feeds.items()} == {
        "current": ((1, 16, 64, 80), "float16"), "feat_a": ((1, 16, 64, 80), "float16"),
        "feat_b": ((1, 16, 64, 80), "float16"), "flow_a": ((1, 2, 64, 80), "float32"),
        "flow_b": ((1, 2, 64, 80), "float32")}
    assert feeds["flow_a"].min() < -2 and feeds["current"].min() >= 0
    assert error_stats(np.array([1.0, -4.0]), np.array([1.5, -4.0])) == (0.5, 0.125)
    engines = {"graphs": {"compose": {"onnx_sha256": "0" * 64}}}
    with pytest.raises(EngineBuildError, match="was not built from this ONNX folder"):
        check_pairing(manifest, engines)


def _stand_in_tensorrt(calls: list) -> types.ModuleType:
    """A stand-in for the ``tensorrt`` module recording the calls build_engines makes. It
    checks this module's wiring (order, arguments, cache, files), not TensorRT itself."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = TRT_VERSION
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    trt.BuilderFlag = types.SimpleNamespace(TF32=6)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE=0)
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None})
    trt.init_libnvinfer_plugins = lambda logger, namespace: calls.append(("init_plugins",))
    registry = types.SimpleNamespace(
        load_library=lambda path: calls.append(("load_library", Path(path).name)) or "handle")
    trt.get_plugin_registry = lambda: registry

    class Config:
        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", size))

        def add_optimization_profile(self, profile):
            calls.append(("profile", profile.shapes))

        def create_timing_cache(self, data):
            calls.append(("timing_cache_in", bytes(data)))
            return types.SimpleNamespace(data=bytes(data),
                                         serialize=lambda: bytes(data) + b"+")

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (low, opt, high)

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse_from_file(self, path):
            self.network.graph = Path(path).stem
            return True

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network", flags))
            return types.SimpleNamespace()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", network.graph))
            return f"engine of {network.graph}".encode()

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


def test_strongly_typed_flag_only_where_it_is_not_deprecated():
    """TensorRT 11 deprecates NetworkDefinitionCreationFlag.STRONGLY_TYPED (every network is
    strongly typed) and ignores it; 10.x needs it to keep the graphs' FP32 flow math."""
    flag = types.SimpleNamespace(STRONGLY_TYPED=0)
    for version, flags in [("10.13.0.35", 1), ("10.16.0", 1), ("11.1.0.106", 0), ("12.0", 0)]:
        trt = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=flag)
        assert network_flags(trt) == flags, version


def test_build_engines_wiring_with_a_stand_in_for_tensorrt(small_folders, tmp_path,
                                                           monkeypatch):
    """build_engines run on the CPU against a recording stand-in for TensorRT: the calls it
    makes, the engine cache (skip, rebuild, stale files), the timing cache and the plugin."""
    from hirn.export import engine as engine_module

    calls = []
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in_tensorrt(calls))
    monkeypatch.setattr(engine_module, "current_gpu", lambda: GPU)
    monkeypatch.setattr(engine_module, "_LOADED_PLUGINS", {})
    options = EngineOptions((64, 64), (64, 96), (128, 128), max_batch=2, workspace_mib=256)
    out = tmp_path / "engines"
    manifest = build_engines(small_folders["onnx"], out, options)
    assert [c for c in calls if c[0] == "build"] == [("build", g) for g in SMALL]
    assert ("network", 1) in calls and ("clear_flag", 6) in calls
    assert ("workspace", 256 << 20) in calls
    profiles = [c[1] for c in calls if c[0] == "profile"]
    assert profiles[0] == {"flow_a": ((1, 2, 64, 64), (2, 2, 64, 96), (2, 2, 128, 128)),
                           "flow_b": ((1, 2, 64, 64), (2, 2, 64, 96), (2, 2, 128, 128))}
    assert profiles[1]["current"] == ((1, 16, 64, 64), (1, 16, 64, 96), (1, 16, 128, 128))
    # One timing cache shared by the graphs: the second build starts from the first's.
    assert [c[1] for c in calls if c[0] == "timing_cache_in"] == [b"", b"+"]
    assert (out / "timing.cache").read_bytes() == b"++"
    assert verify_engine_folder(out) == manifest and manifest["tensorrt"] == TRT_VERSION
    assert (out / manifest["graphs"]["compose"]["file"]).read_bytes() == b"engine of compose"

    calls.clear()
    assert build_engines(small_folders["onnx"], out, options) == manifest
    assert not [c for c in calls if c[0] == "build"]  # nothing changed: nothing built

    calls.clear()
    wider = build_engines(small_folders["onnx"], out,
                          dataclasses.replace(options, max_size=(128, 192)))
    assert [c[1] for c in calls if c[0] == "build"] == SMALL
    assert sorted(p.name for p in out.glob("*.engine")) == sorted(
        g["file"] for g in wider["graphs"].values())  # the old engines are gone

    calls.clear()
    library = tmp_path / "libhirn_plugins.so"
    library.write_bytes(b"\x7fELF plugin")
    plugin = build_engines(small_folders["plugin"], tmp_path / "plugin_engines",
                           dataclasses.replace(options, plugin_lib=library))
    assert plugin["plugin_library"]["sha256"] == sha256_of(library)
    assert (tmp_path / "plugin_engines" / "libhirn_plugins.so").read_bytes() == \
        library.read_bytes()
    assert calls.count(("load_library", "libhirn_plugins.so")) == 1
    assert {g["key"] for g in plugin["graphs"].values()}.isdisjoint(
        g["key"] for g in manifest["graphs"].values())


# ---- needs TensorRT and a GPU ---------------------------------------------------------------

@pytest.mark.trt
def test_build_engines_and_skip_unchanged_rebuilds(tmp_path):
    torch.manual_seed(0)
    export_onnx(None, tmp_path / "onnx", ExportOptions(dcn="onnx", precision="fp16"),
                model=HiRN(mid_channels=16, num_blocks=1))
    options = EngineOptions((64, 64), (64, 96), (128, 128), max_batch=2)
    messages = []
    manifest = build_engines(tmp_path / "onnx", tmp_path / "engines", options, messages.append)
    assert verify_engine_folder(tmp_path / "engines") == manifest
    assert (tmp_path / "engines" / "timing.cache").is_file()
    assert sum("building" in m for m in messages) == len(manifest["graphs"]) == 10
    assert manifest["graphs"]["compose"]["fp32_flow_nodes"] > 0
    messages.clear()
    again = build_engines(tmp_path / "onnx", tmp_path / "engines", options, messages.append)
    assert again["graphs"] == manifest["graphs"]
    assert all("up to date" in m for m in messages)
    messages.clear()
    wider = build_engines(tmp_path / "onnx", tmp_path / "engines",
                          dataclasses.replace(options, max_size=(128, 192)), messages.append)
    assert all("building" in m for m in messages)
    assert sorted(p.name for p in (tmp_path / "engines").glob("*.engine")) == sorted(
        g["file"] for g in wider["graphs"].values())
    result = run_cli("hirn-export", "compare", str(tmp_path / "onnx"), str(tmp_path / "engines"))
    assert result.returncode == 0, result.stdout + result.stderr
