"""Frame folders: one natural order for training, evaluation and hirn-run; one RGB reader."""

import cv2
import numpy as np
import pytest

from hirn.core.errors import DataError
from hirn.core.files import natural_key
from hirn.media.video_reader import ImageFolderSource
from hirn.train.data import find_clips
from hirn.train.evaluate import load_clip
from hirn.train.frames import list_frames, read_rgb

NAMES = ["frame10.png", "frame9.png", "Frame11.png", "frame1.png"]
NATURAL = ["frame1.png", "frame9.png", "frame10.png", "Frame11.png"]


def _write_frames(folder, names, size=(8, 8)):
    folder.mkdir(parents=True)
    for k, name in enumerate(names):
        cv2.imwrite(str(folder / name), np.full((*size, 3), 10 * k, np.uint8))
    return folder


def test_natural_key_orders_numbers_by_value_and_ignores_case():
    assert sorted(NAMES, key=natural_key) == NATURAL
    assert sorted(["b.png", "A.png"], key=natural_key) == ["A.png", "b.png"]


def test_training_evaluation_and_hirn_run_order_a_folder_alike(tmp_path):
    gt = _write_frames(tmp_path / "clip" / "GT", NAMES, size=(16, 16))
    assert list(list_frames(gt)) == NATURAL
    assert list(find_clips(gt)[0].frames) == NATURAL
    assert [p.name for p in ImageFolderSource(gt).files] == NATURAL
    # hirn-eval reads GT frames in that order: frame k of NAMES is filled with 10 * k.
    frames, _, _ = load_clip(tmp_path / "clip")
    assert [int(f[0, 0, 0]) for f in frames] == [10 * NAMES.index(n) for n in NATURAL]


def test_read_rgb_swaps_opencv_channels_and_says_what_failed(tmp_path):
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = read_rgb(tmp_path / "blue.png")
    assert rgb.shape == (4, 6, 3) and rgb.flags.c_contiguous
    assert (rgb[..., 2] == 200).all() and (rgb[..., :2] == 0).all()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png: missing, empty or not an image"):
        read_rgb(tmp_path / "broken.png")
