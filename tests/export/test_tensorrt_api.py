"""Every TensorRT attribute our code uses exists in the TensorRT 10.x and 11.x Python bindings.

TensorRT cannot be installed here, so the modules that call it (export/engine.py,
export/compare.py, runtime/backends/tensorrt_backend.py) are parsed, the receiver of each
attribute traced to a TensorRT class, and each use checked against ``API`` below: the
binding names we use, each with the C++ member it binds. Sources of the list:

- Python names: NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``, ``python/src/infer/
  pyPlugin.cpp``, ``python/src/parsers/pyOnnx.cpp`` and ``python/packaging/bindings_wheel/
  tensorrt/__init__.py`` (``nptype``, ``__version__``), at release/10.16 (commit d0faf303) and
  main = TensorRT 11.1 (commit a892d222); every name below is bound in both. The Python API
  reference (docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/) documents them.
- C++ names: the public headers of the same two commits, ``../shared/vendor/tensorrt/
  {10.16,11.1}/include``; :func:`test_the_list_matches_the_headers` checks each member
  exists in its class in both and is not deprecated (kept there only where noted).
"""

from __future__ import annotations

import ast
import re

import pytest
from support import REPO, SHARED

MODULES = ("export/engine.py", "export/compare.py", "runtime/backends/tensorrt_backend.py")
HEADERS = SHARED / "vendor" / "tensorrt"
VERSIONS = ("10.16", "11.1")

# Python class (or "tensorrt", the module) -> {binding name: the C++ name it binds, None for
# pure Python}. Exactly the names our modules use: an unused entry fails the test too.
API: dict[str, dict[str, str | None]] = {
    "tensorrt": {
        "__version__": None, "nptype": None,
        "Logger": "ILogger", "Builder": "IBuilder", "Runtime": "IRuntime",
        "OnnxParser": "IParser", "init_libnvinfer_plugins": "initLibNvInferPlugins",
        "get_plugin_registry": "getPluginRegistry",
        "NetworkDefinitionCreationFlag": "NetworkDefinitionCreationFlag",
        "BuilderFlag": "BuilderFlag", "MemoryPoolType": "MemoryPoolType",
        "TensorIOMode": "TensorIOMode",
        "ExecutionContextAllocationStrategy": "ExecutionContextAllocationStrategy",
    },
    "Logger": {"WARNING": "kWARNING"},
    "NetworkDefinitionCreationFlag": {"STRONGLY_TYPED": "kSTRONGLY_TYPED"},
    "BuilderFlag": {"TF32": "kTF32"},
    "MemoryPoolType": {"WORKSPACE": "kWORKSPACE"},
    "TensorIOMode": {"INPUT": "kINPUT"},
    "ExecutionContextAllocationStrategy": {"USER_MANAGED": "kUSER_MANAGED"},
    "IBuilder": {"create_network": "createNetworkV2",
                 "create_builder_config": "createBuilderConfig",
                 "create_optimization_profile": "createOptimizationProfile",
                 "build_serialized_network": "buildSerializedNetwork"},
    "IBuilderConfig": {"clear_flag": "clearFlag", "set_memory_pool_limit": "setMemoryPoolLimit",
                       "add_optimization_profile": "addOptimizationProfile",
                       "create_timing_cache": "createTimingCache",
                       "set_timing_cache": "setTimingCache",
                       "get_timing_cache": "getTimingCache"},
    "ITimingCache": {"serialize": "serialize"},
    "IOptimizationProfile": {"set_shape": "setDimensions"},
    "OnnxParser": {"parse_from_file": "parseFromFile", "get_error": "getError",
                   "num_errors": "getNbErrors"},
    "IPluginRegistry": {"load_library": "loadLibrary"},
    "IRuntime": {"deserialize_cuda_engine": "deserializeCudaEngine"},
    "ICudaEngine": {"num_io_tensors": "getNbIOTensors", "get_tensor_name": "getIOTensorName",
                    "get_tensor_mode": "getTensorIOMode",
                    "get_tensor_dtype": "getTensorDataType",
                    "create_execution_context": "createExecutionContext",
                    "device_memory_size_v2": "getDeviceMemorySizeV2"},
    "IExecutionContext": {"set_input_shape": "setInputShape",
                          "set_tensor_address": "setTensorAddress",
                          "get_tensor_shape": "getTensorShape",
                          "execute_async_v3": "enqueueV3",
                          "set_device_memory": "setDeviceMemoryV2"},
}
# Keyword arguments as the bindings name them ("cache"_a, "ignore_mismatch"_a, ...).
KEYWORDS = {("IBuilderConfig", "set_timing_cache"): {"cache", "ignore_mismatch"}}
# C++ class of each Python class whose members are listed.
CPP_CLASS = {"Logger": "ILogger", "OnnxParser": "IParser"}
# Deprecated in 11.x (and ignored there): passed only to 10.x (engine.network_flags).
DEPRECATED_IN_11 = {"kSTRONGLY_TYPED"}

# What a call returns: (receiver class, attribute) -> class; "" is our own helper functions.
RETURNS = {
    ("tensorrt", "Builder"): "IBuilder", ("tensorrt", "Runtime"): "IRuntime",
    ("tensorrt", "OnnxParser"): "OnnxParser", ("tensorrt", "Logger"): "Logger",
    ("tensorrt", "get_plugin_registry"): "IPluginRegistry",
    ("IBuilder", "create_network"): "INetworkDefinition",
    ("IBuilder", "create_builder_config"): "IBuilderConfig",
    ("IBuilder", "create_optimization_profile"): "IOptimizationProfile",
    ("IBuilderConfig", "create_timing_cache"): "ITimingCache",
    ("IBuilderConfig", "get_timing_cache"): "ITimingCache",
    ("IRuntime", "deserialize_cuda_engine"): "ICudaEngine",
    ("ICudaEngine", "create_execution_context"): "IExecutionContext",
    ("", "import_tensorrt"): "tensorrt", ("", "_import_tensorrt"): "tensorrt",
}
# Names whose class the tracing cannot see (parameters, containers filled by a helper).
HINTS = {"runtime/backends/tensorrt_backend.py": {
    "engine": "ICudaEngine", "e": "ICudaEngine", "self.contexts[]": "IExecutionContext"}}


def _key(node: ast.AST) -> str:
    """Source text of an expression with subscripts blanked: ``self.contexts[]``."""
    return re.sub(r"\[[^\[\]]*\]", "[]", ast.unparse(node))


class _Tracer(ast.NodeVisitor):
    """Walks a module in source order, tracking which names hold TensorRT objects, and
    records every attribute used on one: (class, attribute, keywords, line)."""

    def __init__(self, hints: dict[str, str]):
        self.types = {"tensorrt": "tensorrt", **hints}
        self.uses: list[tuple[str, str, frozenset, int]] = []

    def type_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                return RETURNS.get(("", func.id))
            if isinstance(func, ast.Attribute):
                return RETURNS.get((self.type_of(func.value), func.attr))
            return None
        if isinstance(node, ast.Attribute) and self.type_of(node.value) == "tensorrt" \
                and node.attr in API:
            return node.attr  # a class or enum of the module
        return self.types.get(_key(node))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for arg in node.args.args:
            if arg.arg == "trt":
                self.types["trt"] = "tensorrt"
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            for name, value in pairs:
                if (kind := self.type_of(value)) is not None:
                    self.types[_key(name)] = kind

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and (kind := self.type_of(node.func.value)):
            keywords = frozenset(k.arg for k in node.keywords if k.arg)
            self.uses.append((kind, node.func.attr, keywords, node.lineno))
            self.generic_visit(node.func.value)
            for child in (*node.args, *node.keywords):
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if (kind := self.type_of(node.value)) is not None:
            self.uses.append((kind, node.attr, frozenset(), node.lineno))
        self.generic_visit(node)


def _uses() -> list[tuple[str, str, str, frozenset, int]]:
    """(module, class, attribute, keywords, line) of every TensorRT attribute used."""
    uses = []
    for module in MODULES:
        tracer = _Tracer(HINTS.get(module, {}))
        tracer.visit(ast.parse((REPO / module).read_text()))
        uses += [(module, *use) for use in tracer.uses]
    return uses


def test_our_tensorrt_calls_exist_in_10_and_11():
    uses = _uses()
    unknown = [f"{m}:{line} {kind}.{attr}" for m, kind, attr, _, line in uses
               if attr not in API.get(kind, {})]
    assert not unknown, ("attributes not in the TensorRT 10.x and 11.x Python API list "
                         f"(check the bindings, then add them with their source): {unknown}")
    bad_keywords = [f"{m}:{line} {kind}.{attr}({sorted(kw)})" for m, kind, attr, kw, line in uses
                    if kw and not kw <= KEYWORDS.get((kind, attr), set())]
    assert not bad_keywords, f"keyword arguments the bindings do not name: {bad_keywords}"
    used = {(kind, attr) for _, kind, attr, _, _ in uses}
    listed = {(kind, attr) for kind, names in API.items() for attr in names}
    assert listed - used == set(), "listed but no longer used (or no longer traced)"


def test_the_tracer_sees_what_it_must():
    """The tracing itself: a removed API and a misspelt one are caught wherever they hide."""
    source = (
        "def build(trt, logger):\n"
        "    builder = trt.Builder(logger)\n"
        "    config = builder.create_builder_config()\n"
        "    config.set_flag(trt.BuilderFlag.FP16)\n"
        "    engine = trt.Runtime(logger).deserialize_cuda_engine(b'')\n"
        "    engine.create_execution_context().execute_async_v2([], 0)\n"
        "    config.set_timing_cache(config.get_timing_cache(), ignore=True)\n")
    tracer = _Tracer({})
    tracer.visit(ast.parse(source))
    wrong = {(kind, attr) for kind, attr, _, _ in tracer.uses if attr not in API.get(kind, {})}
    assert wrong == {("IBuilderConfig", "set_flag"), ("BuilderFlag", "FP16"),
                     ("IExecutionContext", "execute_async_v2")}
    assert ("IBuilderConfig", "set_timing_cache", frozenset({"ignore"}), 7) in tracer.uses


def _body(text: str, kind: str, name: str) -> str | None:
    """The ``{...}`` body of ``class name`` / ``enum class name`` in header text."""
    match = re.search(rf"\b{kind}\s+{name}\b[^;{{]*\{{", text)
    if not match:
        return None
    depth, start = 0, match.end() - 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i + 1]
    return None


def _deprecated(body: str, member: str) -> bool:
    """An enum value marked deprecated, or a method whose every overload is (by the
    ``TRT_DEPRECATED`` macro or a ``\\deprecated`` line in the comment above it)."""
    if re.search(rf"\b{member}\s+TRT_DEPRECATED_ENUM", body):
        return True
    lines = body.splitlines()
    declaration = re.compile(rf"^\s*(?:TRT_DEPRECATED\s+)?(?:virtual\s+)?[\w:<>*& ]+?[\s*&]"
                             rf"{member}\s*\(")
    marks = []
    for i, line in enumerate(lines):
        if declaration.match(line):
            above = i - 1
            while above >= 0 and lines[above].strip().startswith("//"):
                above -= 1
            marks.append("TRT_DEPRECATED" in line or any(
                "\\deprecated" in comment for comment in lines[above + 1:i]))
    return bool(marks) and all(marks)


@pytest.mark.skipif(not HEADERS.is_dir(), reason=f"{HEADERS} is absent (../shared is needed)")
@pytest.mark.parametrize("version", VERSIONS)
def test_the_list_matches_the_headers(version):
    """Each C++ name of ``API`` exists in its class in the headers of ``version`` and is not
    deprecated there (save ``DEPRECATED_IN_11`` in 11.x)."""
    headers = sorted((HEADERS / version / "include").glob("*.h"))
    text = "\n".join(p.read_text(errors="replace") for p in headers)
    problems = []
    for cls, names in API.items():
        if cls == "tensorrt":
            for cpp in filter(None, names.values()):
                if not re.search(rf"\b(class|enum class)\s+{cpp}\b|\b{cpp}\s*\(", text):
                    problems.append(f"{cpp} is not declared")
            continue
        cpp_class = CPP_CLASS.get(cls, cls)
        body = _body(text, "enum class", cpp_class) or _body(text, "class", cpp_class)
        if body is None:
            problems.append(f"no class {cpp_class}")
            continue
        for python, cpp in names.items():
            if not re.search(rf"\b{cpp}\b", body):
                problems.append(f"{cpp_class}::{cpp} (Python {cls}.{python}) is missing")
            elif _deprecated(body, cpp) and not (version.startswith("11")
                                                 and cpp in DEPRECATED_IN_11):
                problems.append(f"{cpp_class}::{cpp} (Python {cls}.{python}) is deprecated")
    assert not problems, f"TensorRT {version}: {problems}"
