"""Hostile input, one row a case: the real command as a subprocess, its exit code, a phrase of
what it says, and what it leaves at the output (nothing, or the complete result).

A new finding is one more line in ``CASES``: an input maker (below the table), the command's
options, the exit code, the phrase, and the output expected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # every case starts hirn-run (or hirn-train) as a subprocess

TIMEOUT_S = 300
SIZE = 64  # LR frames of 64x64: valid model input as they are, about a second each
ABSENT = "absent"  # nothing new beside the output: no output, no temporary file


@dataclass(frozen=True)
class Made:
    """What an input maker leaves: the command's arguments and its standard input."""

    args: list
    stdin: bytes | None = None
    output: Path | None = None  # the output the command is told to write (None: stdout)


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path, Path], Made]  # (a fresh folder, the tiny checkpoint) -> Made
    options: tuple = ()
    code: int = 1
    phrase: str = ""  # must appear in standard error
    output: str | int | None = ABSENT  # ABSENT, the frames the complete output holds, or
    # None where the output is checked by ``extra`` alone
    stdout_has: bytes = b""  # must appear in standard output (a Y4M header field)
    command: str = "hirn-run"
    extra: dict = field(default_factory=dict)


# --- input makers: each writes its input under ``folder`` and says how to run on it --------

def frames(count: int = 3, size: int = SIZE) -> list[np.ndarray]:
    rng = np.random.default_rng(count)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def encode(path: Path, images, *, codec="libx264", pix_fmt="yuv420p", pts=None,
           rate=25, alpha=False) -> Path:
    """``images`` encoded into ``path`` at ``pts`` (default 0, 1, ...) in 1/``rate`` s."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, pix_fmt
        for index, image in enumerate(images):
            if alpha:
                image = np.concatenate([image, np.full_like(image[..., :1], 128)], -1)
            frame = av.VideoFrame.from_ndarray(image, format="rgba" if alpha else "rgb24")
            frame.pts = index if pts is None else pts[index]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def video(name: str = "in.mp4", out: str = "x4.mkv", **options):
    def make(folder: Path, checkpoint: Path) -> Made:
        source = encode(folder / name, frames(), **options)
        return Made([source, "-o", folder / out], output=folder / out)
    return make


def vfr_mkv(folder: Path, checkpoint: Path) -> Made:
    """Frames at 0, 1, 2, 5, 6 and 10 in 1/25 s: a valid variable-rate video with gaps."""
    source = encode(folder / "vfr.mkv", frames(6), pts=[0, 1, 2, 5, 6, 10])
    return Made([source, "-o", folder / "x4.mkv"], output=folder / "x4.mkv")


def audio_without_packets(folder: Path, checkpoint: Path) -> Made:
    """An MKV whose audio track was declared but never written to."""
    path = folder / "silent.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        out.add_stream("aac", rate=44100)
        for index, image in enumerate(frames()):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return Made([path, "-o", folder / "x4.mp4"], output=folder / "x4.mp4")


def text(name: str):
    def make(folder: Path, checkpoint: Path) -> Made:
        (folder / name).write_text("not a video\n")
        return Made([folder / name, "-o", folder / "x4.mkv"], output=folder / "x4.mkv")
    return make


def missing(folder: Path, checkpoint: Path) -> Made:
    return Made([folder / "nowhere.mp4", "-o", folder / "x4.mkv"], output=folder / "x4.mkv")


def same_as_input(folder: Path, checkpoint: Path) -> Made:
    source = encode(folder / "in.mkv", frames())
    return Made([source, "-o", source])


def y4m(header: str = "F25:1 Ip A0:0 C444", count: int = 3, cut: int = 0, size=SIZE):
    """A YUV4MPEG2 stream of ``count`` 4:4:4 frames, its last ``cut`` bytes missing."""
    def make(folder: Path, checkpoint: Path) -> Made:
        body = b"".join(b"FRAME\n" + bytes(3 * size * size) for _ in range(count))
        data = f"YUV4MPEG2 W{size} H{size} {header}\n".encode() + body
        return Made(["-", "-o", "-"], stdin=data[:len(data) - cut])
    return make


def batch(*members: str):
    """A batch folder holding a video at each of ``members``' names."""
    def make(folder: Path, checkpoint: Path) -> Made:
        videos = folder / "videos"
        videos.mkdir()
        for name in members:
            encode(videos / name, frames(2))
        return Made([videos, "-o", folder / "upscaled"], output=folder / "upscaled")
    return make


def batch_into_a_file(folder: Path, checkpoint: Path) -> Made:
    """A batch whose output folder would have to be made inside a regular file."""
    made = batch("a.mp4")(folder, checkpoint)
    (folder / "taken").write_text("a file\n")
    return Made([made.args[0], "-o", folder / "taken" / "upscaled"])


def onnx_folder(tamper: Callable[[Path], None]):
    """The tiny model's ONNX folder, ``tamper``-ed."""
    def make(folder: Path, checkpoint: Path) -> Made:
        graphs = folder / "graphs"
        shutil.copytree(_exported(checkpoint), graphs)
        tamper(graphs)
        source = encode(folder / "in.mkv", frames(2))
        return Made([source, "-o", folder / "x4.mkv", "--onnx", graphs],
                    output=folder / "x4.mkv")
    return make


def manifest_file(entry: str):
    """Point the encode graph's manifest entry at ``entry`` (``{outside}``: a file beside
    the folder)."""
    def tamper(graphs: Path) -> None:
        outside = graphs.parent / "secret.txt"
        outside.write_text("not yours\n")
        manifest = json.loads((graphs / "manifest.json").read_text())
        manifest["graphs"]["encode"]["file"] = entry.format(outside=outside)
        (graphs / "manifest.json").write_text(json.dumps(manifest))
    return tamper


def symlinked_graph(graphs: Path) -> None:
    outside = graphs.parent / "elsewhere.onnx"
    (graphs / "encode.onnx").rename(outside)
    (graphs / "encode.onnx").symlink_to(outside)


def nan_initializer(graphs: Path) -> None:
    """A NaN in the flow graph's first float weight (the sampling it disturbs keeps the
    output finite), the manifest's hash made to agree."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(graphs / "flow.onnx"))
    weight = next(w for w in model.graph.initializer if w.data_type == onnx.TensorProto.FLOAT
                  and np.prod(w.dims) > 1)
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(graphs / "flow.onnx"))
    manifest = json.loads((graphs / "manifest.json").read_text())
    data = (graphs / "flow.onnx").read_bytes()
    manifest["graphs"]["flow"].update(sha256=hashlib.sha256(data).hexdigest(),
                                        bytes=len(data))
    (graphs / "manifest.json").write_text(json.dumps(manifest, indent=2))


def resume_folder(damage: Callable[[Path, Path], None]):
    """``--resume`` into an output whose hidden work folder was ``damage``-d first."""
    def make(folder: Path, checkpoint: Path) -> Made:
        source = encode(folder / "in.mkv", frames())
        output = folder / "x4.mkv"
        damage(folder, folder / f".{output.name}.resume")
        return Made([source, "-o", output, "--resume"], output=output)
    return make


def symlink_to(folder: Path, work: Path) -> None:
    (folder / "elsewhere").mkdir()
    work.symlink_to(folder / "elsewhere")


def a_file(folder: Path, work: Path) -> None:
    work.write_text("someone's notes\n")


def manifest_list(folder: Path, work: Path) -> None:
    work.mkdir()
    (work / "manifest.json").write_text("[]")


_HELD: list = []  # locks this process holds while the command runs


def locked_by_us(folder: Path, work: Path) -> None:
    """The resume folder's lock held by this process, as a running hirn-run holds it."""
    import fcntl

    work.mkdir()
    lock = open(work / "lock", "w")  # noqa: SIM115 (held open until the command has run)
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _HELD.append(lock)


def pickled_state(folder: Path, checkpoint: Path) -> Made:
    """A training resume state whose unpickling would create ``pwned``."""
    import pickle

    class Planted:
        def __reduce__(self):
            return (Path.touch, (folder / "pwned",))

    state = folder / "evil.state"
    state.write_bytes(pickle.dumps({"iteration": 1, "planted": Planted()}))
    config = Path(__file__).resolve().parents[2] / "configs" / "vid4_calendar_cpu.yml"
    return Made([config, "--resume", state, "--work-dir", folder / "run"])


# --- the table ---------------------------------------------------------------------------------

CASES = [
    Case("a missing input", missing, phrase="does not exist"),
    Case("a text file named .mp4", text("in.mp4"), phrase="is not a video FFmpeg can read"),
    Case("the output is the input", same_as_input, phrase="is the input"),
    Case("an unknown output extension", video(out="x4.xyz"), phrase="cannot tell what to write"),
    Case("a window of 0 frames", video(), ("--window", "0"), 2, "'--window'"),
    Case("a checkpoint that is a text file", video(), ("--checkpoint", "{folder}/in.mp4"),
         phrase="cannot read checkpoint"),
    Case("a variable frame rate with gaps", vfr_mkv, code=0, phrase="about 11 frames", output=6),
    Case("an audio track without packets, into MP4", audio_without_packets, code=0,
         phrase="its audio track has no packets", output=3),
    Case("--pix-fmt gray with H.264", video(out="x4.mp4"), ("--pix-fmt", "gray"), 0,
         phrase="written in gray: luma only", output=3),
    Case("VP9 with alpha", video("clip.webm", codec="libvpx-vp9", pix_fmt="yuva420p",
                                 alpha=True), code=0, output=3,
         phrase="alpha channel of vp9 dropped"),
    Case("a batch member named ..mp4", batch("a.mp4", "..mp4"), code=0,
         phrase="not upscaled: ..mp4",
         output=None),
    Case("a batch into a folder inside a file", batch_into_a_file,
         phrase="cannot create the output folder"),
    Case("Y4M frame rate F0:1", y4m("F0:1 Ip A0:0 C444"),
         phrase="frame rate F0:1 is not a positive rate"),
    Case("Y4M frame rate F-25:1", y4m("F-25:1 Ip A0:0 C444"),
         phrase="frame rate F-25:1 is not a positive rate"),
    Case("Y4M aspect A0:1", y4m("F25:1 Ip A0:1 C444"),
         phrase="pixel aspect A0:1 is not a positive ratio"),
    Case("Y4M aspect A1:1 passes through", y4m("F25:1 Ip A1:1 C444"), code=0, output=3,
         stdout_has=b" A1:1"),
    Case("Y4M cut inside its last frame", y4m(cut=100), code=0, output=2,
         phrase="ended inside frame 2 (counted from 0; 12188 of 12288 bytes)"),
    Case("Y4M cut inside its last frame, --strict", y4m(cut=100), ("--strict",),
         phrase="ended inside frame 2"),
    Case("Y4M of an impossible size", y4m(size=100_000, count=0),
         phrase="frame size W100000 H100000 is too large"),
    Case("manifest names an absolute path", onnx_folder(manifest_file("{outside}")),
         phrase="outside"),
    Case("manifest names ../", onnx_folder(manifest_file("../secret.txt")), phrase="outside"),
    Case("a graph that is a symlink out of its folder", onnx_folder(symlinked_graph),
         phrase="outside"),
    Case("NaN weights in a graph, OpenVINO", onnx_folder(nan_initializer),
         ("--backend", "openvino"), phrase="has weights that are not finite"),
    Case("NaN weights in a graph, ONNX Runtime", onnx_folder(nan_initializer),
         ("--backend", "onnxruntime"), phrase="has weights that are not finite"),
    Case("a resume folder that is a symlink", resume_folder(symlink_to), phrase="symlink"),
    Case("a resume folder that is a file", resume_folder(a_file), phrase="is a file"),
    Case("a resume manifest that is a list", resume_folder(manifest_list),
         phrase="holds a list, not an object"),
    Case("a resume folder locked by another run", resume_folder(locked_by_us),
         phrase=f"another hirn-run (pid {os.getpid()}) is resuming into"),
    Case("a training state that would run code", pickled_state, phrase="evil.state",
         command="hirn-train", extra={"absent": "pwned"}),
]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint


_EXPORTS: dict[Path, Path] = {}


def _exported(checkpoint: Path) -> Path:
    """The tiny checkpoint's ONNX folder, exported once per process."""
    if checkpoint not in _EXPORTS:
        graphs = checkpoint.parent / "graphs"
        if not graphs.exists():
            subprocess.run([shutil.which("hirn-export"), "onnx", str(checkpoint), "-o",
                            str(graphs)], check=True, capture_output=True, timeout=TIMEOUT_S)
        _EXPORTS[checkpoint] = graphs
    return _EXPORTS[checkpoint]


def _frames_in(output: Path | None, stdout: bytes) -> int:
    import io

    if output is None:
        source = av.open(io.BytesIO(stdout), format="yuv4mpegpipe")
    elif output.is_dir():
        return len(list(output.glob("*.png")))
    else:
        source = av.open(str(output))
    with source:
        return sum(1 for _ in source.decode(video=0))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case: Case, checkpoint: Path, tmp_path: Path):
    made = case.make(tmp_path, checkpoint)
    options = [str(o).format(folder=tmp_path) for o in case.options]
    args = [str(a) for a in made.args] + options
    if case.command == "hirn-run":
        args += ["--threads", "1"]
        if "--checkpoint" not in options and "--onnx" not in args:
            args += ["--checkpoint", str(checkpoint)]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = subprocess.run([shutil.which(case.command), *args], input=made.stdin or b"",
                            capture_output=True, timeout=TIMEOUT_S)
    said = result.stderr.decode(errors="replace")
    assert result.returncode == case.code, said
    assert "Traceback" not in said, said
    assert case.phrase in said, said
    if case.output == ABSENT:
        if made.output is not None:
            assert not made.output.exists(), said
        hidden = [name for name in sorted(p.name for p in tmp_path.iterdir())
                  if name not in before and not name.endswith(".resume")]
        assert hidden == [], said
    elif case.output is not None:
        assert _frames_in(made.output, result.stdout) == case.output, said
    assert case.stdout_has in result.stdout
    if "absent" in case.extra:
        assert not (tmp_path / case.extra["absent"]).exists()
    while _HELD:
        _HELD.pop().close()
