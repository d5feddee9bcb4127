"""Backbone, FPN, GFL head (DGQP) and probes of both ports.

Numbers are checked against float64 numpy references written here, against hand-computed
cases, and port against port with identical weights copied by name.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NUM_CLASSES = 3
FPN_CHANNELS = 32
FEAT_CHANNELS = 32
STACKED_CONVS = 2
GN_GROUPS = 8
RESNET18_C345 = [128, 256, 512]  # channels of layer2..layer4 of a ResNet-18


# ---------------------------------------------------------------- helpers (port-neutral)

def build_parts(port):
    backbone = port.backbone.ResNet(18)
    neck = port.fpn.FPN(RESNET18_C345, FPN_CHANNELS, num_outs=5, start_level=0)
    head = port.gfl_head.GFLHead(NUM_CLASSES, FPN_CHANNELS, feat_channels=FEAT_CHANNELS,
                                 stacked_convs=STACKED_CONVS, gn_groups=GN_GROUPS)
    return backbone, neck, head


def run_network(port, parts, imgs):
    backbone, neck, head = parts
    return head(neck(backbone(port.tensor(imgs))))


def state_numpy(port, module):
    return {k: np.array(port.numpy(v), copy=True) for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}  # PyTorch-only BN counter


def load_numpy(port, module, state):
    """Copy numpy arrays into the module's state by name (every name must exist)."""
    own = module.state_dict()
    assert set(state) <= set(own), sorted(set(state) - set(own))
    if port.FRAMEWORK == "torch":
        import torch
        with torch.no_grad():
            for name, array in state.items():
                own[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))
    else:
        import jittor as jt
        for name, array in state.items():
            # a fresh (not stop_grad) Var: `assign` keeps the parameter trainable
            own[name].assign(jt.array(np.ascontiguousarray(array)).cast(own[name].dtype))


def is_trainable(port, param):
    return param.requires_grad if port.FRAMEWORK == "torch" else not param.is_stop_grad()


def bn_modules(port, module):
    if port.FRAMEWORK == "torch":
        from torch import nn
        return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    from jittor import nn
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def in_train_mode(port, module):
    return module.training if port.FRAMEWORK == "torch" else module.is_training()


def wrap(port, module):
    """A parent container, to call train() the way a detector would."""
    if port.FRAMEWORK == "torch":
        from torch import nn
    else:
        from jittor import nn
    return nn.Sequential(module)


def sgd_step(port, module, loss):
    """One SGD step (momentum, weight decay) over ALL parameters, frozen ones included."""
    if port.FRAMEWORK == "torch":
        import torch
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    else:
        import jittor as jt
        opt = jt.optim.SGD(module.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        opt.step(loss)


def gradients(port, loss, wrt):
    if port.FRAMEWORK == "torch":
        import torch
        return [port.numpy(g) for g in torch.autograd.grad(loss, wrt)]
    import jittor as jt
    return [g.numpy() for g in jt.grad(loss, wrt)]


def weighted_sum(port, tensors, seed=7):
    """sum_i <t_i, R_i> with fixed random R_i: a scalar that depends on every element."""
    rng = np.random.default_rng(seed)
    total = 0
    for t in tensors:
        r = rng.standard_normal(tuple(t.shape)).astype(np.float32)
        total = total + (t * port.tensor(r)).sum()
    return total


def random_state(shapes, seed=0):
    """Weights with O(1) activations and peaked bin distributions (not the tiny init)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith("project"):
            state[name] = np.arange(shape[0], dtype=np.float32)
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        elif name.endswith("running_mean") or name.endswith("bias"):
            state[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) == 4:  # conv weight
            fan_in = shape[1] * shape[2] * shape[3]
            gain = 3.0 if "gfl_reg" in name else 1.0
            state[name] = (gain * rng.standard_normal(shape) / math.sqrt(fan_in)).astype(
                np.float32)
        else:  # norm weights, scales
            state[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return state


def max_rel_diff(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def halve(n, times=1):
    """Output size of `times` stride-2 layers with padding (k-1)/2: ceil(n / 2) each."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


# ---------------------------------------------------------------- numpy float64 references

def ref_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def ref_dgqp(logits, reg_max, topk):
    n, _, h, w = logits.shape
    prob = ref_softmax(logits.reshape(n, 4, reg_max + 1, h, w), axis=2)
    top = -np.sort(-prob, axis=2)[:, :, :topk]
    stat = np.concatenate([top, top.mean(axis=2, keepdims=True)], axis=2)
    return stat.reshape(n, 4 * (topk + 1), h, w)


def ref_integral(x, reg_max):
    prob = ref_softmax(x.reshape(*x.shape[:-1], 4, reg_max + 1), axis=-1)
    return prob @ np.arange(reg_max + 1, dtype=np.float64)


def ref_upsample_nearest(x, out_h, out_w):
    h, w = x.shape[2:]
    rows = np.arange(out_h) * h // out_h  # exact floor(dst * in / out)
    cols = np.arange(out_w) * w // out_w
    return x[:, :, rows][:, :, :, cols]


def ref_group_norm(x, groups, weight, bias, eps=1e-5):
    g = x.astype(np.float64).reshape(x.shape[0], groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    out = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    affine = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    return out * weight.reshape(affine) + bias.reshape(affine)


# ---------------------------------------------------------------- shapes

@pytest.mark.parametrize("height,width", [(64, 96), (100, 75)])
def test_output_shapes_of_every_stage(port, height, width):
    parts = build_parts(port)
    imgs = np.random.default_rng(0).standard_normal((2, 3, height, width)).astype(np.float32)
    with port.probes.capture() as probes:
        cls_scores, bbox_preds = run_network(port, parts, imgs)

    size = lambda times: (halve(height, times), halve(width, times))  # noqa: E731
    assert probes["backbone.stem"].shape == (2, 64, *size(2))
    assert probes["backbone.layer1"].shape == (2, 64, *size(2))
    for i, channels in enumerate(RESNET18_C345):
        assert probes[f"backbone.layer{i + 2}"].shape == (2, channels, *size(3 + i))
    for level in range(5):
        hw = size(3 + level)
        assert probes[f"neck.p{level + 3}"].shape == (2, FPN_CHANNELS, *hw)
        assert tuple(cls_scores[level].shape) == (2, NUM_CLASSES, *hw)
        assert tuple(bbox_preds[level].shape) == (2, 4 * 17, *hw)
        assert probes[f"head.dgqp_feat.{level}"].shape == (2, 4 * 5, *hw)
        assert probes[f"head.quality.{level}"].shape == (2, 1, *hw)
        scores = port.numpy(cls_scores[level])
        assert scores.min() >= 0 and scores.max() <= 1  # probabilities, not logits


def test_backbone_out_indices_pick_stages(port):
    backbone = port.backbone.ResNet(18, out_indices=(0, 3))
    outs = backbone(port.tensor(np.zeros((1, 3, 64, 64), np.float32)))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 16, 16), (1, 512, 2, 2)]
    assert backbone.out_channels == [64, 512]


@pytest.mark.parametrize("kwargs,message", [
    ({"depth": 20}, "depth 20"),
    ({"depth": 18, "frozen_stages": 5}, "frozen_stages = 5"),
    ({"depth": 18, "out_indices": (4,)}, "out_indices"),
])
def test_resnet_rejects_bad_arguments(port, kwargs, message):
    with pytest.raises(ValueError, match=message):
        port.backbone.ResNet(**kwargs)


def test_head_and_fpn_reject_bad_input(port):
    with pytest.raises(ValueError, match="gn_groups = 7"):
        port.gfl_head.GFLHead(3, 32, feat_channels=32, gn_groups=7)
    with pytest.raises(ValueError, match="norm = 'bn'"):
        port.fpn.ConvModule(4, 4, 1, norm="bn")
    head = port.gfl_head.GFLHead(3, 8, feat_channels=8, stacked_convs=1, gn_groups=4)
    with pytest.raises(ValueError, match="got 2 feature maps"):
        head([port.tensor(np.zeros((1, 8, 2, 2), np.float32))] * 2)
    with pytest.raises(ValueError, match="last dimension of 68"):
        head.integral(port.tensor(np.zeros((2, 60), np.float32)))


# ---------------------------------------------------------------- parameter names

def bn_keys(prefix):
    return [f"{prefix}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]


def expected_resnet_keys(depth):
    """mmdetection / torchvision ResNet names, written from the layout, not from the code."""
    blocks, bottleneck = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}[depth]
    keys = ["conv1.weight"] + bn_keys("bn1")
    for stage, num_blocks in enumerate(blocks):
        for b in range(num_blocks):
            prefix = f"layer{stage + 1}.{b}"
            for j in (1, 2, 3) if bottleneck else (1, 2):
                keys += [f"{prefix}.conv{j}.weight"] + bn_keys(f"{prefix}.bn{j}")
            if b == 0 and (stage > 0 or bottleneck):
                keys += [f"{prefix}.downsample.0.weight"] + bn_keys(f"{prefix}.downsample.1")
    return keys


EXPECTED_NECK_KEYS = [
    "lateral_convs.0.conv.weight", "lateral_convs.0.conv.bias",
    "lateral_convs.1.conv.weight", "lateral_convs.1.conv.bias",
    "lateral_convs.2.conv.weight", "lateral_convs.2.conv.bias",
    "fpn_convs.0.conv.weight", "fpn_convs.0.conv.bias",
    "fpn_convs.1.conv.weight", "fpn_convs.1.conv.bias",
    "fpn_convs.2.conv.weight", "fpn_convs.2.conv.bias",
    "fpn_convs.3.conv.weight", "fpn_convs.3.conv.bias",
    "fpn_convs.4.conv.weight", "fpn_convs.4.conv.bias",
]

EXPECTED_HEAD_SHAPES = {  # stacked_convs = 2, 32 channels, 3 classes, reg_max 16, topk 4
    "cls_convs.0.conv.weight": (32, 32, 3, 3), "cls_convs.0.gn.weight": (32,),
    "cls_convs.0.gn.bias": (32,), "cls_convs.1.conv.weight": (32, 32, 3, 3),
    "cls_convs.1.gn.weight": (32,), "cls_convs.1.gn.bias": (32,),
    "reg_convs.0.conv.weight": (32, 32, 3, 3), "reg_convs.0.gn.weight": (32,),
    "reg_convs.0.gn.bias": (32,), "reg_convs.1.conv.weight": (32, 32, 3, 3),
    "reg_convs.1.gn.weight": (32,), "reg_convs.1.gn.bias": (32,),
    "gfl_cls.weight": (3, 32, 3, 3), "gfl_cls.bias": (3,),
    "gfl_reg.weight": (68, 32, 3, 3), "gfl_reg.bias": (68,),
    "reg_conf.0.weight": (64, 20, 1, 1), "reg_conf.0.bias": (64,),
    "reg_conf.2.weight": (1, 64, 1, 1), "reg_conf.2.bias": (1,),
    "scales.0.scale": (1,), "scales.1.scale": (1,), "scales.2.scale": (1,),
    "scales.3.scale": (1,), "scales.4.scale": (1,),
    "integral.project": (17,),
}


def test_state_dict_follows_mmdetection_names(port):
    backbone, neck, head = build_parts(port)
    assert sorted(state_numpy(port, backbone)) == sorted(expected_resnet_keys(18))
    assert sorted(state_numpy(port, neck)) == sorted(EXPECTED_NECK_KEYS)
    head_state = state_numpy(port, head)
    assert {k: v.shape for k, v in head_state.items()} == EXPECTED_HEAD_SHAPES
    r50 = state_numpy(port, port.backbone.ResNet(50))
    assert sorted(r50) == sorted(expected_resnet_keys(50))
    assert r50["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert r50["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert r50["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)


def test_state_dicts_equal_between_ports(torch_port, jittor_port):
    for make in (lambda p: build_parts(p), lambda p: [p.backbone.ResNet(50)]):
        for t_part, j_part in zip(make(torch_port), make(jittor_port)):
            t_shapes = {k: v.shape for k, v in state_numpy(torch_port, t_part).items()}
            j_shapes = {k: v.shape for k, v in state_numpy(jittor_port, j_part).items()}
            assert t_shapes == j_shapes


# ---------------------------------------------------------------- freezing and norm_eval

FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.")


def test_frozen_stages_get_no_gradient_and_are_never_updated(port):
    backbone = port.backbone.ResNet(18, frozen_stages=1)
    backbone.train()
    for name, p in backbone.named_parameters():
        if "running_" not in name:  # Jittor lists BN statistics as (stop_grad) parameters
            assert is_trainable(port, p) != name.startswith(FROZEN_PREFIXES), name
    before = state_numpy(port, backbone)
    imgs = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    sgd_step(port, backbone, weighted_sum(port, backbone(port.tensor(imgs))))
    after = state_numpy(port, backbone)
    for name in before:
        frozen = name.startswith(FROZEN_PREFIXES) or "running_" in name
        unchanged = np.array_equal(before[name], after[name])
        assert unchanged == frozen, name  # weight decay alone would move a frozen weight


def test_norm_eval_keeps_every_bn_in_eval_mode(port):
    backbone = port.backbone.ResNet(18, frozen_stages=1, norm_eval=True)
    backbone.train()
    assert in_train_mode(port, backbone) and in_train_mode(port, backbone.layer2)
    assert not any(in_train_mode(port, bn) for bn in bn_modules(port, backbone))

    # train() on a parent, as the detector does; then a forward must not touch BN statistics
    imgs = port.tensor(np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(
        np.float32))
    parent = wrap(port, backbone)
    # read first: Jittor creates weights lazily, and a forward that still computes them fuses
    # their initialisers into its kernels, rounding unlike one over stored weights (9e-6 on
    # a Xeon)
    before = state_numpy(port, backbone)
    parent.eval()
    expected = [port.numpy(o) for o in backbone(imgs)]
    parent.train()
    outs = [port.numpy(o) for o in backbone(imgs)]
    assert not any(in_train_mode(port, bn) for bn in bn_modules(port, backbone))
    after = state_numpy(port, backbone)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name], err_msg=name)
    for out, exp in zip(outs, expected):
        np.testing.assert_array_equal(out, exp)  # eval-mode BN: same numbers as eval()
    # and the frozen/trainable split survives the eval()/train() round trip
    for name, p in backbone.named_parameters():
        if "running_" not in name:  # Jittor lists BN statistics as (stop_grad) parameters
            assert is_trainable(port, p) != name.startswith(FROZEN_PREFIXES), name


def test_without_norm_eval_only_frozen_stages_stay_eval(port):
    backbone = port.backbone.ResNet(18, frozen_stages=1, norm_eval=False)
    backbone.train()
    assert not in_train_mode(port, backbone.bn1)
    assert not in_train_mode(port, backbone.layer1[0].bn1)
    assert in_train_mode(port, backbone.layer2[0].bn1)


# ---------------------------------------------------------------- initialisation

def test_head_init(port):
    head = build_parts(port)[2]
    state = state_numpy(port, head)
    np.testing.assert_allclose(state["gfl_cls.bias"], np.full(3, -math.log(99.0)), rtol=1e-6)
    for tower in ("cls_convs", "reg_convs"):
        for i in range(STACKED_CONVS):
            np.testing.assert_array_equal(state[f"{tower}.{i}.gn.weight"], np.ones(32))
            np.testing.assert_array_equal(state[f"{tower}.{i}.gn.bias"], np.zeros(32))
            assert abs(state[f"{tower}.{i}.conv.weight"].std() - 0.01) < 0.001
    for level in range(5):
        np.testing.assert_array_equal(state[f"scales.{level}.scale"], [1.0])
    np.testing.assert_array_equal(state["integral.project"], np.arange(17, dtype=np.float32))
    for name in ("gfl_reg.weight", "gfl_cls.weight", "reg_conf.0.weight"):
        assert abs(state[name].std() - 0.01) < 0.0015, name
        assert abs(state[name].mean()) < 0.002, name
    for name in ("gfl_reg.bias", "reg_conf.0.bias", "reg_conf.2.bias"):
        np.testing.assert_array_equal(state[name], 0.0)


def test_fpn_and_backbone_init(port):
    backbone, neck, _ = build_parts(port)
    neck_state = state_numpy(port, neck)
    for name, w in neck_state.items():
        if name.endswith("bias"):
            np.testing.assert_array_equal(w, 0.0)
            continue
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # xavier uniform, gain 1
        assert 0.9 * bound < np.abs(w).max() <= bound, name
    state = state_numpy(port, backbone)
    w = state["layer4.0.conv1.weight"]  # (512, 256, 3, 3): kaiming normal, fan_out, relu
    assert abs(w.std() / math.sqrt(2.0 / (512 * 9)) - 1) < 0.02
    for name in state:
        if name.endswith("bn1.weight") or name.endswith("bn2.weight"):
            np.testing.assert_array_equal(state[name], 1.0)
        if name.endswith("bn1.bias") or name.endswith("bn2.bias"):
            np.testing.assert_array_equal(state[name], 0.0)


def test_integral_project_is_saved_but_never_trained(port):
    head = port.gfl_head.GFLHead(3, 8, feat_channels=8, stacked_convs=1, gn_groups=4)
    names = [n for n, p in head.named_parameters() if is_trainable(port, p)]
    assert "integral.project" not in names and "scales.0.scale" in names
    feats = [port.tensor(np.random.default_rng(l).standard_normal((1, 8, 3, 3)).astype(
        np.float32)) for l in range(5)]
    cls_scores, bbox_preds = head(feats)
    flat = bbox_preds[0].reshape(1, 68, 9).permute(0, 2, 1)
    loss = weighted_sum(port, cls_scores + bbox_preds) + head.integral(flat).sum()
    before = state_numpy(port, head)
    sgd_step(port, head, loss)
    after = state_numpy(port, head)
    np.testing.assert_array_equal(after["integral.project"], np.arange(17))
    assert not np.array_equal(before["scales.0.scale"], after["scales.0.scale"])


# ---------------------------------------------------------------- numpy references

def test_dgqp_features_hand_computed_order(port):
    """reg_max 3 (4 bins), top-2: per side [p1, p2, mean] with p sorted descending."""
    head = port.gfl_head.GFLHead(1, 4, feat_channels=4, stacked_convs=0, gn_groups=1,
                                 reg_max=3, reg_topk=2)
    probs = np.array([[0.1, 0.4, 0.2, 0.3],    # left
                      [0.25, 0.25, 0.25, 0.25],  # top (all tied)
                      [0.7, 0.1, 0.1, 0.1],    # right
                      [0.0625, 0.0625, 0.125, 0.75]])  # bottom
    logits = np.log(probs).reshape(1, 16, 1, 1) + 3.0  # softmax ignores the shift
    got = port.numpy(head.dgqp_features(port.tensor(logits))).reshape(4, 3)
    expected = [[0.4, 0.3, 0.35], [0.25, 0.25, 0.25], [0.7, 0.1, 0.4], [0.75, 0.125, 0.4375]]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_dgqp_features_match_numpy_reference(port):
    head = port.gfl_head.GFLHead(3, 8, feat_channels=8, stacked_convs=0, gn_groups=8)
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 68, 3, 4)) * 3
    logits[0, :17] = rng.integers(-1, 2, (17, 3, 4))  # many tied bins on one side
    got = port.numpy(head.dgqp_features(port.tensor(logits)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, ref_dgqp(logits, 16, 4), rtol=1e-12, atol=1e-15)


def test_integral_matches_numpy_and_hand_cases(port):
    integral = port.gfl_head.Integral(16)
    x = np.random.default_rng(4).standard_normal((3, 5, 68)) * 4
    np.testing.assert_allclose(port.numpy(integral(port.tensor(x))), ref_integral(x, 16),
                               rtol=1e-12)
    hand = np.zeros((1, 68))          # uniform bins: expectation 8 on every side
    hand[0, 17 + 5] = 100.0           # top: all mass on bin 5
    hand[0, 34 + 2] = hand[0, 34 + 3] = 100.0   # right: half on 2, half on 3
    np.testing.assert_allclose(port.numpy(integral(port.tensor(hand))), [[8, 5, 2.5, 8]],
                               rtol=1e-12)


ODD_UPSAMPLES = [(13, 25), (7, 13), (4, 7), (2, 3), (3, 5), (25, 50), (1, 2), (6, 6), (1, 1)]


@pytest.mark.parametrize("in_size,out_size", ODD_UPSAMPLES)
def test_upsample_nearest_matches_numpy(port, in_size, out_size):
    x = np.random.default_rng(5).standard_normal((1, 2, in_size, in_size + 1))
    out_w = out_size + 2 if out_size > 1 else 1
    got = port.numpy(port.fpn.upsample_nearest(port.tensor(x), (out_size, out_w)))
    np.testing.assert_array_equal(got, ref_upsample_nearest(x, out_size, out_w))


def test_upsample_nearest_indices_equal_between_ports(torch_port, jittor_port):
    """Sizes where floor(dst * float32(in/out)) and the exact ratio can disagree included."""
    pairs = [(i, o) for i in range(1, 21) for o in sorted({2 * i - 1, 2 * i, 2 * i + 1})
             if o >= 1] + [(14, 20), (7, 10), (28, 40), (21, 30), (15, 25), (19, 36)]
    for in_size, out_size in pairs:
        x = np.arange(in_size * 3, dtype=np.float32).reshape(1, 1, in_size, 3)
        outs = [p.numpy(p.fpn.upsample_nearest(p.tensor(x), (out_size, 5)))
                for p in (torch_port, jittor_port)]
        np.testing.assert_array_equal(outs[0], outs[1], err_msg=f"{in_size} -> {out_size}")


def test_group_norm_large_mean_matches_float64(port):
    rng = np.random.default_rng(6)
    x = (1e3 + rng.standard_normal((2, 16, 5, 7))).astype(np.float32)
    gn = port.fpn.GroupNorm(4, 16)
    weight = rng.uniform(0.5, 2, 16).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32)
    load_numpy(port, gn, {"weight": weight, "bias": bias})
    got = port.numpy(gn(port.tensor(x)))
    np.testing.assert_allclose(got, ref_group_norm(x, 4, weight, bias), atol=1e-3)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 2), groups=st.integers(1, 3), per_group=st.integers(1, 3),
       h=st.integers(1, 4), w=st.integers(2, 4),
       mean=st.floats(-2e3, 2e3, allow_subnormal=False),
       std=st.floats(0.5, 10.0, allow_subnormal=False), seed=st.integers(0, 2 ** 16))
def test_group_norm_property_matches_float64(port, n, groups, per_group, h, w, mean, std,
                                             seed):
    channels = groups * per_group
    x = (mean + std * np.random.default_rng(seed).standard_normal((n, channels, h, w))).astype(
        np.float32)
    got = port.numpy(port.fpn.GroupNorm(groups, channels)(port.tensor(x)))
    expected = ref_group_norm(x, groups, np.ones(channels), np.zeros(channels))
    np.testing.assert_allclose(got, expected, atol=2e-3)


# ---------------------------------------------------------------- port against port

def test_head_outputs_and_gradients_agree_between_ports(torch_port, jittor_port):
    heads = {p: p.gfl_head.GFLHead(NUM_CLASSES, FPN_CHANNELS, feat_channels=FEAT_CHANNELS,
                                   stacked_convs=STACKED_CONVS, gn_groups=GN_GROUPS)
             for p in (torch_port, jittor_port)}
    shapes = {k: v.shape for k, v in state_numpy(torch_port, heads[torch_port]).items()}
    weights = random_state(shapes)
    rng = np.random.default_rng(8)
    feats = [rng.standard_normal((2, FPN_CHANNELS, s, s + 1)).astype(np.float32)
             for s in (10, 5, 3, 2, 1)]
    results = {}
    for port, head in heads.items():
        load_numpy(port, head, weights)
        inputs = [port.tensor(f, requires_grad=True) for f in feats]
        with port.probes.capture() as probes:
            cls_scores, bbox_preds = head(inputs)
        loss = weighted_sum(port, cls_scores) + weighted_sum(port, bbox_preds, seed=9)
        wrt = inputs + [head.gfl_reg.weight, head.reg_conf[0].weight, head.scales[0].scale]
        results[port.FRAMEWORK] = (probes, gradients(port, loss, wrt))
    (t_probes, t_grads), (j_probes, j_grads) = results["torch"], results["jittor"]
    assert list(t_probes) == list(j_probes)
    worst = {}
    for name in t_probes:
        worst[name] = max_rel_diff(j_probes[name], t_probes[name])
        assert worst[name] < 1e-5, (name, worst[name])
    for i, (gt, gj) in enumerate(zip(t_grads, j_grads)):
        assert max_rel_diff(gj, gt) < 1e-4, (i, max_rel_diff(gj, gt))
    # the quality branch is live: DGQP features are not uniform and scores vary
    assert t_probes["head.dgqp_feat.0"].std() > 0.05
    print("max relative difference of head probes between ports:", max(worst.values()))


def test_full_network_agrees_between_ports(torch_port, jittor_port):
    parts = {p: build_parts(p) for p in (torch_port, jittor_port)}
    imgs = np.random.default_rng(10).standard_normal((1, 3, 100, 75)).astype(np.float32)
    captured = {}
    for port, modules in parts.items():
        for module, seed in zip(modules, (11, 12, 13)):
            shapes = {k: v.shape for k, v in state_numpy(port, module).items()}
            load_numpy(port, module, random_state(shapes, seed))
        for module in modules:
            module.train()  # norm_eval: BN still uses the loaded running statistics
        with port.probes.capture() as probes:
            run_network(port, modules, imgs)
        captured[port.FRAMEWORK] = probes
    assert list(captured["torch"]) == list(captured["jittor"])
    worst = max(max_rel_diff(captured["jittor"][k], v) for k, v in captured["torch"].items())
    print("max relative difference of all probes between ports:", worst)
    assert worst < 1e-4


# ---------------------------------------------------------------- probes

def expected_probe_names():
    names = ["backbone.stem"] + [f"backbone.layer{i}" for i in range(1, 5)]
    names += [f"neck.lateral.{i}" for i in range(3)] + [f"neck.p{i}" for i in range(3, 8)]
    for level in range(5):
        names += [f"head.{kind}.{level}" for kind in
                  ("cls_tower", "reg_tower", "reg_logits", "dgqp_feat", "quality", "cls_score")]
    return names


def test_probes_record_every_name_in_forward_order(port):
    parts = build_parts(port)
    imgs = np.random.default_rng(14).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with port.probes.capture() as probes:
        cls_scores, _ = run_network(port, parts, imgs)
    assert list(probes) == expected_probe_names()
    assert all(isinstance(v, np.ndarray) for v in probes.values())
    np.testing.assert_array_equal(probes["head.cls_score.2"], port.numpy(cls_scores[2]))

    snapshot = dict(probes)
    run_network(port, parts, imgs * 2)  # outside capture: nothing recorded anywhere
    port.probes.record("outside", port.tensor(np.ones(2, np.float32)))
    assert list(probes) == list(snapshot) and not port.probes.is_active()
    assert all(probes[name] is snapshot[name] for name in snapshot)


def test_probe_capture_semantics(port):
    a = port.tensor(np.arange(3, dtype=np.float32))
    with port.probes.capture() as probes:
        port.probes.record("x", a)
        port.probes.record("y", a)
        port.probes.record("x", a * 2)  # a later record of the same name replaces it
        with pytest.raises(RuntimeError, match="already active"):
            with port.probes.capture():
                pass
    assert list(probes) == ["y", "x"]
    np.testing.assert_array_equal(probes["x"], [0, 2, 4])
    assert not np.shares_memory(probes["y"], port.numpy(a))

    with pytest.raises(KeyError):  # an error inside a capture ends it cleanly
        with port.probes.capture():
            raise KeyError("boom")
    with port.probes.capture() as fresh:
        port.probes.record("z", a)
    assert list(fresh) == ["z"]
