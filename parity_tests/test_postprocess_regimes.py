"""Post-processing on controlled head outputs, no backbone: class scores near score_thr, more
candidates than nms_pre on a level, and neighbouring boxes whose IoU is near the NMS
threshold, boxes narrower than a pixel at the image border, and same-class pairs on either side
of the size where class-aware NMS switches from class offsets to a loop over classes. Both ports
must keep the same detections; parity_tests/regimes.py counts how many elements of each regime
the input reached."""
import numpy as np
import torch
import torchvision

from gfocal.config import DEFAULTS
from parity_tests import regimes
from tests.factories import img_meta

LEVELS = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]   # a 320 x 320 input
STRIDES = [8, 16, 32, 64, 128]
IMAGES, CLASSES = 2, 6
MODEL = dict(DEFAULTS["model"], num_classes=CLASSES)      # nms_pre 1000, score_thr 0.05, iou 0.6
SCORE_MARGIN = 1e-3      # "near score_thr"
IOU_MARGIN = 0.02        # "near the NMS threshold"


def head_outputs(seed=11):
    """Per level: probabilities (B, C, H, W), 30 % of them within SCORE_MARGIN of
    score_thr (on level 0 class 0 scores highest, so that NMS decides between neighbours
    there), and reg logits whose integral is 2 + p on every side (p uniform in
    [-0.1, 0.1], bins 1-2 or 2-3): boxes of side about 4 strides, which overlap their
    horizontal neighbour by IoU (2d - 1) / (2d + 1), about 0.6."""
    rng = np.random.default_rng(seed)
    bins = MODEL["reg_max"] + 1
    scores, regs = [], []
    for level, (h, w) in enumerate(LEVELS):
        s = rng.uniform(0, 0.3, (IMAGES, CLASSES, h, w))
        near = rng.random(s.shape) < 0.3
        s[near] = MODEL["score_thr"] + rng.uniform(-SCORE_MARGIN, SCORE_MARGIN, near.sum())
        if level == 0:  # class 0 leads everywhere, falling along the rows: neighbours compete
            ramp = 0.9 - 2e-4 * np.arange(h * w).reshape(h, w)
            s[:, 0] = ramp + rng.uniform(0, 1e-5, (IMAGES, h, w))
        scores.append(s.astype(np.float32))
        frac = rng.uniform(-0.1, 0.1, (IMAGES, 4, h, w))
        probs = np.full((IMAGES, 4, bins, h, w), 1e-12)
        low = np.where(frac < 0, 1, 2)                          # the bin below 2 + frac
        weight_high = np.where(frac < 0, 1 + frac, frac)        # so that the mean is 2 + frac
        np.put_along_axis(probs, low[:, :, None], (1 - weight_high)[:, :, None], axis=2)
        np.put_along_axis(probs, low[:, :, None] + 1, weight_high[:, :, None], axis=2)
        regs.append(np.log(probs).reshape(IMAGES, 4 * bins, h, w).astype(np.float32))
    return scores, regs


def metas():
    return [img_meta((320, 320), i, file_name="controlled_{}.png") for i in range(IMAGES)]


def neighbour_ious(regs):
    """IoU of horizontally adjacent level-0 boxes, decoded in numpy (no clamping needed:
    the pairs counted lie away from the border)."""
    bins = MODEL["reg_max"] + 1
    logits = regs[0].reshape(IMAGES, 4, bins, *LEVELS[0]).astype(np.float64)
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    d = (p / p.sum(axis=2, keepdims=True) * np.arange(bins)[:, None, None]).sum(axis=2) * 8
    h, w = LEVELS[0]
    xs, ys = np.meshgrid(np.arange(w) * 8.0, np.arange(h) * 8.0)
    boxes = np.stack([xs - d[:, 0], ys - d[:, 1], xs + d[:, 2], ys + d[:, 3]], axis=-1)
    inner = boxes[:, 2:-2, 2:-3], boxes[:, 2:-2, 3:-2]
    a, b = inner
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    inter = iw * ih
    return inter / (area(a) + area(b) - inter)


def test_postprocessing_near_its_thresholds(reference_port, subject_port):
    """Both ports keep the same detections, every one of them compared (max_per_img
    unbounded), so that each regime is credited only with the elements whose fate the
    compared output shows: a kept score just above score_thr, a level whose nms_pre cut
    changes what is kept (against the same run uncut), a neighbour pair near the NMS
    threshold with both boxes past the cut."""
    every = dict(MODEL, max_per_img=10**6)
    out = postprocess_both(reference_port, subject_port, every)
    assert_same_full_detections(out, None)
    uncut = postprocess_both(reference_port, subject_port, dict(every, nms_pre=0))
    _, regs = head_outputs()
    regimes.count("class score within 1e-3 of score_thr", kept_near_score_thr(out["torch"]))
    cut_levels = sum(h * w > MODEL["nms_pre"] for h, w in LEVELS)
    regimes.count("level with more candidates than nms_pre", cut_levels * sum(
        len(a["scores"]) != len(b["scores"]) for a, b in zip(out["torch"], uncut["torch"])))
    regimes.count("neighbouring boxes with IoU within 0.02 of the NMS threshold",
                  np.sum(past_the_cut(np.abs(neighbour_ious(regs) - MODEL["iou_thr"])
                                      < IOU_MARGIN)))
    regimes.check(["class score within 1e-3 of score_thr",
                   "level with more candidates than nms_pre",
                   "neighbouring boxes with IoU within 0.02 of the NMS threshold"])


def kept_near_score_thr(detections):
    """Detections kept with a score within SCORE_MARGIN above score_thr."""
    return sum(int(np.sum(d["scores"] < MODEL["score_thr"] + SCORE_MARGIN)) for d in detections)


def test_the_top_detections_alone_show_no_score_near_score_thr(reference_port, subject_port):
    """Why the regimes above are counted on the unbounded output: the default top
    max_per_img detections are all high scores, so a comparison of those alone would credit
    nothing to "class score within 1e-3 of score_thr"."""
    top = postprocess_both(reference_port, subject_port, MODEL)
    assert_same_full_detections(top)
    assert kept_near_score_thr(top["torch"]) == 0


def past_the_cut(pairs):
    """The pairs of neighbour_ious whose two boxes are among level 0's nms_pre best
    locations: class 0's ramp falls with the location index, so those are the first
    nms_pre indices (the ramp's step, 2e-4, exceeds its noise, 1e-5)."""
    h, w = LEVELS[0]
    index = np.arange(h * w).reshape(h, w)[2:-2, 3:-2]  # the right box of each pair
    return pairs & (index < MODEL["nms_pre"])


def postprocess_both(reference_port, subject_port, model, scores=None, regs=None):
    """GFLPostProcess(model) of both ports on head_outputs() (or the given scores / regs)."""
    default_scores, default_regs = head_outputs()
    scores = default_scores if scores is None else scores
    regs = default_regs if regs is None else regs
    out = {}
    for port in (reference_port, subject_port):
        post = port.postprocess.GFLPostProcess(model)
        integral = port.gfl_head.Integral(MODEL["reg_max"])
        out[port.FRAMEWORK] = post([port.tensor(s) for s in scores],
                                   [port.tensor(r) for r in regs], metas(), integral)
    return out


def assert_same_full_detections(out, count=MODEL["max_per_img"]):
    """`count` detections an image (None: as many in both ports), same labels and scores,
    boxes within 1e-5 of the image side."""
    for i, (t, j) in enumerate(zip(out["torch"], out["jittor"])):
        assert len(t["scores"]) == len(j["scores"]) == (count or len(t["scores"])), i
        np.testing.assert_array_equal(j["labels"], t["labels"], err_msg=f"image {i}")
        np.testing.assert_array_equal(j["scores"], t["scores"], err_msg=f"image {i}")
        np.testing.assert_allclose(j["boxes"], t["boxes"], rtol=0, atol=1e-5 * 320,
                                   err_msg=f"image {i}")


def test_postprocessing_with_other_nms_pre(reference_port, subject_port):
    """nms_pre = 0 or -1 keeps every location of every level (no per-level top-k: with
    max_per_img unbounded, the same detections); nms_pre = 30 cuts levels 0-2 hard enough to
    change the detections left. Both ports keep the same."""
    uncut = postprocess_both(reference_port, subject_port, dict(MODEL, nms_pre=0))
    assert_same_full_detections(uncut)
    # -1 (mmdetection's "all") is 0; every detection kept, so that no location may be lost
    every = {nms_pre: postprocess_both(reference_port, subject_port,
                                       dict(MODEL, nms_pre=nms_pre, max_per_img=10**6))
             for nms_pre in (0, -1)}
    for out in every.values():
        assert_same_full_detections(out, None)
    for a, b in zip(every[0]["torch"], every[-1]["torch"]):
        assert len(a["scores"]) == len(b["scores"]) > MODEL["max_per_img"]
    cut = postprocess_both(reference_port, subject_port, dict(MODEL, nms_pre=30))
    assert_same_full_detections(cut)
    for i, (a, b) in enumerate(zip(uncut["torch"], cut["torch"])):
        assert not np.array_equal(a["scores"], b["scores"]), f"image {i}: the cut changes nothing"


def test_images_without_any_score_above_score_thr(reference_port, subject_port):
    """Image 0: every score below score_thr; image 1: every score exactly score_thr (in
    float32; the test is strict). Both ports return the same empty result, with shapes
    (0, 4), (0,), (0,) and the dtypes of a non-empty one."""
    scores, _ = head_outputs()
    thr = np.float32(MODEL["score_thr"])
    for s in scores:
        s[0] = np.random.default_rng(3).uniform(0, thr * 0.99, s[0].shape)
        s[1] = thr
    out = postprocess_both(reference_port, subject_port, MODEL, scores)
    for i, (t, j) in enumerate(zip(out["torch"], out["jittor"])):
        for key, shape, dtype in (("boxes", (0, 4), np.float32), ("scores", (0,), np.float32),
                                  ("labels", (0,), np.int64)):
            assert t[key].shape == j[key].shape == shape, (i, key)
            assert t[key].dtype == j[key].dtype == dtype, (i, key)
    regimes.count("image without any score above score_thr (one at it)", len(out["torch"]))
    regimes.check(["image without any score above score_thr (one at it)"])


def test_boxes_at_the_left_and_top_border_narrower_than_a_pixel(reference_port, subject_port):
    """Anchors of column 0 and row 0 sit on the border (centre 0), so a predicted distance
    under 1 / stride bins puts x2 (y2) inside the first pixel: the clamp to the image must
    keep it there (a port that clamped at 1 would not). Level 0, class 0 only on the border
    locations, every side 0.05 bins (0.4 px); the other levels and classes score nothing."""
    scores, regs = head_outputs()
    bins = MODEL["reg_max"] + 1
    for level, (h, w) in enumerate(LEVELS):
        scores[level][:] = 0
        if level == 0:
            border = np.zeros((h, w), bool)
            border[0, :] = border[:, 0] = True
            scores[level][:, 0][:, border] = 0.9
            probs = np.full((IMAGES, 4, bins, h, w), 1e-12)
            probs[:, :, 0], probs[:, :, 1] = 0.95, 0.05
            regs[level] = np.log(probs).reshape(IMAGES, 4 * bins, h, w).astype(np.float32)
    every = dict(MODEL, max_per_img=10**6)
    out = postprocess_both(reference_port, subject_port, every, scores, regs)
    assert_same_full_detections(out, None)
    boxes = np.concatenate([d["boxes"] for d in out["torch"]])
    thin = (boxes[:, 2] < 1) | (boxes[:, 3] < 1)
    assert thin.any() and np.all(boxes[thin][:, [2, 3]].min(axis=1) > 0), "not inside pixel 0"
    regimes.count("kept box at the left or top border narrower than a pixel", thin.sum())
    regimes.check(["kept box at the left or top border narrower than a pixel"])


# torchvision's batched_nms adds per-class offsets (class x (max coordinate + 1)) up to 4000
# numbers (1000 boxes) on the CPU and loops over the classes above; the offsets round the
# coordinates in float32, so a same-class IoU at the threshold can fall on either side. The
# sizes straddle that switch: below it, at it, one past it, and beyond.
NMS_SIZES = (10, 900, 1000, 1001, 1200)
IMAGE_SIDE = 1333.0
PAIR_LABEL = 3


def pair_fates_differ(pair, max_coordinate):
    """Does torchvision keep a different part of `pair` (2 boxes, first scoring higher) with
    the class offsets than without?"""
    scores = torch.tensor([1.0, 0.5])
    raw = torchvision.ops.nms(torch.from_numpy(pair), scores, MODEL["iou_thr"])
    offset = torch.from_numpy(pair) + np.float32(PAIR_LABEL) * (np.float32(max_coordinate) + 1)
    return raw.tolist() != torchvision.ops.nms(offset, scores, MODEL["iou_thr"]).tolist()


def offset_sensitive_input(n, seed=5):
    """n boxes in a 1333 px image: same-class pairs (PAIR_LABEL) whose fate the class offsets
    change (drawn at IoU within 1e-4 of iou_thr and kept where they do), a box in the far
    corner that fixes the maximum coordinate, and disjoint 6 px filler boxes of classes 0-3.
    -> boxes, scores (distinct), labels, number of pairs."""
    rng = np.random.default_rng(seed)
    pairs = []
    while len(pairs) < min(20, (n - 1) // 2):  # on a grid of 80 x 70 px cells: disjoint
        x = 80.0 * (len(pairs) % 15) + rng.uniform(0, 4)
        y = 1000 + 70.0 * (len(pairs) // 15) + rng.uniform(0, 4)
        w, h = rng.uniform(20, 60, 2)
        dx = w * (1 - MODEL["iou_thr"]) / (1 + MODEL["iou_thr"]) + rng.uniform(-1e-4, 1e-4)
        pair = np.array([[x, y, x + w, y + h], [x + dx, y, x + dx + w, y + h]], np.float32)
        if pair_fates_differ(pair, IMAGE_SIDE):
            pairs.append(pair)
    corner = np.array([[IMAGE_SIDE - 10, IMAGE_SIDE - 10, IMAGE_SIDE, IMAGE_SIDE]], np.float32)
    fill = n - 2 * len(pairs) - 1
    cells = np.stack(np.meshgrid(np.arange(90), np.arange(90)), -1).reshape(-1, 2)[:fill] * 10.0
    filler = np.concatenate([cells, cells + 6], axis=1).astype(np.float32)
    boxes = np.concatenate(pairs + [corner, filler])
    # pairs well apart in score from one another; within a pair the first box leads
    scores = rng.permutation(n).astype(np.float32) / n
    for k in range(len(pairs)):
        scores[2 * k:2 * k + 2] = np.sort(scores[2 * k:2 * k + 2])[::-1]
    labels = np.concatenate([np.full(2 * len(pairs), PAIR_LABEL), [0],
                             np.arange(fill) % 4]).astype(np.int64)
    return boxes, scores, labels, len(pairs)


def test_nms_on_both_sides_of_the_offset_switch(reference_port, subject_port):
    """Both ports keep the same boxes on every size, and the PyTorch port's pairs follow the
    offsets up to 1000 boxes and the raw coordinates above (so the input sees the switch)."""
    for n in NMS_SIZES:
        boxes, scores, labels, pairs = offset_sensitive_input(n)
        kept = {}
        for port in (reference_port, subject_port):
            kept[port.FRAMEWORK] = port.numpy(port.postprocess.batched_nms(
                port.tensor(boxes), port.tensor(scores), port.tensor(labels),
                MODEL["iou_thr"])).tolist()
        assert kept["jittor"] == kept["torch"], f"{n} boxes"
        second_kept = [2 * k + 1 in kept["torch"] for k in range(pairs)]
        raw_keeps = [len(torchvision.ops.nms(torch.from_numpy(boxes[2 * k:2 * k + 2]),
                                             torch.tensor([1.0, 0.5]), MODEL["iou_thr"])) == 2
                     for k in range(pairs)]
        offsets_used = n * 4 <= 4000
        assert second_kept == [r != offsets_used for r in raw_keeps], f"{n} boxes"
        regimes.count("same-class pair that class offsets move across the NMS threshold", pairs)
    regimes.check(["same-class pair that class offsets move across the NMS threshold"])
