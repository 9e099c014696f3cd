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
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hirn.core.errors import KernelBuildError, KernelInputError, KernelRuntimeError

KERNEL_DIR = Path(__file__).resolve().parent / "kernel"
SOURCES = ("deform_conv.cu", "deform_conv.cuh", "deform_conv.h")
LIBRARY_NAME = "libhirn_dcn.so"
ABI_VERSION = 1  # HIRN_DEFORM_CONV_ABI_VERSION in deform_conv.h
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


def find_nvcc() -> str | None:
    """nvcc from ``HIRN_NVCC``, the PATH, ``CUDA_HOME`` or /usr/local/cuda; None if absent."""
    candidates = [os.environ.get("HIRN_NVCC"), shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)


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
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise KernelBuildError("nvcc not found: install the CUDA toolkit (12.x or 13.x), or set "
                               "HIRN_NVCC or CUDA_HOME")
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
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builds never see a half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [nvcc, *flags, "-o", tmp, str(KERNEL_DIR / "deform_conv.cu")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        Path(tmp).unlink(missing_ok=True)
        raise KernelBuildError(f"nvcc failed ({' '.join(cmd)}):\n{result.stderr[-4000:]}")
    os.replace(tmp, target)
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
    lib.hirn_deform_conv_forward.argtypes = [shape_p, ctypes.c_int] + [vp] * 7 + [
        ctypes.c_size_t, vp]
    lib.hirn_deform_conv_forward_host.argtypes = [shape_p, ctypes.c_int] + [vp] * 6
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
        if t.dtype != input.dtype or t.device != input.device:
            raise KernelInputError(f"{name} is {t.dtype} on {t.device}; every tensor must be "
                                   f"{input.dtype} on {input.device} like input")
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


def _bind(input, offset, mask, weight, bias, stride, padding, dilation, device: str):
    """Check the call once; return a function that runs it and returns its output tensor."""
    import torch

    shape = describe(input, offset, mask, weight, bias, stride, padding, dilation)
    if input.device.type != device:
        raise KernelInputError(f"tensors must be on {device}, got {input.device}")
    lib = load_kernel()
    dtype = DTYPE_FLOAT16 if input.dtype == torch.float16 else DTYPE_FLOAT32
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
            _check(lib, lib.hirn_deform_conv_forward_host(ctypes.byref(shape), dtype, *ptrs),
                   "deform_conv")
            _ = args  # alive as long as the closure
            return out
        return run

    size = lib.hirn_deform_conv_workspace_size(ctypes.byref(shape), dtype)
    workspace = torch.empty(max(size, 1), dtype=torch.uint8, device=input.device)
    workspace_ptr = ctypes.c_void_p(workspace.data_ptr())

    def run():
        with torch.cuda.device(out.device):
            stream = ctypes.c_void_p(torch.cuda.current_stream(out.device).cuda_stream)
            status = lib.hirn_deform_conv_forward(ctypes.byref(shape), dtype, *ptrs,
                                                  workspace_ptr, size, stream)
        _check(lib, status, "deform_conv")
        _ = (args, workspace)  # alive as long as the closure
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
