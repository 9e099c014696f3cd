"""TensorRT engines for the per-step ONNX graphs: ``hirn-export engine``.

One engine per graph, built with the TensorRT Python API (10.x and 11.x): ``Builder``, a
strongly typed ``NetworkDefinition`` filled by ``OnnxParser``, one optimization profile
(frame batch for the batchable graphs; LR height and width for all, the decode output being
x4 of them), a timing cache shared by the graphs of a folder, and an engine cache keyed by
:func:`hirn.export.engine_cache.engine_key`.

Why strongly typed, and not the FP16 builder flag with FP32 layers pinned: the FP16 ONNX
graphs already say which tensors are FP16 (features, convolutions, the plugin) and which
stay FP32 (frames, flows, the sampling grids and GridSample, flow chaining, the ``flow`` and
``compose`` graphs whole). A strongly typed network keeps exactly those types, so the flow math
is FP32 by construction instead of by matching layer names after the parser has renamed and
fused them. TensorRT 11 makes every network strongly typed (its ``STRONGLY_TYPED`` flag is
deprecated and ignored, so it is passed to 10.x only) and removes the FP16 builder flag: this
is the one path that works on 10.x and 11.x alike. The
engine's precision is therefore the ONNX folder's: export with ``--precision fp16`` for FP16
engines. :func:`fp32_flow_math` checks, before building, that an FP16 folder keeps its grids
FP32. TF32 is off: it would round the FP32 flow math to 10-bit mantissas, FP16's precision.

Everything but :func:`build_engines`' TensorRT calls is plain logic, tested on the CPU.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from hirn.core.constants import FP32_GRAPHS, MIN_SIZE, SIZE_MULTIPLE
from hirn.core.errors import EngineBuildError, EngineFolderError

from .engine_cache import (
    ENGINES_NAME,
    FORMAT,
    FORMAT_VERSION,
    PLUGIN_LIBRARY_NAME,
    TENSORRT_HINT,
    TIMING_CACHE_NAME,
    atomic_file,
    current_gpu,
    engine_file_name,
    engine_key,
    read_engines_manifest,
    reusable_engine,
    write_engines_manifest,
)
from .manifest import sha256_of, verify_folder

BUILD_RECIPE = 1  # bump when this module changes what an engine holds (part of the key)


@dataclass(frozen=True)
class EngineOptions:
    """How to build; ``hirn-export engine`` options map onto these fields one to one."""

    min_size: tuple[int, int]            # smallest LR frame (height, width)
    opt_size: tuple[int, int]            # the size TensorRT tunes for
    max_size: tuple[int, int]            # largest LR frame
    precision: str | None = None         # fp32 | fp16; None: the ONNX folder's
    dcn: str | None = None               # builtin | plugin; None: from the ONNX folder
    max_batch: int = 4                   # frames per call of the batchable graphs
    workspace_mib: int | None = None     # builder workspace limit; None: TensorRT's default
    plugin_lib: Path | None = None       # libhirn_plugins.so, for --dcn plugin folders


def parse_size(text: str) -> tuple[int, int]:
    """``"180x320"`` -> ``(180, 320)`` (height x width)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise EngineBuildError(f"size {text!r} must look like HxW, e.g. 180x320 (height x width)")
    return int(match.group(1)), int(match.group(2))


def resolve_options(options: EngineOptions, onnx_manifest: dict) -> EngineOptions:
    """Check ``options`` against each other and the ONNX folder; fill precision and dcn."""
    model = onnx_manifest["model"]
    least, multiple = model.get("min_size", MIN_SIZE), model.get("size_multiple", SIZE_MULTIPLE)
    sizes = {"min": options.min_size, "opt": options.opt_size, "max": options.max_size}
    for label, (h, w) in sizes.items():
        if h < least or w < least or h % multiple or w % multiple:
            raise EngineBuildError(f"--{label} {h}x{w}: sizes must be multiples of {multiple} "
                                   f"and at least {least}x{least} (frames are padded to that)")
    for axis, name in enumerate(("height", "width")):
        lo, opt, hi = (sizes[k][axis] for k in ("min", "opt", "max"))
        if not lo <= opt <= hi:
            raise EngineBuildError(f"{name}s must satisfy min <= opt <= max, got {lo}, {opt}, "
                                   f"{hi}")
    if options.max_batch < 1:
        raise EngineBuildError(f"--max-batch must be at least 1, got {options.max_batch}")
    if options.workspace_mib is not None and options.workspace_mib < 1:
        raise EngineBuildError(f"--workspace must be at least 1 MiB, got {options.workspace_mib}")
    folder_precision = onnx_manifest["precision"]
    if options.precision not in (None, folder_precision):
        raise EngineBuildError(
            f"--precision {options.precision} but the ONNX folder is {folder_precision}: engines "
            "are strongly typed and keep the graphs' types; export the folder with "
            f"hirn-export onnx --precision {options.precision}")
    folder_dcn = "plugin" if onnx_manifest["dcn"] == "plugin" else "builtin"
    if options.dcn not in (None, folder_dcn):
        raise EngineBuildError(
            f"--dcn {options.dcn} but the ONNX folder was exported with --dcn "
            f"{onnx_manifest['dcn']}; export with --dcn "
            f"{'plugin' if options.dcn == 'plugin' else 'onnx'} for --dcn {options.dcn} engines")
    plugin_lib = options.plugin_lib
    if folder_dcn == "plugin":
        if plugin_lib is None:
            raise EngineBuildError("this folder uses the HirnDeformConv plugin: pass "
                                   "--plugin-lib build/libhirn_plugins.so (plugins/README.md "
                                   "says how to build it)")
        if not Path(plugin_lib).is_file():
            raise EngineBuildError(f"--plugin-lib {plugin_lib} does not exist")
        plugin_lib = Path(plugin_lib).resolve()
    elif plugin_lib is not None:
        raise EngineBuildError("--plugin-lib is for folders exported with --dcn plugin only")
    return EngineOptions(options.min_size, options.opt_size, options.max_size, folder_precision,
                         folder_dcn, options.max_batch, options.workspace_mib, plugin_lib)


def graph_profile(entry: dict, options: EngineOptions) -> dict[str, list[int]]:
    """``{"min" | "opt" | "max": [batch, height, width]}`` of one graph's inputs."""
    batch = (1, options.max_batch, options.max_batch) if entry["batchable"] else (1, 1, 1)
    sizes = (options.min_size, options.opt_size, options.max_size)
    return {k: [b, *s] for k, b, s in zip(("min", "opt", "max"), batch, sizes)}


def input_shapes(entry: dict, profile: dict) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Per input of a graph: (min, opt, max) shapes ``[batch, channels, height, width]``."""
    shapes = {}
    for tensor in entry["inputs"]:
        channels = tensor["shape"][1]
        shapes[tensor["name"]] = tuple((b, channels, h, w) for b, h, w in
                                       (profile["min"], profile["opt"], profile["max"]))
    return shapes


def build_settings(options: EngineOptions, profile: dict) -> dict:
    """Every option that shapes one engine, as JSON values (hashed into its key)."""
    return {"recipe": BUILD_RECIPE, "precision": options.precision, "dcn": options.dcn,
            "profile": profile, "workspace_mib": options.workspace_mib,
            "strongly_typed": True, "tf32": False}


def plan_graphs(onnx_manifest: dict, options: EngineOptions, tensorrt_version: str,
                gpu: dict, plugin_sha256: str | None) -> dict[str, dict]:
    """Per graph: ``{"profile", "key", "file"}`` of its engine (options already resolved)."""
    plan = {}
    for name, entry in onnx_manifest["graphs"].items():
        profile = graph_profile(entry, options)
        key = engine_key(entry["sha256"], name, build_settings(options, profile),
                         tensorrt_version, gpu, plugin_sha256)
        plan[name] = {"profile": profile, "key": key, "file": engine_file_name(name, key)}
    return plan


def engine_entry(onnx_entry: dict, planned: dict, folder: Path, fp32_nodes: int) -> dict:
    """One graph's record in ``engines.json``, for the engine file already in ``folder``."""
    path = Path(folder) / planned["file"]
    return {"file": planned["file"], "key": planned["key"], "sha256": sha256_of(path),
            "bytes": path.stat().st_size, "onnx_file": onnx_entry["file"],
            "onnx_sha256": onnx_entry["sha256"], "batchable": onnx_entry["batchable"],
            "profile": planned["profile"], "fp32_flow_nodes": fp32_nodes,
            "inputs": onnx_entry["inputs"], "outputs": onnx_entry["outputs"]}


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)  # skips our custom op's outputs
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def fp32_flow_math(model: onnx.ModelProto, graph: str) -> list[str]:
    """Names of the FP32 flow-math nodes of a graph: every node of ``flow`` and ``compose``,
    elsewhere the GridSample nodes. Raises :class:`EngineBuildError` where one computes in
    FP16 (a grid or a flow graph tensor that is FP16)."""
    types = _tensor_types(model)
    fp16 = onnx.TensorProto.FLOAT16
    pinned = []
    for node in model.graph.node:
        if graph in FP32_GRAPHS:
            bad = [t for t in (*node.input, *node.output) if types.get(t) == fp16]
        elif node.op_type == "GridSample":
            bad = [t for t in node.input[1:2] if types.get(t) != onnx.TensorProto.FLOAT]
        else:
            continue
        if bad:
            raise EngineBuildError(f"{graph}: node {node.name} ({node.op_type}) computes flow "
                                   f"math in FP16 ({bad}); re-export the folder with this hirn")
        pinned.append(node.name)
    return pinned


def prepare_folder(folder: Path) -> dict | None:
    """Create ``folder`` or accept an engine folder; return its previous manifest if any."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EngineBuildError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / ENGINES_NAME).is_file():
            raise EngineBuildError(f"{folder} is not empty and holds no {ENGINES_NAME}: choose a "
                                   "new or empty folder for the engines")
        try:
            return read_engines_manifest(folder)
        except EngineFolderError:
            return None  # an older or damaged manifest: everything is rebuilt
    folder.mkdir(parents=True, exist_ok=True)
    return None


def engines_manifest(onnx_dir: Path, onnx_manifest: dict, options: EngineOptions,
                     tensorrt_version: str, gpu: dict, plugin: dict | None,
                     graphs: dict) -> dict:
    """The content of ``engines.json``."""
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": onnx_manifest["model"], "precision": options.precision, "dcn": options.dcn,
        "onnx": {"folder": str(Path(onnx_dir).resolve()), "dcn": onnx_manifest["dcn"],
                 "opset": onnx_manifest["opset"], "checkpoint": onnx_manifest["checkpoint"]},
        "profile": {"min": list(options.min_size), "opt": list(options.opt_size),
                    "max": list(options.max_size), "max_batch": options.max_batch},
        "workspace_mib": options.workspace_mib, "tensorrt": tensorrt_version, "gpu": gpu,
        "plugin_library": plugin, "timing_cache": TIMING_CACHE_NAME, "graphs": graphs,
    }


def import_tensorrt():
    """The ``tensorrt`` module, or :class:`EngineBuildError` saying how to install it."""
    try:
        import tensorrt
    except ImportError as exc:
        raise EngineBuildError(f"building engines needs TensorRT: {TENSORRT_HINT}") from exc
    return tensorrt


_LOADED_PLUGINS: dict[str, object] = {}  # SHA-256 of a loaded plugin library -> its handle


def load_plugin_library(trt, path: Path) -> None:
    """Register the HirnDeformConv creators with TensorRT, once per process and library."""
    digest = sha256_of(path)
    if digest in _LOADED_PLUGINS:
        return
    if _LOADED_PLUGINS:
        raise EngineBuildError(f"another build of the HirnDeformConv plugin is loaded in this "
                               f"process; {path} cannot replace it: use a new process")
    handle = trt.get_plugin_registry().load_library(str(path))
    if not handle:
        raise EngineBuildError(f"TensorRT could not load the plugin library {path} (see the "
                               "TensorRT log above); rebuild it for this TensorRT version")
    _LOADED_PLUGINS[digest] = handle


def _copy_plugin(options: EngineOptions, folder: Path) -> dict | None:
    """Copy the plugin library beside the engines (the runtime loads that copy)."""
    if options.dcn != "plugin":
        return None
    target = folder / PLUGIN_LIBRARY_NAME
    digest = sha256_of(options.plugin_lib)
    if not target.is_file() or sha256_of(target) != digest:
        with atomic_file(target) as f, open(options.plugin_lib, "rb") as src:
            shutil.copyfileobj(src, f)
    return {"file": PLUGIN_LIBRARY_NAME, "sha256": digest, "bytes": target.stat().st_size,
            "source": str(options.plugin_lib)}


def network_flags(trt) -> int:
    """``create_network`` flags: STRONGLY_TYPED on TensorRT 10; 11 deprecates the flag (every
    network is strongly typed there) and ignores it, so nothing is passed."""
    if int(trt.__version__.split(".")[0]) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _build_one(trt, logger, onnx_path: Path, shapes: dict, options: EngineOptions,
               timing_cache: Path, target: Path) -> None:
    """Parse, configure and build one engine; write it and the timing cache atomically."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.clear_flag(trt.BuilderFlag.TF32)
    if options.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file()
                                       else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start an empty one.
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build {onnx_path.name} (see its log above)")
    with atomic_file(target) as f:
        f.write(serialized)
    with atomic_file(timing_cache) as f:
        f.write(config.get_timing_cache().serialize())


def build_engines(onnx_dir: str | Path, engine_dir: str | Path, options: EngineOptions,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Build (or reuse) one engine per graph of ``onnx_dir`` in ``engine_dir``.

    Returns:
        The manifest written as ``engine_dir/engines.json``.
    """
    onnx_dir, engine_dir = Path(onnx_dir), Path(engine_dir)
    onnx_manifest = verify_folder(onnx_dir)
    options = resolve_options(options, onnx_manifest)
    trt = import_tensorrt()
    try:
        gpu = current_gpu()
    except EngineFolderError as exc:
        raise EngineBuildError(str(exc)) from exc
    pinned = {}
    if options.precision == "fp16":
        for name, entry in onnx_manifest["graphs"].items():
            pinned[name] = fp32_flow_math(onnx.load(str(onnx_dir / entry["file"])), name)
    previous = prepare_folder(engine_dir)
    plugin = _copy_plugin(options, engine_dir)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own ModulatedDeformConv2d
    if plugin:
        load_plugin_library(trt, engine_dir / PLUGIN_LIBRARY_NAME)
    report = progress or (lambda message: None)
    plan = plan_graphs(onnx_manifest, options, trt.__version__, gpu,
                       plugin["sha256"] if plugin else None)
    graphs: dict = {}
    for name, planned in plan.items():
        entry = onnx_manifest["graphs"][name]
        if reusable_engine(engine_dir, previous, name, planned["key"]):
            report(f"{name}: up to date ({planned['file']})")
        else:
            report(f"{name}: building {planned['file']}")
            _build_one(trt, logger, onnx_dir / entry["file"],
                       input_shapes(entry, planned["profile"]), options,
                       engine_dir / TIMING_CACHE_NAME, engine_dir / planned["file"])
        graphs[name] = engine_entry(entry, planned, engine_dir, len(pinned.get(name, [])))
        # Written after every engine: an interrupted build resumes where it stopped.
        manifest = engines_manifest(onnx_dir, onnx_manifest, options, trt.__version__, gpu,
                                    plugin, graphs)
        write_engines_manifest(engine_dir, manifest)
    kept = {g["file"] for g in graphs.values()}
    for stale in engine_dir.glob("*.engine"):
        if stale.name not in kept:
            stale.unlink()
    if plugin is None:
        (engine_dir / PLUGIN_LIBRARY_NAME).unlink(missing_ok=True)
    return manifest


def describe(manifest: dict) -> str:
    """One line about an engine folder, for the CLI."""
    p = manifest["profile"]
    return (f"{len(manifest['graphs'])} engines ({manifest['precision']}, dcn={manifest['dcn']}, "
            f"{'x'.join(map(str, p['min']))} .. {'x'.join(map(str, p['max']))}, batch <= "
            f"{p['max_batch']}) for {manifest['gpu']['name']} with TensorRT "
            f"{manifest['tensorrt']}")

