"""The TensorRT plugin against NVIDIA's real headers (10.16 and 11.1), without TensorRT or a GPU.

``plugins/`` is built with CMake against each vendored header version (``-Wall -Wextra -Werror``,
linked with ``-Wl,--no-undefined``: no libnvinfer needed), then ``plugin_harness.cpp``, compiled
against the same headers, dlopens the library and drives it as TensorRT would: getCreators,
createPlugin with the fields the ONNX parser takes from the exporter's node, output types and
shapes, format combinations, configurePlugin with dynamic shapes, serialisation, runtime shapes
and an enqueue that must fail cleanly without a GPU.
"""

import ctypes
import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from support import SHARED, export_plugin_node

from hirn.plugins import loader

VENDOR = SHARED / "vendor" / "tensorrt"
VERSIONS = ("10.16", "11.1")
HARNESS = Path(__file__).with_name("plugin_harness.cpp")
PLUGINS = loader.KERNEL_DIR.parent
# PTX of one architecture is enough to compile and link (ptxas, the slow part, adds nothing here).
TEST_ARCH = "80-virtual"


def _missing(version: str) -> str | None:
    if not (VENDOR / version / "include" / "NvInferRuntime.h").is_file():
        return f"TensorRT {version} headers not found in {VENDOR} (../shared/vendor/tensorrt)"
    if loader.find_nvcc() is None:
        return "nvcc not found (install the CUDA toolkit or set HIRN_NVCC)"
    if shutil.which("cmake") is None:
        return "cmake not found (pip install cmake)"
    if shutil.which("g++") is None:
        return "g++ not found"
    return None


def _cuda_includes() -> list[str]:
    """The include folders nvcc itself uses (its dry run lists them; nvcc may be a wrapper)."""
    dry = subprocess.run([loader.find_nvcc(), "--dryrun", "-c", "-x", "cu", os.devnull, "-o",
                          os.devnull], capture_output=True, text=True).stderr
    return sorted(set(re.findall(r'INCLUDES=.*?"?-I"?([^"\s]+)', dry)))


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="session")
def exported_node(tmp_path_factory):
    """The HirnDeformConv node of a graph the exporter writes: (namespace, attributes file).

    HiRN's layer (128 -> 64 channels, 16 offset groups, 3x3); the attributes go to the harness
    as the ONNX parser would read them.
    """
    import onnx

    folder = tmp_path_factory.mktemp("plugin_node")
    _, node = export_plugin_node(folder / "dcn.onnx", c_in=128, groups=16, c_out=64, size=(5, 6))
    lines, namespace = [], node.domain
    for attr in node.attribute:
        value = onnx.helper.get_attribute_value(attr)
        if attr.name == "plugin_namespace":  # the parser's lookup key when present
            namespace = value.decode() if isinstance(value, bytes) else value
        elif attr.type == onnx.AttributeProto.INTS:
            lines.append(f"{attr.name} INTS {' '.join(map(str, value))}")
        elif attr.type == onnx.AttributeProto.INT:
            lines.append(f"{attr.name} INT {value}")
    attributes = folder / "attributes.txt"
    attributes.write_text("\n".join(lines) + "\n")
    return namespace, attributes


def _build(version: str, build: Path) -> tuple[str, str]:
    """Configure and build plugins/ against one header set: (configure output, build log)."""
    configure = _run(["cmake", "-S", PLUGINS, "-B", build, f"-DTENSORRT_ROOT={VENDOR / version}",
                      "-DHIRN_WERROR=ON", f"-DCMAKE_CUDA_ARCHITECTURES={TEST_ARCH}",
                      f"-DCMAKE_CUDA_COMPILER={loader.find_nvcc()}"])
    compiled = _run(["cmake", "--build", build, "--target", "hirn_plugins", "--verbose"])
    harness = build / "plugin_harness"
    cuda = [arg for include in _cuda_includes() for arg in ("-isystem", include)]
    _run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-isystem",
          VENDOR / version / "include", *cuda, HARNESS, "-rdynamic", "-ldl", "-o", harness])
    return configure.stdout, compiled.stdout


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Every available header version, built side by side (nvcc is mostly one process each).

    Maps version to ``(build folder, configure output, build log)``, or to the reason it was
    not built.
    """
    versions = [v for v in VERSIONS if not _missing(v)]
    folders = {v: tmp_path_factory.mktemp(f"trt{v}") for v in versions}
    with ThreadPoolExecutor(max(len(versions), 1)) as pool:
        futures = {v: pool.submit(_build, v, folders[v]) for v in versions}
    return {v: (folders[v], *futures[v].result()) if v in futures else _missing(v)
            for v in VERSIONS}


@pytest.fixture(scope="session", params=VERSIONS)
def built(request, builds):
    """``(version, library, harness, configure output, build log)`` for one header version."""
    result = builds[request.param]
    if isinstance(result, str):
        pytest.skip(result)
    folder, configure, log = result
    return (request.param, folder / "libhirn_plugins.so", folder / "plugin_harness", configure,
            log)


def _harness(built, exported_node, **env) -> subprocess.CompletedProcess:
    _, library, harness, *_ = built
    namespace, attributes = exported_node
    enqueue = "0" if torch.cuda.is_available() else "1"  # fake pointers: only without a GPU
    return _run([harness, library, namespace, attributes, enqueue], env={**os.environ, **env})


@pytest.fixture(scope="session")
def report(built, exported_node):
    """What the harness observed, as a dict (one run per header version)."""
    return json.loads(_harness(built, exported_node).stdout)


def test_plugin_library_compiles_and_links_against_the_headers(built, record_property):
    version, library, _, configure, log = built
    assert f"TensorRT headers: {VENDOR / version / 'include'} ({version}.0)" in configure
    assert "-Werror" in log and "-Wl,--no-undefined" in log
    record_property("summary", f"plugin compiled and linked against the TensorRT {version}.0 "
                               "headers (-Wall -Wextra -Werror, -Wl,--no-undefined)")
    needed = _run(["readelf", "-d", library]).stdout
    assert "libnvinfer" not in needed and "libcudart.so" not in needed  # static CUDA runtime
    exported = {line.split()[-1] for line in _run(["nm", "-D", "--defined-only", library])
                .stdout.splitlines() if " T " in line}
    assert {"getCreators", "setLoggerFinder"} <= exported
    assert all(name.startswith("hirn_") for name in exported - {"getCreators", "setLoggerFinder"})


def test_harness_was_compiled_against_the_same_headers(built, report):
    assert report["tensorrt_headers"] == built[0]
    assert report["entry_points"] == {"getCreators": True, "setLoggerFinder": True,
                                      "getPluginCreators": False}


def test_one_creator_found_by_the_namespace_the_exporter_writes(report, exported_node):
    from hirn.model.deform_conv import PLUGIN_DOMAIN, PLUGIN_OP

    assert exported_node[0] == PLUGIN_DOMAIN
    # loadLibrary refuses a library whose creators clash; the same plugin twice is one too many.
    assert report["creators"] == [{"kind": "PLUGIN CREATOR_V3ONE", "major": 1, "name": PLUGIN_OP,
                                   "version": "1", "namespace": PLUGIN_DOMAIN}]
    assert report["lookup_matches"] == 1


def test_created_from_the_onnx_nodes_attributes(report):
    assert report["field_names"] == ["stride:INT32:2", "padding:INT32:2", "dilation:INT32:2",
                                     "deformable_groups:INT32:1"]
    # Every field the creator lists came from the node (INT32, as the parser passes them).
    passed = [f.split(":")[0] for f in report["parser_fields"].split(";") if f]
    assert passed == ["stride", "padding", "dilation", "deformable_groups"]
    assert report["created"] is True
    assert report["plugin_id"] == "HirnDeformConv/1/hirn"


def test_output_types_and_shape(report):
    assert report["nb_outputs"] == 1
    assert report["output_types"] == ["HALF->HALF", "FLOAT->FLOAT"]
    assert report["output_shape"] == ["input.0", "weight.0", "offset.2", "offset.3"]


def test_format_combinations(report):
    """-1: accepted; else the first position refused (0 input ... 4 bias, 5 output)."""
    assert report["formats"] == {
        "fp32": -1, "fp16": -1,
        # FP32 offsets (and mask) beside FP16 features: positions keep their FP32 fraction.
        "fp16_fp32_offset": -1, "fp16_fp32_offset_mask": -1,
        "fp32_fp16_offset": 1, "fp16_fp32_weight": 3, "fp16_fp32_output": 5,
        "bf16": 0, "fp16_hwc8": 0,
    }


def test_configure_with_dynamic_shapes_sizes_the_workspace_for_the_profile_max(report):
    kernel = loader.load_kernel()
    for key, dtype in (("configure_fp16", 1), ("configure_fp32", 0),
                       ("configure_fp16_fp32_offset", 1)):
        assert report[key]["status"] == 0 and report[key]["errors"] == []
        shape = loader.DeformConvShape(4, 128, 540, 960, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16)
        expected = kernel.hirn_deform_conv_workspace_size(ctypes.byref(shape), dtype)
        assert report[key]["workspace"] == expected > 0


@pytest.mark.parametrize("case, words", [
    ("bad_groups", "deformable_groups = 3 must divide the 128 input channels"),
    ("bad_taps", "more than 9 taps"),
    ("bad_dilation", "larger than the padded input"),
])
def test_configure_refuses_what_the_kernel_cannot_run_before_shapes_are_known(report, case,
                                                                            words):
    result = report[f"configure_{case}"]
    assert result["status"] != 0
    assert any(words in e for e in result["errors"]), result["errors"]


def test_serialize_then_deserialize_round_trip(report):
    assert report["deserialized"] is True and report["attached"] is True
    assert report["reserialized"] == report["serialized"]
    names = [f.split(":")[0] for f in report["serialized"].split(";") if f]
    assert names == ["stride", "padding", "dilation", "deformable_groups", "workspace_bytes"]
    workspace = report["serialized"].split("workspace_bytes:INT64:")[1].split(";")[0]
    recorded = int.from_bytes(bytes(int(b) for b in workspace.split(",") if b), "little")
    assert recorded == report["configure_fp16"]["workspace"]


def test_runtime_shapes_within_the_profile_only(report):
    assert report["shape_inside"] == 0
    assert report["shape_beyond"] != 0
    assert "needs more workspace" in report["shape_beyond_error"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_enqueue_without_a_gpu_fails_cleanly(report):
    assert report["enqueue_status"] != 0
    assert "CUDA error" in report["enqueue_error"]


def test_logger_of_another_tensorrt_major_is_not_called(built, exported_node):
    """ILogger's layout changed in TensorRT 11: a library loaded by another major than its
    headers' reports to stderr instead of calling into that logger."""
    major = int(built[0].split(".")[0])
    other = 11 if major == 10 else 10
    result = _harness(built, exported_node, HARNESS_TENSORRT_VERSION=str(other * 10000 + 100))
    assert json.loads(result.stdout)["configure_bad_taps"]["errors"] == []
    assert f"built against TensorRT {major} headers but loaded by TensorRT {other}" in result.stderr
    assert "more than 9 taps" in result.stderr


def test_cmake_stops_when_nvcc_is_not_the_cuda_major_of_tensorrt(tmp_path):
    """A TensorRT tarball for CUDA 12 (its folder says so) and a CUDA 13 nvcc: the library would
    need a newer driver than that TensorRT's, so configuring fails and says what to pass."""
    reason = _missing(VERSIONS[0])
    if reason:
        pytest.skip(reason)
    major = loader.cuda_version(loader.find_nvcc())[0]
    other = 12 if major != 12 else 13
    root = tmp_path / f"TensorRT-{VERSIONS[0]}.0.0.Linux.x86_64-gnu.cuda-{other}.9"
    root.mkdir()
    (root / "include").symlink_to(VENDOR / VERSIONS[0] / "include")
    result = subprocess.run(["cmake", "-S", str(PLUGINS), "-B", str(tmp_path / "build"),
                             f"-DTENSORRT_ROOT={root}",
                             f"-DCMAKE_CUDA_COMPILER={loader.find_nvcc()}"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    message = " ".join((result.stdout + result.stderr).split())
    assert f"but TensorRT was built for CUDA {other} (from {root}" in message
    assert "-DCMAKE_CUDA_COMPILER=" in message
