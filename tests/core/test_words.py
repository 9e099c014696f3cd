"""Frame lists in messages."""

from hirn.core.words import SHOWN_FRAMES, name_frames


def test_frames_are_named_with_their_number_and_the_rest_counted():
    assert name_frames([3]) == "frame 3"
    assert name_frames([3, 8, 9]) == "frames 3, 8, 9"
    many = list(range(SHOWN_FRAMES + 2))
    assert name_frames(many) == "frames 0, 1, 2, 3, 4 and 2 more"
