"""Property-based cross-port checks (hypothesis) of the framework-sensitive pieces.

Each property runs the PyTorch port's and the Jittor port's function on the same generated
input and compares both with a float64 numpy reference written here: GroupNorm at large
means, QFL at extreme probabilities, DFL at and near bin edges, GIoU for disjoint, touching,
contained and zero-area boxes, the integral, top-k / sorting with ties, nearest upsampling of
odd sizes, and NMS with equal scores. Shapes come from small fixed sets so Jittor compiles
each kernel once; examples are derandomised so a run is reproducible.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity_tests import regimes

EPS32 = float(np.finfo(np.float32).eps)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


def floats(low, high):
    """Finite floats without subnormals: Jittor's compiled kernels switch the CPU to
    flush-to-zero for the whole process, and hypothesis refuses subnormals in that state."""
    return st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@pytest.fixture(scope="module")
def ports(reference_port, subject_port):
    return {"torch": reference_port, "jittor": subject_port}


def each_port(ports, fn):
    """{port name: numpy result of fn(port)}."""
    return {name: fn(port) for name, port in ports.items()}


# ---------------------------------------------------------------- GroupNorm
def reference_group_norm(x, groups, eps=1e-5):
    n = x.shape[0]
    g = x.astype(np.float64).reshape(n, groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


@PROPERTY
@given(mean=floats(-3e3, 3e3), log_std=floats(-1.0, 1.0), seed=st.integers(0, 2 ** 16))
def test_group_norm_large_mean(ports, mean, log_std, seed):
    """Two-pass variance: the error grows like eps * |mean| / std; a one-pass E[x^2]-E[x]^2
    variance grows like eps * (mean / std)^2 and fails here."""
    std = 10.0 ** log_std
    x = (mean + std * np.random.default_rng(seed).standard_normal((2, 16, 5, 7))) \
        .astype(np.float32)
    want = reference_group_norm(x, 4)
    tol = 64 * EPS32 * (1 + abs(mean) / std)
    got = each_port(ports, lambda p: p.numpy(p.fpn.GroupNorm(4, 16)(p.tensor(x))))
    for name, value in got.items():
        assert np.abs(value - want).max() <= tol, name
    assert np.abs(got["jittor"] - got["torch"]).max() <= tol


# ---------------------------------------------------------------- the integral
@PROPERTY
@given(logits=st.lists(floats(-40, 40), min_size=68, max_size=68),
       scale=st.sampled_from([0.01, 1.0, 3.0]))
def test_integral(ports, logits, scale):
    x = (np.array(logits, np.float32) * scale).reshape(1, 68)
    z = x.astype(np.float64).reshape(4, 17)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    want = (p / p.sum(axis=1, keepdims=True) * np.arange(17)).sum(axis=1)
    got = each_port(ports, lambda port: port.numpy(port.gfl_head.Integral(16)(port.tensor(x))))
    for name, value in got.items():
        np.testing.assert_allclose(value.reshape(4), want, rtol=0, atol=16 * 8 * EPS32,
                                   err_msg=name)
    np.testing.assert_allclose(got["jittor"], got["torch"], rtol=0, atol=16 * 8 * EPS32)


# ---------------------------------------------------------------- top-k and sorting with ties
@PROPERTY
@given(levels=st.lists(st.integers(-2, 2), min_size=4 * 17 * 3, max_size=4 * 17 * 3))
def test_dgqp_topk_with_tied_bins(ports, levels):
    """Logits from 5 values: many tied probabilities. The DGQP statistics (top-4 values,
    descending, and their mean) must not depend on which tied bin a framework picks."""
    x = np.array(levels, np.float32).reshape(1, 68, 1, 3)
    z = x.astype(np.float64).reshape(4, 17, 3)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True)
    top = -np.sort(-p, axis=1)[:, :4]
    want = np.concatenate([top, top.mean(axis=1, keepdims=True)], axis=1).reshape(1, 20, 1, 3)

    def stat(port):
        head = port.gfl_head.GFLHead(6, 8, feat_channels=8, stacked_convs=1, gn_groups=1)
        return port.numpy(head.dgqp_features(port.tensor(x)))
    got = each_port(ports, stat)
    for name, value in got.items():
        np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(got["jittor"], got["torch"], rtol=1e-6, atol=1e-7)


@PROPERTY
@given(keys=st.lists(st.integers(0, 4), min_size=40, max_size=40),
       descending=st.booleans())
def test_stable_sort_ties_keep_index_order(ports, keys, descending):
    """The tie rule of both ports (ATSS candidates, nms_pre): equal keys, smaller index first."""
    k = np.array(keys, np.float32)
    want = np.argsort(-k if descending else k, kind="stable")
    for name, port in ports.items():
        got = port.numpy(port.box_ops.stable_argsort(port.tensor(k), descending=descending))
        assert got.tolist() == want.tolist(), name


# ---------------------------------------------------------------- nearest upsampling
@PROPERTY
@given(in_h=st.integers(1, 9), in_w=st.integers(1, 9), out_h=st.integers(1, 19),
       out_w=st.integers(1, 19))
def test_nearest_upsampling_of_odd_sizes(ports, in_h, in_w, out_h, out_w):
    """Exactly the rows/columns PyTorch's 'nearest' picks (the FPN gives the exact size)."""
    import torch
    import torch.nn.functional as F
    x = np.arange(2 * in_h * in_w, dtype=np.float32).reshape(1, 2, in_h, in_w)
    want = F.interpolate(torch.from_numpy(x), size=(out_h, out_w), mode="nearest").numpy()
    for name, port in ports.items():
        got = port.numpy(port.fpn.upsample_nearest(port.tensor(x), (out_h, out_w)))
        assert np.array_equal(got, want), name


# ---------------------------------------------------------------- IoU / GIoU
def reference_giou(a, b, eps=1e-6):
    a, b = a.astype(np.float64), b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = np.maximum(area_a + area_b - inter, eps)
    ewh = np.clip(np.maximum(a[:, 2:], b[:, 2:]) - np.minimum(a[:, :2], b[:, :2]), 0, None)
    enclose = np.maximum(ewh[:, 0] * ewh[:, 1], eps)
    return inter / union - (enclose - union) / enclose


BOX = st.tuples(st.integers(0, 12), st.integers(0, 12), st.integers(0, 8), st.integers(0, 8))


def boxes_from(draws, scale):
    """Integer corners on a small grid (so touching, containment and equality are common);
    width or height 0 gives zero-area boxes."""
    arr = np.array([[x, y, x + w, y + h] for x, y, w, h in draws], np.float32)
    return arr * scale


@PROPERTY
@given(pairs=st.lists(st.tuples(BOX, BOX), min_size=8, max_size=8),
       scale=st.sampled_from([0.25, 1.0, 7.0]))
def test_giou_disjoint_touching_contained_zero_area(ports, pairs, scale):
    a = boxes_from([p[0] for p in pairs], scale)
    b = boxes_from([p[1] for p in pairs], scale)
    want = reference_giou(a, b)
    for name, port in ports.items():
        got = port.numpy(port.box_ops.bbox_overlaps(port.tensor(a), port.tensor(b),
                                                    mode="giou", is_aligned=True))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def value_and_grad(port, fn, x, *others):
    """fn(port tensor of x, *port tensors of others) and d sum(fn) / d x, as numpy."""
    if port.FRAMEWORK == "torch":
        t = port.tensor(x, requires_grad=True)
        out = fn(t, *[port.tensor(o) for o in others])
        out.sum().backward()
        return port.numpy(out), port.numpy(t.grad)
    import jittor as jt
    v = port.tensor(x, requires_grad=True)
    out = fn(v, *[port.tensor(o) for o in others])
    return port.numpy(out), port.numpy(jt.grad(out.sum(), v))


def assert_close_rel(got, want, rel, what):
    """max |got - want| <= rel * max |want| (the suite's relative error), NaN-free."""
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(float(np.abs(want).max()), 1e-12)
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= rel * scale, f"{what}: max rel err {err / scale:.3e} > {rel:.1e}"


def assert_close_elementwise(got, want, rtol, atol, what):
    """|got - want| <= atol + rtol |want| for every element: for tensors of large dynamic
    range (QFL gradients reach 1e12 at p = 0 or 1), where a max-scaled error would leave
    every ordinary element unchecked."""
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    got, want = got.astype(np.float64), np.asarray(want, np.float64)
    excess = np.abs(got - want) - (atol + rtol * np.abs(want))
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 0, (
        f"{what}: element {np.unravel_index(worst, want.shape)}: {got.flat[worst]:.9g} vs "
        f"{want.flat[worst]:.9g} (allowed {atol:.1e} + {rtol:.1e} x |reference|)")


@PROPERTY
@given(giou_pairs=st.lists(st.tuples(BOX, BOX), min_size=8, max_size=8))
def test_giou_loss_value_and_gradient(ports, giou_pairs):
    a = boxes_from([p[0] for p in giou_pairs], 1.0) + np.float32(0.5)
    b = boxes_from([p[1] for p in giou_pairs], 1.0)
    want = 1 - reference_giou(a, b)
    out = each_port(ports, lambda p: value_and_grad(p, p.losses.giou_loss, a, b))
    for name, (value, _) in out.items():
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert_close_rel(out["jittor"][1], out["torch"][1], 1e-5, "d giou_loss / d pred")


# ---------------------------------------------------------------- Quality Focal Loss
# Jittor vs PyTorch, both float32 with the same formula: a few ulps per element. Measured
# (2026-12-01, 200 random 8x6 batches at and near p = 0 and 1): max 2.0e-7 relative where
# |g| > 1e-3, at most 2e-19 absolute below; an absolute floor of 1e-10 covers elements near 0.
QFL_GRAD_RTOL, QFL_GRAD_ATOL = 1e-6, 1e-10


def reference_qfl(p, label, score, beta=2.0):
    p = p.astype(np.float64)
    n, c = p.shape
    target = np.zeros_like(p)
    is_t = label[:, None] == np.arange(c)[None, :]
    target[is_t] = np.broadcast_to(score[:, None], p.shape)[is_t]
    with np.errstate(divide="ignore"):  # log(0) = -inf, then clamped like PyTorch
        log_p = np.maximum(np.log(p), -100)
        log_1mp = np.maximum(np.log1p(-p), -100)
    bce = -(target * log_p + (1 - target) * log_1mp)
    mod = np.where(is_t, np.abs(target - p) ** beta, p ** beta)
    return (bce * mod).sum(axis=1)


EXTREME_PROB = st.one_of(st.just(0.0), st.just(1.0),
                         floats(0, 1e-6),
                         floats(1 - 1e-6, 1), floats(0, 1))


@PROPERTY
@given(probs=st.lists(EXTREME_PROB, min_size=48, max_size=48),
       labels=st.lists(st.integers(0, 6), min_size=8, max_size=8),
       scores=st.lists(st.one_of(st.just(0.0), st.just(1.0),
                                 floats(0, 1)),
                       min_size=8, max_size=8))
def test_quality_focal_loss_at_extreme_probabilities(ports, probs, labels, scores):
    """QFL on probabilities near and at 0 and 1 (log clamped at -100, as PyTorch's BCE)."""
    p = np.array(probs, np.float32).reshape(8, 6)
    label = np.array(labels, np.int64)    # 6 = background
    score = np.array(scores, np.float32)
    want = reference_qfl(p, label, score)
    out = each_port(ports, lambda port: value_and_grad(
        port, lambda x, lb, s: port.losses.quality_focal_loss(x, lb, s, beta=2.0),
        p, label, score))
    for name, (value, _) in out.items():
        assert_close_rel(value, want, 1e-5, f"{name} QFL")
    # element by element: the gradient spans 0 .. 1e12 (BCE's 1 / max(p (1 - p), 1e-12))
    assert_close_elementwise(out["jittor"][1], out["torch"][1], QFL_GRAD_RTOL, QFL_GRAD_ATOL,
                             "d QFL / d p")


def test_quality_focal_loss_on_tiny_shapes(ports):
    """A level's (anchors, classes) can be one element: a one-class head on a batch of one
    image of 128 px or less has a 1 x 1 P7 map. Values and gradients as on larger inputs,
    with the first anchor a positive or background."""
    shapes = [(n, c, first) for n, c in [(1, 1), (1, 2), (2, 1)] for first in (0, c)]
    for n, c, first_label in shapes:
        rng = np.random.default_rng(10 * n + c)
        p = rng.uniform(0.05, 0.95, (n, c)).astype(np.float32)
        label = np.full(n, c, np.int64)  # background but for the first anchor
        label[0] = first_label
        score = rng.uniform(0.2, 0.9, n).astype(np.float32)
        want = reference_qfl(p, label, score)
        out = each_port(ports, lambda port: value_and_grad(
            port, lambda x, lb, s: port.losses.quality_focal_loss(x, lb, s, beta=2.0),
            p, label, score))
        case = f"{n} x {c}, first label {first_label}"
        for name, (value, grad) in out.items():
            assert value.shape == (n,) and grad.shape == (n, c), f"{name} {case}"
            assert_close_rel(value, want, 1e-5, f"{name} QFL {case}")
        assert_close_elementwise(out["jittor"][1], out["torch"][1], QFL_GRAD_RTOL,
                                 QFL_GRAD_ATOL, f"d QFL / d p {case}")
        regimes.count("loss input of exactly one element (one class, one anchor)", n * c == 1)
    regimes.check(["loss input of exactly one element (one class, one anchor)"])


@pytest.mark.parametrize("rows", [0, 1, 3])
def test_unmap_puts_each_row_back_in_place(ports, rows):
    """Rows of the masked entries back in their places (a level with one positive anchor
    has one row), `fill` elsewhere."""
    mask = np.zeros(7, bool)
    mask[[1, 4, 6][:rows]] = True
    values = np.arange(1, 2 * rows + 1, dtype=np.float32).reshape(rows, 2)
    want = np.full((7, 2), -5.0, np.float32)
    want[mask] = values
    for name, port in ports.items():
        got = port.numpy(port.box_ops.unmap(port.tensor(values), port.tensor(mask), -5.0))
        np.testing.assert_array_equal(got, want, err_msg=name)


# ---------------------------------------------------------------- Distribution Focal Loss
def reference_dfl(logits, y):
    z = logits.astype(np.float64)
    logsumexp = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    y64 = y.astype(np.float64)
    left = np.floor(y64).astype(np.int64)
    ce = lambda k: logsumexp - z[np.arange(len(z)), k]  # noqa: E731
    return ce(left) * (left + 1 - y64) + ce(left + 1) * (y64 - left)


EDGE_TARGET = st.one_of(
    st.sampled_from([0.0, 15.9]),
    st.integers(0, 15).map(float),
    st.integers(1, 15).map(lambda k: float(np.nextafter(np.float32(k), np.float32(0)))),
    st.integers(0, 15).map(lambda k: float(np.nextafter(np.float32(k), np.float32(16)))),
    floats(0, 15.9))


@PROPERTY
@given(targets=st.lists(EDGE_TARGET, min_size=8, max_size=8),
       scale=st.sampled_from([0.1, 1.0, 10.0]), seed=st.integers(0, 2 ** 16))
def test_distribution_focal_loss_at_bin_edges(ports, targets, scale, seed):
    y = np.array(targets, np.float32)
    logits = (scale * np.random.default_rng(seed).standard_normal((8, 17))).astype(np.float32)
    want = reference_dfl(logits, y)
    out = each_port(ports, lambda port: value_and_grad(
        port, port.losses.distribution_focal_loss, logits, y))
    for name, (value, _) in out.items():
        assert_close_rel(value, want, 1e-5, f"{name} DFL")
    assert_close_rel(out["jittor"][1], out["torch"][1], 1e-5, "d DFL / d logits")


# ---------------------------------------------------------------- NMS with equal scores
def reference_batched_nms(boxes, scores, labels, iou_thr):
    """Greedy class-aware NMS in (score desc, index asc) order; IoU in float32 like the
    kernels, compared with the threshold as a double (IoU > thr suppresses)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    for i in order:
        suppressed = False
        for j in keep:
            if labels[j] != labels[i]:
                continue
            w = max(np.float32(0), min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]))
            h = max(np.float32(0), min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]))
            inter = np.float32(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = np.float32(inter / np.float32(area[i] + area[j] - inter))
            if float(iou) > iou_thr:
                suppressed = True
                break
        if not suppressed:
            keep.append(i)
    return keep


@PROPERTY
@given(draws=st.lists(st.tuples(BOX, st.sampled_from([0.3, 0.5, 0.9]), st.integers(0, 2)),
                      min_size=12, max_size=12),
       iou_thr=st.sampled_from([0.3, 0.5, 0.6]))
def test_nms_with_equal_scores(ports, draws, iou_thr):
    """Equal scores everywhere: the kept set and its order follow (score desc, index asc)."""
    boxes = boxes_from([d[0] for d in draws], 1.0)
    scores = np.array([d[1] for d in draws], np.float32)
    labels = np.array([d[2] for d in draws], np.int64)
    want = reference_batched_nms(boxes, scores, labels, iou_thr)
    for name, port in ports.items():
        got = port.numpy(port.postprocess.batched_nms(port.tensor(boxes), port.tensor(scores),
                                                      port.tensor(labels), iou_thr))
        assert got.tolist() == want, name
