"""The pure-PyTorch DCNv2 against a slow plain-loop reference."""

import importlib.util

import numpy as np
import pytest
import torch
from support import DCN_ATOL

from hirn.model.deform_conv import deform_conv2d


def _bilinear_zero_outside(img: np.ndarray, y: float, x: float) -> float:
    """torchvision's rule: zero beyond one pixel outside, zero-valued missing corners."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    value = 0.0
    for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * img[yy, xx]
    return value


def reference_deform_conv(inp, offset, weight, bias, mask, stride, pad, dil):
    """Plain loops in float64, straight from the DCNv2 definition."""
    inp, offset, weight = (t.double().numpy() for t in (inp, offset, weight))
    mask = None if mask is None else mask.double().numpy()
    n, c_in, h, w = inp.shape
    c_out, c_per_wg, kh, kw = weight.shape
    h_out, w_out = offset.shape[-2:]
    groups = offset.shape[1] // (2 * kh * kw)
    wgroups = c_in // c_per_wg
    out = np.zeros((n, c_out, h_out, w_out))
    for b in range(n):
        for oy in range(h_out):
            for ox in range(w_out):
                cols = np.zeros((c_in, kh * kw))
                for c in range(c_in):
                    g = c // (c_in // groups)
                    for k in range(kh * kw):
                        ki, kj = divmod(k, kw)
                        dy = offset[b, 2 * (g * kh * kw + k), oy, ox]
                        dx = offset[b, 2 * (g * kh * kw + k) + 1, oy, ox]
                        y = oy * stride - pad + ki * dil + dy
                        x = ox * stride - pad + kj * dil + dx
                        v = _bilinear_zero_outside(inp[b, c], y, x)
                        if mask is not None:
                            v *= mask[b, g * kh * kw + k, oy, ox]
                        cols[c, k] = v
                for o in range(c_out):
                    wg = o // (c_out // wgroups)
                    sl = slice(wg * c_per_wg, (wg + 1) * c_per_wg)
                    out[b, o, oy, ox] = np.sum(weight[o].reshape(c_per_wg, -1) * cols[sl])
    if bias is not None:
        out += bias.double().numpy().reshape(1, -1, 1, 1)
    return torch.from_numpy(out)


def _case(groups, wgroups=1, stride=1, pad=1, dil=1, modulated=True, seed=0, size=(7, 9)):
    g = torch.Generator().manual_seed(seed)
    c_in, c_out, k = 8, 4, 3
    h, w = size
    h_out = (h + 2 * pad - dil * (k - 1) - 1) // stride + 1
    w_out = (w + 2 * pad - dil * (k - 1) - 1) // stride + 1
    inp = torch.rand(2, c_in, h, w, generator=g)
    # Large offsets: many taps land outside the input or across its borders.
    offset = (torch.rand(2, 2 * groups * k * k, h_out, w_out, generator=g) - 0.5) * 12
    weight = torch.randn(c_out, c_in // wgroups, k, k, generator=g)
    bias = torch.randn(c_out, generator=g)
    mask = torch.rand(2, groups * k * k, h_out, w_out, generator=g) if modulated else None
    return inp, offset, weight, bias, mask, stride, pad, dil


@pytest.mark.parametrize("groups", [1, 2, 4, 8])
def test_matches_loop_reference_for_offset_groups(groups):
    inp, offset, weight, bias, mask, s, p, d = _case(groups)
    ours = deform_conv2d(inp, offset, weight, bias, s, p, d, mask)
    expected = reference_deform_conv(inp, offset, weight, bias, mask, s, p, d)
    assert (ours.double() - expected).abs().max() <= DCN_ATOL


@pytest.mark.parametrize("kwargs", [
    dict(groups=2, modulated=False),
    dict(groups=2, wgroups=2),
    dict(groups=1, stride=2, pad=2, dil=2),
    dict(groups=4, size=(1, 5)),
])
def test_matches_loop_reference_variants(kwargs):
    inp, offset, weight, bias, mask, s, p, d = _case(**kwargs)
    ours = deform_conv2d(inp, offset, weight, bias, s, p, d, mask)
    expected = reference_deform_conv(inp, offset, weight, bias, mask, s, p, d)
    assert (ours.double() - expected).abs().max() <= DCN_ATOL


def test_integer_offsets_on_interior_equal_a_shifted_convolution():
    """Zero offsets and a unit mask reduce DCN to an ordinary convolution."""
    inp, _, weight, bias, _, *_ = _case(2)
    offset = torch.zeros(2, 2 * 2 * 9, 7, 9)
    ours = deform_conv2d(inp, offset, weight, bias, 1, 1, 1, torch.ones(2, 18, 7, 9))
    expected = torch.nn.functional.conv2d(inp, weight, bias, padding=1)
    assert (ours - expected).abs().max() <= DCN_ATOL


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision not installed (optional cross-check)")
def test_matches_torchvision():
    try:
        from torchvision.ops import deform_conv2d as tv_deform_conv2d
    except Exception as exc:  # a torchvision built for another torch fails here
        pytest.skip(f"torchvision does not import beside this torch: {exc}")
    inp, offset, weight, bias, mask, s, p, d = _case(4)
    ours = deform_conv2d(inp, offset, weight, bias, s, p, d, mask)
    theirs = tv_deform_conv2d(inp, offset, weight, bias, s, p, d, mask)
    assert (ours - theirs).abs().max() <= DCN_ATOL
