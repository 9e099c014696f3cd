"""The wavelet attention's bicubic upsampling, as exported: equal to PyTorch's."""

import pytest
import torch
import torch.nn.functional as F
from support import EXACT_F64_ATOL, FP16_UPSAMPLE_ATOL

from hirn.model.attention import _upsample_bicubic_x2_as_conv


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 2, 2, 3), (2, 3, 5, 7), (1, 64, 32, 45)])
def test_conv_form_of_bicubic_x2_equals_interpolate(shape):
    """Exact in float64 (same weights, same clamped taps), borders and tiny sizes included."""
    x = torch.randn(shape, dtype=torch.float64) * 5
    expected = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(_upsample_bicubic_x2_as_conv(x), expected, rtol=0, atol=EXACT_F64_ATOL)


def test_conv_form_keeps_float16():
    x = torch.randn(1, 4, 8, 10)
    out = _upsample_bicubic_x2_as_conv(x.half())
    expected = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert out.dtype == torch.float16
    assert (out.float() - expected).abs().max() <= FP16_UPSAMPLE_ATOL
