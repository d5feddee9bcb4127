"""Inference parity: post-processed detections per image, and the 12 COCO statistics.

What this proves. Every subject that offers `predict` and the reference start from identical
weights and predict the whole bundled val split; the tests require (a) identical detection sets per image (same count, same labels,
boxes and scores close, matched one to one) and (b) the 12 COCO statistics of each port's
detections equal to 3 decimals. Together they show that the two ports decode, threshold,
run NMS and truncate identically, and that evaluation sees the same thing.

The default run uses the seeded random initialisation with the classifier's prior bias set
to 0 instead of -4.6: with the prior, no score reaches the 0.05 threshold and both ports
would trivially agree on "nothing". With bias 0 every location and class is a candidate, so
nms_pre, the score threshold, class-aware NMS and the max_per_img cut all act on thousands
of boxes with close scores - a harder test of the decoding than trained weights, but its AP
is near 0, so (b) only shows that near-identical detections give identical statistics. The
`slow` test trains the PyTorch port briefly first and also requires a non-trivial AP50; it
still does not show that the recipe reaches the paper's accuracy (`gfocal compare` does).
"""
import numpy as np
import pytest

from gfocal.config import from_dict
from gfocal.schedule import learning_rate
from parity_tests import judge
from parity_tests.subject import offers

DATA = dict(img_scale=[128, 96], batch_size=4, val_batch_size=8)
TRAIN_ITERS = 200        # slow test only
MIN_AP50 = 0.02          # slow test: trained weights must detect something
STAT_DECIMALS = 3
BOX_TOL = 1e-5           # relative to the image's larger side (boxes in original pixels)
SCORE_TOL = 1e-5         # scores are probabilities


def coco_config(small_cfg, **model):
    return from_dict({"model": dict(small_cfg["model"], **model), "data": DATA,
                      "optim": dict(lr=0.02, warmup_iters=20)}, source="parity COCO test")


def predict_all(cfg, predictors):
    """{name: detections per val image} of every predictor {name: subject}, plus the
    dataset, the config and the image ids."""
    from gfocal.data.loader import build_dataloader
    val = build_dataloader(cfg, "val")
    out = {"dataset": val.dataset, "cfg": cfg, "img_ids": [], "subjects": {}}
    for batch in val:
        out["img_ids"].extend(meta["img_id"] for meta in batch["img_metas"])
        for name, subject in predictors.items():
            out["subjects"].setdefault(name, []).extend(subject.predict(batch))
    return out


def predict_from(runs, cfg, state):
    """The reference's and every predicting subject's detections on the val split from
    `state`; each is rebuilt from the session's weights afterwards (the other parity files
    share them)."""
    predictors = {"reference": runs.reference}
    predictors.update({n: s for n, s in runs.subjects.items() if offers(s, "predict")})
    try:
        for subject in predictors.values():
            subject.build(cfg["model"], state)
        return predict_all(cfg, predictors)
    finally:
        for subject in predictors.values():
            subject.build(runs.cfg, runs.state)


@pytest.fixture(scope="module")
def detections(runs, small_cfg):
    """Every subject's detections on the val split from the same dense-scoring weights."""
    from parity_tests.cases import seeded_state
    cfg = coco_config(small_cfg)
    state = seeded_state(cfg["model"])
    state["bbox_head.gfl_cls.bias"][:] = 0.0
    return predict_from(runs, cfg, state)


@pytest.fixture(scope="module")
def trained_detections(runs, reference_port, small_cfg):
    """Every subject's detections after TRAIN_ITERS SGD iterations of the reference port."""
    from gfocal.data.loader import build_dataloader
    from parity_tests.cases import seeded_state
    cfg = coco_config(small_cfg, feat_channels=64, fpn_channels=64)
    tp = reference_port
    tmodel = tp.build_detector(cfg["model"])
    tp.checkpoint.load_state_dict_numpy(tmodel, seeded_state(cfg["model"]))
    optimizer = tp.train.build_optimizer(tmodel, cfg["optim"])
    loader = build_dataloader(cfg, "train")
    tmodel.train()
    it = 0
    while it < TRAIN_ITERS:
        loader.set_epoch(it // len(loader))
        for batch in loader:
            if it >= TRAIN_ITERS:
                break
            tp.train.set_lr(optimizer, learning_rate(cfg["optim"], it, 0))
            tp.train.train_step(tmodel, optimizer, batch)
            it += 1
    return predict_from(runs, cfg, tp.checkpoint.state_dict_numpy(tmodel))


def match_detections(ref, got, scale):
    """One-to-one matching of the detections of one image.

    Greedy in the reference's score order: a detection matches the closest unmatched one
    of the other port with the same label whose box is within BOX_TOL * scale and whose
    score is within SCORE_TOL. Returns (pairs, unmatched ref indices, unmatched got indices).
    """
    free = list(range(len(got["scores"])))
    pairs, unmatched = [], []
    for i in range(len(ref["scores"])):
        best, best_err = None, None
        for j in free:
            if got["labels"][j] != ref["labels"][i]:
                continue
            err = np.abs(got["boxes"][j] - ref["boxes"][i]).max()
            if err <= BOX_TOL * scale and abs(got["scores"][j] - ref["scores"][i]) <= SCORE_TOL \
                    and (best_err is None or err < best_err):
                best, best_err = j, err
        if best is None:
            unmatched.append(i)
        else:
            pairs.append((i, best))
            free.remove(best)
    return pairs, unmatched, free


def describe(det, idx):
    return (f"label {int(det['labels'][idx])} score {float(det['scores'][idx]):.6f} "
            f"box {np.round(det['boxes'][idx], 3).tolist()}")


@pytest.fixture(params=["dense", pytest.param("trained", marks=pytest.mark.slow)])
def dets(request):
    return request.getfixturevalue("detections" if request.param == "dense"
                                   else "trained_detections")


def at_boundary(det, idx, model_cfg):
    """A detection whose score ties (within SCORE_TOL) the score threshold or the score at
    the max_per_img cut: float noise may legitimately put it on either side."""
    score = float(det["scores"][idx])
    if abs(score - model_cfg["score_thr"]) <= SCORE_TOL:
        return True
    full = len(det["scores"]) == model_cfg["max_per_img"]
    return full and abs(score - float(det["scores"][-1])) <= SCORE_TOL


def test_detection_sets_identical(request, dets, subject, require):
    require(subject, "predict")
    model_cfg = dets["cfg"]["model"]
    problems, total, box_err, score_err, ties = [], 0, 0.0, 0.0, 0
    for img_id, t, j in zip(dets["img_ids"], dets["subjects"]["reference"],
                            dets["subjects"][subject]):
        info = dets["dataset"].coco.imgs[img_id]
        scale = max(info["height"], info["width"])
        pairs, miss_t, miss_j = match_detections(t, j, scale)
        total += len(t["scores"])
        for a, b in pairs:
            box_err = max(box_err, float(np.abs(t["boxes"][a] - j["boxes"][b]).max()) / scale)
            score_err = max(score_err, abs(float(t["scores"][a]) - float(j["scores"][b])))
        unexplained_t = [i for i in miss_t if not at_boundary(t, i, model_cfg)]
        unexplained_j = [i for i in miss_j if not at_boundary(j, i, model_cfg)]
        ties += len(miss_t) + len(miss_j) - len(unexplained_t) - len(unexplained_j)
        if unexplained_t or unexplained_j:
            problems.append(f"image {img_id}: reference {len(t['scores'])} vs {subject} "
                            f"{len(j['scores'])} detections; only in the reference: "
                            f"{[describe(t, i) for i in unexplained_t][:3]}; only in {subject}: "
                            f"{[describe(j, i) for i in unexplained_j][:3]}")
    assert total > 10 * len(dets["img_ids"]), f"only {total} detections: too few to prove much"
    nan = float("nan")
    rows = [judge.ErrorStats("detections.boxes", (total, 4), box_err, 1.0, box_err, nan,
                               note="relative to the image's larger side", tolerance=BOX_TOL),
            judge.ErrorStats("detections.scores", (total,), score_err, 1.0, score_err, nan,
                               tolerance=SCORE_TOL),
            judge.ErrorStats("detections.unmatched", (len(dets["img_ids"]),), nan, nan, nan,
                               nan, mismatches=len(problems), tolerance=0.0)]
    context = f"detections ({request.node.callspec.params['dets']})"
    judge.record_verdict(rows, context, subject)
    assert not problems, "\n".join(problems)
    judge.assert_rows(rows, context, subject)
    print(f"{total} detections matched one to one ({ties} boundary ties); max box err "
          f"{box_err:.2e} of the image size, max score err {score_err:.2e}")


def test_detections_are_sorted_and_well_formed(dets):
    model_cfg = dets["cfg"]["model"]
    for port, found in dets["subjects"].items():
        for det in found:
            assert det["boxes"].shape == (len(det["scores"]), 4)
            assert det["labels"].dtype == np.int64
            assert np.all(np.diff(det["scores"]) <= 0), f"{port}: scores not sorted"
            assert np.all(det["scores"] > model_cfg["score_thr"])
            assert len(det["scores"]) <= model_cfg["max_per_img"]


def test_coco_statistics_equal(request, dets, report_table, subject, require):
    from gfocal.evaluation.coco_eval import evaluate, results_to_coco
    require(subject, "predict", "COCO statistics")
    dataset = dets["dataset"]
    stats = {key: evaluate(dataset.coco, results_to_coco(dets["subjects"][name], dets["img_ids"],
                                                         dataset.label_to_cat_id),
                           img_ids=dets["img_ids"])
             for key, name in (("reference", "reference"), ("subject", subject))}
    lines = [f"{name:6s} reference {stats['reference'][name]:.4f} {subject} "
             f"{stats['subject'][name]:.4f}" for name in stats["reference"]]
    print("\n".join(lines))
    tol = 0.5 * 10 ** -STAT_DECIMALS
    rows = [judge.ErrorStats(f"coco.{k}", (), abs(stats["subject"][k] - stats["reference"][k]),
                               abs(stats["reference"][k]), abs(stats["subject"][k] - stats["reference"][k]),
                               float("nan"), tolerance=tol)
            for k in stats["reference"]]
    report_table(rows, f"{subject} COCO statistics (absolute difference)")
    judge.record_verdict(rows, f"COCO statistics ({request.node.callspec.params['dets']})",
                         subject)
    assert stats["reference"]["AR100"] > 0, "no true positive at all:\n" + "\n".join(lines)
    if "trained" in request.node.callspec.id:
        assert stats["reference"]["AP50"] >= MIN_AP50, (
            "trained weights too weak for a meaningful comparison:\n" + "\n".join(lines))
    for name in stats["reference"]:
        assert abs(stats["subject"][name] - stats["reference"][name]) <= tol, "\n".join(lines)
