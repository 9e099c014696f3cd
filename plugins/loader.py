"""Build, load and call the deformable-convolution CUDA kernel (``plugins/kernel``).

``compile_kernel_library()`` runs nvcc once per source and flag hash (cached under the user
cache dir), ``load_kernel()`` opens the library with ctypes, ``deform_conv_cuda()`` runs it on
torch CUDA tensors and ``deform_conv_emulated()`` runs the kernels' own per-thread code on the
CPU, so that the kernel's arithmetic is tested where no GPU is present. Importing this module
needs neither CUDA nor torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from hirn.core.errors import KernelBuildError, KernelInputError, KernelRuntimeError
from hirn.core.files import atomic_path

log = logging.getLogger(__name__)
KERNEL_DIR = Path(__file__).resolve().parent / "kernel"
SOURCES = ("deform_conv.cu", "deform_conv.cuh", "deform_conv.h")
LIBRARY_NAME = "libhirn_dcn.so"
ABI_VERSION = 2  # HIRN_DEFORM_CONV_ABI_VERSION in deform_conv.h
# Ampere (A100) and Hopper (H100); override with HIRN_CUDA_ARCHS="86;89" or the archs argument.
DEFAULT_ARCHS = ("80", "90")

DTYPE_FLOAT32, DTYPE_FLOAT16 = 0, 1
STATUS_NAMES = {0: "success", 1: "invalid argument", 2: "unsupported", 3: "CUDA error"}
SHAPE_FIELDS = ("batch", "in_channels", "height", "width", "out_channels", "kernel_h",
                "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "dilation_h",
                "dilation_w", "deformable_groups")


class DeformConvShape(ctypes.Structure):
    """``hirn_deform_conv_shape_t``: the sizes and attributes of one call."""

    _fields_ = [(name, ctypes.c_int) for name in SHAPE_FIELDS]


# Versioned toolkits beside /usr/local/cuda, searched for an nvcc of the CUDA major wanted.
VERSIONED_CUDA_ROOTS = "/usr/local/cuda-*"
# TensorRT wheels name their CUDA major: tensorrt-cu12, tensorrt_cu13_libs, ...
TENSORRT_WHEEL = re.compile(r"tensorrt[-_]cu(\d+)", re.IGNORECASE)


def nvcc_candidates() -> list[str]:
    """Every nvcc found: ``HIRN_NVCC``, the PATH, ``CUDA_HOME``, /usr/local/cuda, then the
    versioned toolkits (newest first); duplicates removed."""
    candidates = [os.environ.get("HIRN_NVCC"), shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    versioned = sorted(Path("/").glob(VERSIONED_CUDA_ROOTS.lstrip("/") + "/bin/nvcc"),
                       key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.parent.name)],
                       reverse=True)
    candidates += [str(p) for p in versioned]
    found = [c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)]
    return list(dict.fromkeys(found))


def find_nvcc(major: int | None = None) -> str | None:
    """The first of ``nvcc_candidates()`` (of CUDA ``major`` when given); None if absent."""
    return next((c for c in nvcc_candidates()
                 if major is None or (cuda_version(c) or (None,))[0] == major), None)


@functools.cache
def cuda_version(nvcc: str) -> tuple[int, int] | None:
    """(major, minor) of the CUDA toolkit an nvcc belongs to; None if it does not say."""
    try:
        text = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA the installed driver runs (``cuDriverGetVersion``); None without one."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int()
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return version.value // 1000, version.value % 1000 // 10


def tensorrt_cuda_major() -> tuple[int, str] | None:
    """The CUDA major of the installed TensorRT wheels, and the wheel that says so; None when
    none is installed (a tarball or Debian TensorRT: set ``HIRN_CUDA_MAJOR``)."""
    from importlib import metadata

    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        match = TENSORRT_WHEEL.match(name)
        if match:
            return int(match[1]), f"{name} {dist.version}"
    return None


def choose_nvcc(nvcc: str | None = None) -> tuple[str, str]:
    """The nvcc to build with and a sentence saying why.

    The library links the CUDA runtime of its nvcc statically, and a CUDA 13 runtime needs an
    R580+ driver. So: never newer than the driver when one is present; of the CUDA major of
    ``HIRN_CUDA_MAJOR``, else of the installed TensorRT wheel (on a machine without a driver,
    the best guess at what the target's driver runs; with one, a preference).
    """
    wanted, why, strict = None, "no TensorRT wheel and no HIRN_CUDA_MAJOR", False
    if os.environ.get("HIRN_CUDA_MAJOR"):
        wanted, why, strict = int(os.environ["HIRN_CUDA_MAJOR"]), "HIRN_CUDA_MAJOR", True
    elif (trt := tensorrt_cuda_major()) is not None:
        wanted, why = trt[0], f"TensorRT is built for CUDA {trt[0]} ({trt[1]})"
    driver = driver_cuda_version()
    strict = strict or driver is None
    found = [nvcc] if nvcc else nvcc_candidates()
    versions = {c: cuda_version(c) for c in found}
    # Those of the wanted major first, in the order found.
    ordered = sorted(versions.items(), key=lambda cv: wanted is not None
                     and (cv[1] is None or cv[1][0] != wanted))
    for candidate, version in ordered:
        if version is None and (wanted or driver):
            continue
        if wanted is not None and strict and version[0] != wanted:
            continue
        if driver is not None and version[0] > driver[0]:
            continue
        release = f"CUDA {version[0]}.{version[1]}" if version else "CUDA of unknown version"
        reason = why if wanted is None or version[0] == wanted else f"no CUDA {wanted} nvcc ({why})"
        limit = f"; the driver runs CUDA {driver[0]}.{driver[1]}" if driver else ""
        return candidate, f"{candidate} ({release}): {reason}{limit}"
    listed = ", ".join(f"{c} ({'.'.join(map(str, v)) if v else '?'})" for c, v in versions.items())
    need = [f"CUDA {wanted} ({why})" if wanted is not None and strict else None,
            f"at most CUDA {driver[0]}, what the driver runs" if driver else None]
    raise KernelBuildError(
        f"no nvcc fits: need {' and '.join(filter(None, need))}; found {listed or 'none'}. "
        "Install that CUDA toolkit and set HIRN_NVCC to its nvcc, or set HIRN_CUDA_MAJOR.")


def default_archs() -> tuple[str, ...]:
    """``HIRN_CUDA_ARCHS`` ("80;90"), else the current GPU's compute capability, else 80 and 90."""
    env = os.environ.get("HIRN_CUDA_ARCHS")
    if env:
        return tuple(a.strip() for a in env.replace(",", ";").split(";") if a.strip())
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return (f"{major}{minor}",)
    except ImportError:
        pass
    return DEFAULT_ARCHS


def cache_dir() -> Path:
    """``HIRN_CACHE_DIR``, else ``$XDG_CACHE_HOME/hirn``, else ``~/.cache/hirn``."""
    if os.environ.get("HIRN_CACHE_DIR"):
        return Path(os.environ["HIRN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hirn"


def nvcc_flags(archs: tuple[str, ...]) -> list[str]:
    """Release flags: one SASS per arch plus PTX of the newest, so later GPUs can JIT it."""
    flags = ["-std=c++17", "-O3", "-shared", "-Xcompiler", "-fPIC,-fvisibility=hidden",
             "-lineinfo"]
    for arch in archs:
        flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
    newest = max(archs, key=int)
    flags.append(f"-gencode=arch=compute_{newest},code=compute_{newest}")
    return flags


def compile_kernel_library(archs: tuple[str, ...] | None = None, nvcc: str | None = None,
                           cache: Path | None = None, force: bool = False) -> Path:
    """Compile ``plugins/kernel`` into a shared library, once per source hash; return its path.

    Args:
        archs: compute capabilities without the dot, e.g. ("80", "90"); see ``default_archs``.
        nvcc: the compiler; ``find_nvcc()`` when None.
        cache: folder of built libraries; ``cache_dir() / "kernels"`` when None.
        force: rebuild even when a cached library exists.
    """
    archs = tuple(archs) if archs else default_archs()
    if not archs or not all(a.isdigit() for a in archs):
        raise KernelBuildError(f"CUDA architectures must look like ('80', '90'), got {archs}")
    if nvcc is None and not nvcc_candidates():
        raise KernelBuildError("nvcc not found: install the CUDA toolkit (12.x or 13.x), or set "
                               "HIRN_NVCC or CUDA_HOME")
    nvcc, choice = choose_nvcc(nvcc)
    flags = nvcc_flags(archs)
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((KERNEL_DIR / name).read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(version.encode())
    target = (cache or cache_dir() / "kernels") / digest.hexdigest()[:20] / LIBRARY_NAME
    if target.exists() and not force:
        return target
    log.info("building %s with %s", LIBRARY_NAME, choice)
    # Build beside the target and rename: concurrent builds never see a half-written library.
    with atomic_path(target, suffix=".so") as tmp:
        cmd = [nvcc, *flags, "-o", str(tmp), str(KERNEL_DIR / "deform_conv.cu")]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise KernelBuildError(f"nvcc failed ({' '.join(cmd)}; {choice}):\n"
                                   f"{result.stderr[-4000:]}")
    return target


@functools.cache
def load_kernel(path: str | None = None) -> ctypes.CDLL:
    """Open the kernel library (building it when ``path`` is None) with its C prototypes set."""
    path = str(path or compile_kernel_library())
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise KernelBuildError(f"cannot load {path}: {exc}") from exc
    shape_p, vp = ctypes.POINTER(DeformConvShape), ctypes.c_void_p
    lib.hirn_deform_conv_abi_version.restype = ctypes.c_int
    lib.hirn_deform_conv_output_size.argtypes = [shape_p, ctypes.POINTER(ctypes.c_int),
                                                 ctypes.POINTER(ctypes.c_int)]
    lib.hirn_deform_conv_check.argtypes = [shape_p, ctypes.c_int]
    lib.hirn_deform_conv_workspace_size.argtypes = [shape_p, ctypes.c_int]
    lib.hirn_deform_conv_workspace_size.restype = ctypes.c_size_t
    dtypes = [ctypes.c_int] * 3  # features, offset, mask
    lib.hirn_deform_conv_forward.argtypes = [shape_p, *dtypes] + [vp] * 7 + [ctypes.c_size_t, vp]
    lib.hirn_deform_conv_forward_host.argtypes = [shape_p, *dtypes] + [vp] * 6
    lib.hirn_deform_conv_last_error.restype = ctypes.c_char_p
    for name in ("output_size", "check", "forward", "forward_host"):
        getattr(lib, f"hirn_deform_conv_{name}").restype = ctypes.c_int
    if lib.hirn_deform_conv_abi_version() != ABI_VERSION:
        raise KernelBuildError(f"{path} has ABI {lib.hirn_deform_conv_abi_version()}, "
                               f"expected {ABI_VERSION}: rebuild with force=True")
    return lib


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise KernelInputError(f"{name} must be an int or two ints, got {value!r}")
    return pair


def describe(input, offset, mask, weight, bias, stride, padding, dilation) -> DeformConvShape:
    """The C shape of a call, after checking the tensors against each other.

    Shapes as in ``deform_conv_cuda``; raises ``KernelInputError`` naming what does not fit.
    """
    import torch

    tensors = {"input": input, "offset": offset, "mask": mask, "weight": weight, "bias": bias}
    given = {k: v for k, v in tensors.items() if v is not None}
    if input.dtype not in (torch.float32, torch.float16):
        raise KernelInputError(f"input dtype must be float32 or float16, got {input.dtype}")
    for name, t in given.items():
        # Offsets and mask may stay FP32 beside FP16 features (exact sampling positions).
        allowed = {input.dtype, torch.float32} if name in ("offset", "mask") else {input.dtype}
        if t.dtype not in allowed or t.device != input.device:
            raise KernelInputError(f"{name} is {t.dtype} on {t.device}; every tensor must be "
                                   f"{input.dtype} on {input.device} like input (offset and "
                                   "mask may also be torch.float32)")
    ranks = {"input": 4, "offset": 4, "mask": 4, "weight": 4, "bias": 1}
    for name, t in given.items():
        if t.dim() != ranks[name]:
            raise KernelInputError(f"{name} must have {ranks[name]} dims, got {tuple(t.shape)}")
    n, c_in, h, w = input.shape
    c_out, c_w, kh, kw = weight.shape
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    if c_w != c_in:
        raise KernelInputError(f"weight {tuple(weight.shape)} must be [C_out, {c_in}, kh, kw] "
                               "(weight groups are not supported)")
    if groups < 1 or offset.shape[1] != 2 * groups * taps or c_in % groups:
        raise KernelInputError(f"offset has {offset.shape[1]} channels: expected 2 * G * {taps} "
                               f"with G dividing the {c_in} input channels")
    (sh, sw), (ph, pw) = _pair(stride, "stride"), _pair(padding, "padding")
    dh, dw = _pair(dilation, "dilation")
    shape = DeformConvShape(n, c_in, h, w, c_out, kh, kw, sh, sw, ph, pw, dh, dw, groups)
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    expected = {"offset": (n, 2 * groups * taps, h_out, w_out),
                "mask": (n, groups * taps, h_out, w_out), "bias": (c_out,)}
    for name, shape_ in expected.items():
        t = tensors[name]
        if t is not None and tuple(t.shape) != shape_:
            raise KernelInputError(f"{name} is {tuple(t.shape)}, expected {shape_} for input "
                                   f"{tuple(input.shape)} and weight {tuple(weight.shape)}")
    return shape


def _check(lib: ctypes.CDLL, status: int, what: str) -> None:
    if status == 0:
        return
    detail = lib.hirn_deform_conv_last_error().decode(errors="replace")
    cls = KernelRuntimeError if status == 3 else KernelInputError
    raise cls(f"{what}: {STATUS_NAMES.get(status, status)}: {detail}")


def _dtype_code(t) -> int:
    """``hirn_dtype_t`` of a float16 or float32 tensor."""
    import torch

    return DTYPE_FLOAT16 if t.dtype == torch.float16 else DTYPE_FLOAT32


def _bind(input, offset, mask, weight, bias, stride, padding, dilation, device: str):
    """Check the call once; return a function that runs it and returns its output tensor."""
    import torch

    shape = describe(input, offset, mask, weight, bias, stride, padding, dilation)
    if input.device.type != device:
        raise KernelInputError(f"tensors must be on {device}, got {input.device}")
    lib = load_kernel()
    dtype = _dtype_code(input)
    dtypes = (dtype, _dtype_code(offset), _dtype_code(mask) if mask is not None else dtype)
    _check(lib, lib.hirn_deform_conv_check(ctypes.byref(shape), dtype), "deform_conv")
    out = torch.empty(shape.batch, shape.out_channels, *offset.shape[2:], dtype=input.dtype,
                      device=input.device)
    # Dense NCHW is what the kernel reads; the closure keeps these (possible) copies alive.
    args = [t.contiguous() if t is not None else None
            for t in (input, offset, mask, weight, bias)]
    ptrs = [ctypes.c_void_p(t.data_ptr() if t is not None else None) for t in args]
    ptrs.append(ctypes.c_void_p(out.data_ptr()))
    if device == "cpu":
        def run():
            _check(lib, lib.hirn_deform_conv_forward_host(ctypes.byref(shape), *dtypes, *ptrs),
                   "deform_conv")
            _ = args  # alive as long as the closure
            return out
        return run

    size = lib.hirn_deform_conv_workspace_size(ctypes.byref(shape), dtype)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=input.device)
    workspace_ptr = ctypes.c_void_p(workspace.data_ptr())
    # out, workspace and the contiguous copies belong to the stream current now; run() launches
    # on the stream current at its call (a CUDA-graph capture uses its own).
    bound_stream = torch.cuda.current_stream(input.device)
    owned = [t for t in (out, workspace, *args) if t is not None]
    streams_in_use = {bound_stream.cuda_stream}

    def run():
        current = torch.cuda.current_stream(out.device)
        if current.cuda_stream not in streams_in_use:
            # Once per new stream: wait for the allocations' stream (their memory may still be
            # in use by earlier work there; torch.cuda.graph synchronises before a capture), and
            # tell the caching allocator not to reuse them while that stream may run the kernel.
            if not torch.cuda.is_current_stream_capturing():
                current.wait_stream(bound_stream)
            for t in owned:
                t.record_stream(current)
            streams_in_use.add(current.cuda_stream)
        with torch.cuda.device(out.device):
            status = lib.hirn_deform_conv_forward(ctypes.byref(shape), *dtypes, *ptrs,
                                                  workspace_ptr, size,
                                                  ctypes.c_void_p(current.cuda_stream))
        _check(lib, status, "deform_conv")
        return out
    return run


def bind_cuda(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1):
    """Validate a ``deform_conv_cuda`` call once and return a no-argument function that
    reruns the kernel on the same tensors' storage (on the current stream) and returns the
    same output tensor: for timing without Python checks, and for CUDA-graph capture after a
    first call."""
    return _bind(input, offset, mask, weight, bias, stride, padding, dilation, "cuda")


def deform_conv_cuda(input, offset, mask, weight, bias=None, stride=1, padding=0, dilation=1):
    """Modulated deformable convolution with the CUDA kernel, on the current stream.

    Same result as ``torchvision.ops.deform_conv2d(input, offset, weight, bias, stride,
    padding, dilation, mask)``; FP32 or FP16 tensors of one dtype on one CUDA device, FP32
    accumulation. Asynchronous like any torch CUDA op.

    Args:
        input: ``[N, C_in, H, W]``.
        offset: ``[N, 2 * G * kh * kw, H_out, W_out]`` (dy, dx per tap and offset group).
        mask: ``[N, G * kh * kw, H_out, W_out]`` or None (all ones).
        weight: ``[C_out, C_in, kh, kw]`` with kh * kw <= 9.
        bias: ``[C_out]`` or None.
        stride, padding, dilation: an int or a pair, as for ``nn.Conv2d``.

    Returns:
        ``[N, C_out, H_out, W_out]`` in the input's dtype.
    """
    return bind_cuda(input, offset, mask, weight, bias, stride, padding, dilation)()


def deform_conv_emulated(input, offset, mask, weight, bias=None, stride=1, padding=0,
                         dilation=1):
    """``deform_conv_cuda`` on CPU tensors: the kernels' per-thread code run block by block.

    Single-threaded and slow; meant for testing the kernel's indexing, packing and tiling on
    machines without a GPU. FP16 tensors are rounded exactly where the GPU rounds them.
    """
    return _bind(input, offset, mask, weight, bias, stride, padding, dilation, "cpu")()
