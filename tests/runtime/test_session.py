"""The session owns its runners: made on first need, closed on exit; every runner closes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from hirn.export.onnx_export import export_onnx
from hirn.runtime.backends import create_runner
from hirn.runtime.backends.base import BackendConfig
from hirn.runtime.pipeline import RunConfig
from hirn.runtime.session import Session


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint) -> Path:
    folder = tmp_path_factory.mktemp("session_onnx") / "graphs"
    export_onnx(tiny_checkpoint, folder)
    return folder


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HIRN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def _config(backend: str, tiny_checkpoint: Path, tiny_onnx: Path) -> BackendConfig:
    if backend == "torch":
        return BackendConfig(backend="torch", checkpoint=tiny_checkpoint, precision="fp32",
                             threads=1)
    return BackendConfig(backend=backend, onnx_dir=tiny_onnx, precision="fp32", threads=1)


# what each runner holds until it is closed
HOLDINGS = {"torch": "modules", "onnxruntime": "sessions", "openvino": "models"}


@pytest.mark.parametrize("backend", sorted(HOLDINGS))
def test_every_runner_closes(backend, tiny_checkpoint, tiny_onnx):
    frames = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    with create_runner(_config(backend, tiny_checkpoint, tiny_onnx)) as runner:
        encoded = runner.to_numpy(runner.run("encode", runner.from_numpy(frames)))
        assert encoded.shape == (1, 16, 64, 64)
        assert getattr(runner, HOLDINGS[backend])  # the model is loaded until closed
    assert runner.closed
    assert not getattr(runner, HOLDINGS[backend])
    with pytest.raises(RuntimeError, match="runner was closed"):
        runner.run("encode", runner.from_numpy(frames))
    runner.close()  # a second close does nothing


def _clip(path: Path, count: int = 3) -> Path:
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "bgr0"
        for index in range(count):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), np.uint8),
                                               format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_a_session_makes_its_runner_on_first_need_and_closes_it(tiny_checkpoint, tiny_onnx,
                                                                tmp_path):
    said = []
    config = _config("onnxruntime", tiny_checkpoint, tiny_onnx)
    with Session(config, RunConfig(quiet=True), report=said.append) as session:
        assert session._runner is None  # nothing loaded before an input is known good
        stats = session.upscale_file(_clip(tmp_path / "in.mkv"), tmp_path / "x4.mkv")
        runner = session._runner
        assert runner is not None and not runner.closed
    assert stats.frames == 3 and len(said) == 1 and "3 frames" in said[0]
    assert runner.closed and session._runner is None
    with av.open(str(tmp_path / "x4.mkv")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_a_session_closes_its_runner_when_the_run_fails(tiny_checkpoint, tiny_onnx, tmp_path):
    from hirn.core.errors import HirnError

    config = _config("onnxruntime", tiny_checkpoint, tiny_onnx)
    session = Session(config, RunConfig(quiet=True), report=lambda line: None)
    with pytest.raises(HirnError), session:
        session.upscale_file(_clip(tmp_path / "in.mkv"), tmp_path / "x4.mkv")
        runner = session._runner
        session.upscale_file(tmp_path / "in.mkv", tmp_path / "x4.mkv")  # exists already
    assert runner.closed


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_a_folder_without_every_graph_is_refused_by_name(backend, tiny_checkpoint, tiny_onnx,
                                                         tmp_path):
    import json
    import shutil

    from hirn.core.errors import ModelFolderError

    folder = tmp_path / "graphs"
    shutil.copytree(tiny_onnx, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["graphs"]["step_group"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "step_group.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"lacks the graphs \['step_group'\]"):
        create_runner(_config(backend, tiny_checkpoint, folder))
