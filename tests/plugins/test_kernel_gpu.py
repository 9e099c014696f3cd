"""The CUDA kernel on a GPU against torchvision and hirn.train's DCNv2, at HiRN's feature sizes
and on small shapes with borders. Every test carries the ``gpu`` mark (skipped without a GPU)."""

import importlib.util
import math

import pytest
import torch
from support import KERNEL_FP16_MIN_PSNR_DB, KERNEL_GPU_EMULATED_ATOL, KERNEL_GPU_FP32_ATOL

from hirn.core.errors import KernelBuildError, KernelInputError
from hirn.model.deform_conv import deform_conv2d
from hirn.plugins import loader
from hirn.plugins.cases import hirn_case, random_case

# Tolerances, all here.
EMULATED_FP16_REL = 2e-3  # same for FP16, x output range (summation order moves FP16 roundings)

HIRN_SIZES = [(180, 320), (720, 1280)]
SMALL = {
    "hirn_groups": dict(c_in=128, groups=16, c_out=64, size=(12, 20)),
    "scalar_groups": dict(c_in=12, groups=3, c_out=5, size=(7, 9)),
    "two_out_blocks": dict(c_in=16, groups=2, c_out=72, size=(5, 30)),
    "partial_chunks": dict(c_in=24, groups=3, c_out=8, size=(9, 31)),
    "kernel_2x2": dict(kernel=(2, 2), padding=0, size=(6, 8)),
    "strided_dilated": dict(c_in=16, groups=4, stride=2, padding=2, dilation=2, size=(11, 13)),
    "batch_of_three": dict(c_in=32, groups=4, c_out=16, size=(6, 7), batch=3),
}

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def kernel():
    try:
        return loader.load_kernel()
    except KernelBuildError as exc:
        pytest.skip(f"the kernel library could not be built here: {exc}")


@pytest.fixture(autouse=True)
def exact_fp32_references(exact_fp32):
    """FP32 references must not run their matrix products in TF32."""


def _torchvision():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed (pip install torchvision)")
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except Exception as exc:  # a torchvision built for another torch fails here
        pytest.skip(f"torchvision does not import beside this torch: {exc}")
    return tv_deform_conv2d


def _torchvision_reference(case):
    tv = _torchvision()
    return tv(case.input, case.offset, case.weight, case.bias, stride=case.stride,
              padding=case.padding, dilation=case.dilation, mask=case.mask)


def _float64_reference(case):
    as64 = case.to(torch.float64)
    return deform_conv2d(as64.input, as64.offset, as64.weight, as64.bias, as64.stride,
                         as64.padding, as64.dilation, as64.mask)


def _psnr(out, ref) -> float:
    ref = ref.double()
    mse = float(((out.double() - ref) ** 2).mean())
    peak = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _check_both_precisions(case, ref):
    out = loader.deform_conv_cuda(*case.args())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out.double() - ref.double()).abs().max()) <= KERNEL_GPU_FP32_ATOL
    del out
    out16 = loader.deform_conv_cuda(*case.to(torch.float16).args())
    assert out16.dtype == torch.float16 and bool(torch.isfinite(out16).all())
    assert _psnr(out16, ref) >= KERNEL_FP16_MIN_PSNR_DB


@pytest.mark.parametrize("size", HIRN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hirn_sizes_match_torchvision(kernel, size):
    case = hirn_case(*size, seed=1, device="cuda")
    _check_both_precisions(case, _torchvision_reference(case))


@pytest.mark.parametrize("size", HIRN_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_hirn_sizes_match_the_float64_reference(kernel, size):
    case = hirn_case(*size, seed=2, device="cuda")
    ref = _float64_reference(case)
    torch.cuda.empty_cache()  # the float64 reference's temporaries are large at 720x1280
    _check_both_precisions(case, ref)


@pytest.mark.parametrize("name", list(SMALL))
def test_small_shapes_with_borders_match_torchvision(kernel, name):
    case = random_case(**SMALL[name], device="cuda")
    _check_both_precisions(case, _torchvision_reference(case))
    assert float((loader.deform_conv_cuda(*case.args()).double()
                  - _float64_reference(case)).abs().max()) <= KERNEL_GPU_FP32_ATOL


@pytest.mark.parametrize("name", list(SMALL))
def test_gpu_equals_the_cpu_emulation_of_the_kernel(kernel, name):
    """The device paths (tensor cores, vector loads, launch geometry) do what the emulation does."""
    case = random_case(**SMALL[name])
    for dtype, atol in ((torch.float32, KERNEL_GPU_EMULATED_ATOL), (torch.float16, None)):
        host = loader.deform_conv_emulated(*case.to(dtype).args())
        gpu = loader.deform_conv_cuda(*case.to(dtype).to("cuda").args()).cpu()
        span = float(host.float().max() - host.float().min())
        limit = atol if atol is not None else EMULATED_FP16_REL * span
        assert float((gpu.double() - host.double()).abs().max()) <= limit


def test_no_mask_no_bias_and_channels_last_input(kernel):
    tv = _torchvision()
    case = random_case(c_in=32, groups=4, size=(9, 11), device="cuda")
    ref = tv(case.input, case.offset, case.weight, None, stride=1, padding=1, dilation=1)
    channels_last = case.input.to(memory_format=torch.channels_last)
    out = loader.deform_conv_cuda(channels_last, case.offset, None, case.weight, None, 1, 1, 1)
    assert float((out - ref).abs().max()) <= KERNEL_GPU_FP32_ATOL


def test_runs_on_the_current_stream(kernel):
    case = hirn_case(36, 64, seed=4, device="cuda")
    expected = loader.deform_conv_cuda(*case.args())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = loader.deform_conv_cuda(*case.args())
    side.synchronize()
    assert torch.equal(out, expected)


def test_bound_call_reads_the_tensors_current_values(kernel):
    case = hirn_case(20, 36, seed=5, device="cuda").to(torch.float16)
    run = loader.bind_cuda(*case.args())
    first = run().clone()
    case.offset.add_(0.75)  # in place: the bound call sees the new values
    assert torch.equal(run(), loader.deform_conv_cuda(*case.args()))
    assert not torch.equal(first, run())


def test_unsupported_kernel_size_is_refused(kernel):
    case = random_case(kernel=(5, 5), padding=2, device="cuda")
    with pytest.raises(KernelInputError, match="more than 9 taps"):
        loader.deform_conv_cuda(*case.args())


def test_bound_call_on_another_stream(kernel):
    """Bound on one stream, run on another: ordered after the allocations' stream."""
    case = hirn_case(36, 64, seed=6, device="cuda").to(torch.float16)
    run = loader.bind_cuda(*case.args())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = run().clone()
    side.synchronize()
    assert torch.equal(out, loader.deform_conv_cuda(*case.args()))


def test_fp16_features_with_fp32_offsets_equal_the_emulation(kernel):
    case = hirn_case(24, 40, seed=7)
    args = list(case.to(torch.float16).args())
    args[1] = case.offset * 8  # FP32 offsets, many samples far from the output pixel
    host = loader.deform_conv_emulated(*args)
    gpu = loader.deform_conv_cuda(*[a.cuda() if torch.is_tensor(a) else a for a in args]).cpu()
    span = float(host.float().max() - host.float().min())
    assert float((gpu.double() - host.double()).abs().max()) <= EMULATED_FP16_REL * span
