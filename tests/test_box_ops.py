"""Box geometry and index helpers of both ports against hand-computed values and numpy."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

F32 = np.float32


def boxes(*rows):
    return np.array(rows, F32).reshape(-1, 4)


def iou_giou_numpy(a, b, eps=1e-6):
    """Independent float64 reference for aligned pairs: (iou, giou)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = np.maximum(area_a + area_b - inter, eps)
    ew = np.max([a[:, 2], b[:, 2]], 0) - np.min([a[:, 0], b[:, 0]], 0)
    eh = np.max([a[:, 3], b[:, 3]], 0) - np.min([a[:, 1], b[:, 1]], 0)
    enclose = np.maximum(ew * eh, eps)
    iou = inter / union
    return iou, iou - (enclose - union) / enclose


# (box a, box b, IoU, GIoU), worked out by hand
HAND_CASES = [
    ([0, 0, 10, 10], [5, 5, 15, 15], 25 / 175, 25 / 175 - (225 - 175) / 225),   # partial
    ([0, 0, 10, 10], [20, 20, 30, 30], 0.0, -(900 - 200) / 900),               # disjoint
    ([0, 0, 10, 10], [10, 0, 20, 10], 0.0, 0.0),                               # touching
    ([0, 0, 10, 10], [2, 2, 4, 4], 4 / 100, 4 / 100),                          # contained
    ([0, 0, 10, 10], [0, 0, 10, 10], 1.0, 1.0),                                # identical
    ([0, 0, 10, 10], [3, 3, 3, 3], 0.0, 0.0),                                  # zero area inside
    ([0, 0, 10, 10], [20, 0, 20, 10], 0.0, -(200 - 100) / 200),                # zero area outside
    ([3, 3, 3, 3], [3, 3, 3, 3], 0.0, 0.0),                                    # both zero area
]


@pytest.mark.parametrize("a, b, iou, giou", HAND_CASES)
def test_iou_and_giou_hand_cases(port, a, b, iou, giou):
    ta, tb = port.tensor(boxes(a)), port.tensor(boxes(b))
    got_iou = port.numpy(port.box_ops.bbox_overlaps(ta, tb, is_aligned=True))
    got_giou = port.numpy(port.box_ops.bbox_overlaps(ta, tb, mode="giou", is_aligned=True))
    np.testing.assert_allclose(got_iou, [iou], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got_giou, [giou], rtol=1e-6, atol=1e-7)


def test_pairwise_iou_shape_and_values(port):
    a = boxes([0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30])
    b = boxes([0, 0, 10, 10], [10, 0, 20, 10])
    got = port.numpy(port.box_ops.bbox_overlaps(port.tensor(a), port.tensor(b)))
    expected = [[1.0, 0.0], [25 / 175, 25 / 175], [0.0, 0.0]]  # [5,5,15,15] vs [10,0,20,10]: 5x5
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_overlaps_reject_bad_input(port):
    a = port.tensor(boxes([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="mode"):
        port.box_ops.bbox_overlaps(a, a, mode="iof")
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        port.box_ops.bbox_overlaps(port.tensor(np.zeros((2, 3), F32)), a)
    with pytest.raises(ValueError, match="is_aligned"):
        port.box_ops.bbox_overlaps(port.tensor(boxes([0, 0, 1, 1], [0, 0, 2, 2])), a,
                                   is_aligned=True)


def test_centers_distance2bbox_and_clipping(port):
    ops = port.box_ops
    np.testing.assert_allclose(port.numpy(ops.bbox_centers(port.tensor(boxes([2, 4, 6, 10])))),
                               [[4, 7]])
    points = port.tensor(np.array([[10, 10], [2, 3]], F32))
    dist = port.tensor(np.array([[1, 2, 3, 4], [5, 5, 50, 50]], F32))
    np.testing.assert_allclose(port.numpy(ops.distance2bbox(points, dist)),
                               [[9, 8, 13, 14], [-3, -2, 52, 53]])
    # max_shape is (h, w): x clipped to [0, 40], y to [0, 30]
    np.testing.assert_allclose(port.numpy(ops.distance2bbox(points, dist, max_shape=(30, 40))),
                               [[9, 8, 13, 14], [0, 0, 40, 30]])


def test_bbox2distance_clamps_to_reg_max_minus_eps(port):
    points = port.tensor(np.array([[10, 10], [10, 10], [0, 0]], F32))
    bbox = port.tensor(boxes([7, 6, 12, 13], [-40, 9, 100, 10.5], [1, 1, 5, 5]))
    got = port.numpy(port.box_ops.bbox2distance(points, bbox, max_dis=16))
    expected = [[3, 4, 2, 3], [15.9, 1, 15.9, 0.5], [0, 0, 5, 5]]  # point outside: sides < 0 -> 0
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert got.max() <= np.float32(15.9)


def test_distance_round_trip(port):
    rng = np.random.default_rng(3)
    points = rng.uniform(20, 80, (50, 2)).astype(F32)
    dist = rng.uniform(0, 15, (50, 4)).astype(F32)
    box = port.box_ops.distance2bbox(port.tensor(points), port.tensor(dist))
    back = port.box_ops.bbox2distance(port.tensor(points), box, max_dis=16)
    np.testing.assert_allclose(port.numpy(back), dist, atol=1e-5)


@pytest.mark.parametrize("descending", [False, True])
def test_stable_argsort_breaks_ties_by_index(port, descending):
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 4, (40, 3)).astype(F32)  # many ties per column
    got = port.numpy(port.box_ops.stable_argsort(port.tensor(keys), descending=descending))
    expected = np.argsort(-keys if descending else keys, axis=0, kind="stable")
    np.testing.assert_array_equal(got, expected)
    single = port.numpy(port.box_ops.stable_argsort(port.tensor(np.array([2.0], F32))))
    np.testing.assert_array_equal(single, [0])


def test_unmap_scatters_rows_back(port):
    mask = np.array([False, True, True, False, True])
    values = np.array([[1, 2], [3, 4], [5, 6]], F32)
    got = port.numpy(port.box_ops.unmap(port.tensor(values), port.tensor(mask), -1))
    np.testing.assert_array_equal(got, [[-1, -1], [1, 2], [3, 4], [-1, -1], [5, 6]])
    labels = port.numpy(port.box_ops.unmap(port.tensor(np.array([7, 8, 9])), port.tensor(mask), 0))
    np.testing.assert_array_equal(labels, [0, 7, 8, 0, 9])
    assert labels.dtype == np.int64
    empty = port.box_ops.unmap(port.tensor(np.zeros((0, 2), F32)), port.tensor(mask & False), 3)
    np.testing.assert_array_equal(port.numpy(empty), np.full((5, 2), 3))


# Jittor's -Ofast kernels switch the process to flush-to-zero: no subnormal inputs.
coords = st.floats(-50, 50, width=32, allow_subnormal=False)
box_rows = arrays(F32, (6, 4), elements=coords)


def as_boxes(raw):
    """Any 4 numbers -> a valid box (x1 <= x2, y1 <= y2), zero-area boxes included."""
    return np.concatenate([np.minimum(raw[:, :2], raw[:, 2:]),
                           np.maximum(raw[:, :2], raw[:, 2:])], axis=1)


@settings(max_examples=40, deadline=None)
@given(box_rows, box_rows)
def test_giou_matches_numpy_in_both_ports(torch_port, jittor_port, raw_a, raw_b):
    a, b = as_boxes(raw_a), as_boxes(raw_b)
    iou_ref, giou_ref = iou_giou_numpy(a, b)
    for port in (torch_port, jittor_port):
        ta, tb = port.tensor(a), port.tensor(b)
        iou = port.numpy(port.box_ops.bbox_overlaps(ta, tb, is_aligned=True))
        giou = port.numpy(port.box_ops.bbox_overlaps(ta, tb, mode="giou", is_aligned=True))
        np.testing.assert_allclose(iou, iou_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(giou, giou_ref, rtol=1e-4, atol=1e-5)
        assert np.all(giou <= iou + 1e-6) and np.all(giou >= -1 - 1e-6)
