"""Anchors, valid flags and ATSS targets of both ports: hand-built cases, an independent numpy
reference of the official assigner, and exact agreement of the two ports on random boxes."""
import numpy as np
import pytest

F32 = np.float32


def box_array(rows):
    return np.array(rows, F32).reshape(-1, 4)


# ---------------------------------------------------------------- anchors and valid flags

def test_anchor_count_order_and_first_anchors(port):
    gen = port.anchors.AnchorGenerator([8, 16], octave_base_scale=8)
    assert gen.num_base_anchors == 1
    level0, level1 = [port.numpy(a) for a in gen.grid_anchors([(2, 3), (1, 2)])]
    assert level0.shape == (6, 4) and level1.shape == (2, 4)
    assert level0.dtype == np.float32
    # side 8 * stride, centre (x * stride, y * stride), row-major (x fastest)
    np.testing.assert_array_equal(level0[:4], [[-32, -32, 32, 32], [-24, -32, 40, 32],
                                               [-16, -32, 48, 32], [-32, -24, 32, 40]])
    np.testing.assert_array_equal(level0[5], [-16, -24, 48, 40])
    np.testing.assert_array_equal(level1, [[-64, -64, 64, 64], [-48, -64, 80, 64]])


def test_valid_flags_from_padded_shape_smaller_than_grid(port):
    gen = port.anchors.AnchorGenerator([8, 16])
    flags0, flags1 = [port.numpy(f) for f in gen.valid_flags([(4, 4), (2, 2)], (20, 12))]
    # stride 8: valid_h = ceil(20 / 8) = 3 rows, valid_w = ceil(12 / 8) = 2 columns
    expected0 = np.zeros((4, 4), bool)
    expected0[:3, :2] = True
    np.testing.assert_array_equal(flags0, expected0.reshape(-1))
    # stride 16: ceil(20 / 16) = 2 rows (all), ceil(12 / 16) = 1 column
    np.testing.assert_array_equal(flags1, [True, False, True, False])
    assert flags0.dtype == np.bool_


def test_anchor_generator_rejects_bad_input(port):
    with pytest.raises(ValueError, match="strides"):
        port.anchors.AnchorGenerator([8, 0])
    gen = port.anchors.AnchorGenerator([8, 16])
    with pytest.raises(ValueError, match="feature-map sizes"):
        gen.grid_anchors([(2, 2)])


# ---------------------------------------------------------------- ATSS: hand-built cases

def assign(port, anchors, num_level, gts, labels, topk):
    assigner = port.atss.ATSSAssigner(topk=topk)
    inds, overlaps, labs = assigner.assign(port.tensor(box_array(anchors)), num_level,
                                           port.tensor(box_array(gts)),
                                           port.tensor(np.array(labels, np.int64)))
    return port.numpy(inds), port.numpy(overlaps), port.numpy(labs)


def row_box(cx, half_w, half_h=5):
    return [cx - half_w, -half_h, cx + half_w, half_h]


def test_one_gt(port):
    # anchors 10 x 10 centred at x = 0, 10, 20, 30, 40; gt centre 20, width 16
    anchors = [row_box(cx, 5) for cx in (0, 10, 20, 30, 40)]
    inds, overlaps, labels = assign(port, anchors, [5], [[12, -5, 28, 5]], [4], topk=3)
    # candidates: anchors 2, 1, 3 with IoU 100/160, 30/230, 30/230;
    # mean + unbiased std = 0.2953 + 0.2855 = 0.581: only anchor 2 passes
    np.testing.assert_array_equal(inds, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(labels, [-1, -1, 4, -1, -1])
    assert overlaps[2] == pytest.approx(100 / 160)
    assert inds.dtype == np.int64 and labels.dtype == np.int64


def test_threshold_uses_unbiased_std(port):
    # two candidates with IoU x and 0: unbiased std gives x/2 + x/sqrt(2) > x (no positive);
    # the biased std would give exactly x (a positive)
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110]]
    inds, _, _ = assign(port, anchors, [1, 1], [[0, 0, 10, 12]], [0], topk=9)
    np.testing.assert_array_equal(inds, [0, 0])


def test_equal_distance_tie_takes_smallest_anchor_index(port):
    # level 0: anchors centred at x = 10 and x = 20, both 5 from the gt centre (15, 0),
    # with the same IoU 70/170; topk = 1 must take index 0. Levels 1 and 2 add far anchors
    # (IoU 0): threshold = 0.137 + 0.238 = 0.375 < 0.41, so the chosen one is positive.
    anchors = [[5, -5, 15, 5], [15, -5, 25, 5], [40, -5, 60, 5], [-30, -5, -10, 5]]
    inds, _, _ = assign(port, anchors, [2, 1, 1], [[8, -5, 22, 5]], [1], topk=1)
    np.testing.assert_array_equal(inds, [1, 0, 0, 0])


def test_four_way_grid_tie_takes_smallest_anchor_index(port):
    # 5 x 5 grid of 8 x 8 anchors (more than 16, where std::sort stops being stable); the
    # gt centre (12, 12) is equidistant from anchors 6, 7, 11 and 12, all with IoU 36/172;
    # topk = 1 takes anchor 6. Two far single-anchor levels make the threshold 0.91 * IoU.
    gen = port.anchors.AnchorGenerator([8], octave_base_scale=1)
    grid = port.numpy(gen.grid_anchors([(5, 5)])[0])
    anchors = np.concatenate([grid, box_array([[200, 200, 210, 210], [-90, 0, -80, 10]])])
    inds, _, _ = assign(port, anchors, [25, 1, 1], [[6, 6, 18, 18]], [3], topk=1)
    expected = np.zeros(27, np.int64)
    expected[6] = 1
    np.testing.assert_array_equal(inds, expected)


def test_equal_ious_pass_the_threshold_together(port):
    # 4 x 4 grid of 8 x 8 anchors (stride 8); the gt centre (12, 8) is equidistant from the
    # anchors at (8, 8) and (16, 8), both with IoU 48/112: std = 0, threshold = that IoU
    gen = port.anchors.AnchorGenerator([8], octave_base_scale=1)
    anchors = port.numpy(gen.grid_anchors([(4, 4)])[0])
    inds, _, _ = assign(port, anchors, [16], [[6, 4, 18, 12]], [2], topk=2)
    expected = np.zeros(16, np.int64)
    expected[[5, 6]] = 1
    np.testing.assert_array_equal(inds, expected)


@pytest.mark.parametrize("gts, expected_gt", [
    ([[0, 0, 10, 14], [0, 0, 11, 10]], 2),   # IoU 100/140 vs 100/110: the higher one wins
    ([[0, 0, 11, 10], [0, 0, 10, 14]], 1),   # same boxes swapped
    ([[0, 0, 10, 12], [0, 0, 12, 10]], 1),   # equal IoU 100/120: smallest gt index
    ([[0, 0, 12, 10], [0, 0, 10, 12]], 1),
])
def test_anchor_positive_for_two_gts(port, gts, expected_gt):
    # anchor 0 is the only candidate with IoU > 0 for both gts; with IoUs {x, 0, 0} the
    # threshold is x/3 + x/sqrt(3) = 0.91 x, so it is positive for both
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110], [-100, -100, -90, -90]]
    inds, overlaps, labels = assign(port, anchors, [1, 1, 1], gts, [5, 6], topk=9)
    np.testing.assert_array_equal(inds, [expected_gt, 0, 0])
    np.testing.assert_array_equal(labels, [4 + expected_gt, -1, -1])
    box = gts[expected_gt - 1]
    assert overlaps[0] == pytest.approx(100 / ((box[2] - box[0]) * (box[3] - box[1])))


def test_gt_smaller_than_any_anchor(port):
    anchors = [[0, 0, 10, 10], [10, 0, 20, 10], [0, 10, 10, 20], [10, 10, 20, 20]]
    # 2 x 2 gt between the anchor centres (5, 5), (15, 5), ...: no centre inside, no positive
    inds, _, _ = assign(port, anchors, [4], [[9, 9, 11, 11]], [0], topk=4)
    np.testing.assert_array_equal(inds, [0, 0, 0, 0])
    # 2 x 2 gt around the centre (15, 15): IoU 4/100 beats the threshold, centre inside
    inds, overlaps, _ = assign(port, anchors, [4], [[14, 14, 16, 16]], [0], topk=4)
    np.testing.assert_array_equal(inds, [0, 0, 0, 1])
    assert overlaps[3] == pytest.approx(0.04)


def test_centre_must_be_inside_by_more_than_001(port):
    anchors = [[0, 0, 10, 10], [100, 100, 110, 110], [-100, -100, -90, -90]]
    near_edge, _, _ = assign(port, anchors, [1, 1, 1], [[4.995, 0, 10, 10]], [0], topk=9)
    inside, _, _ = assign(port, anchors, [1, 1, 1], [[4.95, 0, 10, 10]], [0], topk=9)
    np.testing.assert_array_equal(near_edge, [0, 0, 0])  # left margin 0.005
    np.testing.assert_array_equal(inside, [1, 0, 0])     # left margin 0.05


def test_no_gt_means_all_background(port):
    inds, overlaps, labels = assign(port, [[0, 0, 10, 10], [5, 5, 9, 9]], [2],
                                    np.zeros((0, 4)), [], topk=9)
    np.testing.assert_array_equal(inds, [0, 0])
    np.testing.assert_array_equal(labels, [-1, -1])
    np.testing.assert_array_equal(overlaps, [0, 0])


def test_assign_rejects_inconsistent_input(port):
    with pytest.raises(ValueError, match="num_level_anchors"):
        assign(port, [[0, 0, 1, 1]], [2], [[0, 0, 1, 1]], [0], topk=9)
    with pytest.raises(ValueError, match="gt labels"):
        assign(port, [[0, 0, 1, 1]], [1], [[0, 0, 1, 1]], [0, 1], topk=9)
    with pytest.raises(ValueError, match="topk"):
        port.atss.ATSSAssigner(topk=0)


# ---------------------------------------------------------------- numpy reference

def pairwise_iou(a, b, eps=1e-6):
    a, b = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / np.maximum(area_a + area_b - inter, eps)


def atss_reference(anchors, num_level, gts, labels, topk=9):
    """The official ATSSAssigner in float64 numpy, ties by smallest index."""
    num_anchors, num_gts = len(anchors), len(gts)
    gt_inds, assigned = np.zeros(num_anchors, np.int64), np.full(num_anchors, -1, np.int64)
    if num_gts == 0:
        return gt_inds, assigned
    a, g = anchors.astype(np.float64), gts.astype(np.float64)
    ious = pairwise_iou(a, g)
    a_ctr, g_ctr = (a[:, :2] + a[:, 2:]) / 2, (g[:, :2] + g[:, 2:]) / 2
    dist = np.sqrt(((a_ctr[:, None, :] - g_ctr[None, :, :]) ** 2).sum(-1))
    cands, start = [], 0
    for n in num_level:
        if n:
            cands.append(np.argsort(dist[start:start + n], axis=0, kind="stable")[:topk] + start)
        start += n
    cand = np.concatenate(cands)
    cand_iou = np.take_along_axis(ious, cand, axis=0)
    is_pos = cand_iou >= cand_iou.mean(0) + cand_iou.std(0, ddof=1)
    cx, cy = a_ctr[cand, 0], a_ctr[cand, 1]
    margin = np.min([cx - g[:, 0], cy - g[:, 1], g[:, 2] - cx, g[:, 3] - cy], axis=0)
    is_pos &= margin > 0.01
    best_iou = np.full(num_anchors, -np.inf)
    for gt in range(num_gts):  # ascending gt index + strict '>' keeps the first on ties
        for anchor in cand[is_pos[:, gt], gt]:
            if ious[anchor, gt] > best_iou[anchor]:
                best_iou[anchor] = ious[anchor, gt]
                gt_inds[anchor] = gt + 1
    assigned[gt_inds > 0] = labels[gt_inds[gt_inds > 0] - 1]
    return gt_inds, assigned


def random_scene(rng, num_gts, extent=(100, 120)):
    h, w = extent
    xy = rng.uniform(-5, [w, h], (num_gts, 2))
    wh = np.exp(rng.uniform(np.log(2), np.log(90), (num_gts, 2)))
    gts = np.concatenate([xy, xy + wh], axis=1).astype(F32)
    if num_gts >= 3:
        gts[2] = gts[0]  # a duplicate box: equal IoUs, the smaller gt index must win
    if num_gts >= 5:
        gts[3:5] = np.round(gts[3:5] / 4) * 4  # on the grid: many equal distances
    return gts, rng.integers(0, 5, num_gts).astype(np.int64)


SIZES = [(13, 15), (7, 8), (4, 4), (2, 2), (1, 1)]
STRIDES = [8, 16, 32, 64, 128]


def run_targets(port, gts_list, labels_list, pad_shapes, num_classes=5):
    gen = port.anchors.AnchorGenerator(STRIDES)
    anchors = gen.grid_anchors(SIZES)
    flags = [gen.valid_flags(SIZES, pad) for pad in pad_shapes]
    targets = port.atss.ATSSAssigner(9).get_targets(
        anchors, flags, [port.tensor(g) for g in gts_list],
        [port.tensor(lb) for lb in labels_list], num_classes)
    out = {key: [port.numpy(v) for v in targets[key]]
           for key in ("anchors", "labels", "label_weights", "bbox_targets")}
    out["assigned_gt_inds"] = port.numpy(targets["assigned_gt_inds"])
    out["num_total_pos"] = targets["num_total_pos"]
    out["flat_anchors"] = np.concatenate([port.numpy(a) for a in anchors])
    out["flags"] = [np.concatenate([port.numpy(f) for f in img]) for img in flags]
    return out


def test_assign_matches_numpy_reference_on_random_boxes(port):
    rng = np.random.default_rng(7)
    gen = port.anchors.AnchorGenerator(STRIDES)
    anchors = np.concatenate([port.numpy(a) for a in gen.grid_anchors(SIZES)])
    num_level = [h * w for h, w in SIZES]
    total_pos = 0
    for trial in range(6):
        gts, labels = random_scene(rng, num_gts=1 + 2 * trial)
        inds, _, labs = assign(port, anchors, num_level, gts, labels, topk=9)
        ref_inds, ref_labs = atss_reference(anchors, num_level, gts, labels)
        np.testing.assert_array_equal(inds, ref_inds, err_msg=f"trial {trial}")
        np.testing.assert_array_equal(labs, ref_labs, err_msg=f"trial {trial}")
        total_pos += int((inds > 0).sum())
    assert total_pos > 20  # the comparison covered real positives


def test_get_targets_valid_flags_and_reference(port):
    rng = np.random.default_rng(11)
    gts, labels = random_scene(rng, 6, extent=(60, 110))
    pads = [(64, 128), (96, 64)]  # both smaller than the 104 x 120 grid of level 0
    out = run_targets(port, [gts, gts], [labels, labels], pads)
    num_level = [h * w for h, w in SIZES]
    for img, flags in enumerate(out["flags"]):
        assert 0 < flags.sum() < len(flags)
        valid_level = [int(f.sum()) for f in np.split(flags, np.cumsum(num_level)[:-1])]
        ref_inds, ref_labs = atss_reference(out["flat_anchors"][flags], valid_level, gts, labels)
        labels_img = np.concatenate([lv[img] for lv in out["labels"]])
        weights_img = np.concatenate([lv[img] for lv in out["label_weights"]])
        boxes_img = np.concatenate([lv[img] for lv in out["bbox_targets"]])
        inds_img = out["assigned_gt_inds"][img]
        np.testing.assert_array_equal(inds_img[flags], ref_inds)
        np.testing.assert_array_equal(labels_img[flags], np.where(ref_labs >= 0, ref_labs, 5))
        np.testing.assert_array_equal(weights_img, flags.astype(F32))
        # invalid anchors: background, weight 0, no box target
        assert (labels_img[~flags] == 5).all() and (inds_img[~flags] == 0).all()
        pos = inds_img > 0
        np.testing.assert_array_equal(boxes_img[pos], gts[inds_img[pos] - 1])
        assert (boxes_img[~pos] == 0).all()
    per_image_pos = (out["assigned_gt_inds"] > 0).sum(axis=1)
    assert per_image_pos.min() > 0
    assert out["num_total_pos"] == int(per_image_pos.sum())
    # per level, stacked over the two images
    assert [lv.shape for lv in out["labels"]] == [(2, n) for n in num_level]
    assert [lv.shape for lv in out["anchors"]] == [(2, n, 4) for n in num_level]
    assert out["labels"][0].dtype == np.int64


def test_get_targets_empty_gt_counts_one_positive_per_image(port):
    rng = np.random.default_rng(5)
    gts, labels = random_scene(rng, 3)
    empty_boxes, empty_labels = np.zeros((0, 4), F32), np.zeros(0, np.int64)
    out = run_targets(port, [empty_boxes, gts], [empty_labels, labels], [(96, 128), (96, 128)])
    first = np.concatenate([lv[0] for lv in out["labels"]])
    assert (first == 5).all()
    weights = np.concatenate([lv[0] for lv in out["label_weights"]])
    np.testing.assert_array_equal(weights, out["flags"][0].astype(F32))
    assert (out["assigned_gt_inds"][0] == 0).all()
    pos_second = int((out["assigned_gt_inds"][1] > 0).sum())
    assert pos_second > 0
    # mmdetection: sum over images of max(positives, 1)
    assert out["num_total_pos"] == 1 + pos_second


def test_ports_assign_identically_on_random_boxes(torch_port, jittor_port):
    rng = np.random.default_rng(2024)
    for trial in range(4):
        scenes = [random_scene(rng, int(n)) for n in rng.integers(0, 12, 2)]
        pads = [(96, 128), (64, 96)]
        args = ([s[0] for s in scenes], [s[1] for s in scenes], pads)
        a, b = run_targets(torch_port, *args), run_targets(jittor_port, *args)
        assert a["num_total_pos"] == b["num_total_pos"]
        np.testing.assert_array_equal(a["assigned_gt_inds"], b["assigned_gt_inds"])
        for key in ("anchors", "labels", "label_weights", "bbox_targets"):
            for level, (x, y) in enumerate(zip(a[key], b[key])):
                np.testing.assert_array_equal(x, y, err_msg=f"{key} level {level}")
