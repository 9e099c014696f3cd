"""``hirn-export compare``: every engine against ONNX Runtime on the same inputs (Polygraphy).

For each graph, Polygraphy's ``Comparator`` runs an ``OnnxrtRunner`` (CPU; ``--dcn plugin``
graphs through :mod:`hirn.export.plugin_ops`) and a ``TrtRunner`` over the built
engine on one generated input set, and this module reports the largest absolute error and
that error relative to the reference's largest magnitude. A graph passes when
``max_abs <= atol + rtol * max|reference|``.

Inputs follow the manifest: frames uniform in [0, 1], flows uniform in [-3, 3] px, features
uniform in [0, 1], in each input's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hirn.core.errors import EngineBuildError, ProfileError

from .engine import import_tensorrt, load_plugin_library
from .engine_cache import PLUGIN_LIBRARY_NAME, check_shape, verify_engine_folder
from .manifest import verify_folder

# (atol, rtol) per precision. FP32 engines run without TF32; FP16 engines hold FP16 features.
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 2e-2)}
_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class GraphComparison:
    """One graph's result."""

    graph: str
    shape: tuple[int, int, int]  # batch, height, width of the inputs
    max_abs: float               # largest |candidate - reference|
    max_rel: float               # max_abs / largest |reference|
    passed: bool


def graph_inputs(entry: dict, batch: int, height: int, width: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """One input set ``{name: [batch, C, height, width]}`` for a graph of the manifest."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in entry["inputs"]:
        x = rng.random((batch, tensor["shape"][1], height, width), dtype=np.float32)
        if tensor["kind"] == "flow":
            x = (x - 0.5) * 6
        feeds[tensor["name"]] = x.astype(_DTYPES[tensor["dtype"]])
    return feeds


def error_stats(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """(max abs error, max abs error / max |reference|)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs differ in shape: {reference.shape} vs {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    max_abs = float(np.abs(cand - ref).max()) if ref.size else 0.0
    if not np.isfinite(cand).all():
        max_abs = float("inf")
    peak = float(np.abs(ref).max()) if ref.size else 0.0
    return max_abs, (max_abs / peak if peak > 0 else max_abs)


def passes(max_abs: float, peak: float, atol: float, rtol: float) -> bool:
    return max_abs <= atol + rtol * peak


def check_pairing(onnx_manifest: dict, engines: dict) -> None:
    """Every engine must have been built from the ONNX folder's graph of the same name."""
    for name, entry in engines["graphs"].items():
        graph = onnx_manifest["graphs"].get(name)
        if graph is None or graph["sha256"] != entry["onnx_sha256"]:
            raise EngineBuildError(f"the engine of {name} was not built from this ONNX folder's "
                                   f"{name}.onnx (SHA-256 differs or the graph is missing): "
                                   "compare an engine folder with the folder it was built from")


def comparison_shape(engines: dict, graph: str, height: int | None, width: int | None,
                     batch: int | None) -> tuple[int, int, int]:
    """Batch, height, width for one graph: the profile's opt size by default, batch 1 for
    the step graphs; refused when outside the profile."""
    entry = engines["graphs"][graph]
    opt = entry["profile"]["opt"]
    b = (batch if batch is not None else min(2, opt[0])) if entry["batchable"] else 1
    h, w = height or opt[1], width or opt[2]
    try:
        check_shape(graph, entry, b, h, w)
    except ProfileError as exc:
        raise EngineBuildError(str(exc)) from exc
    return b, h, w


def import_polygraphy():
    try:
        from polygraphy.comparator import Comparator
        from polygraphy.logger import G_LOGGER
    except ImportError as exc:
        raise EngineBuildError("hirn-export compare needs Polygraphy: pip install polygraphy "
                               "(and TensorRT on an NVIDIA machine)") from exc
    G_LOGGER.module_severity = G_LOGGER.WARNING
    return Comparator


def onnxruntime_runner(onnx_dir: Path, graph: str, name: str = "onnxruntime"):
    """A Polygraphy ``OnnxrtRunner`` on the CPU for one graph of an ONNX folder."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner

    manifest = verify_folder(onnx_dir, [graph])
    path = Path(onnx_dir) / manifest["graphs"][graph]["file"]

    def session():
        options = ort.SessionOptions()
        source = str(path)
        if manifest["dcn"] == "plugin":
            from hirn.export.plugin_ops import cpu_model_bytes, register_cpu_op

            register_cpu_op(options)
            source = cpu_model_bytes(path)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    return OnnxrtRunner(session, name=name)


def tensorrt_runner_factory(engine_dir: Path, engines: dict) -> Callable[[str], object]:
    """Graph name -> a Polygraphy ``TrtRunner`` over its engine (plugin loaded first)."""
    trt = import_tensorrt()
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    if engines.get("plugin_library"):
        load_plugin_library(trt, Path(engine_dir) / PLUGIN_LIBRARY_NAME)

    def make(graph: str):
        path = Path(engine_dir) / engines["graphs"][graph]["file"]
        return TrtRunner(EngineFromBytes(BytesFromPath(str(path))), name="tensorrt")

    return make


def compare_graphs(onnx_dir: str | Path, engines: dict, candidate: Callable[[str], object],
                   height: int | None = None, width: int | None = None,
                   batch: int | None = None, atol: float | None = None,
                   rtol: float | None = None, graphs: list[str] | None = None,
                   report: Callable[[GraphComparison], None] | None = None,
                   ) -> list[GraphComparison]:
    """Run each graph of ``engines`` through ONNX Runtime and ``candidate(graph)`` (a
    Polygraphy runner) on the same inputs; return (and ``report``) one result per graph."""
    comparator = import_polygraphy()
    onnx_manifest = verify_folder(onnx_dir)
    check_pairing(onnx_manifest, engines)
    default_atol, default_rtol = TOLERANCES[engines["precision"]]
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    results = []
    for name in graphs or list(engines["graphs"]):
        b, h, w = comparison_shape(engines, name, height, width, batch)
        feed = graph_inputs(engines["graphs"][name], b, h, w)
        run = comparator.run([onnxruntime_runner(Path(onnx_dir), name), candidate(name)],
                             data_loader=[feed])
        (_, (reference,)), (_, (output,)) = run[0], run[1]
        out_name = engines["graphs"][name]["outputs"][0]["name"]
        ref, out = np.asarray(reference[out_name]), np.asarray(output[out_name])
        max_abs, max_rel = error_stats(ref, out)
        peak = float(np.abs(ref.astype(np.float64)).max())
        result = GraphComparison(name, (b, h, w), max_abs, max_rel,
                                 passes(max_abs, peak, atol, rtol))
        if report:
            report(result)
        results.append(result)
    return results


def compare_folders(onnx_dir: str | Path, engine_dir: str | Path, **kwargs
                    ) -> list[GraphComparison]:
    """:func:`compare_graphs` with the engines of ``engine_dir`` as the candidate."""
    engines = verify_engine_folder(engine_dir)
    import_polygraphy()
    return compare_graphs(onnx_dir, engines, tensorrt_runner_factory(Path(engine_dir), engines),
                          **kwargs)
