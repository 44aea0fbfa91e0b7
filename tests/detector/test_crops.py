"""THE crop: geometry, padding, point mapping, normalisation (hypothesis where it fits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.crops import (
    VIEW_SHIFT,
    VIEWS,
    crop_boxes,
    crop_face,
    crop_views,
    crop_window,
    outside_fraction,
    square_box,
    to_crop_coords,
    to_model_input,
    turn_back,
    view_boxes,
)

boxes = st.tuples(
    st.floats(-200, 800), st.floats(-200, 800), st.floats(4, 400), st.floats(4, 400)
).map(lambda t: (t[0], t[1], t[0] + t[2], t[1] + t[3]))


@given(boxes, st.floats(1.0, 3.0))
def test_square_box_is_centred_square_of_margin_times_longer_side(box, margin) -> None:
    x0, y0, x1, y1 = square_box(box, margin)
    assert x1 - x0 == pytest.approx(y1 - y0)
    assert x1 - x0 == pytest.approx(max(box[2] - box[0], box[3] - box[1]) * margin)
    assert (x0 + x1) / 2 == pytest.approx((box[0] + box[2]) / 2)
    assert (y0 + y1) / 2 == pytest.approx((box[1] + box[3]) / 2)


@settings(max_examples=60, deadline=None)
@given(boxes, st.floats(1.0, 2.5), st.sampled_from([16, 64, 160]))
def test_crop_shape_and_padding_anywhere(box, margin, size) -> None:
    image = np.full((300, 400, 3), 200, np.uint8)
    crop = crop_face(image, box, margin, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    x0, y0, side = crop_window(box, margin)
    inside = x0 >= 0 and y0 >= 0 and x0 + side <= 400 and y0 + side <= 300
    if inside:
        assert (crop == 200).all()  # no padding when the square lies inside the image
    if x0 + side <= 0 or y0 + side <= 0 or x0 >= 400 or y0 >= 300:
        assert (crop == 0).all()  # entirely outside: black, never garbage


def test_padding_is_black_on_the_outside_side() -> None:
    image = np.full((100, 100, 3), 255, np.uint8)
    crop = crop_face(image, (0, 40, 20, 60), 2.0, 40)  # square x in [-10, 30): left quarter outside
    assert (crop[:, :8] == 0).all() and (crop[:, 12:] == 255).all()


def test_points_map_into_the_crop() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[200:204, 300:304] = 255  # a bright dot at (301.5, 201.5)
    box = (250, 150, 350, 270)
    crop = crop_face(image, box, 1.3, 160)
    (px, py), = to_crop_coords([[301.5, 201.5]], box, 1.3, 160)
    yy, xx = np.nonzero(crop[..., 0] > 64)
    assert abs(xx.mean() - px) < 1.0 and abs(yy.mean() - py) < 1.0


def test_degenerate_box_and_bad_image_are_refused() -> None:
    with pytest.raises(ValueError):
        square_box((10, 10, 10, 30), 1.3)
    with pytest.raises(ValueError):
        crop_face(np.zeros((10, 10), np.uint8), (1, 1, 5, 5), 1.3, 16)


@given(boxes, st.integers(1, 1000), st.integers(1, 1000))
def test_outside_fraction_is_the_share_of_the_box_area_off_the_picture(box, width, height) -> None:
    share = outside_fraction(box, width, height)
    assert 0.0 <= share <= 1.0
    x0, y0, x1, y1 = box
    # counted on a pixel grid 4x finer than the box: the same share within the grid's resolution
    xs = np.linspace(x0, x1, 401)[:-1] + (x1 - x0) / 800
    ys = np.linspace(y0, y1, 401)[:-1] + (y1 - y0) / 800
    inside = np.outer((ys >= 0) & (ys < height), (xs >= 0) & (xs < width)).mean()
    assert share == pytest.approx(1.0 - inside, abs=0.011)


def test_outside_fraction_of_whole_and_cut_faces() -> None:
    assert outside_fraction((10, 10, 50, 60), 100, 100) == 0.0
    assert outside_fraction((10, 50, 50, 150), 100, 100) == pytest.approx(0.5)  # lower half cut
    assert outside_fraction((-10, 0, 30, 40), 100, 100) == pytest.approx(0.25)  # left quarter
    assert outside_fraction((200, 200, 220, 220), 100, 100) == 1.0
    with pytest.raises(ValueError, match="degenerate"):
        outside_fraction((10, 10, 10, 20), 100, 100)


def test_model_input_normalises_to_nchw() -> None:
    crops = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 255)])
    x = to_model_input(crops, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert np.allclose(x[0], -1.0) and np.allclose(x[1], 1.0)



@given(
    st.lists(st.floats(-2, 2, width=32), min_size=3, max_size=3),
    st.lists(st.floats(0.0625, 3, width=32), min_size=3, max_size=3),
    st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_model_input_table_is_the_formula_bit_for_bit(mean, std, seed) -> None:
    """The per-level table gives exactly ``(crops / 255 - mean) / std`` in float32, channel first."""
    crops = np.random.default_rng(seed).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    x = to_model_input(crops, mean, std)
    ref = crops.astype(np.float32) * np.float32(1.0 / 255.0)
    ref = (ref - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    ref = ref.transpose(0, 3, 1, 2)
    assert x.shape == (3, 3, 9, 7) and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable
    np.testing.assert_array_equal(x, ref)
    np.testing.assert_array_equal(to_model_input(crops.astype(np.float64), mean, std), ref)  # not uint8


def test_model_input_refuses_what_is_not_crops() -> None:
    with pytest.raises(ValueError, match="crops must be"):
        to_model_input(np.zeros((2, 8, 8, 4), np.uint8), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="crops must be"):
        to_model_input(np.zeros((8, 8, 3), np.uint8), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError):
        to_model_input(np.zeros((1, 8, 8, 3), np.uint8), (0.5, 0.5), (0.5,) * 3)
    scalar = to_model_input(np.full((1, 2, 2, 3), 255, np.uint8), 0.5, 0.5)  # one value: every channel
    np.testing.assert_array_equal(scalar, np.ones((1, 3, 2, 2), np.float32))


@given(boxes)
@settings(max_examples=50, deadline=None)
def test_view_boxes_move_by_the_shift_of_the_longer_side(box) -> None:
    views = view_boxes(box)
    assert len(views) == 5 and views[0] == pytest.approx(box)
    d = VIEW_SHIFT * max(box[2] - box[0], box[3] - box[1])
    moves = [(v[0] - box[0], v[1] - box[1]) for v in views[1:]]
    assert moves == [pytest.approx(m) for m in ((-d, 0), (d, 0), (0, -d), (0, d))]
    for v in views:  # same size, only moved
        assert (v[2] - v[0], v[3] - v[1]) == pytest.approx((box[2] - box[0], box[3] - box[1]))


def test_crop_views_are_the_four_moved_crops_the_vertical_ones_mirrored() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    box = (40.0, 30.0, 100.0, 95.0)
    views = crop_views(image, box, 1.3, 24)
    assert VIEWS == 4 and views.shape == (VIEWS, 24, 24, 3) and views.dtype == np.uint8
    left, right, up, down = (crop_face(image, b, 1.3, 24) for b in view_boxes(box)[1:])
    np.testing.assert_array_equal(views[0], left)
    np.testing.assert_array_equal(views[1], right)
    np.testing.assert_array_equal(views[2], up[:, ::-1])
    np.testing.assert_array_equal(views[3], down[:, ::-1])
    assert not np.array_equal(views[0], views[1])  # the moves change the crop


def test_crop_boxes_stacks_one_crop_or_the_views_of_each_box() -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    boxes = [(40.0, 30.0, 100.0, 95.0), (5.0, 10.0, 50.0, 60.0)]
    one = crop_boxes(image, boxes, 1.3, 24)
    assert one.shape == (2, 24, 24, 3) and one.dtype == np.uint8
    for crop, box in zip(one, boxes, strict=True):
        np.testing.assert_array_equal(crop, crop_face(image, box, 1.3, 24))
    four = crop_boxes(image, boxes, 1.3, 24, VIEWS)
    assert four.shape == (2 * VIEWS, 24, 24, 3)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(four[k * VIEWS : (k + 1) * VIEWS], crop_views(image, box, 1.3, 24))
    assert crop_boxes(image, [], 1.3, 24, VIEWS).shape == (0, 24, 24, 3)
    with pytest.raises(ValueError, match="views must be 1 or 4"):
        crop_boxes(image, boxes, 1.3, 24, 3)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(2, 40), w=st.integers(2, 40), data=st.data(), angle=st.sampled_from([0, 90, 180, 270])
)
def test_turn_back_moves_points_and_boxes_with_the_pixels(h, w, data, angle) -> None:
    """A marked pixel's centre, and a box around it, follow the picture through the turn."""
    x, y = data.draw(st.integers(0, w - 1)), data.draw(st.integers(0, h - 1))
    image = np.zeros((h, w, 3), np.uint8)
    image[y, x] = 255
    pic, box, (point,) = turn_back(image, (x, y, x + 1, y + 1), angle, [(x + 0.5, y + 0.5)])
    (ty,), (tx,) = np.nonzero(pic[:, :, 0])
    assert pic.shape[:2] == ((h, w) if angle in (0, 180) else (w, h)) and pic.flags.c_contiguous
    assert point == pytest.approx((tx + 0.5, ty + 0.5))
    assert box == pytest.approx((tx, ty, tx + 1, ty + 1))

