"""draw_retrieval: thumbnails in rank order at a fixed height, frames by identity, true images below."""

import numpy as np
import pytest
from PIL import Image

from promptdecouple.visualization import (
    BACKGROUND,
    MATCH_COLOUR,
    MISS_COLOUR,
    NEUTRAL_FRAME,
    draw_retrieval,
)

# Solid colours that appear nowhere else in a picture (not in the text, the frames or the background).
RANKED = [(0, 0, 255), (255, 0, 255), (0, 255, 255), (255, 255, 0)]
TRUE = [(120, 0, 200), (0, 90, 120), (250, 140, 0)]


def crops(colours, size=(128, 384)):
    return [Image.new("RGB", size, colour) for colour in colours]


def box(picture, colour):
    """(left, top, right, bottom) of the pixels of exactly `colour`, inclusive; None if absent."""
    rows, cols = np.nonzero((np.asarray(picture) == colour).all(axis=-1))
    if not len(rows):
        return None
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def pixel(picture, x, y):
    return tuple(int(v) for v in np.asarray(picture)[y, x])


def test_thumbnails_have_the_fixed_height_and_stand_in_rank_order():
    picture = draw_retrieval(
        "a man in a blue coat", crops(RANKED), [0.9, 0.8, 0.7, 0.6], thumbnail_height=192
    )
    assert picture.mode == "RGB"
    boxes = [box(picture, colour) for colour in RANKED]
    for left, top, right, bottom in boxes:
        assert (right - left + 1, bottom - top + 1) == (64, 192)  # 384x128 scaled to height 192
    assert [b[1] for b in boxes] == [boxes[0][1]] * 4  # one row
    lefts = [b[0] for b in boxes]
    assert lefts == sorted(lefts) and len(set(lefts)) == 4
    assert picture.width >= 4 * 64 and picture.height > 192
    assert pixel(picture, 0, 0) == BACKGROUND


def test_other_aspect_ratios_keep_theirs():
    picture = draw_retrieval("q", [Image.new("RGB", (300, 100), RANKED[0])], [0.5], thumbnail_height=50)
    left, top, right, bottom = box(picture, RANKED[0])
    assert (right - left + 1, bottom - top + 1) == (150, 50)


def test_frames_are_green_for_the_right_identity_and_red_for_a_wrong_one():
    picture = draw_retrieval("q", crops(RANKED[:3]), [0.9, 0.8, 0.7], matches=[True, False, True])
    expected = [MATCH_COLOUR, MISS_COLOUR, MATCH_COLOUR]
    for colour, frame in zip(RANKED[:3], expected, strict=True):
        left, top, right, bottom = box(picture, colour)
        middle = (top + bottom) // 2
        assert pixel(picture, left - 1, middle) == frame
        assert pixel(picture, right + 1, middle) == frame
        assert pixel(picture, (left + right) // 2, top - 1) == frame
        assert pixel(picture, (left + right) // 2, bottom + 1) == frame


def test_without_matches_the_frames_are_neutral():
    picture = draw_retrieval("q", crops(RANKED[:2]), [0.9, 0.8])
    left, top, _, bottom = box(picture, RANKED[0])
    assert pixel(picture, left - 1, (top + bottom) // 2) == NEUTRAL_FRAME
    assert box(picture, MATCH_COLOUR) is None and box(picture, MISS_COLOUR) is None


def test_true_images_go_in_a_row_below_and_are_capped():
    ranked = crops(RANKED[:2])
    alone = draw_retrieval("q", ranked, [0.9, 0.8], matches=[False, False])
    picture = draw_retrieval(
        "q", ranked, [0.9, 0.8], matches=[False, False], true_images=crops(TRUE), true_ranks=[3, 7, 9]
    )
    assert picture.width == alone.width
    assert picture.height >= alone.height + 192
    ranked_bottom = box(picture, RANKED[0])[3]
    true_boxes = [box(picture, colour) for colour in TRUE]
    assert all(b[1] > ranked_bottom for b in true_boxes)
    assert [b[0] for b in true_boxes] == sorted(b[0] for b in true_boxes)
    assert pixel(picture, true_boxes[0][0] - 1, true_boxes[0][1] + 5) == MATCH_COLOUR

    capped = draw_retrieval("q", ranked, [0.9, 0.8], true_images=crops(TRUE), max_true_images=2)
    assert box(capped, TRUE[0]) is not None and box(capped, TRUE[1]) is not None
    assert box(capped, TRUE[2]) is None


def test_a_long_query_wraps_inside_the_picture():
    words = "a woman with a long black ponytail wearing a dark red coat and white sneakers " * 6
    short = draw_retrieval("a man", crops(RANKED[:2]), [0.9, 0.8])
    long = draw_retrieval(words + "supercalifragilisticexpialidocious" * 4, crops(RANKED[:2]), [0.9, 0.8])
    assert long.width == short.width  # the text wraps instead of widening the picture
    assert long.height > short.height + 40
    text_area = np.asarray(long)[: box(long, RANKED[0])[1] - 30]
    margin = 8  # the smallest margin draw_retrieval uses
    assert (text_area[:, -margin:] == BACKGROUND).all()  # nothing drawn into the right margin
    assert (text_area != BACKGROUND).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"images": [], "scores": []}, "nothing to draw"),
        ({"scores": [0.9]}, "scores has 1 values for 2 images"),
        ({"matches": [True]}, "matches has 1 values for 2 images"),
        ({"true_images": crops(TRUE[:1]), "true_ranks": [1, 2]}, "true_ranks has 2 values for 1 true images"),
        ({"thumbnail_height": 4}, "thumbnail_height"),
    ],
)
def test_inconsistent_arguments_are_refused(kwargs, message):
    arguments = {"query": "q", "images": crops(RANKED[:2]), "scores": [0.9, 0.8], **kwargs}
    with pytest.raises(ValueError, match=message):
        draw_retrieval(**arguments)
