"""ONNX folders from elsewhere: hirn-run reads only the folder's own files, and refuses
graphs with weights that are not finite, under every backend, before any runtime opens
them and before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from support import assert_clean_failure, invoke, names

from hirn.core.errors import ModelFolderError
from hirn.export.manifest import MANIFEST_NAME, sha256_of, verify_folder, write_manifest
from hirn.export.onnx_export import ExportOptions, export_onnx

GRAPH = "decode"  # the graph each test damages


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    """OpenVINO's compiled models go to a temporary cache."""
    monkeypatch.setenv("HIRN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, small_model):
    folder = tmp_path_factory.mktemp("exported") / "graphs"
    export_onnx(None, folder, ExportOptions(dcn="onnx"), model=small_model)
    return folder


@pytest.fixture
def graphs(exported, tmp_path):
    """A copy of the exported folder to damage, and a small video beside it."""
    return shutil.copytree(exported, tmp_path / "graphs")


@pytest.fixture
def video(tmp_path, media):
    return media.write_video(tmp_path / "in.mp4", media.synthetic_frames(2))


def _relist(folder, graph: str = GRAPH, **changes) -> None:
    """Make the manifest agree with the graph's file as it is now (size and SHA-256), with
    ``changes`` to its entry: only the check under test can refuse the folder."""
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    entry = manifest["graphs"][graph]
    entry.update(changes)
    path = folder / entry["file"]
    entry.update(bytes=path.stat().st_size, sha256=sha256_of(path))
    write_manifest(folder, manifest)


def _rewrite(folder, change) -> str:
    """Apply ``change(tensor)`` to the first initializer of the graph; its name."""
    path = folder / f"{GRAPH}.onnx"
    model = onnx.load(str(path))
    tensor = model.graph.initializer[0]
    change(tensor)
    path.write_bytes(model.SerializeToString())
    _relist(folder)
    return tensor.name


def _with_nan(values: np.ndarray) -> np.ndarray:
    values = values.copy()
    values.flat[0] = np.nan
    return values


def _plant_nan(tensor) -> None:
    tensor.CopyFrom(numpy_helper.from_array(_with_nan(numpy_helper.to_array(tensor)),
                                            tensor.name))


def _externalise(folder, location: str, nan: bool = False):
    """A change moving a tensor's values (a NaN planted first, with ``nan``) to the file
    ``location``, relative to the graph: ONNX external data."""
    def change(tensor) -> None:
        values = numpy_helper.to_array(tensor)
        (folder / location).write_bytes((_with_nan(values) if nan else values).tobytes())
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)

    return change


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_graph_with_nan_weights_is_refused_by_every_backend(graphs, video, tmp_path,
                                                              backend):
    initializer = _rewrite(graphs, _plant_nan)
    before = names(tmp_path)
    result = invoke(video, "-o", tmp_path / "out.mkv", "--onnx", graphs, "--backend", backend)
    assert_clean_failure(result, f"{graphs / GRAPH}.onnx (graph {GRAPH}) has weights that are "
                         f"not finite (NaN or Inf), first in {initializer!r}", tmp_path, before)


def test_a_manifest_file_outside_the_folder_is_never_read(graphs, video, tmp_path):
    """An absolute path listed with the right size and hash: refused, its size unsaid."""
    secret = tmp_path / "secret.onnx"
    shutil.copy(graphs / f"{GRAPH}.onnx", secret)
    _relist(graphs, file=str(secret))
    before = names(tmp_path)
    result = invoke(video, "-o", tmp_path / "out.mkv", "--onnx", graphs)
    assert_clean_failure(result, f"the \"file\" of graph '{GRAPH}' names '{secret}', which is "
                         f"{secret}: outside {graphs}, so it was refused", tmp_path, before)
    assert str(secret.stat().st_size) not in result.output


def test_external_data_outside_the_folder_is_refused(graphs, video, tmp_path):
    initializer = _rewrite(graphs, _externalise(graphs, "../weights.bin"))
    before = names(tmp_path)
    result = invoke(video, "-o", tmp_path / "out.mkv", "--onnx", graphs, "--backend",
                    "onnxruntime")
    assert_clean_failure(result, f"the external data of {initializer!r} in graph '{GRAPH}' "
                         f"names '../weights.bin', which is {tmp_path / 'weights.bin'}: "
                         f"outside {graphs}, so it was refused", tmp_path, before)


def test_external_data_inside_the_folder_is_read_and_checked(graphs):
    _rewrite(graphs, _externalise(graphs, "weights.bin"))
    assert verify_folder(graphs)  # finite values in the folder's own file: accepted
    initializer = _rewrite(graphs, _externalise(graphs, "weights.bin", nan=True))
    with pytest.raises(ModelFolderError, match=f"not finite .* first in '{initializer}'"):
        verify_folder(graphs)
