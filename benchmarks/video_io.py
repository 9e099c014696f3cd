"""Decode and encode throughput of the runtime's video I/O (``hirn.media.video``).

Frames: Vid4 calendar GT at 720x576 (the input size class) and the same frames upscaled 4x
with bicubic to 2880x2304 (a stand-in for HiRN's output: similar smoothness, same size). Each
codec writes them through ``open_sink`` (RGB to YUV conversion, encoding, muxing, rename
included) and reads them back through ``open_source`` (demux, decoding, conversion to RGB).
These per-frame times are what the runtime adds around the model.

    python benchmarks/video_io.py [--sd-frames 24] [--hd-frames 6] [--repeats 1]

Writes benchmarks/results/video_io.{json,md} (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hirn.media.video import open_sink, open_source

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HIRN_SHARED", REPO.parent / "shared"))
CALENDAR_GT = SHARED / "data" / "vid4" / "calendar" / "GT"
RESULTS = REPO / "benchmarks" / "results"
OUTPUTS = {"h264": "out.mp4", "h265": "out.mp4", "ffv1": "out.mkv", "png": "frames"}
FPS = 25


def calendar(count: int, scale: int) -> list[np.ndarray]:
    """The first ``count`` calendar GT frames, [576 s, 720 s, 3] uint8 RGB."""
    paths = sorted(CALENDAR_GT.glob("*.png"))[:count]
    if not paths:
        raise SystemExit(f"no frames in {CALENDAR_GT}: is ../shared/data present?")
    frames = []
    for path in paths:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        if scale != 1:
            rgb = cv2.resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale),
                             interpolation=cv2.INTER_CUBIC)
        frames.append(rgb)
    return frames


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def measure(frames: list[np.ndarray], codec: str, folder: Path, repeats: int) -> dict:
    """Best-of-``repeats`` encode and decode times of ``frames`` with ``codec``."""
    height, width = frames[0].shape[:2]
    path = folder / OUTPUTS[codec]
    encode = decode = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        with open_sink(path, width=width, height=height, fps=FPS, codec=codec,
                       overwrite=True) as sink:
            for image in frames:
                sink.write(image)
        encode = min(encode, time.perf_counter() - start)
        start = time.perf_counter()
        stream = iter(open_source(path))
        spent, decoded, error = 0.0, 0, 0.0
        for original in frames:
            image, _ = next(stream)
            spent += time.perf_counter() - start
            error += float(np.mean((image.astype(np.float32) - original) ** 2))  # not timed
            decoded += 1
            start = time.perf_counter()
        decode = min(decode, spent)
    assert decoded == len(frames), (codec, decoded)
    mse = error / len(frames)
    count = len(frames)
    return {"codec": codec, "width": width, "height": height, "frames": count,
            "encode_fps": count / encode, "decode_fps": count / decode,
            "encode_ms_per_frame": 1000 * encode / count,
            "decode_ms_per_frame": 1000 * decode / count,
            "mb_per_frame": size_of(path) / count / 1e6,
            "psnr_db": None if mse == 0 else 10 * math.log10(255**2 / mse)}


def machine() -> dict:
    import av

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"python": platform.python_version(), "pyav": av.__version__,
            "ffmpeg": {k: ".".join(map(str, v)) for k, v in av.library_versions.items()
                       if k in ("libavcodec", "libavformat", "libswscale")},
            "opencv": cv2.__version__, "cpu": cpu, "cpu_count": os.cpu_count()}


def markdown(payload: dict) -> str:
    lines = ["# Video I/O throughput (`hirn.media.video`)", "",
             f"Calendar GT frames (720x576) and their bicubic x4 upscale (2880x2304); "
             f"H.264 / H.265 at CRF 18 (preset medium, yuv420p), FFV1 lossless (bgr0), "
             f"PNG (OpenCV, zlib RLE). Encode: `open_sink` ... `close()`; decode: iterating "
             f"`open_source` to RGB arrays. Best of {payload['repeats']} run(s). "
             f"CPU: {payload['machine']['cpu']} x{payload['machine']['cpu_count']}, "
             f"load average {payload['load_before']:.1f} before / "
             f"{payload['load_after']:.1f} after (a shared machine: treat the figures as "
             f"lower bounds).", "",
             "| size | codec | frames | encode fps | decode fps | encode ms/frame "
             "| decode ms/frame | MB/frame | RGB PSNR (dB) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in payload["results"]:
        quality = "lossless" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
        lines.append(f"| {r['width']}x{r['height']} | {r['codec']} | {r['frames']} "
                     f"| {r['encode_fps']:.1f} | {r['decode_fps']:.1f} "
                     f"| {r['encode_ms_per_frame']:.0f} | {r['decode_ms_per_frame']:.0f} "
                     f"| {r['mb_per_frame']:.2f} | {quality} |")
    lines += ["", "Per upscaled frame the runtime pays one 720x576 decode and one 2880x2304 "
              "encode: add the two ms/frame figures of the codecs used."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sd-frames", type=int, default=24)
    parser.add_argument("--hd-frames", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--codecs", default="h264,h265,ffv1,png")
    args = parser.parse_args()
    codecs = args.codecs.split(",")
    load_before = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory(prefix="hirn-video-io-") as scratch:
        for count, scale in ((args.sd_frames, 1), (args.hd_frames, 4)):
            frames = calendar(count, scale)
            for codec in codecs:
                result = measure(frames, codec, Path(scratch), args.repeats)
                print(result, flush=True)
                results.append(result)
    payload = {"machine": machine(), "repeats": args.repeats, "load_before": load_before,
               "load_after": os.getloadavg()[0], "results": results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "video_io.json").write_text(json.dumps(payload, indent=2) + "\n")
    text = markdown(payload)
    (RESULTS / "video_io.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
