"""Real media and small models for the tests (a plugin of tests/conftest.py), made with PyAV
directly (not with the code under test).

``calendar_mp4``: 10 Vid4 calendar frames at 176x144, H.264 in MP4 with a stereo AAC tone.
``media``: helpers to write any other video (codec, pixel format, audio) or image folder.
"""

from __future__ import annotations

import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from support import DATA

CALENDAR_GT = DATA / "vid4" / "calendar" / "GT"
CALENDAR_FRAMES = 10
CLIP_SIZE = (176, 144)  # width, height: small enough to keep every test fast
CLIP_FPS = 25
TONE_RATE = 44100  # Hz
TONE_HZ = 440.0


def tone(seconds: float, rate: int = TONE_RATE, channels: int = 2) -> np.ndarray:
    """A sine tone, ``[channels, rate * seconds]`` float32 in [-0.3, 0.3]."""
    t = np.arange(round(seconds * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def encode_frames(out, stream, frames, in_format: str = "rgb24", flush: bool = True) -> None:
    """Encode ``frames`` into ``stream`` of the open container ``out``, numbered 0, 1, ...
    in the stream's time base; ``flush`` sends the encoder's last packets too."""
    import av

    for index, image in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=in_format)
        frame.pts = index
        out.mux(stream.encode(frame))
    if flush:
        out.mux(stream.encode(None))


def write_video(path: Path, frames, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
                in_format: str = "rgb24", fps: int | Fraction = CLIP_FPS,
                audio: tuple | None = None, options: dict | None = None,
                container_options: dict | None = None) -> Path:
    """Encode ``frames`` (arrays in ``in_format``) to ``path``; ``audio`` is
    ``(codec, rate, samples [channels, n] float)`` or None. Returns the path."""
    import av

    frames = list(frames)
    height, width = frames[0].shape[:2] if frames else (48, 64)
    with av.open(str(path), "w", options=container_options or {}) as out:
        video = out.add_stream(codec, rate=fps, options=options or {})
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        sound = None
        if audio is not None:
            audio_codec, rate, samples = audio
            sound = out.add_stream(audio_codec, rate=rate)
            sound.layout = "stereo" if samples.shape[0] == 2 else "mono"
        out.start_encoding()
        encode_frames(out, video, frames, in_format)
        if sound is not None:
            fmt = sound.codec_context.format
            data = samples
            if fmt.name.startswith("s16"):
                data = (samples * 32767).astype(np.int16)
            elif fmt.name.startswith("u8"):
                data = (samples * 127 + 128).astype(np.uint8)
            if not fmt.is_planar:  # packed: [1, n * channels], channels interleaved
                data = data.T.reshape(1, -1)
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt.name,
                                               layout=sound.layout.name)
            chunk.sample_rate, chunk.pts = rate, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
    return path


def write_images(folder: Path, images, names=None, ext: str = ".png") -> Path:
    """Write ``images`` (OpenCV layout: BGR, BGRA, gray, uint8 or uint16) into ``folder``."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        name = names[index] if names else f"{index:03d}{ext}"
        assert cv2.imwrite(str(folder / name), image)
    return folder


def synthetic_frames(count: int = 6, width: int = 64, height: int = 48, seed: int = 0):
    """``count`` [H, W, 3] uint8 RGB frames: a moving gradient plus noise (deterministic)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frames = []
    for index in range(count):
        base = np.stack([(x * 4 + index * 9) % 256, (y * 5) % 256, (x + y + index * 20) % 256], -1)
        noise = rng.integers(-12, 13, base.shape)
        frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return frames


@pytest.fixture(scope="session")
def small_model():
    """A HiRN of 16 channels and 1 block with seeded random weights, for backend parity."""
    import torch

    from hirn.train import HiRN

    torch.manual_seed(7)
    return HiRN(mid_channels=16, num_blocks=1).eval()


@pytest.fixture(scope="session")
def media():
    """The media helpers of this file, for tests (conftest modules cannot be imported)."""
    return types.SimpleNamespace(write_video=write_video, write_images=write_images, tone=tone,
                                 synthetic_frames=synthetic_frames, fps=CLIP_FPS,
                                 encode_frames=encode_frames,
                                 tone_rate=TONE_RATE)


@pytest.fixture(scope="session")
def calendar_frames() -> list[np.ndarray]:
    """10 calendar GT frames, [144, 176, 3] uint8 RGB (720x576 shrunk 4x, centre-cropped)."""
    import cv2

    if not (CALENDAR_GT / "000.png").exists():
        pytest.skip(f"{CALENDAR_GT} is absent (the ../shared checkout is needed)")
    frames = []
    for index in range(CALENDAR_FRAMES):
        bgr = cv2.imread(str(CALENDAR_GT / f"{index:03d}.png"))
        small = cv2.resize(bgr, (bgr.shape[1] // 4, bgr.shape[0] // 4),
                           interpolation=cv2.INTER_AREA)
        left = (small.shape[1] - CLIP_SIZE[0]) // 2
        top = (small.shape[0] - CLIP_SIZE[1]) // 2
        crop = small[top:top + CLIP_SIZE[1], left:left + CLIP_SIZE[0]]
        frames.append(np.ascontiguousarray(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)))
    return frames


@pytest.fixture(scope="session")
def calendar_mp4(tmp_path_factory, calendar_frames) -> Path:
    """An MP4: the calendar frames in H.264 (CRF 18) at 25 fps, with a stereo AAC tone as
    long as the video (0.4 s)."""
    path = tmp_path_factory.mktemp("calendar") / "calendar.mp4"
    seconds = len(calendar_frames) / CLIP_FPS
    return write_video(path, calendar_frames, options={"crf": "18"},
                       audio=("aac", TONE_RATE, tone(seconds)))


# Small media and a small model for the hirn-run tests: on a shared 2-core CPU the tiny model
# takes about a second per 64x64 frame, so these clips stay a few frames at 80x64.
SMALL_CLIP = (80, 64, 4)  # width, height, frames: valid model input as they are (even, >= 64)
TINY_MODEL = {"mid_channels": 16, "num_blocks": 1}


@pytest.fixture(scope="session")
def calendar_small_mp4(tmp_path_factory, calendar_frames) -> Path:
    """An MP4 of the first 4 calendar frames cropped to 80x64, H.264 (CRF 18) at 25 fps,
    with a stereo AAC tone as long as the video (0.16 s)."""
    width, height, count = SMALL_CLIP
    frames = [np.ascontiguousarray(f[40:40 + height, 48:48 + width]) for f in
              calendar_frames[:count]]
    path = tmp_path_factory.mktemp("calendar_small") / "calendar_small.mp4"
    return write_video(path, frames, options={"crf": "18"},
                       audio=("aac", TONE_RATE, tone(count / CLIP_FPS)))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A HiRN(mid_channels=16, num_blocks=1) checkpoint with seeded random weights."""
    import torch

    from hirn.train import HiRN, save_checkpoint

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    return save_checkpoint(path, HiRN(**TINY_MODEL))


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (a loaded 2-core machine runs it fastest), restored
    afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
