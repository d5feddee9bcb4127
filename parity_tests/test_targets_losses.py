"""Targets (anchors, valid flags, ATSS, distance / IoU / weight targets, avg_factor) and the
losses per level and in total, PyTorch port vs Jittor port.

Assignments, labels and counts must be identical; float targets and losses within the
tolerance policy of judge.py.
"""
import numpy as np
import pytest

from parity_tests import judge, regimes, ties
from parity_tests.cases import selected_cases


def test_target_probe(runs, subject, case, mode, target_probe, require):
    """Against the reference taking the subject's side of the ATSS ties where its assignment
    differs only there (parity_tests/ties.py: the tie row counts those anchors)."""
    require(subject, "probes", "targets and assignment")
    rows = (runs.against(subject, case, mode)["rows"]
            + runs.rows(subject, case, mode, [target_probe]))
    judge.assert_rows(rows, f"{case}/{mode}", subject)


def test_loss_probe(runs, subject, case, mode, loss_probe, require):
    require(subject, "probes", "losses")
    rows = (runs.against(subject, case, mode)["rows"]
            + runs.rows(subject, case, mode, [loss_probe]))
    judge.assert_rows(rows, f"{case}/{mode}", subject)


def test_loss_totals(runs, subject, case, mode, report_table, require):
    require(subject, "losses")
    rows = runs.rows(subject, case, mode, judge.LOSS_TOTALS, part="losses")
    report_table(rows, f"{subject} {case} / {mode}: loss totals")
    judge.assert_rows(rows, f"{case}/{mode} loss totals", subject)


def scalar(array):
    """A Python float from a 0-d (PyTorch) or shape-(1,) (Jittor) array."""
    return float(np.asarray(array).reshape(-1)[0])


def test_totals_are_the_sums_of_the_levels(runs, subject, case, require):
    """Per-level probes and returned totals tell the same story (in each port)."""
    require(subject, "probes")
    require(subject, "losses")
    run = runs.get(case, "train")
    for port in ("reference", subject):
        probes = run[port]["probes"]
        losses = {k: scalar(v) for k, v in run[port]["losses"].items()}
        for what in ("loss_cls", "loss_bbox", "loss_dfl"):
            levels = sum(scalar(probes[f"loss.{what}.{lvl}"])
                         for lvl in range(judge.NUM_LEVELS))
            np.testing.assert_allclose(losses[what], levels, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{port}: {what}")
        np.testing.assert_allclose(
            losses["loss"], losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"],
            rtol=1e-6)


def has_boxes(runs, case):
    return any(len(boxes) for boxes in runs.batch(case)["gt_bboxes"])


def test_cases_have_positives(runs, case):
    """A case without positive anchors would make the box-target comparisons vacuous; only
    a case whose images all lack boxes has none (its losses still compare)."""
    run = runs.get(case, "train")
    num_pos = scalar(run["reference"]["probes"]["targets.num_pos"])
    if not has_boxes(runs, case):
        assert num_pos == 1  # the floor: mmdetection counts at least one positive an image
        return
    assert num_pos > 0
    assert scalar(run["reference"]["probes"]["loss.avg_factor"]) > 0


# ------------------------------------------------------------- direct calls of the pieces
FEATMAP_SIZES = [(10, 13), (5, 7), (3, 4), (2, 2), (1, 1)]
STRIDES = [8, 16, 32, 64, 128]


def reference_anchors(featmap_sizes, strides, octave_base_scale=8):
    """Per level, the anchors of docs/MODEL.md section 4 in float32 (parity_tests/ties.py's
    numpy ones: exact integers)."""
    return [a.astype(np.float32) for a in ties.grid_anchors(featmap_sizes, strides,
                                                            octave_base_scale)]


reference_valid_flags = ties.valid_flags


def test_anchors_and_valid_flags_exact(port):
    gen = port.anchors.AnchorGenerator(STRIDES, octave_base_scale=8)
    anchors = [port.numpy(a) for a in gen.grid_anchors(FEATMAP_SIZES)]
    for got, want in zip(anchors, reference_anchors(FEATMAP_SIZES, STRIDES)):
        assert got.dtype == np.float32 and np.array_equal(got, want)
    for pad_shape in [(75, 100), (64, 96), (33, 17)]:
        flags = [port.numpy(f) for f in gen.valid_flags(FEATMAP_SIZES, pad_shape)]
        for lvl, (got, want) in enumerate(zip(flags,
                                              reference_valid_flags(FEATMAP_SIZES, STRIDES,
                                                                    pad_shape))):
            assert np.array_equal(got.astype(bool), want), (pad_shape, lvl)


def assign(port, anchors, num_level_anchors, gt_bboxes, gt_labels, topk=9):
    assigner = port.atss.ATSSAssigner(topk=topk)
    out = assigner.assign(port.tensor(anchors), num_level_anchors, port.tensor(gt_bboxes),
                          port.tensor(gt_labels))
    return [port.numpy(x) for x in out]


def test_atss_tie_takes_the_smallest_anchor_index(port):
    """A gt centred between four anchors (equal distances) with topk=2: the two smallest
    anchor indices are the candidates; equal IoUs make both positive (std = 0)."""
    anchors = reference_anchors([(4, 4)], [8])[0]
    gt = np.array([[2.0, 2.0, 22.0, 22.0]], np.float32)  # centre (12, 12)
    inds, _, labels = assign(port, anchors, [16], gt, np.array([3]), topk=2)
    assert np.flatnonzero(inds).tolist() == [5, 6]  # anchors at (8, 8) and (16, 8)
    assert labels[[5, 6]].tolist() == [3, 3] and np.all(labels[inds == 0] == -1)


def test_atss_equal_ious_go_to_the_smallest_gt_index(port):
    anchors = reference_anchors([(4, 4)], [8])[0]
    gts = np.array([[0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 30.0, 30.0]], np.float32)
    inds, _, labels = assign(port, anchors, [16], gts, np.array([1, 2]))
    assert np.any(inds > 0)
    assert set(inds[inds > 0].tolist()) == {1} and set(labels[inds > 0].tolist()) == {1}


def test_atss_random_boxes_identical_assignment(reference_port, subject_port):
    """Many random gts on integer coordinates (ties everywhere), all levels: the assigned gt
    and label of every anchor must be identical in both ports."""
    rng = np.random.default_rng(5)
    sizes = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
    anchors = np.concatenate(reference_anchors(sizes, STRIDES))
    nums = [h * w for h, w in sizes]
    for trial in range(6):
        n = int(rng.integers(1, 25))
        xy = rng.integers(0, 120, (n, 2))
        wh = rng.integers(1, 80, (n, 2))
        gts = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        labels = rng.integers(0, 6, n)
        t = assign(reference_port, anchors, nums, gts, labels)
        j = assign(subject_port, anchors, nums, gts, labels)
        assert np.array_equal(t[0], j[0]), f"trial {trial}: assigned gt differs at " \
            f"{np.flatnonzero(t[0] != j[0]).tolist()}"
        assert np.array_equal(t[2], j[2]), f"trial {trial}: labels differ"
        pos = t[0] > 0
        np.testing.assert_allclose(j[1][pos], t[1][pos], rtol=1e-6)


def test_distance_targets(runs, case, reference_port, subject_port):
    """bbox2distance of each port on the positives of the case (anchor centres and gt boxes in
    stride units, clamped to [0, reg_max - 0.1]) against a numpy reference."""
    if not has_boxes(runs, case):
        pytest.skip(f"{case} has no boxes, so no distance targets")
    run = runs.get(case, "train")
    probes = run["reference"]["probes"]
    labels = probes["targets.labels"]              # (images, anchors of all levels)
    boxes = probes["targets.bbox_targets"]         # (images, anchors of all levels, 4)
    sizes = [probes[f"neck.p{lvl + 3}"].shape[2:] for lvl in range(judge.NUM_LEVELS)]
    anchors = reference_anchors(sizes, STRIDES)
    strides = np.concatenate([np.full(len(a), s, np.float32) for a, s in zip(anchors, STRIDES)])
    anchors = np.concatenate(anchors)
    assert labels.shape == (len(boxes), len(anchors))
    pos = labels < runs.cfg["num_classes"]
    img_idx, anchor_idx = np.nonzero(pos)
    s = strides[anchor_idx][:, None]
    centres = (anchors[anchor_idx, :2] + anchors[anchor_idx, 2:]) / 2 / s
    gts = boxes[img_idx, anchor_idx] / s
    assert len(centres) > 0
    max_dis = runs.cfg["reg_max"]
    want = np.clip(np.stack([centres[:, 0] - gts[:, 0], centres[:, 1] - gts[:, 1],
                             gts[:, 2] - centres[:, 0], gts[:, 3] - centres[:, 1]], 1),
                   0, max_dis - 0.1)
    for port in (reference_port, subject_port):
        got = port.numpy(port.box_ops.bbox2distance(port.tensor(centres), port.tensor(gts),
                                                    max_dis))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max_dis)


# ATSS near its threshold: dense gts on large feature maps (no backbone needed), and a
# count of the candidates that sit within THRESHOLD_MARGIN x std of their gt's threshold.
DENSE_SIZES = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]  # a 512 x 512 input
THRESHOLD_MARGIN = 0.01     # about the gap between the biased and the unbiased std (k = 45)
DENSE_IMAGES = 6


def reference_positives(anchors, nums, gts, topk=9):
    """(anchors, gts) mask of ATSS positives before the max-IoU resolution, in float64 numpy
    (for counting regimes only: which anchors several gts claim, which gts one level holds)."""
    def iou(a, b):
        lt = np.maximum(a[:, None, :2], b[None, :, :2])
        rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
        area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
        return inter / (area(a)[:, None] + area(b)[None, :] - inter)
    a, g = anchors.astype(np.float64), gts.astype(np.float64)
    centres = (a[:, :2] + a[:, 2:]) / 2
    distances = ((centres[:, None, :] - (g[None, :, :2] + g[None, :, 2:]) / 2) ** 2).sum(-1)
    starts = np.cumsum([0] + nums[:-1])
    candidates = np.concatenate([np.argsort(distances[s:s + n], axis=0, kind="stable")[:topk] + s
                                 for s, n in zip(starts, nums)])
    overlaps = np.take_along_axis(iou(a, g), candidates, 0)
    passes = overlaps >= overlaps.mean(0) + overlaps.std(0, ddof=1)
    cx, cy = centres[candidates, 0], centres[candidates, 1]
    inside = np.minimum.reduce([cx - g[:, 0], cy - g[:, 1], g[:, 2] - cx, g[:, 3] - cy]) > 0.01
    positive = np.zeros((len(a), len(g)), bool)
    np.put_along_axis(positive, candidates, passes & inside, 0)
    return positive


def shifted_threshold(delta):
    """ATSS's mean + std test with the std scaled by (1 + delta) (PyTorch port's formula)."""
    import torch

    def above(candidate_overlaps):
        k = candidate_overlaps.shape[0]
        scaled = candidate_overlaps.to(torch.float64) * k
        total = candidate_overlaps.to(torch.float64).sum(dim=0)
        deviation = scaled - total
        scaled_std = ((deviation * deviation).sum(dim=0) / (k - 1)).sqrt()
        return scaled >= total + scaled_std * (1 + delta)
    return staticmethod(above)


def test_atss_dense_assignment_near_the_threshold(reference_port, subject_port, monkeypatch):
    """DENSE_IMAGES x 300 gts of every size on a 512 x 512 input: identical assignments in
    both ports, on inputs where moving the threshold by 1 % of the std changes assignments
    (a port whose threshold is off by that much, e.g. a biased std, fails)."""
    anchors = np.concatenate(reference_anchors(DENSE_SIZES, STRIDES))
    nums = [h * w for h, w in DENSE_SIZES]
    near = several = one_level = 0
    level_of = np.repeat(np.arange(len(nums)), nums)
    for image in range(DENSE_IMAGES):
        rng = np.random.default_rng(100 + image)
        xy = rng.uniform(0, 500, (300, 2))
        wh = np.exp(rng.uniform(np.log(3), np.log(400), (300, 2)))
        gts = np.concatenate([xy, np.minimum(xy + wh, 512)], axis=1).astype(np.float32)
        labels = rng.integers(0, 6, 300)
        positive = reference_positives(anchors, nums, gts)
        several += int(np.sum(positive.sum(1) >= 2))
        levels = [set(level_of[positive[:, i]]) for i in range(len(gts))]
        one_level += sum(len(held) == 1 for held in levels)
        t = assign(reference_port, anchors, nums, gts, labels)
        j = assign(subject_port, anchors, nums, gts, labels)
        differ = np.flatnonzero(t[0] != j[0])
        assert differ.size == 0, (f"image {image}: assigned gt differs at {differ.size} "
                                  f"anchors: {differ[:10]}")
        assert np.array_equal(t[2], j[2])
        for delta in (-THRESHOLD_MARGIN, THRESHOLD_MARGIN):
            monkeypatch.setattr(reference_port.atss.ATSSAssigner, "_above_mean_plus_std",
                                shifted_threshold(delta))
            near += int(np.sum(assign(reference_port, anchors, nums, gts, labels)[0] != t[0]))
            monkeypatch.undo()
    hits = {"ATSS candidate within 1% x std of its threshold": near,
            "anchor positive for several gts": several,
            "gt whose positives all lie on one level": one_level}
    for regime, n in hits.items():
        regimes.count(regime, n)
    regimes.check(hits)


def test_a_level_of_one_anchor_gives_it_as_a_candidate(reference_port, subject_port):
    """A 128 x 128 input leaves P7 a single anchor: k = min(topk, 1) = 1 candidate there,
    whose IoU enters each gt's candidate mean and std; both ports assign alike (a port that
    skipped a level of fewer than two anchors would move those thresholds)."""
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    anchors = np.concatenate(reference_anchors(sizes, STRIDES))
    nums = [h * w for h, w in sizes]
    rng = np.random.default_rng(0)  # 40 gts of 30 to 128 px: one anchor depends on P7's
    xy = rng.uniform(0, 60, (40, 2))
    gts = np.concatenate([xy, np.minimum(xy + rng.uniform(30, 128, (40, 2)), 128)],
                         axis=1).astype(np.float32)
    labels = rng.integers(0, 3, 40)
    t = assign(reference_port, anchors, nums, gts, labels)
    j = assign(subject_port, anchors, nums, gts, labels)
    without_p7 = assign(reference_port, anchors[:-1], nums[:-1], gts, labels)
    assert not np.array_equal(t[0][:-1], without_p7[0]), \
        "these inputs must depend on the P7 candidate to test it"
    assert np.array_equal(t[0], j[0]) and np.array_equal(t[2], j[2])


REG_MAX = 16


def test_distance_targets_at_the_clamp_and_on_integer_bins(reference_port, subject_port):
    """bbox2distance in units of the stride, for DFL's bins: distances exactly on integer
    bins, just below, at and above the clamp reg_max - 0.1 = 15.9, and below 0, in both
    ports, equal."""
    rng = np.random.default_rng(7)
    n = 400
    # points in [16, 32): float32 spacing there equals that of 15.9, so point - (point - d)
    # gives d back within an ulp or two
    points = rng.uniform(16, 32, (n, 2)).astype(np.float32)
    # per side: an integer bin, a bit below the clamp, exactly at it, far above it, below
    # zero (the point outside its box: clamped to 0), anything
    kinds = rng.integers(0, 6, (n, 4))
    dist = np.select([kinds == 0, kinds == 1, kinds == 2, kinds == 3, kinds == 4],
                     [rng.integers(0, 16, (n, 4)).astype(np.float64),
                      15.9 - rng.uniform(0, 1e-3, (n, 4)), np.full((n, 4), 15.9),
                      rng.uniform(16, 40, (n, 4)), -rng.uniform(1e-3, 3, (n, 4))],
                     rng.uniform(0, 16, (n, 4))).astype(np.float32)
    boxes = np.stack([points[:, 0] - dist[:, 0], points[:, 1] - dist[:, 1],
                      points[:, 0] + dist[:, 2], points[:, 1] + dist[:, 3]], 1)
    raw = np.stack([points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1],
                    boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]], 1)
    clamp = np.float32(REG_MAX - 0.1)
    # "at the clamp": within 4 float32 ulps of 15.9 (point - (point - 15.9) is rounded)
    at_clamp = np.abs(raw - clamp) <= 4 * np.spacing(clamp)
    hits = {"distance target above the clamp": np.sum((raw > clamp) & ~at_clamp),
            "distance target at the clamp": np.sum(at_clamp),
            "distance target on an integer bin": np.sum((raw == np.round(raw)) & (raw < clamp)),
            "distance target below zero (point outside its box)": np.sum(raw < 0)}
    for regime, n in hits.items():
        regimes.count(regime, n)
    regimes.check(hits)
    out = {port.FRAMEWORK: port.numpy(port.box_ops.bbox2distance(
        port.tensor(points), port.tensor(boxes), REG_MAX)) for port in (reference_port, subject_port)}
    assert np.array_equal(out["jittor"], out["torch"]), \
        f"{int(np.sum(out['jittor'] != out['torch']))} distance targets differ"
    assert float(out["torch"].max()) == float(clamp) and float(out["torch"].min()) >= 0


CASE_REGIMES = ["anchor outside the valid (padded) area", "image without boxes in a batch",
                "gt box smaller than the smallest stride", "gt box larger than half the image",
                "gt pair with equal IoU (identical boxes)",
                "gt centre half-way between anchor centres (equal distances)",
                "crowd box (ignored gt)",
                "batch of one image without boxes (loss normaliser at its floor 1)"]


def test_the_cases_reach_their_regimes(runs, request):
    """What the input cases of this run exercise, counted from their batches and targets;
    each regime of CASE_REGIMES must reach its stated minimum (parity_tests/regimes.py)."""
    for case in selected_cases(request.config):
        batch = runs.batch(case)
        label_weights = runs.get(case, "train")["reference"]["probes"]["targets.label_weights"]
        regimes.count("anchor outside the valid (padded) area", np.sum(label_weights == 0))
        regimes.count("batch of one image without boxes (loss normaliser at its floor 1)",
                      len(batch["gt_bboxes"]) == 1 and len(batch["gt_bboxes"][0]) == 0)
        for boxes, ignored, meta in zip(batch["gt_bboxes"], batch["gt_bboxes_ignore"],
                                        batch["img_metas"]):
            h, w = meta["img_shape"]
            sides = boxes[:, 2:] - boxes[:, :2]
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2
            halfway = np.zeros(len(boxes), bool)
            for s in STRIDES:
                halfway |= np.any(np.mod(centres, s) == s / 2, axis=1)
            same = np.all(boxes[:, None, :] == boxes[None, :, :], axis=2)
            regimes.count("image without boxes in a batch",
                          len(boxes) == 0 and len(batch["gt_bboxes"]) > 1)
            regimes.count("gt box smaller than the smallest stride",
                          np.sum(sides.min(axis=1) < STRIDES[0]))
            regimes.count("gt box larger than half the image",
                          np.sum((sides[:, 0] > w / 2) | (sides[:, 1] > h / 2)))
            regimes.count("gt pair with equal IoU (identical boxes)",
                          (same.sum() - len(boxes)) // 2)
            regimes.count("gt centre half-way between anchor centres (equal distances)",
                          np.sum(halfway))
            regimes.count("crowd box (ignored gt)", len(ignored))
    regimes.check(CASE_REGIMES)
