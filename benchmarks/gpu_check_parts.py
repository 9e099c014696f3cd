"""The five parts of ``gpu_check.py``; each fills its ``result`` dict as it goes, raises
:class:`Skipped` (with the reason) for what this machine cannot run, and anything else when a
check fails, so that what it measured before it stopped is kept."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_FILES = ("hirn_random_seed1.pth", "hirn_t6_64x64.npz", "hirn_t17_64x64.npz")
CALENDAR = Path("data") / "vid4" / "calendar" / "LR_bicubic_matlab"
CALENDAR_FRAMES = 16
GPU_TESTS = REPO / "tests"

# Thresholds of the kernel part (as in tests/plugins/test_kernel_gpu.py).
DCN_FP32_ATOL = 1e-4
DCN_FP16_MIN_PSNR_DB = 50.0
DCN_SIZES = ((180, 320), (540, 960))
# Seconds each part may take at most; together the 8 minutes the run promises.
CAPS = {"environment": 15, "gpu tests": 180, "dcn kernel": 60, "torch backend": 180,
        "hirn-run": 45}
TORCH_VARIANTS = ("eager fp32", "eager fp16", "compiled fp16", "cuda graphs fp16")


class Skipped(Exception):
    """A part (or the rest of it) cannot run here; the message says why."""


@dataclass
class Check:
    """What every part gets: where things are, what this machine has, and the clock."""

    out: Path
    bundle: Path | None
    work: Path                 # scratch space (not returned with the results)
    env: dict                  # environment for subprocesses: this checkout importable
    cuda: bool
    reduced: bool
    start: float = field(default_factory=time.monotonic)

    def deadline(self, part: str) -> float:
        return time.monotonic() + CAPS[part]

    @property
    def shared(self) -> Path:
        if self.bundle is not None and (self.bundle / "shared").is_dir():
            return self.bundle / "shared"
        return Path(os.environ.get("HIRN_SHARED", REPO.parent / "shared"))


# ---- the parts ----------------------------------------------------------------------------

def environment(check: Check, result: dict) -> None:
    import torch

    result.update(python=platform.python_version(), torch=torch.__version__,
                  torch_cuda=torch.version.cuda, cuda_available=check.cuda,
                  reduced=check.reduced, bundle=str(check.bundle), shared=str(check.shared))
    if check.cuda:
        props = torch.cuda.get_device_properties(0)
        result.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                      gpu_memory_gib=round(props.total_memory / 2**30, 1),
                      gpu_count=torch.cuda.device_count())
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            result["driver"] = subprocess.run(query, capture_output=True, text=True,
                                              timeout=10).stdout.strip()
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if Path(nvcc).is_file():
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=10)
        result["nvcc"] = version.stdout.strip().splitlines()[-1]
    for module in ("torchvision", "cupy", "onnxruntime", "av", "tensorrt", "cv2"):
        try:
            result[module] = __import__(module).__version__
        except Exception as exc:  # absent, or built for another torch
            result[module] = f"unavailable ({type(exc).__name__})"
    if check.bundle is not None and (check.bundle / "bundle.json").is_file():
        result["bundle_made"] = json.loads((check.bundle / "bundle.json").read_text())["made"]


def gpu_tests(check: Check, result: dict) -> None:
    if not check.cuda:
        raise Skipped("no CUDA GPU: every gpu-marked test would skip (pytest -m gpu)")
    log = check.out / "gpu_tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rA", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", str(GPU_TESTS)]
    result["command"] = " ".join(command[1:])
    try:
        run = subprocess.run(command, cwd=REPO, env=check.env, capture_output=True, text=True,
                             timeout=CAPS["gpu tests"])
        output, result["exit_code"] = run.stdout + run.stderr, run.returncode
    except subprocess.TimeoutExpired as exc:  # its output is bytes, whatever text= says
        output = exc.stdout.decode(errors="replace") if exc.stdout else ""
        result["exit_code"] = f"timed out after {CAPS['gpu tests']} s"
    log.write_text(output)
    outcomes = dict(re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)",
                               output, re.MULTILINE))
    result["counts"] = {s: list(outcomes.values()).count(s) for s in sorted(set(outcomes.values()))}
    result["not_passed"] = {t: s for t, s in outcomes.items() if s not in ("PASSED", "SKIPPED")}
    result["summary"] = output.strip().splitlines()[-1] if output.strip() else ""
    result["log"] = log.name
    if result["exit_code"] != 0:
        raise AssertionError(f"pytest -m gpu: {result['summary']} (see {log.name})")


def _kernel_library(check: Check, result: dict) -> Path:
    """On a GPU, the kernel built for it (the bundle's sm_90 build is reused when the nvcc
    there is ours), else the bundle's library as it is; without one, the bundle's."""
    from hirn.core.errors import KernelBuildError
    from hirn.plugins import loader

    bundled = sorted((check.work / "cache").glob(f"kernels/*/{loader.LIBRARY_NAME}"))
    if bundled and not check.cuda:
        return bundled[0]  # building for other GPUs here would only cost time
    try:
        return loader.compile_kernel_library()
    except KernelBuildError as exc:
        if bundled:
            result["build_error"] = str(exc)[:500]
            return bundled[0]
        if not check.cuda:
            raise Skipped(f"no kernel library in the bundle and none built: {exc}") from exc
        raise


def dcn_kernel(check: Check, result: dict) -> None:
    from hirn.plugins import loader

    library = _kernel_library(check, result)
    result["library"] = str(library)
    loader.load_kernel(str(library))  # loads without a GPU; checks the ABI version
    result["abi_version"] = loader.ABI_VERSION
    if not check.cuda:
        raise Skipped("no CUDA GPU: the kernel library loads (ABI checked), nothing measured")
    import dcn_kernel as bench
    import torch

    tv, result["torchvision"] = bench._torchvision()
    methods = bench._methods(tv)
    # FP32 references without TF32 (PyTorch's default for convolutions); restored after.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _measure_kernel(loader, bench, tv, methods, result)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    if tv is None:
        raise AssertionError("torchvision does not import: no accuracy check (timings kept)")
    if not all(r["passed"] for r in result["sizes"]):
        raise AssertionError(f"kernel outside FP32 <= {DCN_FP32_ATOL} or FP16 >= "
                             f"{DCN_FP16_MIN_PSNR_DB} dB against torchvision")


def _measure_kernel(loader, bench, tv, methods: dict, result: dict) -> None:
    """Per size: our kernel against torchvision (when it imports), then every method's
    speed with ``dcn_kernel.py``'s timing."""
    import torch

    from hirn.plugins.cases import hirn_case

    result["sizes"] = []
    for height, width in DCN_SIZES:
        row = {"size": [height, width]}
        result["sizes"].append(row)
        if tv is not None:
            case = hirn_case(height, width, seed=0, device="cuda")
            kw = dict(stride=1, padding=1, dilation=1, mask=case.mask)
            with torch.no_grad():
                reference = tv(case.input, case.offset, case.weight, case.bias, **kw).double()
                ours32 = loader.bind_cuda(*case.args())()
                ours16 = loader.bind_cuda(*case.to(torch.float16).args())()
            row["fp32_max_abs_vs_torchvision"] = float((ours32.double() - reference).abs().max())
            row["fp16_psnr_vs_torchvision_fp32_db"] = bench._accuracy(ours16, reference)[1]
            row["passed"] = (row["fp32_max_abs_vs_torchvision"] <= DCN_FP32_ATOL and
                             row["fp16_psnr_vs_torchvision_fp32_db"] >= DCN_FP16_MIN_PSNR_DB)
            del case, reference, ours32, ours16
        row["timings"] = bench._measure_size(height, width, methods, warmup=5, iters=20)
        torch.cuda.empty_cache()


def _clips(check: Check) -> dict:
    """name -> [T, 3, H, W] float32: the calendar clip and a synthetic one (tiny if reduced)."""
    import cv2
    import numpy as np

    paths = sorted((check.shared / CALENDAR).glob("*.png"))[:CALENDAR_FRAMES]
    if not paths:
        raise Skipped(f"no calendar frames in {check.shared / CALENDAR}")
    calendar = np.stack([cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths])
    calendar = calendar.transpose(0, 3, 1, 2).astype(np.float32) / 255
    frames, height, width = (len(calendar), 180, 320) if not check.reduced else (2, 64, 96)
    if check.reduced:
        calendar = calendar[:2, :, 40:104, 40:104]
    # Smooth moving gradients with noise: flows and features see structure, not flat colour.
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    synthetic = np.stack([np.stack([0.5 + 0.4 * np.sin((x + 3 * t) / (9 + c) + y / 17)
                                    for c in range(3)]) for t in range(frames)])
    synthetic += rng.normal(0, 0.02, synthetic.shape).astype(np.float32)
    return {"calendar": calendar, f"synthetic {width}x{height}": np.clip(synthetic, 0, 1)}


def _model(check: Check):
    from hirn.train import HiRN, load_model

    if check.reduced:
        import torch

        torch.manual_seed(0)
        return HiRN(mid_channels=16, num_blocks=1).eval(), "HiRN(mid_channels=16, num_blocks=1)"
    weights = check.shared / "reference" / REFERENCE_FILES[0]
    if not weights.is_file():
        raise Skipped(f"{weights} is absent: prepare a bundle (--prepare) or set HIRN_SHARED")
    return load_model(weights), weights.name


def torch_backend(check: Check, result: dict) -> None:
    import numpy as np
    import torch
    from torch_backend import VARIANTS, _psnr

    from hirn.runtime.backends.torch_backend import TorchRunner
    from hirn.runtime.driver import upscale_clip

    deadline = check.deadline("torch backend")
    model, result["weights"] = _model(check)
    clips = _clips(check)
    result["clips"] = {name: list(clip.shape) for name, clip in clips.items()}
    device = "cuda" if check.cuda else "cpu"
    result["device"], result["runs"], result["skipped"] = device, [], {}
    # Clip by clip, so that the calendar gets every variant before the budget runs out; a
    # compiled runner compiles again for each frame size anyway (static shapes).
    for name, clip in clips.items():
        baseline = None
        for variant in TORCH_VARIANTS:
            precision, compile_steps, cuda_graphs = VARIANTS[variant]
            why = ("needs CUDA" if device == "cpu" and variant != "eager fp32" else
                   "time budget: compiling takes about a minute"
                   if compile_steps and deadline - time.monotonic() < 60 else
                   "time budget" if time.monotonic() > deadline else None)
            if why:
                result["skipped"][f"{variant} / {name}"] = why
                continue
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            runner = TorchRunner(model, device, precision, compile_steps, cuda_graphs)
            times, out = [], None
            # The first run includes compiling or capturing; eager on the CPU runs once.
            for _ in range(1 if check.reduced else 2):
                if device == "cuda":
                    torch.cuda.synchronize()
                begin = time.perf_counter()
                out = upscale_clip(runner, clip, batch_size=4)
                times.append(time.perf_counter() - begin)
            baseline = out if baseline is None else baseline
            peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
            run = {"variant": variant, "clip": name, "frames": len(clip),
                   "first_run_s": times[0], "steady_s": times[-1],
                   "fps": len(clip) / times[-1],
                   "psnr_vs_eager_fp32_db": _psnr(out, baseline),
                   "peak_gpu_mib": peak, "finite": bool(np.isfinite(out).all())}
            result["runs"].append(run)
            print(f"torch backend: {run}", flush=True)
            del runner
            if device == "cuda":
                torch.cuda.empty_cache()
    bad = [r for r in result["runs"] if not r["finite"]]
    if bad:
        raise AssertionError(f"non-finite output: {[(r['variant'], r['clip']) for r in bad]}")


def hirn_run(check: Check, result: dict) -> None:
    import cv2

    frames_dir = check.shared / CALENDAR
    paths = sorted(frames_dir.glob("*.png"))[:2 if check.reduced else CALENDAR_FRAMES]
    if not paths:
        raise Skipped(f"no calendar frames in {frames_dir}")
    video = check.bundle / "video" / "calendar.mp4" if check.bundle else None
    try:
        import av  # noqa: F401
        has_av = True
    except ImportError:
        has_av = False
    if has_av and video is not None and video.is_file() and not check.reduced:
        source, target = video, check.work / "calendar_x4.mp4"
        result["route"] = "H.264 video in and out (PyAV)"
    else:
        source, target = check.work / "calendar_png", check.work / "calendar_x4"
        source.mkdir(exist_ok=True)
        for i, path in enumerate(paths):
            image = cv2.imread(str(path))
            cv2.imwrite(str(source / f"{i:03d}.png"), image[40:104, 40:104] if check.reduced
                        else image)
        result["route"] = "PNG folder in and out" + ("" if has_av else " (no PyAV here)")
    if check.reduced:
        import torch

        from hirn.train import HiRN, save_checkpoint

        torch.manual_seed(0)
        weights = check.work / "tiny.pth"
        save_checkpoint(weights, HiRN(mid_channels=16, num_blocks=1))
    else:
        weights = check.shared / "reference" / REFERENCE_FILES[0]
    device = ["--device", "cuda", "--precision", "fp16"] if check.cuda else ["--device", "cpu"]
    command = ["hirn-run", str(source), "-o", str(target), "--checkpoint", str(weights),
               *device, "--overwrite"]
    result["command"] = " ".join(command)
    begin = time.perf_counter()
    run = subprocess.run(command, env=check.env, capture_output=True, text=True,
                         timeout=CAPS["hirn-run"])
    result["seconds"] = time.perf_counter() - begin
    result["exit_code"], result["output"] = run.returncode, (run.stdout + run.stderr)[-1500:]
    if run.returncode != 0:
        raise AssertionError(f"hirn-run exited {run.returncode}: {run.stderr.strip()[-300:]}")
    from hirn.media.video import read_frames

    out = read_frames(target)
    h, w = cv2.imread(str(paths[0])).shape[:2] if not check.reduced else (64, 64)
    result.update(frames_in=len(paths), frames_out=len(out), size_out=list(out.shape[1:3]),
                  fps_end_to_end=len(out) / result["seconds"])
    if len(out) != len(paths) or tuple(out.shape[1:3]) != (4 * h, 4 * w):
        raise AssertionError(f"expected {len(paths)} frames of {4 * h}x{4 * w}, got "
                             f"{len(out)} of {out.shape[1]}x{out.shape[2]}")


PARTS: dict[str, Callable[[Check, dict], None]] = {
    "environment": environment, "gpu tests": gpu_tests, "dcn kernel": dcn_kernel,
    "torch backend": torch_backend, "hirn-run": hirn_run}
