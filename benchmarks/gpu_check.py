"""Every GPU check in one command, for the first GPU machine that becomes available.

    python benchmarks/gpu_check.py --prepare carry/gpu_check   # here: what the GPU machine lacks
    python benchmarks/gpu_check.py --out DIR                   # there: at most 8 minutes

The run has five parts, each in its own try/except: a part that fails prints where it stopped,
keeps what it measured, and the next part still runs.

1. environment: Python, PyTorch, CUDA, GPU, nvcc, torchvision, PyAV, the bundle used.
2. gpu tests: ``pytest -m gpu`` over tests/ (a broken test module does not stop the others).
3. dcn kernel: our CUDA kernel against torchvision at 180x320 and 540x960 features (FP32
   max abs <= 1e-4, FP16 >= 50 dB against torchvision FP32) and its speed against
   torchvision FP16 (the timing of ``dcn_kernel.py``).
4. torch backend: the Vid4 calendar clip and a synthetic 320x180 clip through the runtime
   driver: eager FP32, eager FP16, ``--compile`` and ``--cuda-graphs`` (FP16): frames/s,
   PSNR against eager FP32, peak GPU memory (the variants of ``torch_backend.py``).
5. hirn-run: a short real video (calendar, H.264) end to end on the GPU; where PyAV is
   absent, the same frames as a PNG folder in and out.

It writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` after every part, and exits 1 if a
part failed. Without CUDA (or with ``--reduced``) it runs what a CPU can, at tiny sizes with a
small model, and reports the rest as skipped with the reason: the suite runs it that way
(``tests/benchmarks/test_gpu_check.py``) so that it cannot rot.

``--prepare DIR`` gathers, here, what the GPU machine lacks (it has Python 3.12, a CUDA
PyTorch, torchvision, CuPy, onnx, onnxruntime, click, PyYAML, tqdm, OpenCV and nvcc, but no
network, no pytest, no PyAV and no ../shared): the reference weights and vectors, the first
calendar frames, that clip as H.264 (where PyAV is installed here), the kernel library built
for sm_90, and pytest with its dependencies as wheels (unpacked there only if pytest is
missing). It must stay under 60 MiB, so the PyAV wheel (35 MiB) is left out: with the weights
(29 MiB) it would not fit, and the PNG route covers the end-to-end run. This checkout need not
be installed there: the run makes it importable as ``hirn`` itself. For the device tool:

    run(command="python benchmarks/gpu_check.py --out $OUT/gpu_check", carry=["carry/gpu_check"])
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable
from pathlib import Path

import click
from gpu_check_parts import (
    CALENDAR,
    CALENDAR_FRAMES,
    PARTS,
    REFERENCE_FILES,
    Check,
    Skipped,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = REPO / "carry" / "gpu_check"
BUNDLE_LIMIT_MIB = 60
KERNEL_ARCHS = ("90",)  # H100 / H200
# pytest and what it needs (pure Python): the GPU machine has no pytest.
TEST_WHEELS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")
SCRIPTS = {"hirn-run": "hirn.runtime.cli", "hirn-export": "hirn.export.cli",
           "hirn-train": "hirn.train.cli", "hirn-eval": "hirn.train.evaluate"}


# ---- making this checkout importable where it is not installed -----------------------------

def importable_checkout(work: Path) -> dict:
    """Put a ``hirn`` package that maps onto this checkout's folders, and its console
    scripts, first on the paths of this process; return the environment for subprocesses."""
    shim = work / "shim"
    (shim / "hirn").mkdir(parents=True, exist_ok=True)
    # hirn.core is REPO/core, hirn.runtime is REPO/runtime, ... as pyproject's package-dir.
    (shim / "hirn" / "__init__.py").write_text(f"__path__ = [{str(REPO)!r}]\n")
    (shim / "bin").mkdir(exist_ok=True)
    for name, module in SCRIPTS.items():
        script = shim / "bin" / name
        script.write_text(f"#!{sys.executable}\nfrom {module} import main\nmain()\n")
        script.chmod(0o755)
    sys.path.insert(0, str(shim))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join([str(shim / "bin"), env.get("PATH", "")])
    return env


def use_bundled_wheels(bundle: Path, work: Path, env: dict) -> list[str]:
    """Unpack the bundle's pure-Python wheels (pytest) where the machine lacks pytest, first
    on the paths of this process and of ``env``; return the wheels used."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    if importlib.util.find_spec("pytest") is not None or not wheels:
        return []
    site = work / "site"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:  # a pure-Python wheel installs by unpacking
            archive.extractall(site)
    sys.path.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return [w.name for w in wheels]


# ---- running the parts and writing the results ---------------------------------------------

def run_parts(check: Check, parts: dict[str, Callable[[Check, dict], None]],
              write: Callable[[list[dict]], None]) -> list[dict]:
    """Run each part in turn; a failure is recorded with the place it stopped, and the next
    part runs. ``write(records)`` is called after every part."""
    records = []
    for name, part in parts.items():
        record = {"part": name, "status": "ok", "result": {}}
        begin = time.monotonic()
        print(f"== {name}", flush=True)
        try:
            part(check, record["result"])
        except Skipped as exc:
            record.update(status="skipped", reason=str(exc))
        except Exception as exc:  # one part must not stop the others
            # The last place in this checkout, not deep inside a library.
            frames = traceback.extract_tb(exc.__traceback__)
            ours = [f for f in frames if Path(f.filename).resolve().is_relative_to(REPO)]
            frame = (ours or frames)[-1]
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          stopped_at=f"{Path(frame.filename).name}:{frame.lineno} in "
                                     f"{frame.name}",
                          traceback=traceback.format_exc()[-3000:])
        record["seconds"] = round(time.monotonic() - begin, 1)
        line = f"{name}: {record['status']} in {record['seconds']} s"
        if record["status"] == "failed":
            line += f", stopped at {record['stopped_at']}: {record['error']}"
        elif record["status"] == "skipped":
            line += f": {record['reason']}"
        print(line, flush=True)
        records.append(record)
        write(records)
    return records


def _fmt(value, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def markdown(records: list[dict]) -> str:
    """The results for people: one line per part, then the tables of the measuring parts."""
    lines = ["# GPU check", "", "| part | status | s | note |", "| --- | --- | ---: | --- |"]
    for r in records:
        note = r.get("reason") or (f"stopped at {r['stopped_at']}: {r['error']}"
                                   if r["status"] == "failed" else "")
        lines.append(f"| {r['part']} | {r['status']} | {r['seconds']} | "
                     f"{note.replace('|', '/')[:200]} |")
    by_part = {r["part"]: r["result"] for r in records}
    env = by_part.get("environment", {})
    if env:
        lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())]
    tests = by_part.get("gpu tests", {})
    if tests.get("counts"):
        lines += ["", f"## gpu tests\n\n{tests['summary']}; not passed: "
                      f"{tests['not_passed'] or 'none'}"]
    sizes = by_part.get("dcn kernel", {}).get("sizes", [])
    if sizes:
        lines += ["", "## DCN kernel", "", "| size | method | ms | x torchvision fp16 | "
                  "max abs vs fp64 | PSNR dB |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for s in sizes:
            size = "x".join(map(str, s["size"]))
            lines.append(f"| {size} | vs torchvision: FP32 max abs "
                         f"{_fmt(s.get('fp32_max_abs_vs_torchvision'), '.2e')}, FP16 "
                         f"{_fmt(s.get('fp16_psnr_vs_torchvision_fp32_db'), '.1f')} dB | | | | |")
            for t in s.get("timings", []):
                lines.append(f"| {size} | {t['method']} | {t['ms']:.3f} | "
                             f"{_fmt(t['speedup_vs_torchvision_fp16'])} | "
                             f"{t['max_abs_vs_fp64']:.2e} | {t['psnr_db']:.1f} |")
    runs = by_part.get("torch backend", {}).get("runs", [])
    if runs:
        lines += ["", "## torch backend", "", "| clip | variant | first run s | steady s | "
                  "frames/s | PSNR vs eager FP32 dB | peak GPU MiB |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in runs:
            lines.append(f"| {r['clip']} ({r['frames']} frames) | {r['variant']} | "
                         f"{r['first_run_s']:.1f} | {r['steady_s']:.2f} | {r['fps']:.2f} | "
                         f"{r['psnr_vs_eager_fp32_db']:.1f} | {_fmt(r['peak_gpu_mib'], '.0f')} |")
        for variant, why in by_part["torch backend"].get("skipped", {}).items():
            lines.append(f"| | {variant}: skipped ({why}) | | | | | |")
    run = by_part.get("hirn-run", {})
    if "frames_out" in run:
        lines += ["", f"## hirn-run\n\n{run['route']}: {run['frames_out']} frames of "
                      f"{run['size_out'][1]}x{run['size_out'][0]} in {run['seconds']:.1f} s "
                      f"(with start-up), `{run['command']}`"]
    return "\n".join(lines) + "\n"


def run_check(out: Path, bundle: Path | None, reduced: bool) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hirn_gpu_check_"))
    env = importable_checkout(work)
    if bundle is not None:
        if (bundle / "cache").is_dir():  # a writable copy: the loader may build beside it
            shutil.copytree(bundle / "cache", work / "cache")
            env["HIRN_CACHE_DIR"] = os.environ["HIRN_CACHE_DIR"] = str(work / "cache")
        if (bundle / "shared").is_dir():
            env["HIRN_SHARED"] = os.environ["HIRN_SHARED"] = str(bundle / "shared")
        if wheels := use_bundled_wheels(bundle, work, env):
            print(f"pytest from the bundle: {', '.join(wheels)}")
    import torch

    cuda = torch.cuda.is_available() and not reduced
    check = Check(out, bundle, work, env, cuda, reduced or not cuda)

    def write(records: list[dict]) -> None:
        payload = {"total_s": round(time.monotonic() - check.start, 1), "parts": records}
        (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
        (out / "gpu_check.md").write_text(markdown(records))

    try:
        return run_parts(check, PARTS, write)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        print(f"results: {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")


# ---- --prepare ---------------------------------------------------------------------------

def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def prepare(bundle: Path, shared: Path, wheels: bool = True) -> dict:
    """Gather into ``bundle`` what the GPU machine lacks; return its manifest."""
    if bundle.exists():
        if any(bundle.iterdir()) and not (bundle / "bundle.json").is_file():
            raise click.ClickException(f"{bundle} is not empty and holds no bundle.json: "
                                       "choose a new folder")
        shutil.rmtree(bundle)
    notes = []
    for name in REFERENCE_FILES:
        target = bundle / "shared" / "reference" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "reference" / name, target)
    frames = sorted((shared / CALENDAR).glob("*.png"))[:CALENDAR_FRAMES]
    if not frames:
        raise click.ClickException(f"no calendar frames in {shared / CALENDAR}")
    (bundle / "shared" / CALENDAR).mkdir(parents=True)
    for path in frames:
        shutil.copyfile(path, bundle / "shared" / CALENDAR / path.name)
    try:
        _encode_video(frames, bundle / "video" / "calendar.mp4")
    except ImportError:
        notes.append("PyAV is not installed here: no calendar.mp4 (the PNG route still runs)")
    from hirn.core.errors import KernelBuildError
    from hirn.plugins import loader

    try:
        library = loader.compile_kernel_library(archs=KERNEL_ARCHS)
        # Where the loader will look for it on the GPU machine (HIRN_CACHE_DIR=copy of cache/).
        target = bundle / "cache" / "kernels" / library.parent.name / library.name
        target.parent.mkdir(parents=True)
        shutil.copyfile(library, target)
    except KernelBuildError as exc:
        notes.append(f"kernel library not prebuilt ({str(exc).splitlines()[0]}); the GPU "
                     "machine builds it with its own nvcc")
    if wheels:
        try:
            _download_wheels(bundle / "wheels")
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"pytest wheels not downloaded ({exc}); the gpu tests need pytest there")
    notes.append("the PyAV wheel (35 MiB) is left out: with the reference weights it would "
                 f"pass {BUNDLE_LIMIT_MIB} MiB; the end-to-end run uses PNG folders there")
    manifest = {"made": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--short")),
                "kernel_archs": list(KERNEL_ARCHS), "notes": notes,
                "files": {str(p.relative_to(bundle)): p.stat().st_size
                          for p in sorted(bundle.rglob("*")) if p.is_file()}}
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _encode_video(frames: list[Path], target: Path) -> None:
    """The calendar frames as H.264, with the runtime's own writer (needs PyAV here)."""
    import av  # noqa: F401  (raises ImportError where PyAV is absent)
    import cv2

    from hirn.media.video import open_sink

    target.parent.mkdir(parents=True, exist_ok=True)
    first = cv2.imread(str(frames[0]))
    sink = open_sink(target, width=first.shape[1], height=first.shape[0], fps=25, crf=12)
    for path in frames:
        sink.write(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    sink.close()


def _download_wheels(folder: Path) -> None:
    """pytest and its dependencies as wheels for Python 3.12, the versions installed here."""
    pins = []
    for name in TEST_WHEELS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "-d", str(folder), *pins],
                   check=True, capture_output=True, text=True, timeout=300)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              timeout=30).stdout.strip()
    except OSError:
        return ""


@click.command()
@click.option("--out", type=click.Path(path_type=Path), help="folder for the results")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help=f"what --prepare gathered [default: {DEFAULT_BUNDLE.relative_to(REPO)} if "
                   "present]")
@click.option("--prepare", "prepare_to", type=click.Path(path_type=Path), default=None,
              help="gather what the GPU machine lacks into this folder, and stop")
@click.option("--no-wheels", is_flag=True, help="--prepare: leave out the pytest wheels "
              "(for a GPU machine that has pytest; needs no network)")
@click.option("--reduced", is_flag=True, help="tiny sizes and a small model, CUDA parts "
              "skipped (the default where there is no CUDA GPU)")
def main(out: Path | None, bundle: Path | None, prepare_to: Path | None, no_wheels: bool,
         reduced: bool) -> None:
    if prepare_to is not None:
        shared = Path(os.environ.get("HIRN_SHARED", REPO.parent / "shared"))
        manifest = prepare(prepare_to.resolve(), shared, wheels=not no_wheels)
        for note in manifest["notes"]:
            print(f"note: {note}")
        size = folder_mib(prepare_to)
        ignored = _git("check-ignore", str(prepare_to.resolve()))
        print(f"{prepare_to}: {len(manifest['files'])} files, {size:.1f} MiB (limit "
              f"{BUNDLE_LIMIT_MIB} MiB){'' if ignored else '; NOT ignored by git'}")
        if size > BUNDLE_LIMIT_MIB:
            raise click.ClickException(f"{prepare_to} is {size:.1f} MiB, over the limit")
        return
    if out is None:
        raise click.UsageError("pass --out DIR (or --prepare DIR)")
    if bundle is None and DEFAULT_BUNDLE.is_dir():
        bundle = DEFAULT_BUNDLE
    records = run_check(out.resolve(), bundle.resolve() if bundle else None, reduced)
    if any(r["status"] == "failed" for r in records):
        sys.exit(1)


if __name__ == "__main__":
    main()
