"""The folder ``hirn-export engine`` writes: cache keys, ``engines.json`` and its checks.

Nothing here imports TensorRT. An engine's key is a SHA-256 over everything that decides its
bytes: the ONNX graph's SHA-256, every build option (precision, DCN form, optimization
profile, workspace, typing and TF32 settings), the plugin library's SHA-256, the TensorRT
version and the GPU (name and compute capability). The key names the engine file, so a build
with the same inputs finds its engine and skips it, and any change builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hirn.core.errors import EngineFolderError, ProfileError
from hirn.core.files import (
    atomic_file,  # noqa: F401 - engine.py writes engines through it
    atomic_write_text,
)

from .manifest import ManifestKind, check_listed_file, read_folder_manifest, verify_listed

ENGINES_NAME = "engines.json"
FORMAT = "hirn-trt-engines"
FORMAT_VERSION = 1
TIMING_CACHE_NAME = "timing.cache"
PLUGIN_LIBRARY_NAME = "libhirn_plugins.so"  # the plugin library, copied beside the engines
TENSORRT_HINT = "pip install tensorrt, on a machine with an NVIDIA GPU and a recent driver"
ENGINE_FOLDER = ManifestKind(ENGINES_NAME, FORMAT, FORMAT_VERSION, "engine folder", "engine",
                             "build one with: hirn-export engine ONNX_DIR -o DIR ...",
                             "rebuild the engines", EngineFolderError)


def current_gpu(index: int | None = None) -> dict:
    """``{"name", "compute_capability"}`` of a CUDA GPU (the current one when None)."""
    import torch

    if not torch.cuda.is_available():
        raise EngineFolderError("no CUDA GPU is visible to PyTorch "
                                f"(torch {torch.__version__}): TensorRT engines are built and "
                                "run on an NVIDIA GPU with a CUDA build of PyTorch")
    index = torch.cuda.current_device() if index is None else index
    major, minor = torch.cuda.get_device_capability(index)
    return {"name": torch.cuda.get_device_name(index), "compute_capability": f"{major}.{minor}"}


def engine_key(onnx_sha256: str, graph: str, build: dict, tensorrt_version: str, gpu: dict,
               plugin_sha256: str | None) -> str:
    """The hex SHA-256 naming one engine; ``build`` holds every build option (JSON values)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "graph": graph,
               "onnx_sha256": onnx_sha256, "build": build, "tensorrt": tensorrt_version,
               "gpu": {"name": gpu["name"], "compute_capability": gpu["compute_capability"]},
               "plugin_sha256": plugin_sha256}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def engine_file_name(graph: str, key: str) -> str:
    return f"{graph}-{key[:16]}.engine"


def write_engines_manifest(folder: Path, manifest: dict) -> Path:
    return atomic_write_text(Path(folder) / ENGINES_NAME, json.dumps(manifest, indent=2) + "\n")


def read_engines_manifest(folder: str | os.PathLike) -> dict:
    """``engines.json`` of ``folder`` after checking that it is one of ours, of this version."""
    return read_folder_manifest(folder, ENGINE_FOLDER)


def verify_engine_folder(folder: str | os.PathLike, graphs: list[str] | None = None) -> dict:
    """Check the engines (and the plugin library) of ``folder`` against ``engines.json``;
    return the manifest. Raises :class:`EngineFolderError` naming the first bad file."""
    manifest = verify_listed(folder, ENGINE_FOLDER, graphs, what="engine of {name}")
    if manifest.get("plugin_library"):
        check_listed_file(Path(folder), manifest["plugin_library"], ENGINE_FOLDER,
                          "plugin library")
    return manifest


def check_compatible(manifest: dict, tensorrt_version: str, gpu: dict) -> None:
    """Engines run only with the TensorRT version and the GPU model they were built with."""
    built, built_gpu = manifest["tensorrt"], manifest["gpu"]
    same_gpu = (built_gpu["name"], built_gpu["compute_capability"]) == (
        gpu["name"], gpu["compute_capability"])
    if built != tensorrt_version or not same_gpu:
        raise EngineFolderError(
            f"the engines were built with TensorRT {built} for {built_gpu['name']} "
            f"(sm {built_gpu['compute_capability']}); this machine has TensorRT "
            f"{tensorrt_version} and {gpu['name']} (sm {gpu['compute_capability']}): rebuild "
            "them here with hirn-export engine")


def check_shape(graph: str, entry: dict, batch: int, height: int, width: int) -> None:
    """Raise :class:`ProfileError` when ``[batch, C, height, width]`` inputs fall outside the
    profile ``entry["profile"]`` (``{"min" | "opt" | "max": [batch, height, width]}``)."""
    low, high = entry["profile"]["min"], entry["profile"]["max"]
    given = (batch, height, width)
    if all(lo <= v <= hi for lo, v, hi in zip(low, given, high)):
        return
    raise ProfileError(
        f"{graph}: batch {batch} at {height}x{width} is outside the engines' profile (batch "
        f"{low[0]}..{high[0]}, {low[1]}x{low[2]} .. {high[1]}x{high[2]}): rebuild with "
        "hirn-export engine --min/--max/--max-batch covering it, or lower the batch size")


def reusable_engine(folder: Path, previous: dict | None, graph: str, key: str) -> dict | None:
    """The previous manifest's entry for ``graph`` when its engine has this ``key`` and its
    file is intact; None when the engine must be built."""
    entry = (previous or {}).get("graphs", {}).get(graph)
    if not entry or entry.get("key") != key:
        return None
    try:
        check_listed_file(Path(folder), entry, ENGINE_FOLDER, graph)
    except EngineFolderError:
        return None
    return entry
