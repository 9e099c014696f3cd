"""MATLAB-compatible imresize: exact on MATLAB's own Vid4 LR frames, kernel and ramp checks."""

import cv2
import numpy as np
import pytest
from support import CALENDAR_LR, DATA, RAMP_ATOL, needs_shared

from hirn.core.errors import InputError
from hirn.model.imresize import contributions, cubic, imresize

CALENDAR_GT = DATA / "vid4" / "calendar" / "GT"


def _read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@needs_shared(CALENDAR_LR)
def test_reproduces_matlab_lr_frames_exactly():
    """Every pixel of all 41 calendar frames matches MATLAB's imresize(GT, 1/4)."""
    names = sorted(p.name for p in CALENDAR_LR.glob("*.png"))
    assert len(names) == 41
    wrong = {}
    for name in names:
        ours = imresize(_read_rgb(CALENDAR_GT / name), 0.25)
        matlab = _read_rgb(CALENDAR_LR / name)
        assert ours.dtype == np.uint8 and ours.shape == matlab.shape == (144, 180, 3)
        if (ours != matlab).any():
            wrong[name] = int((ours != matlab).sum())
    assert not wrong, f"pixels differing from MATLAB per frame: {wrong}"


def _variant(image, scale, dtype, round_between):
    """imresize written plainly, with a chosen float type and optional rounding between passes."""
    out = image.astype(dtype)
    for axis in (0, 1):
        weights, ind = contributions(out.shape[axis], int(np.ceil(out.shape[axis] * scale)), scale)
        moved = np.moveaxis(out, axis, 0)
        acc = np.zeros((len(weights),) + moved.shape[1:], dtype)
        for p in range(weights.shape[1]):
            acc += weights[:, p].astype(dtype)[:, None, None] * moved[ind[:, p]]
        out = np.moveaxis(acc, 0, axis)
        if round_between and axis == 0:
            out = np.clip(np.floor(out + 0.5), 0, 255)
    return np.clip(np.floor(out + dtype(0.5)), 0, 255).astype(np.uint8)


@needs_shared(CALENDAR_LR)
def test_float32_or_rounding_between_passes_would_not_match():
    """The exactness test tells these apart: both variants miss pixels of MATLAB's frames."""
    names = ["005.png", "010.png", "015.png", "020.png", "025.png", "030.png", "035.png"]
    missed = {"float32": 0, "round_between": 0, "float64": 0}
    for name in names:
        gt, matlab = _read_rgb(CALENDAR_GT / name), _read_rgb(CALENDAR_LR / name)
        for key, dtype, between in [("float32", np.float32, False),
                                    ("round_between", np.float64, True),
                                    ("float64", np.float64, False)]:
            missed[key] += int((_variant(gt, 0.25, dtype, between) != matlab).sum())
    assert missed["float64"] == 0
    assert missed["float32"] > 0 and missed["round_between"] > 0, missed


def test_ties_round_half_away_from_zero():
    """x2 weights are multiples of 1/128, so exact .5 values occur; they round up.

    Rows are all equal, so the height pass keeps them and the ties come from the width pass.
    """
    rng = np.random.default_rng(3)
    img = np.tile(rng.integers(0, 256, (1, 2000), dtype=np.uint8), (4, 1))
    exact = imresize(img.astype(np.float64), 2)
    ties = (exact - np.floor(exact) == 0.5) & (exact > 0) & (exact < 255)
    assert ties.sum() > 0
    np.testing.assert_array_equal(imresize(img, 2)[ties], exact[ties] + 0.5)


def test_cubic_kernel_values():
    x = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, -0.5, -1.5])
    expected = [1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0, 0.5625, -0.0625]
    np.testing.assert_array_equal(cubic(x), expected)


# 0.63: the stretched kernel's taps sum to 1 +- 1.7% before they are normalised (0.25, 0.5,
# 2 and 4 sum to 1 exactly even without it)
@pytest.mark.parametrize("scale", [0.25, 0.5, 0.63, 2, 4])
def test_weights_sum_to_one_and_indices_stay_inside(scale):
    weights, ind = contributions(37, int(np.ceil(37 * scale)), scale)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert ind.min() >= 0 and ind.max() < 37


def test_scale_one_returns_the_image():
    """As MATLAB: each output pixel takes its own input pixel with weight 1 (the others 0)."""
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(imresize(image, 1), image)
    as_float = image / 255.0
    assert np.array_equal(imresize(as_float, 1), as_float)


@pytest.mark.parametrize("scale", [2, 4, 0.5, 1.5])  # 1.5: enlarging, kernel not stretched
def test_interior_of_a_linear_ramp_is_reproduced(scale):
    """Keys' cubic kernel (a = -0.5) reproduces linear functions: away from the
    borders, output pixel x (1-based) holds the input coordinate it maps to."""
    n = 64
    ramp = np.tile(np.arange(1, n + 1, dtype=np.float64), (8, 1))  # f(i) = i along width
    out = imresize(ramp, scale)
    x = np.arange(1, out.shape[1] + 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    inside = (u > 2 / min(scale, 1) + 1) & (u < n - 2 / min(scale, 1))
    np.testing.assert_allclose(out[:, inside], np.broadcast_to(u[inside], out[:, inside].shape),
                               rtol=0, atol=RAMP_ATOL)


def test_shapes_dtypes_and_channels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    small = imresize(img, 0.25)
    assert small.dtype == np.uint8 and small.shape == (8, 11, 3)  # ceil(30/4), ceil(41/4)
    big = imresize(img, 4)
    assert big.shape == (120, 164, 3)
    # Channels are resized independently; a 2-D image gives the same as one channel.
    np.testing.assert_array_equal(imresize(img[..., 1], 4), big[..., 1])
    # Float input: float64 output, not rounded, and rounding it gives the uint8 result.
    as_float = imresize(img.astype(np.float32), 4)
    assert as_float.dtype == np.float64 and not np.array_equal(as_float, np.round(as_float))
    np.testing.assert_array_equal(np.clip(np.floor(as_float + 0.5), 0, 255), big)


def test_constant_image_stays_constant_and_uint8_is_clipped():
    np.testing.assert_array_equal(imresize(np.full((9, 9), 200, np.uint8), 4), 200)
    # Overshoot at a hard edge goes past 255 before clipping.
    edge = np.zeros((8, 8), np.uint8)
    edge[:, 4:] = 255
    assert imresize(edge.astype(np.float64), 4).max() > 255
    assert imresize(edge, 4).max() == 255 and imresize(edge, 4).min() == 0


def test_one_pixel_lines_resize_and_empty_images_are_refused():
    assert imresize(np.full((1, 5), 7, np.uint8), 2).tolist() == [[7] * 10] * 2
    assert imresize(np.full((5, 1, 3), 7, np.uint8), 2).shape == (10, 2, 3)
    with pytest.raises(InputError, match=r"cannot resize an empty image of shape \[0, 4\]"):
        imresize(np.zeros((0, 4), np.uint8), 2)


@pytest.mark.parametrize("image, scale, match", [
    (np.zeros((4, 4, 3, 1), np.uint8), 2, "shape"),
    (np.zeros((4, 4), np.int32), 2, "dtype"),
    (np.zeros((4, 4), np.uint8), 0, "positive"),
    (np.zeros((4, 4), np.uint8), float("nan"), "positive"),
])
def test_bad_input_is_a_clear_error(image, scale, match):
    with pytest.raises(InputError, match=match):
        imresize(image, scale)
