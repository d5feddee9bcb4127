"""Jittor behaviours that the network modules work around (docs/MODEL.md section 10).

Each test pins the trap itself next to the work-around, so that a Jittor upgrade that
changes the behaviour shows up here rather than as a parity drift elsewhere.
"""
import numpy as np
import pytest

jt = pytest.importorskip("jittor")


def ref_group_norm(x, groups, eps=1e-5):
    g = x.astype(np.float64).reshape(x.shape[0], groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)


def test_builtin_group_norm_loses_precision_but_ours_does_not(jittor_port):
    x = (1e3 + np.random.default_rng(0).standard_normal((2, 8, 6, 6))).astype(np.float32)
    expected = ref_group_norm(x, 4)
    builtin = jt.nn.GroupNorm(4, 8)(jt.array(x)).numpy()
    ours = jittor_port.fpn.GroupNorm(4, 8)(jt.array(x)).numpy()
    assert np.abs(builtin - expected).max() > 1e-2  # one-pass E[x^2] - E[x]^2
    assert np.abs(ours - expected).max() < 1e-3


def test_parent_train_bypasses_resnet_train_until_forward(jittor_port):
    backbone = jittor_port.backbone.ResNet(18)
    parent = jt.nn.Sequential(backbone)
    parent.train()  # sets is_train on every descendant, never calls ResNet.train()
    assert backbone.layer2[0].bn1.is_train
    backbone(jt.array(np.zeros((1, 3, 32, 32), np.float32)))
    assert not backbone.layer2[0].bn1.is_train and not backbone.bn1.is_train


def test_frozen_parameters_get_zero_gradient_and_stay_frozen(jittor_port):
    backbone = jittor_port.backbone.ResNet(18, frozen_stages=1)
    outs = backbone(jt.array(np.ones((1, 3, 32, 32), np.float32)))
    loss = sum(o.sum() for o in outs)
    frozen, live = backbone.layer1[0].conv1.weight, backbone.layer2[0].conv1.weight
    g_frozen, g_live = jt.grad(loss, [frozen, live])
    assert np.all(g_frozen.numpy() == 0) and np.any(g_live.numpy() != 0)
    backbone.eval()  # Jittor's eval() stop_grads all; train() restores only the trainable
    backbone.train()
    assert frozen.is_stop_grad() and not live.is_stop_grad()


def test_assign_from_a_stop_grad_var_freezes_the_target():
    """Why weight loading must assign from fresh jt.array(...), not from port.tensor(...)."""
    param = jt.array(np.ones(3, np.float32))
    param.assign(jt.array(np.zeros(3, np.float32)))
    assert not param.is_stop_grad()
    param.assign(jt.array(np.zeros(3, np.float32)).stop_grad())
    assert param.is_stop_grad()


def test_integral_project_is_excluded_from_gradients(jittor_port):
    integral = jittor_port.gfl_head.Integral(16)
    x = jt.array(np.random.default_rng(1).standard_normal((4, 68)).astype(np.float32))
    assert integral.project.is_stop_grad()
    assert "project" in integral.state_dict()
    optimizer = jt.optim.SGD(integral.parameters(), lr=1.0, weight_decay=0.1)
    optimizer.step((integral(x) * x[:, :4]).sum())
    np.testing.assert_array_equal(integral.project.numpy(), np.arange(17))
