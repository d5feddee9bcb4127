"""Class-aware NMS and GFLPostProcess of both ports: hand-built cases, a numpy greedy NMS
reference, and agreement of the two ports on random head outputs."""
import numpy as np
import pytest

from gfocal.config import DEFAULTS
from tests.factories import img_meta

F32 = np.float32


def nms(port, boxes, scores, labels, iou_thr=0.6):
    keep = port.postprocess.batched_nms(port.tensor(np.asarray(boxes, F32)),
                                        port.tensor(np.asarray(scores, F32)),
                                        port.tensor(np.asarray(labels, np.int64)), iou_thr)
    keep = port.numpy(keep)
    assert keep.dtype == np.int64
    return keep.tolist()


def test_nms_keeps_and_suppresses(port):
    boxes = [[0, 0, 10, 10],    # 0: best of class 0
             [1, 1, 11, 11],    # 1: IoU 81/119 = 0.68 with box 0 -> suppressed
             [0, 0, 10, 10],    # 2: same box, other class -> kept
             [20, 20, 30, 30],  # 3: apart -> kept
             [0, 0, 10, 7]]     # 4: IoU 0.7 with box 0 but its own class -> kept
    keep = nms(port, boxes, [0.9, 0.8, 0.7, 0.6, 0.5], [0, 0, 1, 0, 2])
    assert keep == [0, 2, 3, 4]


def test_nms_threshold_is_strict(port):
    boxes = [[0, 0, 10, 10], [0, 0, 10, 5]]  # IoU exactly 0.5
    assert nms(port, boxes, [0.9, 0.8], [0, 0], iou_thr=0.5) == [0, 1]
    assert nms(port, boxes, [0.9, 0.8], [0, 0], iou_thr=0.49) == [0]


def test_nms_equal_scores_resolve_by_index(port):
    boxes = [[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [80, 0, 90, 10]]
    # boxes 0 and 2 are identical with equal scores: the smaller index survives; equal
    # scores also come out in index order
    assert nms(port, boxes, [0.5, 0.9, 0.5, 0.5], [3, 3, 3, 3]) == [1, 0, 3]
    assert nms(port, [[0, 0, 1, 1]] * 3, [0.2, 0.2, 0.2], [0, 1, 0]) == [0, 1]


def test_nms_empty(port):
    assert nms(port, np.zeros((0, 4)), np.zeros(0), np.zeros(0)) == []


def nms_reference(boxes, scores, labels, thr):
    """Greedy NMS per class in float64, order (score desc, index asc)."""
    b = boxes.astype(np.float64)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = []
    for i in sorted(range(len(b)), key=lambda i: (-scores[i], i)):
        kept = np.array([j for j in keep if labels[j] == labels[i]], np.int64)
        if len(kept):
            lt = np.maximum(b[kept, :2], b[i, :2])
            rb = np.minimum(b[kept, 2:], b[i, 2:])
            iw, ih = np.clip(rb - lt, 0, None).T
            inter = iw * ih
            if (inter / (area[kept] + area[i] - inter) > thr).any():
                continue
        keep.append(i)
    return keep


# torchvision offsets boxes per class up to 1000 boxes and loops over classes above
@pytest.mark.parametrize("num", [300, 1100])
def test_nms_matches_greedy_reference(port, num):
    rng = np.random.default_rng(num)
    xy = rng.uniform(0, 200, (num, 2))
    wh = rng.uniform(5, 60, (num, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(F32)
    scores = rng.uniform(0, 1, num).astype(F32)
    scores[::7] = scores[0]  # plenty of equal scores
    labels = rng.integers(0, 6, num)
    keep = nms(port, boxes, scores, labels)
    expected = nms_reference(boxes, scores, labels, 0.6)
    assert 0 < len(expected) < num
    assert keep == expected


# ---------------------------------------------------------------- GFLPostProcess

def post_cfg(**overrides):
    return dict(DEFAULTS["model"], **dict(dict(num_classes=2, strides=[8, 16], num_outs=2),
                                          **overrides))


def peaked_logits(bins_per_location, shape_hw):
    """Reg logits (1, 68, H, W) whose softmax puts ~all mass on the given bin per side."""
    h, w = shape_hw
    logits = np.zeros((1, 4, 17, h, w), F32)
    for (y, x), bins in bins_per_location.items():
        for side, b in enumerate(bins):
            logits[0, side, b, y, x] = 40.0
    return logits.reshape(1, 68, h, w)


def run_post(port, cfg, cls, reg, metas, rescale=True):
    integral = port.gfl_head.Integral(cfg["reg_max"])
    post = port.postprocess.GFLPostProcess(cfg)
    return post([port.tensor(c) for c in cls], [port.tensor(r) for r in reg], metas, integral,
                rescale=rescale)


def hand_scene():
    cls0 = np.full((1, 2, 2, 2), 0.01, F32)  # (B, C, H, W), stride 8, centres (8x, 8y)
    cls0[0, 1, 0, 1] = 0.9   # centre (8, 0), class 1
    cls0[0, 1, 1, 1] = 0.8   # centre (8, 8), class 1: IoU 0.8 with the first -> suppressed
    cls0[0, 0, 1, 1] = 0.7   # centre (8, 8), class 0 -> kept
    cls0[0, 0, 0, 0] = 0.05  # not above score_thr
    cls1 = np.full((1, 2, 1, 1), 0.01, F32)  # stride 16, centre (0, 0)
    cls1[0, 0, 0, 0] = 0.3   # class 0, IoU 256/480 with the class-0 box above -> kept
    reg0 = peaked_logits({(0, 1): (1, 1, 2, 2), (1, 1): (1, 1, 2, 2), (0, 0): (1, 1, 1, 1),
                          (1, 0): (1, 1, 1, 1)}, (2, 2))
    reg1 = peaked_logits({(0, 0): (0, 0, 1, 1)}, (1, 1))
    meta = img_meta((20, 30), pad_shape=(32, 32), ori_shape=(10, 15), scale=2)
    return [cls0, cls1], [reg0, reg1], [meta]


def test_postprocess_hand_built(port):
    cls, reg, metas = hand_scene()
    (det,) = run_post(port, post_cfg(), cls, reg, metas)
    # (8,0) +- (8,8,16,16) = [0,-8,24,16] -> clip y to [0,20]; (8,8) -> [0,0,24,24] -> y2 20;
    # (0,0) +- (0,0,16,16) = [0,0,16,16]; then / scale_factor 2
    np.testing.assert_allclose(det["boxes"], [[0, 0, 12, 8], [0, 0, 12, 10], [0, 0, 8, 8]],
                               atol=1e-4)
    np.testing.assert_allclose(det["scores"], [0.9, 0.7, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(det["labels"], [1, 0, 0])
    assert det["labels"].dtype == np.int64 and det["boxes"].dtype == np.float32
    (raw,) = run_post(port, post_cfg(), cls, reg, metas, rescale=False)
    np.testing.assert_allclose(raw["boxes"], det["boxes"] * 2, atol=1e-4)
    (top1,) = run_post(port, post_cfg(max_per_img=1), cls, reg, metas)
    np.testing.assert_array_equal(top1["labels"], [1])


def test_postprocess_nms_pre_keeps_equal_scores_in_location_order(port):
    cls0 = np.full((1, 2, 2, 2), 0.01, F32)
    cls0[0, 0] = 0.5  # four locations with the same best score, boxes that do not overlap
    cls1 = np.full((1, 2, 1, 1), 0.01, F32)
    reg0 = peaked_logits({(y, x): (0, 0, 1, 1) for y in range(2) for x in range(2)}, (2, 2))
    reg1 = peaked_logits({}, (1, 1))
    meta = img_meta((32, 32))
    (det,) = run_post(port, post_cfg(nms_pre=2), [cls0, cls1], [reg0, reg1], [meta])
    # locations 0 (centre (0,0)) and 1 (centre (8,0)) survive the top-2, in that order
    np.testing.assert_allclose(det["boxes"], [[0, 0, 8, 8], [8, 0, 16, 8]], atol=1e-4)
    (all4,) = run_post(port, post_cfg(), [cls0, cls1], [reg0, reg1], [meta])
    assert len(all4["boxes"]) == 4


def test_postprocess_nothing_above_threshold(port):
    cls, reg, metas = hand_scene()
    cls = [np.minimum(c, 0.05) for c in cls]
    (det,) = run_post(port, post_cfg(), cls, reg, metas)
    assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)
    assert det["labels"].dtype == np.int64


def test_postprocess_ports_agree_on_random_outputs(torch_port, jittor_port):
    rng = np.random.default_rng(9)
    cfg = dict(DEFAULTS["model"], num_classes=3, nms_pre=30)
    sizes = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]
    cls = [rng.uniform(0, 0.4, (2, 3, h, w)).astype(F32) for h, w in sizes]
    reg = []
    for h, w in sizes:  # mass near small random bins: boxes about a stride wide, many kept
        logits = rng.normal(0, 1, (2, 4, 17, h, w))
        np.put_along_axis(logits, rng.integers(0, 3, (2, 4, 1, h, w)), 6.0, axis=2)
        reg.append(logits.reshape(2, 68, h, w).astype(F32))
    metas = [img_meta((60, 75), 0, pad_shape=(64, 80), ori_shape=(120, 150), scale=0.5),
             img_meta((64, 70), 1, pad_shape=(64, 80))]
    dets_t = run_post(torch_port, cfg, cls, reg, metas)
    dets_j = run_post(jittor_port, cfg, cls, reg, metas)
    for a, b in zip(dets_t, dets_j):
        assert 10 < len(a["scores"]) <= 100
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["scores"], b["scores"])
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-4)
        assert (np.diff(a["scores"]) <= 0).all()
    assert dets_t[0]["boxes"].max() <= 150 + 1e-3  # clipped to img_shape, then rescaled
