"""Resize / flip / normalise / pad: hand-computed cases and hypothesis properties."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfocal.data import transforms

SETTINGS = settings(max_examples=60, deadline=None)


@pytest.mark.parametrize("w, h, img_scale, expected", [
    # scale = min(1333/640, 800/480) = 5/3; 640*5/3 = 1066.67 -> int(1067.17) = 1067
    (640, 480, (1333, 800), (1067, 800)),
    # scale = min(1333/1000, 800/200) = 1.333; 200*1.333 = 266.6 -> int(267.1) = 267
    (1000, 200, (1333, 800), (1333, 267)),
    # the order of the two limits does not matter: (long, short) = (1333, 800) either way
    (480, 640, (800, 1333), (800, 1067)),
    # scale = min(320/500, 320/375) = 0.64
    (500, 375, (320, 320), (320, 240)),
    # upscaling a small image: scale = min(320/20, 320/10) = 16
    (20, 10, (320, 320), (320, 160)),
])
def test_rescale_size_hand_cases(w, h, img_scale, expected):
    new_w, new_h, _ = transforms.rescale_size(w, h, img_scale)
    assert (new_w, new_h) == expected


def test_rescale_size_rejects_bad_input():
    with pytest.raises(ValueError, match="w=0"):
        transforms.rescale_size(0, 10, (320, 320))
    with pytest.raises(ValueError, match="h=0"):
        transforms.rescale_size(10, 0, (320, 320))
    with pytest.raises(ValueError, match="img_scale"):
        transforms.rescale_size(10, 10, (320, 0))


def test_resize_box_arithmetic_with_unequal_rounding():
    # w=3, h=7, limits 10x10: scale = 10/7; new_w = int(4.79) = 4, new_h = int(10.5) = 10
    img = np.zeros((7, 3, 3), np.uint8)
    boxes = np.array([[0, 0, 3, 7], [1.5, 3.5, 3, 7]], np.float32)
    out, out_boxes, sf = transforms.resize(img, boxes, (10, 10))
    assert out.shape == (10, 4, 3)
    np.testing.assert_allclose(sf, [4 / 3, 10 / 7, 4 / 3, 10 / 7], rtol=1e-6)
    assert sf.dtype == np.float32
    np.testing.assert_allclose(out_boxes, [[0, 0, 4, 10], [2, 5, 4, 10]], rtol=1e-6)


def test_resize_clips_boxes_to_the_resized_image():
    img = np.zeros((10, 20, 3), np.uint8)                     # h=10, w=20, scale 2
    boxes = np.array([[15, -2, 25, 12], [1, 2, 5, 6]], np.float32)
    _, out_boxes, sf = transforms.resize(img, boxes, (40, 40))
    np.testing.assert_array_equal(sf, [2, 2, 2, 2])
    np.testing.assert_array_equal(out_boxes, [[30, 0, 40, 20], [2, 4, 10, 12]])


def test_resize_is_bilinear_with_half_pixel_centres():
    img = np.array([[[0, 0, 0], [100, 100, 100]]], np.uint8)    # 1 x 2, upscaled x2
    out, _, _ = transforms.resize(img, None, (4, 2))
    # source x of output pixel i = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (edges clamp)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 25, 75, 100], [0, 25, 75, 100]])


def test_flip_hand_case():
    img = np.arange(2 * 20 * 3, dtype=np.uint8).reshape(2, 20, 3)
    out, boxes = transforms.flip(img, np.array([[2, 3, 5, 8]], np.float32))
    np.testing.assert_array_equal(boxes, [[15, 3, 18, 8]])
    np.testing.assert_array_equal(out[:, 0], img[:, 19])
    np.testing.assert_array_equal(out[:, 19], img[:, 0])
    assert out.flags["C_CONTIGUOUS"]


def test_normalize_converts_bgr_to_rgb_then_standardises():
    img = np.array([[[10, 20, 30]]], np.uint8)                  # B=10, G=20, R=30
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    out = transforms.normalize(img, mean, std, to_rgb=True)
    expected = [(30 - 123.675) / 58.395, (20 - 116.28) / 57.12, (10 - 103.53) / 57.375]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    kept = transforms.normalize(img, (0, 0, 0), (2, 2, 2), to_rgb=False)
    np.testing.assert_array_equal(kept[0, 0], [5, 10, 15])
    with pytest.raises(ValueError, match="std"):
        transforms.normalize(img, (0, 0, 0), (1, 0, 1))


@pytest.mark.parametrize("h, w, expected", [(33, 65, (64, 96)), (32, 32, (32, 32)),
                                            (1, 31, (32, 32)), (320, 240, (320, 256))])
def test_pad_to_multiple_of_32(h, w, expected):
    img = np.full((h, w, 3), 7.0, np.float32)
    out = transforms.pad(img, 32)
    assert out.shape == expected + (3,)
    assert (out[:h, :w] == 7).all()
    assert out[h:].sum() == 0 and out[:, w:].sum() == 0
    assert transforms.padded_size(h, w, 32) == expected


def test_a_size_divisor_of_one_pads_nothing_and_below_one_is_refused():
    assert transforms.padded_size(33, 65, 1) == (33, 65)
    with pytest.raises(ValueError, match="size_divisor must be >= 1, got 0"):
        transforms.padded_size(33, 65, 0)


# ---- properties -----------------------------------------------------------------------
sizes = st.integers(min_value=1, max_value=900)
scales = st.tuples(st.integers(32, 1400), st.integers(32, 1400))


@st.composite
def image_and_boxes(draw, inside=True):
    w, h = draw(sizes), draw(sizes)
    n = draw(st.integers(0, 5))
    lo_x, hi_x = (0.0, float(w)) if inside else (-0.5 * w, 1.5 * w)
    lo_y, hi_y = (0.0, float(h)) if inside else (-0.5 * h, 1.5 * h)
    xs = draw(st.lists(st.floats(lo_x, hi_x, width=32, allow_subnormal=False), min_size=2 * n, max_size=2 * n))
    ys = draw(st.lists(st.floats(lo_y, hi_y, width=32, allow_subnormal=False), min_size=2 * n, max_size=2 * n))
    boxes = np.array([[min(xs[2 * i], xs[2 * i + 1]), min(ys[2 * i], ys[2 * i + 1]),
                       max(xs[2 * i], xs[2 * i + 1]), max(ys[2 * i], ys[2 * i + 1])]
                      for i in range(n)], np.float32).reshape(-1, 4)
    return w, h, boxes


@SETTINGS
@given(image_and_boxes())
def test_flip_twice_is_identity(case):
    w, h, boxes = case
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    once_img, once = transforms.flip(img, boxes)
    twice_img, twice = transforms.flip(once_img, once)
    np.testing.assert_array_equal(twice_img, img)
    np.testing.assert_allclose(twice, boxes, atol=1e-3 * max(w, 1))
    assert (once[:, 2] >= once[:, 0]).all()


@SETTINGS
@given(image_and_boxes(inside=False), scales, st.booleans())
def test_boxes_stay_inside_the_image(case, img_scale, do_flip):
    w, h, boxes = case
    img = np.zeros((h, w, 3), np.uint8)
    out, out_boxes, _ = transforms.resize(img, boxes, img_scale)
    if do_flip:
        out, out_boxes = transforms.flip(out, out_boxes)
    new_h, new_w = out.shape[:2]
    assert (out_boxes >= 0).all()
    assert (out_boxes[:, 0::2] <= new_w).all() and (out_boxes[:, 1::2] <= new_h).all()
    assert (out_boxes[:, 2] >= out_boxes[:, 0]).all() and (out_boxes[:, 3] >= out_boxes[:, 1]).all()


@SETTINGS
@given(image_and_boxes(), scales)
def test_scale_factors_invert(case, img_scale):
    w, h, boxes = case
    img = np.zeros((h, w, 3), np.uint8)
    out, out_boxes, sf = transforms.resize(img, boxes, img_scale)
    new_h, new_w = out.shape[:2]
    # the realised factors map the original size onto the resized one ...
    assert abs(w * float(sf[0]) - new_w) < 1e-3 and abs(h * float(sf[1]) - new_h) < 1e-3
    # ... and dividing by them recovers boxes that lay inside the original image
    np.testing.assert_allclose(out_boxes / sf, boxes, rtol=1e-5, atol=1e-3)


@SETTINGS
@given(sizes, sizes, scales)
def test_rescale_size_fits_the_limits_and_keeps_ratio(w, h, img_scale):
    new_w, new_h, scale = transforms.rescale_size(w, h, img_scale)
    long_edge, short_edge = max(img_scale), min(img_scale)
    assert max(new_w, new_h) <= long_edge and min(new_w, new_h) <= short_edge
    # one of the two limits is reached (up to rounding)
    assert max(new_w, new_h) >= long_edge - 1 or min(new_w, new_h) >= short_edge - 1
    for new, old in ((new_w, w), (new_h, h)):
        assert abs(new - old * scale) <= 0.5 or (new == 1 and old * scale < 0.5)
