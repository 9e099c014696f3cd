"""The package structure: imports point one way, and the light modules stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import REPO

# Folder of each package (pyproject.toml maps hirn.<name> onto it).
PACKAGES = {"core": REPO / "core", "model": REPO / "model", "media": REPO / "media",
            "train": REPO / "train", "export": REPO / "export", "runtime": REPO / "runtime",
            "plugins": REPO / "plugins"}
# Modules whose docstrings promise that they load nothing heavy.
LIGHT_MODULES = ("hirn.core.errors", "hirn.core.constants", "hirn.core.schedule",
                 "hirn.core.recurrence", "hirn.core.graphs", "hirn.core.files",
                 "hirn.core.launch", "hirn.core.logs", "hirn.core.default_weights",
                 "hirn.core.imports",
                 "hirn.runtime.cli", "hirn.export.cli", "hirn.export.manifest",
                 "hirn.plugins.loader")


def _imported_packages(path: Path, package: str) -> set[str]:
    """The hirn packages that the module at ``path`` imports (absolute or relative)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                found.add(package)
                continue
            names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "hirn" and len(parts) > 1:
                found.add(parts[1])
    return found


def import_graph() -> dict[str, set[str]]:
    """Package -> the other packages its modules import, from the source alone."""
    graph = {}
    for package, folder in PACKAGES.items():
        edges = set()
        for path in folder.rglob("*.py"):
            edges |= _imported_packages(path, package)
        graph[package] = edges - {package}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None."""
    state: dict[str, str] = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = "done"
        return None

    for node in graph:
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_find_cycle_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_packages_import_each_other_without_a_cycle():
    graph = import_graph()
    assert find_cycle(graph) is None, f"import cycle between packages: {graph}"


def test_core_imports_no_other_package():
    assert import_graph()["core"] == set()


def test_imports_point_one_way():
    """core <- model <- train <- export <- runtime; media and plugins beside (core only)."""
    order = ["core", "model", "train", "export", "runtime"]
    graph = import_graph()
    for package in order:
        later = set(order[order.index(package) + 1:])
        assert not graph[package] & later, f"{package} imports {graph[package] & later}"
    assert graph["plugins"] <= {"core"}, graph["plugins"]
    assert graph["media"] <= {"core"}, graph["media"]


def test_media_and_model_import_without_runtime_or_train(tmp_path):
    """Each loads without importing hirn.runtime, hirn.train or hirn.export."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        import hirn.media, hirn.model
        for package in (hirn.media, hirn.model):
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package.__name__}.{module.name}")
        later = sorted(m for m in sys.modules
                       if m.split(".")[:2] in (["hirn", "runtime"], ["hirn", "train"],
                                               ["hirn", "export"]))
        assert not later, later
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _blocked_env(tmp_path: Path) -> dict:
    """An environment in which ``import torch`` fails, as where torch is not installed."""
    import os

    blocker = tmp_path / "blocked" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text('raise ImportError("torch is not installed here")\n')
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blocker.parent),
                                                      env.get("PYTHONPATH")]))
    return env


def test_light_modules_import_without_torch(tmp_path):
    code = textwrap.dedent(f"""
        import importlib, sys
        for name in {LIGHT_MODULES!r}:
            importlib.import_module(name)
        heavy = [m for m in ("torch", "onnx", "onnxruntime", "tensorrt") if m in sys.modules]
        assert not heavy, heavy
        try:
            import torch  # noqa: F401
        except ImportError as exc:
            print("blocked:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], env=_blocked_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "blocked: torch is not installed here" in result.stdout  # the blocker was in force


@pytest.mark.parametrize("command", ["hirn-run", "hirn-export"])
def test_help_works_without_torch(tmp_path, command):
    code = (f"import sys; sys.argv = [{command!r}, '--help']; "
            f"from hirn.{'runtime' if command == 'hirn-run' else 'export'}.cli import main; "
            "main()")
    result = subprocess.run([sys.executable, "-c", code], env=_blocked_env(tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
