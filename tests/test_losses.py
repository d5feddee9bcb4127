"""QFL, DFL, GIoU and the assembled GFLLoss of both ports, against values computed here with
plain math/numpy, and against each other (hypothesis) for values and gradients."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gfocal.config import DEFAULTS
from tests.factories import img_meta

F32 = np.float32


def bce(p, t):
    """PyTorch's documented BCE: logs clamped at -100."""
    log_p = max(math.log(p), -100.0) if p > 0 else -100.0
    log_1mp = max(math.log1p(-p), -100.0) if p < 1 else -100.0
    return -(t * log_p + (1 - t) * log_1mp)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def value_and_grads(port, fn, arrays_in, wrt):
    """fn(*tensors) -> (numpy value, numpy gradients of its sum w.r.t. the inputs in `wrt`)."""
    tensors = [port.tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays_in)]
    out = fn(*tensors)
    inputs = [tensors[i] for i in wrt]
    if port.FRAMEWORK == "torch":
        import torch
        grads = torch.autograd.grad(out.sum(), inputs)
    else:
        import jittor as jt
        grads = jt.grad(out.sum(), inputs)
    return port.numpy(out), [port.numpy(g) for g in grads]


# ---------------------------------------------------------------- BCE (Jittor's own)

EXTREME_P = [0.0, 1.0, 1e-45, 1 - 1e-7, 0.3]


@pytest.mark.parametrize("target", [0.0, 1.0, 0.4])
def test_jittor_bce_matches_pytorch_at_extremes(jittor_port, target):
    import torch
    import torch.nn.functional as F
    p = np.array(EXTREME_P, F32)
    t = np.full_like(p, target)
    value, (grad,) = value_and_grads(jittor_port, jittor_port.losses.binary_cross_entropy,
                                     [p, t], wrt=[0])
    pt = torch.tensor(p, requires_grad=True)
    ref = F.binary_cross_entropy(pt, torch.tensor(t), reduction="none")
    (ref_grad,) = torch.autograd.grad(ref.sum(), pt)
    np.testing.assert_allclose(value, ref.detach().numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(grad, ref_grad.numpy(), rtol=1e-5, atol=1e-12)
    hand = [bce(float(x), target) for x in p]  # the formula, independently of both
    np.testing.assert_allclose(value, hand, rtol=1e-5, atol=1e-12)
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    assert value.max() <= 100.0


# ---------------------------------------------------------------- QFL

def test_qfl_hand_computed(port):
    prob = np.array([[0.2, 0.5, 0.1], [0.3, 0.6, 0.9]], F32)
    label = np.array([1, 3])  # row 1: background (= num_classes)
    score = np.array([0.7, 0.0], F32)
    row0 = (bce(0.2, 0) * 0.2 ** 2 + bce(0.5, 0.7) * (0.7 - 0.5) ** 2 + bce(0.1, 0) * 0.1 ** 2)
    row1 = bce(0.3, 0) * 0.09 + bce(0.6, 0) * 0.36 + bce(0.9, 0) * 0.81
    got = port.losses.quality_focal_loss(port.tensor(prob), port.tensor(label),
                                         port.tensor(score))
    np.testing.assert_allclose(port.numpy(got), [row0, row1], rtol=1e-5)


def test_qfl_beta(port):
    prob = np.array([[0.5, 0.25]], F32)
    got = port.losses.quality_focal_loss(port.tensor(prob), port.tensor(np.array([0])),
                                         port.tensor(np.array([1.0], F32)), beta=1.0)
    expected = bce(0.5, 1.0) * 0.5 + bce(0.25, 0) * 0.25
    np.testing.assert_allclose(port.numpy(got), [expected], rtol=1e-5)


def test_qfl_extreme_probabilities(port):
    prob = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], F32)
    label = np.array([2, 0, 0])
    score = np.array([0.0, 1.0, 0.5], F32)
    # row 0: negatives at p = 0 (0) and p = 1 (clamped log: 100 * 1^2)
    # row 1: positive p = 1 towards 1 (0) + negative p = 0 (0)
    # row 2: positive p = 0 towards 0.5: (0.5 * 100 + 0.5 * 0) * 0.5^2 = 12.5, negative 100
    value, (grad,) = value_and_grads(
        port, lambda p, lb, s: port.losses.quality_focal_loss(p, lb, s),
        [prob, label, score], wrt=[0])
    np.testing.assert_allclose(value, [100.0, 0.0, 112.5], rtol=1e-6)
    # by hand, with BCE's gradient (p - t) / max(p (1 - p), 1e-12) and the modulation's:
    # row 0, class 1 (negative, p = 1): 1e12 * 1 + 100 * 2p; row 2, class 0 (positive
    # towards 0.5, p = 0): -0.5e12 * 0.25 + 50 * -2 (0.5 - 0); the rest have p^2 = 0 or
    # |t - p| = 0 and a zero BCE gradient
    expected = np.array([[0.0, 1e12 + 200], [0.0, 0.0], [-1.25e11 - 50, 1e12 + 200]])
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- DFL and GIoU

def test_dfl_hand_computed_at_0_integers_and_15_9(port):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (5, 17)).astype(F32)
    label = np.array([0.0, 3.0, 15.9, 2.5, 16 - 1e-3], F32)
    logp = log_softmax(logits)
    y = label.astype(np.float64)
    left = np.floor(y).astype(int)
    rows = np.arange(5)
    expected = -(logp[rows, left] * (left + 1 - y) + logp[rows, left + 1] * (y - left))
    # by hand for the first two: target 0 -> CE(bin 0); target 3 -> CE(bin 3), with the
    # log-sum-exp written out from the raw logits (not through log_softmax above)
    for row, k in ((0, 0), (1, 3)):
        lse = math.log(math.fsum(math.exp(float(z)) for z in logits[row]))
        assert expected[row] == pytest.approx(lse - float(logits[row, k]), rel=1e-12)
    got = port.losses.distribution_focal_loss(port.tensor(logits), port.tensor(label))
    np.testing.assert_allclose(port.numpy(got), expected, rtol=1e-5)


def test_dfl_of_the_matching_two_bin_distribution(port):
    # softmax = 0.1 at bin 15, 0.9 at bin 16 (the target 15.9 split): DFL = its entropy
    logits = np.full((1, 17), -30.0, F32)
    logits[0, 15], logits[0, 16] = math.log(0.1), math.log(0.9)
    got = port.losses.distribution_focal_loss(port.tensor(logits),
                                              port.tensor(np.array([15.9], F32)))
    expected = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    np.testing.assert_allclose(port.numpy(got), [expected], rtol=1e-4)


def test_giou_loss_hand_computed(port):
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], F32)
    target = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 15, 15]], F32)
    got = port.losses.giou_loss(port.tensor(pred), port.tensor(target))
    expected = [0.0, 1 + 700 / 900, 1 - (25 / 175 - 50 / 225)]
    np.testing.assert_allclose(port.numpy(got), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- cross-port (hypothesis)

# Jittor's -Ofast kernels switch the process to flush-to-zero: no subnormal inputs.
probs = arrays(F32, (4, 3), elements=st.floats(0, 1, width=32, allow_subnormal=False))
scores = arrays(F32, (4,), elements=st.floats(0, 1, width=32, allow_subnormal=False))
labels = arrays(np.int64, (4,), elements=st.integers(0, 3))


@settings(max_examples=25, deadline=None)
@given(probs, labels, scores)
def test_qfl_ports_agree(torch_port, jittor_port, prob, label, score):
    results = [value_and_grads(port, port.losses.quality_focal_loss, [prob, label, score],
                               wrt=[0]) for port in (torch_port, jittor_port)]
    (v_t, (g_t,)), (v_j, (g_j,)) = results
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    # element by element: p = 0 or 1 gives gradients near 1e12, so a tolerance scaled by
    # max |g| would leave every ordinary element unchecked (same rule and measured noise as
    # parity_tests/test_properties.py: QFL_GRAD_RTOL, QFL_GRAD_ATOL)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-6, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(arrays(F32, (6, 17), elements=st.floats(-8, 8, width=32, allow_subnormal=False)),
       arrays(F32, (6,), elements=st.floats(0, float(F32(15.9)), width=32, allow_subnormal=False)))
def test_dfl_ports_agree(torch_port, jittor_port, logits, label):
    results = [value_and_grads(port, port.losses.distribution_focal_loss, [logits, label],
                               wrt=[0]) for port in (torch_port, jittor_port)]
    (v_t, (g_t,)), (v_j, (g_j,)) = results
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(arrays(np.int64, (5, 4), elements=st.integers(0, 30)),
       arrays(np.int64, (5, 4), elements=st.integers(0, 30)))
def test_giou_loss_ports_agree(torch_port, jittor_port, raw_pred, raw_target):
    # Predicted coordinates sit at 1/4 past an integer, targets at 3/4: no exact ties, where
    # min/max have no unique gradient (the two frameworks split it differently).
    def as_boxes(raw, offset):
        low, high = np.minimum(raw[:, :2], raw[:, 2:]), np.maximum(raw[:, :2], raw[:, 2:])
        return np.concatenate([low + offset, high + 1 + offset], axis=1).astype(F32)
    pred, target = as_boxes(raw_pred, 0.25), as_boxes(raw_target, 0.75)
    results = [value_and_grads(port, port.losses.giou_loss, [pred, target], wrt=[0])
               for port in (torch_port, jittor_port)]
    (v_t, (g_t,)), (v_j, (g_j,)) = results
    np.testing.assert_allclose(v_j, v_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_j, g_t, rtol=1e-4, atol=1e-5)
    assert (v_t >= 0).all() and (v_t <= 2).all()


# ---------------------------------------------------------------- GFLLoss

def loss_cfg(**overrides):
    return dict(DEFAULTS["model"], **overrides)


def run_gfl_loss(port, cfg, cls, reg, gts, labels, metas, capture=False):
    """-> (losses as floats, grads w.r.t. cls and reg inputs, probes or None)."""
    cls_t = [port.tensor(c, requires_grad=True) for c in cls]
    reg_t = [port.tensor(r, requires_grad=True) for r in reg]
    integral = port.gfl_head.Integral(cfg["reg_max"])
    loss_fn = port.gfl_loss.GFLLoss(cfg)
    args = (cls_t, reg_t, [port.tensor(g) for g in gts], [port.tensor(lb) for lb in labels],
            metas, integral)
    if capture:
        with port.probes.capture() as probes:
            losses = loss_fn(*args)
    else:
        probes, losses = None, loss_fn(*args)
    total = losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"]
    if port.FRAMEWORK == "torch":
        import torch
        grads = torch.autograd.grad(total, cls_t + reg_t)
    else:
        import jittor as jt
        grads = jt.grad(total, cls_t + reg_t)
    values = {k: float(port.numpy(v).reshape(())) for k, v in losses.items()}
    return values, [port.numpy(g) for g in grads], probes, losses


def tiny_level_inputs(seed=0):
    rng = np.random.default_rng(seed)
    cls = rng.uniform(0.05, 0.95, (1, 2, 2, 2)).astype(F32)
    reg = rng.normal(0, 1, (1, 68, 2, 2)).astype(F32)
    return cls, reg


def test_gfl_loss_hand_computed_single_level(port):
    # stride 8, a 2 x 2 map: anchors 64 x 64 centred at (0,0), (8,0), (0,8), (8,8); each
    # contains the gt [0,0,16,16] (IoU 1/16, std 0, threshold 1/16), but only the centre
    # (8,8) lies strictly inside: location 3 (y = 1, x = 1) is the single positive.
    cfg = loss_cfg(num_classes=2, strides=[8], num_outs=1)
    cls, reg = tiny_level_inputs()
    gt, label = np.array([[0, 0, 16, 16]], F32), np.array([1])
    values, _, _, _ = run_gfl_loss(port, cfg, [cls], [reg], [gt], [label], [img_meta((16, 16))])

    logits = reg[0, :, 1, 1].reshape(4, 17).astype(np.float64)
    dist = (np.exp(log_softmax(logits)) * np.arange(17)).sum(1)
    pred = np.array([1 - dist[0], 1 - dist[1], 1 + dist[2], 1 + dist[3]])  # centre (1, 1)
    target = np.array([0.0, 0.0, 2.0, 2.0])                                  # gt / stride
    inter = np.prod(np.clip(np.minimum(pred[2:], target[2:]) - np.maximum(pred[:2], target[:2]),
                            0, None))
    union = np.prod(pred[2:] - pred[:2]) + 4.0 - inter
    iou = inter / union
    enclose = np.prod(np.maximum(pred[2:], target[2:]) - np.minimum(pred[:2], target[:2]))
    giou = iou - (enclose - union) / enclose

    probs = cls[0].transpose(1, 2, 0).reshape(4, 2).astype(np.float64)  # location-major
    qfl = sum(bce(p, 0) * p ** 2 for p in probs.reshape(-1))
    p_pos = probs[3, 1]  # the positive's gt class: towards the IoU instead of 0
    qfl += -bce(p_pos, 0) * p_pos ** 2 + bce(p_pos, iou) * (iou - p_pos) ** 2
    dfl = -log_softmax(logits)[:, 1].mean()  # every side's target distance is exactly 1

    assert values["loss_cls"] == pytest.approx(qfl, rel=1e-5)            # / num_pos = 1
    assert values["loss_bbox"] == pytest.approx(2.0 * (1 - giou), rel=1e-5)   # w / w
    assert values["loss_dfl"] == pytest.approx(0.25 * dfl, rel=1e-5)


def test_gfl_loss_empty_gt_keeps_box_losses_at_zero_in_the_graph(port):
    cfg = loss_cfg(num_classes=2, strides=[8], num_outs=1)
    cls, reg = tiny_level_inputs(1)
    values, grads, probes, losses = run_gfl_loss(
        port, cfg, [cls], [reg], [np.zeros((0, 4), F32)], [np.zeros(0, np.int64)],
        [img_meta((16, 16))], capture=True)
    expected_cls = sum(bce(p, 0) * p ** 2 for p in cls.astype(np.float64).reshape(-1))
    assert values["loss_cls"] == pytest.approx(expected_cls, rel=1e-5)  # / max(0 + 1, 1)
    assert values["loss_bbox"] == 0.0 and values["loss_dfl"] == 0.0
    if port.FRAMEWORK == "torch":
        assert losses["loss_bbox"].requires_grad and losses["loss_dfl"].requires_grad
    assert (grads[1] == 0).all() and np.abs(grads[0]).max() > 0
    assert float(probes["loss.avg_factor"].reshape(())) == 0.0
    assert int(probes["targets.num_pos"].reshape(())) == 1


def test_gfl_loss_ignores_anchors_outside_the_padded_shape(port):
    # pad (8, 16): only the first row of the 2 x 2 map is valid; its centres (0,0), (8,0)
    # touch the gt border, so there is no positive and QFL covers locations 0 and 1 only
    cfg = loss_cfg(num_classes=2, strides=[8], num_outs=1)
    cls, reg = tiny_level_inputs(2)
    gt = np.array([[0, 0, 16, 16]], F32)
    values, _, probes, _ = run_gfl_loss(port, cfg, [cls], [reg], [gt], [np.array([0])],
                                        [img_meta((8, 16))], capture=True)
    valid = cls[0, :, 0, :].astype(np.float64).reshape(-1)
    assert values["loss_cls"] == pytest.approx(sum(bce(p, 0) * p ** 2 for p in valid), rel=1e-5)
    assert values["loss_bbox"] == 0.0 and values["loss_dfl"] == 0.0
    np.testing.assert_array_equal(probes["targets.label_weights"], [[1, 1, 0, 0]])
    np.testing.assert_array_equal(probes["targets.labels"], [[2, 2, 2, 2]])


def random_batch(rng, num_classes=4):
    sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    cls = [rng.uniform(0.001, 0.999, (2, num_classes, h, w)).astype(F32) for h, w in sizes]
    reg = [rng.normal(0, 2, (2, 68, h, w)).astype(F32) for h, w in sizes]
    gts, labels = [], []
    for count in (5, 2):
        xy = rng.uniform(0, [80, 50], (count, 2))
        wh = rng.uniform(6, 60, (count, 2))
        gts.append(np.concatenate([xy, xy + wh], 1).astype(F32))
        labels.append(rng.integers(0, num_classes, count))
    return cls, reg, gts, labels, [img_meta((64, 96)), img_meta((64, 64))]


def test_gfl_loss_ports_agree_with_probes(torch_port, jittor_port):
    cfg = loss_cfg(num_classes=4)
    batch = random_batch(np.random.default_rng(3))
    v_t, g_t, p_t, _ = run_gfl_loss(torch_port, cfg, *batch, capture=True)
    v_j, g_j, p_j, _ = run_gfl_loss(jittor_port, cfg, *batch, capture=True)
    for key in ("loss_cls", "loss_bbox", "loss_dfl"):
        assert v_j[key] == pytest.approx(v_t[key], rel=1e-5), key
        assert v_t[key] > 0
    for a, b in zip(g_t, g_j):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    expected_names = (["targets.labels", "targets.label_weights", "targets.bbox_targets",
                       "targets.assigned_gt_inds", "targets.num_pos", "loss.avg_factor"]
                      + [f"{kind}.{level}" for level in range(5)
                         for kind in ("head.integral", "loss.score", "loss.weight_targets",
                                      "loss.loss_cls", "loss.loss_bbox", "loss.loss_dfl")])
    assert set(p_t) == set(expected_names) and list(p_t) == list(p_j)
    assert p_t["head.integral.0"].shape == (2, 96, 4)
    for name in p_t:
        a, b = p_t[name], p_j[name]
        if name.startswith("targets."):
            np.testing.assert_array_equal(a.reshape(b.shape), b, err_msg=name)
        else:
            np.testing.assert_allclose(b, a.reshape(b.shape), rtol=1e-4, atol=1e-5, err_msg=name)
    assert int(p_t["targets.num_pos"].reshape(())) > 2
