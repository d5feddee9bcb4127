"""GFL V1 (model.head = "gfl_v1", docs/MODEL.md section 15) in both ports: the model without
DGQP, its loss against values computed here with numpy (QFL on logits, mmdetection 3.x's
normalisers), its pre-NMS rule (threshold, then top-k of the surviving pairs) against a numpy
reference, the two ports against each other, the config's refusal and the converter."""
import math

import numpy as np
import pytest

from gfocal.config import DEFAULTS, ConfigError, from_dict
from gfocal.checkpoint_io import read, write
from tests.factories import img_meta, pipeline_batch, tiny_model_cfg
from tests.test_losses import log_softmax, run_gfl_loss, value_and_grads
from tests.test_network import max_rel_diff, random_state
from tests.test_postprocess import nms_reference
from weights_converter.convert import convert, infer_model_cfg

F32 = np.float32
EPS32 = 2.0 ** -23  # mmdetection 3.x adds float32's epsilon to every normaliser
V1_TINY = tiny_model_cfg(head="gfl_v1")
V2_TINY = dict(V1_TINY, head="gfl_v2")
LEVEL_PROBES = ("head.cls_tower", "head.reg_tower", "head.reg_logits", "head.cls_logits")
LOSS_PROBES = ("head.integral", "loss.score", "loss.weight_targets", "loss.loss_cls",
               "loss.loss_bbox", "loss.loss_dfl")


def v1_probe_names():
    """V1's probes of `loss`, in forward order: V2's without dgqp_feat, quality and
    cls_score, with the class logits instead."""
    names = ["backbone.stem"] + [f"backbone.layer{i}" for i in range(1, 5)]
    names += [f"neck.lateral.{i}" for i in range(3)] + [f"neck.p{i}" for i in range(3, 8)]
    names += [f"{kind}.{level}" for level in range(5) for kind in LEVEL_PROBES]
    names += ["targets.labels", "targets.label_weights", "targets.bbox_targets",
              "targets.assigned_gt_inds", "targets.num_pos"]
    names += [f"{kind}.{level}" for level in range(5) for kind in LOSS_PROBES[:3]]
    names += ["loss.avg_factor"]
    names += [f"{kind}.{level}" for level in range(5) for kind in LOSS_PROBES[3:]]
    return names


def tiny_batch(seed=0):
    rng = np.random.default_rng(seed)
    return pipeline_batch(rng.standard_normal((2, 3, 48, 48)).astype(F32),
                          [[[8, 10, 40, 44], [26, 5, 46, 30]], [[2, 2, 30, 40]]], [[1, 3], [0]],
                          [(48, 48), (48, 32)])


def build(port, model_cfg, state=None):
    port.seed(0)
    model = port.build_detector(model_cfg)
    if state is not None:
        port.checkpoint.load_state_dict_numpy(model, state)
    model.train()  # as the engine trains: norm_eval keeps every BatchNorm on its statistics
    return model


# ---------------------------------------------------------------- model and training step

def test_v1_state_dict_is_v2s_without_reg_conf(port):
    v1 = port.checkpoint.state_dict_numpy(build(port, V1_TINY))
    v2 = port.checkpoint.state_dict_numpy(build(port, V2_TINY))
    dgqp = {k for k in v2 if k.startswith("bbox_head.reg_conf.")}
    assert len(dgqp) == 4
    assert set(v1) == set(v2) - dgqp
    assert all(v1[k].shape == v2[k].shape for k in v1)


def test_v1_head_returns_logits_and_records_them(port):
    model = build(port, V1_TINY)
    with port.probes.capture() as probes:
        cls_logits, _ = model(port.tensor(tiny_batch()["imgs"]))
    # the initial class output sits near gfl_cls's bias, -log(99) = -4.6: a logit, where a
    # probability would lie in [0, 1]
    assert all((port.numpy(level) < -4.0).all() for level in cls_logits)
    np.testing.assert_array_equal(probes["head.cls_logits.4"], port.numpy(cls_logits[4]))
    assert list(probes) == v1_probe_names()[:13 + 4 * 5]


def test_v1_training_step_gives_finite_losses(port):
    model = build(port, V1_TINY)
    optimizer = port.train.build_optimizer(model, DEFAULTS["optim"])
    before = port.checkpoint.state_dict_numpy(model)["bbox_head.gfl_cls.weight"]
    losses = port.train.train_step(model, optimizer, tiny_batch())
    after = port.checkpoint.state_dict_numpy(model)["bbox_head.gfl_cls.weight"]
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl", "loss"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert not np.array_equal(before, after)


# ---------------------------------------------------------------- the loss, by hand

def bce_with_logits(x, t):
    x = np.float64(x)
    return max(x, 0.0) - x * t + math.log1p(math.exp(-abs(x)))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def positive_terms(logits):
    """A positive at centre (1, 1) (stride units) of gt [0, 0, 2, 2]: its reg logits (68,)
    -> IoU, 1 - GIoU and the DFL summed over the four sides (every target distance is 1)."""
    logits = logits.reshape(4, 17).astype(np.float64)
    dist = (np.exp(log_softmax(logits)) * np.arange(17)).sum(1)
    pred = np.array([1 - dist[0], 1 - dist[1], 1 + dist[2], 1 + dist[3]])
    target = np.array([0.0, 0.0, 2.0, 2.0])
    inter = np.prod(np.clip(np.minimum(pred[2:], target[2:]) - np.maximum(pred[:2], target[:2]),
                            0, None))
    union = np.prod(pred[2:] - pred[:2]) + 4.0 - inter
    enclose = np.prod(np.maximum(pred[2:], target[2:]) - np.minimum(pred[:2], target[:2]))
    giou = inter / union - (enclose - union) / enclose
    return inter / union, 1 - giou, -log_softmax(logits)[:, 1].sum()


@pytest.mark.parametrize("logit_mean", [-3.0, 2.0])  # weight targets summing below / above 1
def test_v1_loss_hand_computed(port, logit_mean):
    check_v1_loss_hand_computed(port, logit_mean, np.float32, rtol=1e-5)


# In float64 the float32 epsilon in the normalisers (6e-8 of a value) is far above the
# rounding. Float64 runs are the PyTorch port's (the parity reference); Jittor rounds a Python
# number to float32 in arithmetic with a float64 Var (x / (2 + eps) divides by 2.0, and
# 0 + x is float32), so its float64 runs lose the epsilon (docs/MODEL.md section 15).
@pytest.mark.parametrize("logit_mean", [-3.0, 2.0])
def test_v1_loss_hand_computed_in_float64(torch_port, logit_mean):
    check_v1_loss_hand_computed(torch_port, logit_mean, np.float64, rtol=1e-10)


def check_v1_loss_hand_computed(port, logit_mean, dtype, rtol):
    # two images, each a 2 x 2 map at stride 8 and gt [0,0,16,16] of class 1: location 3 is
    # the single positive of each (tests/test_losses.py, test_gfl_loss_hand_computed_...)
    cfg = dict(V1_TINY, num_classes=2, strides=[8], num_outs=1)
    rng = np.random.default_rng(4)
    cls = (logit_mean + rng.normal(0, 0.5, (2, 2, 2, 2))).astype(dtype)
    reg = rng.normal(0, 1, (2, 68, 2, 2)).astype(dtype)
    gts = [np.array([[0, 0, 16, 16]], F32)] * 2
    values, _, probes, _ = run_gfl_loss(port, cfg, [cls], [reg], gts, [np.array([1])] * 2,
                                        [img_meta((16, 16))] * 2, capture=True)

    qfl, giou_sum, dfl_sum, weights = 0.0, 0.0, 0.0, []
    for img in range(2):
        logits = cls[img].transpose(1, 2, 0).reshape(4, 2)  # location-major
        iou, one_minus_giou, dfl = positive_terms(reg[img, :, 1, 1])
        weight = sigmoid(logits[3]).max()  # the detached max class probability
        for loc in range(4):
            for c in range(2):
                x, p = logits[loc, c], sigmoid(logits[loc, c])
                t = iou if (loc, c) == (3, 1) else 0.0
                qfl += bce_with_logits(x, t) * abs(t - p) ** 2
        giou_sum += one_minus_giou * weight
        dfl_sum += dfl * weight
        weights.append(weight)
    avg_factor = max(sum(weights), 1.0)  # clamped to at least 1
    assert (sum(weights) < 1) == (logit_mean < 0)
    assert float(probes["loss.avg_factor"].reshape(())) == pytest.approx(avg_factor, rel=rtol)
    np.testing.assert_allclose(probes["loss.weight_targets.0"], weights, rtol=rtol)
    # num_total_samples: the positives counted as at least 1 per image, here 2
    assert values["loss_cls"] == pytest.approx(qfl / (2 + EPS32), rel=rtol)
    assert values["loss_bbox"] == pytest.approx(2.0 * giou_sum / (1 + EPS32) / avg_factor,
                                                rel=rtol)
    assert values["loss_dfl"] == pytest.approx(0.25 * dfl_sum / (4 + EPS32) / avg_factor,
                                               rel=rtol)


def test_v1_loss_without_positives_divides_by_one(port):
    cfg = dict(V1_TINY, num_classes=2, strides=[8], num_outs=1)
    cls = np.random.default_rng(5).normal(-1, 1, (1, 2, 2, 2)).astype(F32)
    reg = np.zeros((1, 68, 2, 2), F32)
    values, grads, probes, _ = run_gfl_loss(
        port, cfg, [cls], [reg], [np.zeros((0, 4), F32)], [np.zeros(0, np.int64)],
        [img_meta((16, 16))], capture=True)
    expected = sum(bce_with_logits(x, 0.0) * sigmoid(x) ** 2 for x in cls.reshape(-1))
    assert values["loss_cls"] == pytest.approx(expected / (1 + EPS32), rel=1e-5)
    assert values["loss_bbox"] == 0.0 and values["loss_dfl"] == 0.0
    assert float(probes["loss.avg_factor"].reshape(())) == 1.0
    assert (grads[1] == 0).all() and np.abs(grads[0]).max() > 0


# QFL on logits keeps the far tail where the probability form clamps its logs at -100
# (p = sigmoid(120) rounds to 1 in float32): 120 here, 100 on probabilities. The cross entropy
# (1 - t) x - log_sigmoid(x) cancels for negative x: float32 leaves it ~ulp(|x|) off.
@pytest.mark.parametrize("x, t", [(120.0, 0.0), (-120.0, 1.0), (-20.0, 0.0), (0.0, 0.3),
                                  (3.0, 0.7), (-4.6, 0.0)])
def test_qfl_on_logits_matches_numpy(port, x, t):
    label = np.array([0 if t else 1])  # class 0 of 1 is the target only when t is given
    got = port.losses.quality_focal_loss_with_logits(
        port.tensor(np.array([[x]], F32)), port.tensor(label), port.tensor(np.array([t], F32)))
    modulation = abs(t - sigmoid(x)) ** 2
    np.testing.assert_allclose(port.numpy(got), [bce_with_logits(x, t) * modulation], rtol=1e-5,
                               atol=4 * EPS32 * max(abs(x), 1.0) * modulation)


def test_qfl_on_logits_ports_agree(torch_port, jittor_port):
    rng = np.random.default_rng(6)
    logits = rng.normal(0, 4, (64, 5)).astype(F32)
    labels = rng.integers(0, 6, 64)  # 5 = background
    scores = rng.uniform(0, 1, 64).astype(F32)
    results = [value_and_grads(p, p.losses.quality_focal_loss_with_logits,
                               [logits, labels, scores], wrt=[0])
               for p in (torch_port, jittor_port)]
    (v_t, (g_t,)), (v_j, (g_j,)) = results
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- pre-NMS: threshold, then top-k

def test_filter_scores_and_topk_hand_case(port):
    scores = np.array([[0.2, 0.7, 0.7],
                       [0.9, 0.1, 0.7],
                       [0.7, 0.5, 0.3]], F32)
    # above 0.3: (0,1) .7, (0,2) .7, (1,0) .9, (1,2) .7, (2,0) .7, (2,1) .5; the four best by
    # score, equal scores in pair order: (1,0), then the 0.7s (0,1), (0,2), (1,2); (2,0) is out
    anchor_idx, labels, kept = port.postprocess.filter_scores_and_topk(
        port.tensor(scores), 0.3, 4)
    assert port.numpy(anchor_idx).tolist() == [1, 0, 0, 1]
    assert port.numpy(labels).tolist() == [0, 1, 2, 2]
    np.testing.assert_array_equal(port.numpy(kept), F32([0.9, 0.7, 0.7, 0.7]))
    everything = port.postprocess.filter_scores_and_topk(port.tensor(scores), 0.3, -1)
    assert port.numpy(everything[0]).tolist() == [1, 0, 0, 1, 2, 2]


def logit(p):
    return np.log(p / (1 - p)).astype(F32)


# Two levels, stride 8 (2 x 4 map) and stride 16 (1 x 2 map), 3 classes; the probabilities of
# the listed anchors, all others 0.01. Level 0's anchor 3 has left and right distances 0: its
# box has width 0 and goes at min_bbox_size = 0.
PROBS = {(0, 0): [0.9, 0.2, 0.8], (0, 1): [0.1, 0.6, 0.1], (0, 2): [0.6, 0.6, 0.1],
         (0, 3): [0.95, 0.1, 0.1], (0, 4): [0.25, 0.25, 0.25], (0, 5): [0.6, 0.1, 0.1],
         (1, 0): [0.6, 0.1, 0.7], (1, 1): [0.1, 0.65, 0.1]}
SIZES = [(2, 4), (1, 2)]
STRIDES = [8, 16]


def head_outputs():
    cls, reg = [], []
    for level, (h, w) in enumerate(SIZES):
        probs = np.full((h * w, 3), 0.01)
        for (lv, anchor), p in PROBS.items():
            if lv == level:
                probs[anchor] = p
        cls.append(logit(probs).T.reshape(1, 3, h, w))
        dist = np.ones((h * w, 4), np.int64)  # every side 1 stride
        if level == 0:
            dist[3, [0, 2]] = 0
        one_hot = np.full((h * w, 4, 17), -50.0, F32)
        np.put_along_axis(one_hot, dist[:, :, None], 50.0, axis=2)
        reg.append(one_hot.reshape(h * w, 68).T.reshape(1, 68, h, w))
    return cls, reg


def v1_reference(img_shape, scale, score_thr, nms_pre, iou_thr):
    """The V1 rule in numpy: per level the pairs above the threshold, the nms_pre best
    (equal scores in pair order), boxes clipped, all levels, rescaled, boxes of zero width
    or height dropped, class-aware greedy NMS (tests/test_postprocess.py)."""
    cls, reg = head_outputs()
    boxes, scores, labels = [], [], []
    for c, r, stride, (h, w) in zip(cls, reg, STRIDES, SIZES):
        probs = sigmoid(c[0].reshape(3, -1).T)
        dist = np.argmax(r[0].reshape(4, 17, -1), axis=1).T * stride
        anchor, label = np.nonzero(probs > score_thr)
        pair_scores = probs[anchor, label]
        order = np.lexsort((np.arange(len(anchor)), -pair_scores))[:nms_pre]
        cx = (np.arange(h * w) % w) * stride
        cy = (np.arange(h * w) // w) * stride
        for a, lb, s in zip(anchor[order], label[order], pair_scores[order]):
            box = [cx[a] - dist[a, 0], cy[a] - dist[a, 1], cx[a] + dist[a, 2], cy[a] + dist[a, 3]]
            box = np.clip(box, 0, [img_shape[1], img_shape[0]] * 2)
            boxes.append(box.astype(F32) * F32(1.0 / scale))
            scores.append(s)
            labels.append(lb)
    boxes, scores, labels = np.array(boxes), np.array(scores), np.array(labels)
    big = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, labels = boxes[big], scores[big], labels[big]
    keep = nms_reference(boxes, scores, labels, iou_thr)
    return boxes[keep], scores[keep], labels[keep]


def test_v1_predict_thresholds_then_takes_the_topk_pairs(port):
    img_shape, scale = (16, 20), 3.0
    cfg = dict(DEFAULTS["model"], num_classes=3, strides=STRIDES, num_outs=2, head="gfl_v1",
               nms_pre=4, score_thr=0.3, min_bbox_size=0.0)
    cls, reg = head_outputs()
    meta = img_meta(img_shape, scale=scale)
    post = port.postprocess.GFLPostProcess(cfg)
    (got,) = post([port.tensor(c) for c in cls], [port.tensor(r) for r in reg], [meta],
                  port.gfl_head.Integral(16))
    boxes, scores, labels = v1_reference(img_shape, scale, 0.3, 4, cfg["iou_thr"])
    # level 0 keeps (3,0) .95, (0,0) .9, (0,2) .8 and, of four 0.6 pairs, (1,1); (3,0) is
    # 0 wide; level 1 (0,2) .7, (1,1) .65, (0,0) .6, the last behind level 0's 0.6
    assert labels.tolist() == [0, 2, 2, 1, 1, 0]
    np.testing.assert_array_equal(got["labels"], labels)
    np.testing.assert_allclose(got["scores"], scores, rtol=1e-6)
    # x * float32(1 / 3), as computed here; 20 / 3 would round the other way
    assert 20 * F32(1 / 3) != F32(20) / F32(3) and (boxes == 20 * F32(1 / 3)).any()
    np.testing.assert_array_equal(got["boxes"], boxes)


# ---------------------------------------------------------------- the two ports

def test_ports_agree_on_v1(torch_port, jittor_port):
    """Forward probes, targets, losses and gradients of one V1 model in both ports, with O(1)
    random weights (the weight targets then sum above 1: avg_factor is not clamped)."""
    shapes = {k: v.shape for k, v in
              torch_port.checkpoint.state_dict_numpy(build(torch_port, V1_TINY)).items()}
    state = random_state(shapes)
    runs = {}
    for port in (torch_port, jittor_port):
        model = build(port, V1_TINY, state)
        with port.probes.capture() as probes:
            losses = model.loss(tiny_batch())
        grads = port.train.gradients_numpy(model, losses["loss"])
        values = {k: float(port.numpy(v).reshape(())) for k, v in losses.items()}
        runs[port.FRAMEWORK] = probes, values, grads
    (p_t, l_t, g_t), (p_j, l_j, g_j) = runs["torch"], runs["jittor"]
    assert list(p_t) == list(p_j) == v1_probe_names()
    assert float(p_t["loss.avg_factor"]) > 1.0
    assert p_t["loss.weight_targets.0"].size == int(p_t["targets.num_pos"]) > 2
    worst = {}
    for name, want in p_t.items():
        got = p_j[name].reshape(want.shape)  # Jittor has no 0-d arrays
        if name.startswith("targets."):
            np.testing.assert_array_equal(got, want, err_msg=name)
        elif want.size:  # a level without positives has no weight targets
            worst[name] = max_rel_diff(got, want)
    print("worst probe differences:", sorted(worst.items(), key=lambda kv: -kv[1])[:4])
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])
    for key, value in l_t.items():
        assert l_j[key] == pytest.approx(value, rel=1e-5), key
    assert set(g_t) == set(g_j)
    worst = {name: max_rel_diff(g_j[name], grad) for name, grad in g_t.items()}
    print("worst gradient differences:", sorted(worst.items(), key=lambda kv: -kv[1])[:4])
    assert max(worst.values()) < 1e-4, max(worst.items(), key=lambda kv: kv[1])


# ---------------------------------------------------------------- config and converter

def test_an_unknown_head_is_refused_in_one_line():
    with pytest.raises(ConfigError) as err:
        from_dict({"model": {"head": "gfl_v3"}}, source="my.py")
    assert str(err.value) == "my.py: 'model.head' = 'gfl_v3' (must be one of 'gfl_v2', 'gfl_v1')"


def test_v1_weights_round_trip_through_the_converter(tmp_path):
    from gfocal.pytorch import build_detector
    from gfocal.pytorch.checkpoint import state_dict_numpy
    state = state_dict_numpy(build_detector(V1_TINY))
    assert infer_model_cfg(state)["head"] == "gfl_v1"
    src, mid, mm, back = (str(tmp_path / n) for n in ("a.pth", "b.pkl", "c.pth", "d.pth"))
    write(src, state, "torch", classes=[f"c{i}" for i in range(6)])
    assert convert(src, mid, "torch", "jittor")["head"] == "gfl_v1"
    convert(mid, mm, "jittor", "mmdet")
    convert(mm, back, "mmdet", "torch")
    for path, fmt in ((mid, "jittor"), (back, "torch")):
        got = read(path, fmt)
        assert set(got) == set(state)
        assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype
                   for k, v in state.items())
    # mmdetection 3.x's layout: its sigmoid classifier has no background channel
    from gfocal.checkpoint_io import load_payload
    exported = load_payload(mm)["state_dict"]
    assert tuple(exported["bbox_head.gfl_cls.weight"].shape)[0] == 6
    assert tuple(exported["bbox_head.scales.0.scale"].shape) == ()
