"""Jittor-only replacements for slow CPU kernels, and for two that do not compile on half
inputs (no PyTorch counterpart: framework idiom).

Measured on the benchmark model (perf_tests/README.md, "What the Jittor port changed"):
Jittor's generated CPU reduce kernels are scalar and single-threaded (its OpenMP
ParallelPass loops forever on 2 threads), so the group and channel sums in the backward
of GroupNorm and of BatchNorm with fixed statistics are matrix-vector products (oneDNN
sgemm, threaded) instead; and a 1x1 stride-1 convolution is one sgemm per image, which
skips the activation and weight reorders that Jittor's oneDNN convolution pays per call.
"""
import jittor as jt
from jittor import nn

from . import precision


def row_sum(rows):
    """(R, L) -> (R,): sum along L as rows @ ones (sgemm)."""
    ones = jt.ones((rows.shape[1], 1), rows.dtype)
    return jt.matmul(rows, ones).reshape(rows.shape[0])


def channel_sum(t):
    """(N, C, ...) -> (C,): sum over every axis but 1."""
    n, c = t.shape[:2]
    per_image = row_sum(t.reshape(n * c, -1)).reshape(n, c)
    return per_image[0] if n == 1 else per_image.sum(0)


def _per_channel(v, like):
    return v.broadcast(like, [0] + list(range(2, like.ndim)))


def channel_affine(x, scale, shift):
    """x * scale[c] + shift[c]."""
    return x * _per_channel(scale, x) + _per_channel(shift, x)


class GroupNormFunction(jt.Function):
    """GroupNorm, two-pass variance as PyTorch; backward with sgemm group/channel sums."""

    def __init__(self, num_groups, eps):
        self.num_groups, self.eps = num_groups, eps

    def execute(self, x, weight, bias):
        groups = x.reshape((x.shape[0], self.num_groups, -1))
        mean = groups.mean(dim=2, keepdims=True)
        centred = groups - mean
        var = (centred * centred).mean(dim=2, keepdims=True)
        std = jt.sqrt(var + self.eps)
        self.rstd = 1.0 / std
        self.normed = (centred / std).reshape(x.shape)
        self.weight = weight
        return channel_affine(self.normed, weight, bias)

    def grad(self, grad):
        normed, rstd = self.normed, self.rstd
        rows = grad.shape[0] * self.num_groups
        g_normed = (grad * _per_channel(self.weight, grad)).reshape(rows, -1)
        n_rows = normed.reshape(rows, -1)
        length = n_rows.shape[1]
        mean_g = (row_sum(g_normed) / length).reshape(rows, 1)
        mean_gn = (row_sum(g_normed * n_rows) / length).reshape(rows, 1)
        grad_x = (g_normed - mean_g - n_rows * mean_gn) * rstd.reshape(rows, 1)
        return (grad_x.reshape(grad.shape), channel_sum(grad * normed), channel_sum(grad))


def pointwise_conv(x, weight):
    """1x1 stride-1 convolution as weight (O, I) @ image (I, H*W), one sgemm per image
    (Jittor's batched matmul is several times slower than per-image products)."""
    n, c, h, w = x.shape
    weight = weight.reshape(weight.shape[0], c)
    outs = [jt.matmul(weight, x[i].reshape(c, h * w)).reshape(1, -1, h, w) for i in range(n)]
    return outs[0] if n == 1 else jt.concat(outs, 0)


class Conv2d(precision.Conv2d):
    """precision.Conv2d that runs bias-free 1x1 stride-1 convolutions as sgemm (under the
    same precision policy)."""

    def execute(self, x):
        if (self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)
                and self.dilation == (1, 1) and self.groups == 1 and self.bias is None):
            return precision.half_op(pointwise_conv, x, self.weight)
        return super().execute(x)


class ChannelAffine(jt.Function):
    """y = x * scale[c] + shift[c] (BatchNorm with fixed statistics); sgemm channel sums."""

    def execute(self, x, scale, shift):
        self.x, self.scale = x, scale
        return channel_affine(x, scale, shift)

    def grad(self, grad):
        return (grad * _per_channel(self.scale, grad), channel_sum(grad * self.x),
                channel_sum(grad))


class BatchNorm2d(nn.BatchNorm):
    """nn.BatchNorm2d (same parameters, buffers and forward) whose fixed-statistics path
    (eval mode, norm_eval) goes through ChannelAffine, in eval() and train() alike so that
    both give the same bits."""

    def execute(self, x):
        if self.is_train:
            return super().execute(x)
        scale = self.weight / jt.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return ChannelAffine.apply(x, scale, shift)


def _is_half(x):
    return x.dtype in (jt.bfloat16, jt.float16)


class ReLU(nn.ReLU):
    """nn.ReLU that also runs on the half inputs of native mixed precision: Jittor 1.3.11's
    relu compares x with a float32 0.0, which g++ rejects as ambiguous for a half x on the
    CPU (also when x is fused into the comparison), so a half x takes the maximum. Other
    inputs go through nn.ReLU.execute, looked up at each call (probes.relu_calls replaces it
    to record and mask the calls)."""

    def execute(self, x):
        return jt.maximum(x, 0.0) if _is_half(x) else super().execute(x)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that runs a half input in float32 and returns the half type: Jittor
    1.3.11's CPU max-pool backward does not compile for half types."""

    def execute(self, x):
        if not _is_half(x):
            return super().execute(x)
        return super().execute(x.float32()).cast(x.dtype)
