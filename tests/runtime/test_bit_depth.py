"""More than 8 bits in and out: 10-bit HEVC and 16-bit PNGs are decoded to 16-bit RGB, fed to
the model untruncated, and written back at their depth (H.265 Main10, FFV1 and PNG at 16
bits); 8-bit sources stay 8-bit; ``--pix-fmt`` chooses. Media are made here with PyAV."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch
from support import DEEP_RUN_MAX_ERROR, DEEP_RUN_MAX_LEVELS, assert_clean_failure, invoke, names

from hirn.core.errors import SinkError
from hirn.media.pixels import Sampling, choose_format
from hirn.media.video import open_source
from hirn.train import load_model

THREADS = ("--threads", "1")  # one thread runs fastest on a loaded 2-core machine
WIDTH, HEIGHT, FRAMES = 80, 64, 3  # valid model input as they are (even, >= 64)
TEN_BIT_LEVEL = 1 / 1023


def planes(frame) -> list[np.ndarray]:
    """A frame's planes as arrays of its samples (no line padding)."""
    wide = max(c.bits for c in frame.format.components) > 8
    dtype = np.uint16 if wide else np.uint8
    out = []
    for plane in frame.planes:
        rows = np.frombuffer(plane, dtype).reshape(plane.height, -1)
        out.append(rows[:, :plane.width].copy())
    return out


def make_frame(fmt: str, samples: list[np.ndarray]):
    """A PyAV frame of ``fmt`` holding ``samples`` (one array per plane)."""
    frame = av.VideoFrame(samples[0].shape[1], samples[0].shape[0], fmt)
    for plane, data in zip(frame.planes, samples):
        rows = np.zeros((plane.height, plane.line_size // data.itemsize), data.dtype)
        rows[:, :data.shape[1]] = data
        plane.update(rows.tobytes())
    return frame


def ten_bit_planes(index: int, width: int = WIDTH, height: int = HEIGHT) -> list[np.ndarray]:
    """Random 10-bit luma (values such as 513, that 8 bits cannot hold) and flat chroma
    (so that 4:2:0 loses nothing on the way to RGB and back)."""
    rng = np.random.default_rng(index)
    luma = rng.integers(200, 800, (height, width)).astype(np.uint16)
    chroma = [np.full((height // 2, width // 2), 512 + 9 * index + k, np.uint16)
              for k in (-20, 30)]
    return [luma, *chroma]


def write_ten_bit_hevc(path, frames: list[list[np.ndarray]]):
    """Lossless 10-bit HEVC (x265, yuv420p10le) of these planes, in matroska."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=25,
                                options={"x265-params": "lossless=1:log-level=error"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p10le"
        for index, samples in enumerate(frames):
            frame = make_frame("yuv420p10le", samples)
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def to_yuv(image: np.ndarray, colour, fmt: str = "yuv420p10le") -> list[np.ndarray]:
    """uint16 or uint8 RGB through swscale to ``fmt``, with the source's matrix and range."""
    rgb = "rgb48le" if image.dtype == np.uint16 else "rgb24"
    frame = av.VideoFrame.from_ndarray(image, format=rgb).reformat(
        format=fmt, dst_colorspace=colour.swscale_matrix, dst_color_range=colour.range)
    return planes(frame)


def eight_bit(image: np.ndarray) -> np.ndarray:
    """16-bit RGB as an 8-bit path would carry it (rounded to 8 bits, back on 16)."""
    return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint16) * 257


def model_output(images: np.ndarray, checkpoint) -> np.ndarray:
    """The PyTorch model on ``[T, H, W, 3]`` uint16 RGB: ``[T, 4H, 4W, 3]`` float in [0, 1]."""
    model = load_model(checkpoint)
    clip = torch.from_numpy(images.astype(np.float32) / 65535).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(clip[None])[0]
    return out.clamp(0, 1).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def ten_bit_hevc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ten_bit")
    return write_ten_bit_hevc(folder / "in.mkv", [ten_bit_planes(i) for i in range(FRAMES)])


# ---------------------------------------------------------------------------------------------
# Reading


def test_ten_bit_hevc_is_decoded_without_rounding(ten_bit_hevc):
    source = open_source(ten_bit_hevc)
    assert source.sampling == Sampling(bits=10, pix_fmt="yuv420p10le")
    assert source.notes == []
    for index, (image, _) in enumerate(source):
        assert image.dtype == np.uint16
        coded = ten_bit_planes(index)
        # back to 10-bit YUV the frame gives every coded value, 513s included ...
        for got, truth in zip(to_yuv(image, source.colour), coded):
            assert np.array_equal(got, truth)
        # ... which an 8-bit path would not
        rounded = to_yuv(eight_bit(image), source.colour)[0]
        assert (rounded != coded[0]).mean() > 0.25  # 45% of them, measured


def test_sixteen_bit_pngs_are_read_whole(tmp_path, media):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 65536, (2, 48, 64, 3)).astype(np.uint16)
    source = open_source(media.write_images(tmp_path / "deep", list(bgr)))
    assert source.sampling.bits == 16 and source.notes == []
    for (image, _), truth in zip(source, bgr):
        assert image.dtype == np.uint16 and np.array_equal(image, truth[..., ::-1])


# ---------------------------------------------------------------------------------------------
# hirn-run, end to end


@pytest.fixture(scope="module")
def ten_bit_runs(tmp_path_factory, ten_bit_hevc, tiny_checkpoint):
    """hirn-run on the 10-bit HEVC: into H.265 by default (CRF 0: lossless) and into FFV1."""
    folder = tmp_path_factory.mktemp("ten_bit_runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {name: (invoke(ten_bit_hevc, "-o", folder / name, "--checkpoint",
                                 tiny_checkpoint, *THREADS, *args), folder / name)
                   for name, args in (("hevc.mkv", ("--crf", "0")),
                                      ("ffv1.mkv", ("--codec", "ffv1")))}
        expected = model_output(np.stack([f.image for f in open_source(ten_bit_hevc)]),
                                tiny_checkpoint)
    finally:
        torch.set_num_threads(threads)
    return results, expected


def test_ten_bit_hevc_in_gives_ten_bit_hevc_out(ten_bit_runs, ten_bit_hevc):
    runs, _ = ten_bit_runs
    result, hevc = runs["hevc.mkv"]
    assert result.exit_code == 0, result.output
    assert "bits per sample" not in result.output  # nothing reduced, nothing to say
    with av.open(str(hevc)) as container:
        context = container.streams.video[0].codec_context
        assert (context.name, context.pix_fmt, context.profile) == (
            "hevc", "yuv420p10le", "Main 10")
        decoded = [planes(frame) for frame in container.decode(video=0)]
    # the FFV1 run holds the model's output in 16 bits: the HEVC (lossless at CRF 0) holds
    # exactly its 10-bit YUV, not that of 8-bit frames
    colour = open_source(ten_bit_hevc).colour
    deep = [frame.image for frame in open_source(runs["ffv1.mkv"][1])]
    assert len(decoded) == len(deep) == FRAMES
    for got, image in zip(decoded, deep):
        for plane, truth in zip(got, to_yuv(image, colour)):
            assert np.array_equal(plane, truth)
        assert not np.array_equal(got[0], to_yuv(eight_bit(image), colour)[0])


def test_ten_bit_output_equals_the_model_at_ten_bit_precision(ten_bit_runs):
    runs, expected = ten_bit_runs
    result, ffv1 = runs["ffv1.mkv"]
    assert result.exit_code == 0, result.output
    source = open_source(ffv1)
    assert source.sampling == Sampling(bits=16, pix_fmt="gbrp16le")
    frames = np.stack([frame.image for frame in source])
    assert frames.shape == (FRAMES, 4 * HEIGHT, 4 * WIDTH, 3) and frames.dtype == np.uint16
    error = np.abs(frames / 65535 - expected)
    print(f"16-bit output vs the model: max error {error.max() * 1023:.4f} 10-bit levels")
    assert error.max() <= DEEP_RUN_MAX_ERROR
    # an 8-bit path misses that bar by far
    assert np.abs(eight_bit(frames) / 65535 - expected).max() > 2 * TEN_BIT_LEVEL


def test_sixteen_bit_pngs_in_give_sixteen_bit_pngs_out(tmp_path, media, tiny_checkpoint,
                                                       one_thread):
    rng = np.random.default_rng(2)
    smooth = cv2.GaussianBlur(rng.random((HEIGHT, WIDTH, 3)), (0, 0), 3)
    bgr = [np.clip((smooth * 0.8 + 0.1 + 0.01 * i) * 65535, 0, 65535).astype(np.uint16)
           for i in range(2)]
    folder = media.write_images(tmp_path / "in", bgr)
    result = invoke(folder, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    written = [cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
               for name in names(tmp_path / "out")]
    assert [image.dtype for image in written] == [np.uint16] * 2
    expected = model_output(np.stack([image[..., ::-1] for image in bgr]), tiny_checkpoint)
    got = np.stack([image[..., ::-1] for image in written]).astype(float)
    levels = np.abs(got - np.rint(expected * 65535))
    print(f"16-bit PNGs vs the model: max {levels.max():.0f} 16-bit levels")
    assert levels.max() <= DEEP_RUN_MAX_LEVELS


def test_eight_bit_stays_eight_bit(tmp_path, media, tiny_checkpoint, one_thread):
    frames = media.synthetic_frames(1, WIDTH, HEIGHT)
    folder = media.write_images(tmp_path / "in", [f[..., ::-1] for f in frames])
    result = invoke(folder, "-o", tmp_path / "out", "--checkpoint", tiny_checkpoint, *THREADS)
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(tmp_path / "out" / "000000.png"), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8
    for codec in ("h264", "h265", "ffv1", "png", "y4m"):
        chosen, notes = choose_format(codec, Sampling(8, "yuv420p"), None)
        assert chosen == {"ffv1": "bgr0", "png": "rgb24"}.get(codec, "yuv420p") and not notes


# ---------------------------------------------------------------------------------------------
# Choosing the output's format


@pytest.mark.parametrize("codec, bits, chosen", [
    ("h265", 10, "yuv420p10le"), ("ffv1", 10, "gbrp16le"), ("png", 16, "rgb48be"),
    ("y4m", 12, "yuv420p12le"), ("ffv1", 12, "gbrp16le")])
def test_deep_sources_keep_their_bits_by_default(codec, bits, chosen):
    assert choose_format(codec, Sampling(bits, f"gbrp{bits}le"), None) == (chosen, [])


def test_formats_that_hold_fewer_bits_are_noted():
    chosen, notes = choose_format("h265", Sampling(12, "yuv420p12le"), None)
    assert chosen == "yuv420p10le"
    assert notes == ["the input has 12 bits per sample; the output is written in "
                     "yuv420p10le, 10 bits (--pix-fmt or --codec ffv1 / png keep more)"]
    assert choose_format("h265", Sampling(12), "yuv420p12le") == ("yuv420p12le", [])
    chosen, notes = choose_format("h264", Sampling(10), None)
    assert chosen == "yuv420p" and "--codec h265 (Main10)" in notes[0]


def test_pix_fmt_is_checked_against_the_encoder(small_input, tmp_path, tiny_checkpoint):
    with pytest.raises(SinkError, match="h264 cannot be written in pixel format 'rgb48be'"):
        choose_format("h264", Sampling(), "rgb48be")
    before = names(tmp_path)
    result = invoke(small_input, "-o", tmp_path / "o.mkv", "--checkpoint", tiny_checkpoint,
                    "--codec", "ffv1", "--pix-fmt", "yuv420p10")
    assert_clean_failure(result, "ffv1 cannot be written in pixel format 'yuv420p10': choose "
                         "one of", tmp_path, before)


def test_pix_fmt_chooses_the_output_format(small_input, tmp_path, tiny_checkpoint, one_thread):
    out = tmp_path / "o.mkv"
    result = invoke(small_input, "-o", out, "--checkpoint", tiny_checkpoint, "--codec", "h265",
                    "--pix-fmt", "yuv444p10le", *THREADS)
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv444p10le"


@pytest.fixture
def small_input(tmp_path, media):
    """One 8-bit frame at 80x64, H.264 in MP4."""
    return media.write_video(tmp_path / "in.mp4", media.synthetic_frames(1, WIDTH, HEIGHT))
