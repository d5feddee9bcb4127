"""gfocal/jittor/kernels.py: the sgemm-based replacements give the values and gradients of
the formulas they replace (float64 numpy references, analytic gradients)."""
import numpy as np
import pytest

jt = pytest.importorskip("jittor")


@pytest.fixture(scope="module")
def kernels(jittor_port):
    from gfocal.jittor import kernels
    return kernels


def grads(out, grad_out, inputs):
    return [g.numpy() for g in jt.grad((out * jt.array(grad_out)).sum(), inputs)]


def close(actual, expected, rtol=1e-5):
    scale = max(1.0, float(np.abs(expected).max()))
    return np.abs(actual - expected).max() <= rtol * scale


@pytest.mark.parametrize("n", [1, 2])
def test_channel_affine_matches_formula_and_its_gradients(kernels, n):
    rng = np.random.default_rng(n)
    x, g = rng.standard_normal((2, n, 16, 5, 7)).astype(np.float32)
    scale, shift = rng.standard_normal((2, 16)).astype(np.float32)
    xs = [jt.array(v) for v in (x, scale, shift)]
    out = kernels.ChannelAffine.apply(*xs)
    per_c = (slice(None), None, None)
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    assert close(out.numpy(), x64 * scale[per_c] + shift[per_c])
    gx, gs, gb = grads(out, g, xs)
    assert close(gx, g64 * scale[per_c])
    assert close(gs, (g64 * x64).sum(axis=(0, 2, 3)))
    assert close(gb, g64.sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("n", [1, 2])
def test_group_norm_function_matches_two_pass_formula_and_gradients(kernels, n):
    rng = np.random.default_rng(10 + n)
    groups, c = 4, 16
    x = (3.0 + rng.standard_normal((n, c, 6, 5))).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    weight, bias = rng.standard_normal((2, c)).astype(np.float32)
    xs = [jt.array(v) for v in (x, weight, bias)]
    out = kernels.GroupNormFunction(groups, 1e-5)(*xs)

    rows = x.astype(np.float64).reshape(n, groups, -1)
    mean = rows.mean(axis=2, keepdims=True)
    rstd = 1 / np.sqrt(((rows - mean) ** 2).mean(axis=2, keepdims=True) + 1e-5)
    normed = ((rows - mean) * rstd).reshape(x.shape)
    per_c = (slice(None), None, None)
    assert close(out.numpy(), normed * weight[per_c] + bias[per_c])

    gx, gw, gb = grads(out, g, xs)
    g_normed = (g.astype(np.float64) * weight[per_c]).reshape(n, groups, -1)
    n_rows = normed.reshape(n, groups, -1)
    expected_gx = rstd * (g_normed - g_normed.mean(axis=2, keepdims=True)
                          - n_rows * (g_normed * n_rows).mean(axis=2, keepdims=True))
    assert close(gx, expected_gx.reshape(x.shape))
    assert close(gw, (g * normed).sum(axis=(0, 2, 3)))
    assert close(gb, g.astype(np.float64).sum(axis=(0, 2, 3)))


@pytest.mark.parametrize("n", [1, 2])
def test_pointwise_conv_equals_onednn_convolution_with_gradients(kernels, n):
    rng = np.random.default_rng(20 + n)
    x = jt.array(rng.standard_normal((n, 24, 7, 9)).astype(np.float32))
    g = rng.standard_normal((n, 12, 7, 9)).astype(np.float32)
    conv = kernels.Conv2d(24, 12, 1, bias=False)
    reference = jt.nn.conv2d(x, conv.weight)
    out = conv(x)
    assert close(out.numpy(), reference.numpy())
    for ours, theirs in zip(grads(out, g, [x, conv.weight]),
                            grads(reference, g, [x, conv.weight])):
        assert close(ours, theirs)


@pytest.mark.parametrize("frozen", [False, True])
def test_batch_norm_fixed_statistics_is_the_eval_formula_with_its_gradients(kernels, frozen):
    bn = kernels.BatchNorm2d(8)
    rng = np.random.default_rng(3)
    for name in ("weight", "bias", "running_mean"):
        getattr(bn, name).assign(rng.standard_normal(8).astype(np.float32))
    bn.running_var.assign(rng.uniform(0.5, 2, 8).astype(np.float32))
    if frozen:  # as ResNet._freeze_stages leaves it
        bn.weight.stop_grad()
        bn.bias.stop_grad()
    bn.is_train = False
    x = rng.standard_normal((2, 8, 4, 4)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    mean, var, w, b = (v.numpy().astype(np.float64)[:, None, None]
                       for v in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    scale = w / np.sqrt(var + bn.eps)
    x_in = jt.array(x)
    out = bn(x_in)
    assert close(out.numpy(), (x - mean) * scale + b)
    inputs = [x_in] if frozen else [x_in, bn.weight, bn.bias]
    got = grads(out, g, inputs)
    assert close(got[0], g * scale)
    if not frozen:
        assert close(got[1], (g * (x - mean) / np.sqrt(var + bn.eps)).sum(axis=(0, 2, 3)))
        assert close(got[2], g.astype(np.float64).sum(axis=(0, 2, 3)))


def test_batch_norm_with_batch_statistics_is_jittors_own(kernels):
    bn = kernels.BatchNorm2d(8)
    x = np.random.default_rng(4).standard_normal((2, 8, 4, 4)).astype(np.float32)
    bn.is_train = True
    out = bn(jt.array(x)).numpy()
    rows = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(8, -1)
    expected = (x - rows.mean(1)[:, None, None]) / np.sqrt(rows.var(1)[:, None, None] + bn.eps)
    assert np.abs(out - expected).max() < 1e-4
    assert np.abs(bn.running_mean.numpy() - 0.1 * rows.mean(1)).max() < 1e-6
