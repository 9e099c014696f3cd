"""The deformable-conv CUDA kernel without a GPU: it compiles, its C API checks shapes, and its
per-thread code, run block by block on the CPU, equals the plain-PyTorch DCNv2."""

import ctypes
import math
import re
import subprocess

import pytest
import torch
from support import (
    KERNEL_EMULATED_FP16_REL_ATOL,
    KERNEL_EMULATED_FP32_ATOL,
    KERNEL_FP16_MIN_PSNR_DB,
    export_plugin_node,
)

from hirn.core.errors import KernelInputError
from hirn.model.deform_conv import deform_conv2d
from hirn.plugins import loader
from hirn.plugins.cases import hirn_case, random_case

# Tolerances, all here.

needs_nvcc = pytest.mark.skipif(loader.find_nvcc() is None,
                                reason="nvcc not found (install the CUDA toolkit or set HIRN_NVCC)")


@pytest.fixture(scope="module")
def kernel():
    return loader.load_kernel()  # builds once per source hash, then reuses the cached library


def _case(**kwargs):
    return random_case(**kwargs).args()


def _reference(inp, offset, mask, weight, bias, stride, pad, dil):
    """hirn.train's DCNv2 in float64: the semantics the kernel must reproduce."""
    as64 = [None if t is None else t.double() for t in (inp, offset, mask, weight, bias)]
    return deform_conv2d(as64[0], as64[1], as64[3], as64[4], stride, pad, dil, as64[2])


# Each case exercises a different path: 8-channel vectors or scalar sampling (C_in/G % 8),
# partial K chunks (C_in not a multiple of 8/16), several and partial pixel tiles (128 px)
# and output-channel blocks (64), kernel shapes, stride/padding/dilation, batches.
CASES = {
    "hirn_groups": dict(c_in=128, groups=16, c_out=64, size=(12, 20)),
    "scalar_groups": dict(c_in=12, groups=3, c_out=5, size=(7, 9)),
    "two_out_blocks": dict(c_in=16, groups=2, c_out=72, size=(5, 30)),
    "partial_chunks": dict(c_in=24, groups=3, c_out=8, size=(9, 31)),
    "kernel_1x1": dict(kernel=(1, 1), padding=0),
    "kernel_1x3": dict(kernel=(1, 3), padding=(0, 1)),
    "strided_dilated": dict(c_in=16, groups=4, stride=2, padding=2, dilation=2, size=(11, 13)),
    "batch_of_two": dict(c_in=32, groups=4, c_out=16, size=(6, 7), batch=2),
    "one_row": dict(c_in=8, groups=1, c_out=3, size=(1, 5)),
}


@needs_nvcc
def test_library_builds_once_and_reports_its_abi(kernel):
    path = loader.compile_kernel_library()
    assert path.is_file() and path.stat().st_size > 0
    assert loader.compile_kernel_library() == path  # cached by source hash: no rebuild
    assert kernel.hirn_deform_conv_abi_version() == loader.ABI_VERSION


@needs_nvcc
def test_c_program_links_against_the_library(kernel, tmp_path):
    """The header is plain C99 and a C program can call the API (no GPU needed for these)."""
    library = loader.compile_kernel_library()
    source = tmp_path / "use_api.c"
    source.write_text('''#include <stdio.h>
#include "deform_conv.h"
int main(void) {
    hirn_deform_conv_shape_t s = {1, 128, 180, 320, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16};
    int h = 0, w = 0;
    hirn_status_t st = hirn_deform_conv_output_size(&s, &h, &w);
    size_t bytes = hirn_deform_conv_workspace_size(&s, HIRN_DTYPE_FLOAT16);
    printf("%d %d %d %zu\\n", (int)st, h, w, bytes);
    return hirn_deform_conv_abi_version() == HIRN_DEFORM_CONV_ABI_VERSION ? 0 : 1;
}
''')
    exe, obj = tmp_path / "use_api", tmp_path / "use_api.o"
    nvcc = loader.find_nvcc()
    # nvcc hands .c files to the host C compiler with the CUDA include path.
    for cmd in ([nvcc, "-c", "-Xcompiler", "-std=c99,-Wall,-Wextra,-Werror",
                 f"-I{loader.KERNEL_DIR}", str(source), "-o", str(obj)],
                [nvcc, str(obj), str(library), f"-Xlinker=-rpath={library.parent}",
                 "-o", str(exe)]):
        build = subprocess.run(cmd, capture_output=True, text=True)
        assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    shape = _hirn_shape(180, 320)
    workspace = kernel.hirn_deform_conv_workspace_size(ctypes.byref(shape), 1)
    assert run.stdout.split() == ["0", "180", "320", str(workspace)]


def _hirn_shape(h, w):
    return loader.DeformConvShape(1, 128, h, w, 64, 3, 3, 1, 1, 1, 1, 1, 1, 16)


@needs_nvcc
def test_output_size_and_workspace_follow_the_layout(kernel):
    shape = _hirn_shape(180, 320)
    h, w = ctypes.c_int(), ctypes.c_int()
    assert kernel.hirn_deform_conv_output_size(ctypes.byref(shape), ctypes.byref(h),
                                               ctypes.byref(w)) == 0
    assert (h.value, w.value) == (180, 320)
    for dtype, size, chunk_c, tile_elems in ((0, 4, 8, 72 * 68), (1, 2, 16, 64 * 152)):
        packed_input = -(-128 * 180 * 320 * size // 256) * 256
        tiles = 1 * (128 // chunk_c) * tile_elems * size
        got = kernel.hirn_deform_conv_workspace_size(ctypes.byref(shape), dtype)
        assert got == packed_input + tiles


@needs_nvcc
@pytest.mark.parametrize("field, value, status, words", [
    ("kernel_h", 5, 2, "more than 9 taps"),
    ("deformable_groups", 3, 1, "must divide"),
    ("stride_w", 0, 1, "stride"),
    ("height", 1, 1, "larger than the padded input"),
])
def test_rejects_shapes_with_a_reason(kernel, field, value, status, words):
    shape = _hirn_shape(180, 320)
    setattr(shape, field, value)
    if field == "height":
        shape.pad_h = 0
    assert kernel.hirn_deform_conv_check(ctypes.byref(shape), 1) == status
    assert words in kernel.hirn_deform_conv_last_error().decode()
    assert kernel.hirn_deform_conv_workspace_size(ctypes.byref(shape), 1) == 0


@needs_nvcc
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_forward_without_a_gpu_returns_a_cuda_error(kernel):
    shape = _hirn_shape(8, 8)
    need = kernel.hirn_deform_conv_workspace_size(ctypes.byref(shape), 1)
    fake = [ctypes.c_void_p(256)] * 7  # never dereferenced: the launch fails first
    status = kernel.hirn_deform_conv_forward(ctypes.byref(shape), 1, 1, 1, *fake, need, None)
    assert status == 3
    assert "CUDA" in kernel.hirn_deform_conv_last_error().decode()


@needs_nvcc
@pytest.mark.parametrize("name", list(CASES))
def test_emulated_fp32_kernel_matches_reference(kernel, name):
    args = _case(**CASES[name])
    out = loader.deform_conv_emulated(*args)
    expected = _reference(*args)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert (out.double() - expected).abs().max() <= KERNEL_EMULATED_FP32_ATOL


@needs_nvcc
@pytest.mark.parametrize("name", ["hirn_groups", "scalar_groups", "two_out_blocks",
                                  "partial_chunks", "strided_dilated"])
def test_emulated_fp16_kernel_matches_reference(kernel, name):
    args = list(_case(**CASES[name]))
    args[:5] = [t.half() for t in args[:5]]
    out = loader.deform_conv_emulated(*args)
    expected = _reference(*args)  # same FP16 inputs, exact arithmetic
    assert out.dtype == torch.float16
    span = float(expected.max() - expected.min())
    assert (out.double() - expected).abs().max() <= KERNEL_EMULATED_FP16_REL_ATOL * span


@needs_nvcc
def test_emulated_without_mask_and_bias(kernel):
    inp, offset, _, weight, _, s, p, d = _case(c_in=16, groups=2)
    out = loader.deform_conv_emulated(inp, offset, None, weight, None, s, p, d)
    assert (out.double() - _reference(inp, offset, None, weight, None, s, p, d)).abs().max() \
        <= KERNEL_EMULATED_FP32_ATOL


@needs_nvcc
def test_emulated_fp16_psnr_on_hirn_like_inputs(kernel):
    case = hirn_case(16, 40, seed=3)
    expected = _reference(*case.args())
    out = loader.deform_conv_emulated(*case.to(torch.float16).args())
    mse = float(((out.double() - expected) ** 2).mean())
    peak = float(expected.max() - expected.min())
    assert 10 * math.log10(peak**2 / mse) >= KERNEL_FP16_MIN_PSNR_DB


@needs_nvcc
def test_emulated_fp16_features_sample_at_fp32_offsets(kernel):
    """FP32 offsets beside FP16 features: positions beyond 1024 px keep their fraction (FP16's
    spacing there is 1 px), as the plugin accepts for FP16 engines."""
    inp, offset, mask, weight, bias, s, p, d = _case(c_in=8, groups=1, c_out=4, size=(2, 1400))
    g = torch.Generator().manual_seed(7)
    offset[:, 1::2] = torch.rand(offset[:, 1::2].shape, generator=g) * 1300  # dx: far right
    half = [t.half() for t in (inp, mask, weight, bias)]
    expected = _reference(half[0], offset, half[1], half[2], half[3], s, p, d)
    span = float(expected.max() - expected.min())
    exact = loader.deform_conv_emulated(half[0], offset, half[1], half[2], half[3], s, p, d)
    rounded = loader.deform_conv_emulated(half[0], offset.half(), half[1], half[2], half[3],
                                          s, p, d)
    assert exact.dtype == torch.float16
    assert (exact.double() - expected).abs().max() <= KERNEL_EMULATED_FP16_REL_ATOL * span
    assert (rounded.double() - expected).abs().max() > 20 * KERNEL_EMULATED_FP16_REL_ATOL * span


def test_mismatched_tensors_are_refused_before_the_kernel():
    inp, offset, mask, weight, bias, s, p, d = _case()
    with pytest.raises(KernelInputError, match="offset has 35 channels"):
        loader.describe(inp, offset[:, :35], mask, weight, bias, s, p, d)
    with pytest.raises(KernelInputError, match="mask is"):
        loader.describe(inp, offset, mask[:, :, :3], weight, bias, s, p, d)
    with pytest.raises(KernelInputError, match="every tensor must be torch.float32"):
        loader.describe(inp, offset.half(), mask, weight, bias, s, p, d)
    with pytest.raises(KernelInputError, match="weight groups are not supported"):
        loader.describe(inp, offset, mask, weight[:, :8], bias, s, p, d)


PLUGIN_DIR = loader.KERNEL_DIR.parent / "trt"


def test_plugin_matches_the_onnx_node_the_exporter_writes(tmp_path):
    """Op name, domain/namespace, version, attribute names and lengths: the ONNX parser's keys."""
    import onnx


    header = (PLUGIN_DIR / "deform_conv_plugin.h").read_text()
    constants = dict(re.findall(r'constexpr char const\* (k\w+) = "(\w*)";', header))
    fields = re.findall(r'mFields\.emplace_back\("(\w+)", nullptr, PluginFieldType::kINT32, (\d)\)',
                        (PLUGIN_DIR / "deform_conv_plugin.cpp").read_text())

    model, node = export_plugin_node(tmp_path / "dcn.onnx", c_in=32, groups=4, c_out=8,
                                     size=(6, 7))
    assert node.op_type == constants["kPluginName"]
    assert node.domain == constants["kPluginNamespace"]
    assert {o.domain: o.version for o in model.opset_import}[node.domain] == \
        int(constants["kPluginVersion"])
    assert list(node.input) == ["input", "offset", "mask", "weight", "bias"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    # TensorRT's ONNX parser looks the creator up by plugin_namespace (before 10.10 it does
    # not read the domain) and passes the other attributes as the plugin's fields.
    assert attrs.pop("plugin_namespace") == constants["kPluginNamespace"].encode()
    assert sorted(attrs) == sorted(name for name, _ in fields)
    for name, length in fields:
        value = attrs[name]
        assert (len(value) if isinstance(value, list) else 1) == int(length)
    assert attrs["deformable_groups"] == 4 and attrs["padding"] == [1, 1]
