"""``manifest.json``: what an exported folder holds, and checks that it is intact.

The reader and the file checks serve every folder manifest of ours (``engines.json`` too,
see ``engine_cache.py``): a :class:`ManifestKind` holds the words that differ.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from hirn.core.errors import HirnError, ModelFolderError
from hirn.core.files import atomic_write_text

MANIFEST_NAME = "manifest.json"
FORMAT = "hirn-onnx-graphs"
FORMAT_VERSION = 1


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tool_versions() -> dict[str, str]:
    """Versions of the packages that shape an exported graph."""
    versions = {}
    for package in ("hirn", "torch", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write ``manifest.json`` atomically: a folder never holds half a manifest."""
    return atomic_write_text(Path(folder) / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


@dataclass(frozen=True)
class ManifestKind:
    """The words that differ between the manifests of our folders."""

    name: str                  # the file, e.g. manifest.json
    format: str                # its "format" value
    version: int               # the "format_version" this hirn reads
    folder: str                # what the folder is called in messages
    contents: str              # what the manifest lists: "graph", "engine"
    hint: str                  # how to make such a folder
    fix: str                   # what to do about a damaged one
    error: type[HirnError]     # raised for every problem
    required: tuple[str, ...] = ("model", "graphs")  # entries that must be dicts


ONNX_FOLDER = ManifestKind(MANIFEST_NAME, FORMAT, FORMAT_VERSION, "ONNX folder", "graph",
                           "export one with: hirn-export onnx CHECKPOINT -o DIR",
                           "re-export the folder", ModelFolderError)


def read_folder_manifest(folder: str | os.PathLike, kind: ManifestKind) -> dict:
    """The manifest of ``folder`` after checking that it is one of ours, of this version,
    with the entries every reader needs; raises ``kind.error`` saying what to do."""
    folder = Path(folder)
    if not folder.is_dir():
        raise kind.error(f"{kind.folder} not found: {folder} ({kind.hint})")
    path = folder / kind.name
    if not path.is_file():
        raise kind.error(f"{folder} has no {kind.name}: not a hirn {kind.folder} ({kind.hint})")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise kind.error(f"{path} is not valid JSON ({exc}); {kind.fix}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != kind.format:
        raise kind.error(f"{path} is not a hirn {kind.contents} manifest (format "
                         f"{kind.format!r}); {kind.fix}")
    version = manifest.get("format_version")
    if version != kind.version:
        tools = manifest.get("tools")
        writer = tools.get("hirn") if isinstance(tools, dict) else None
        raise kind.error(f"{path} has format version {version}; this hirn reads version "
                         f"{kind.version}: {kind.fix} ({kind.hint}) or use the hirn that "
                         f"wrote it ({writer or 'unknown version'})")
    if lacking := [key for key in kind.required if not isinstance(manifest.get(key), dict)]:
        raise kind.error(f"{path} lacks its {' and '.join(repr(k) for k in lacking)} "
                         f"{'entry' if len(lacking) == 1 else 'entries'}: it was cut short or "
                         f"edited; {kind.fix}")
    return manifest


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of an ONNX ``folder``, after checking that it is one of ours."""
    return read_folder_manifest(folder, ONNX_FOLDER)


def inside_folder(folder: Path, name: object, kind: ManifestKind, entry: str,
                  base: Path | None = None) -> Path:
    """The path of the file ``name`` that ``entry`` of a folder's manifest (or of one of its
    graphs) lists, relative to ``base`` (default: the folder), after checking that it stays
    inside the folder, symbolic links resolved: a folder lists only files of its own."""
    folder = Path(folder)
    if not isinstance(name, str) or not name:
        raise kind.error(f"{folder / kind.name}: {entry} names no file ({name!r}): it was "
                         f"edited; {kind.fix}")
    path = Path(base or folder) / name
    resolved = path.resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise kind.error(f"{folder / kind.name}: {entry} names {name!r}, which is "
                         f"{resolved}: outside {folder}, so it was refused (a manifest lists "
                         f"only files of its own folder); {kind.fix}")
    return path


def check_listed_file(folder: Path, entry: dict, kind: ManifestKind, what: str = "",
                      entry_name: str = "") -> None:
    """Raise ``kind.error`` when the file a manifest ``entry`` lists (``file``, ``bytes``,
    ``sha256``) is outside ``folder``, missing, of another size or altered; ``what`` names it
    in messages, ``entry_name`` names the entry (default: ``what``)."""
    path = inside_folder(folder, entry.get("file"), kind,
                         f'the "file" of {entry_name or what or "an entry"}')
    label = f"{path} ({what})" if what else str(path)
    if not path.is_file():
        raise kind.error(f"{label} is missing; {kind.fix}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise kind.error(f"{label} has {size} bytes, {kind.name} says {entry['bytes']}: the "
                         f"file is truncated or replaced; {kind.fix}")
    if sha256_of(path) != entry["sha256"]:
        raise kind.error(f"{label} does not match its SHA-256 in {kind.name}: the file was "
                         f"altered; {kind.fix}")


def verify_listed(folder: str | os.PathLike, kind: ManifestKind, graphs: list[str] | None = None,
                  what: str = "") -> dict:
    """Check the files of ``graphs`` (default: every one listed) against the manifest of
    ``folder``; return the manifest. ``what`` names each file in messages (``{name}`` in it
    stands for the graph)."""
    folder = Path(folder)
    manifest = read_folder_manifest(folder, kind)
    entries = manifest["graphs"]
    for name in graphs or list(entries):
        if name not in entries:
            raise kind.error(f"{folder / kind.name} lists no {kind.contents} {name!r} (it has "
                             f"{sorted(entries)}); {kind.fix}")
        check_listed_file(folder, entries[name], kind, what.format(name=name),
                          f"{kind.contents} {name!r}")
    return manifest


def verify_folder(folder: str | os.PathLike, graphs: list[str] | None = None) -> dict:
    """Check the graphs of ``folder`` against its manifest, and their weights; return the
    manifest. Every backend reads a folder through this, before any runtime opens a graph.

    Raises :class:`ModelFolderError` naming the first file outside the folder, missing,
    truncated or altered, or the first graph with weights that are not finite.
    """
    manifest = verify_listed(folder, ONNX_FOLDER, graphs)
    for name in graphs or list(manifest["graphs"]):
        check_graph_weights(Path(folder), name, manifest["graphs"][name]["file"])
    return manifest


def check_graph_weights(folder: Path, graph: str, file: str) -> None:
    """Raise :class:`ModelFolderError` when a weight of ``graph`` (an initializer or a
    constant, external data included) lies outside ``folder`` or is not finite: ONNX
    Runtime refuses NaN/Inf weights, OpenVINO runs them into wrong output."""
    import numpy as np
    import onnx
    from onnx import external_data_helper, numpy_helper

    path = folder / file
    label = f"{path} (graph {graph})"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and others: the bytes are not a graph
        raise ModelFolderError(f"{label} is not an ONNX graph ({exc}); "
                               f"{ONNX_FOLDER.fix}") from exc
    tensors = list(_weights(model.graph))
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location")
            inside_folder(folder, location, ONNX_FOLDER,
                          f"the external data of {tensor.name!r} in graph {graph!r}",
                          base=path.parent)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
        arrays = [(tensor.name, numpy_helper.to_array(tensor)) for tensor in tensors]
    except Exception as exc:  # external data missing or short, a tensor of the wrong size
        raise ModelFolderError(f"{label} has weights that cannot be read ({exc}); "
                               f"{ONNX_FOLDER.fix}") from exc
    for name, values in arrays:
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise ModelFolderError(
                f"{label} has weights that are not finite (NaN or Inf), first in "
                f"{name!r}: the file is damaged or its training diverged; "
                f"{ONNX_FOLDER.fix} from a checkpoint with finite weights")


def _weights(graph) -> Iterator:
    """Every tensor stored in ``graph``: initializers (sparse ones' values too) and the
    tensors of node attributes (``Constant``), subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _weights(attribute.g)
            for subgraph in attribute.graphs:
                yield from _weights(subgraph)
