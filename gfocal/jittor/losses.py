"""GFL losses, per element (no reduction): Quality Focal, Distribution Focal and GIoU."""
import jittor as jt

from .box_ops import bbox_overlaps

# PyTorch's binary_cross_entropy, element by element: logs clamped at -100, log1p for 1 - p.
_BCE_CPU = """
    for (int64 i = 0; i < in0_shape0; i++) {
        out0_type p = @in0(i), t = @in1(i);
        out0_type log_p = std::max((out0_type)std::log(p), (out0_type)-100);
        out0_type log_1mp = std::max((out0_type)std::log1p(-p), (out0_type)-100);
        @out0(i) = (t - 1) * log_1mp - t * log_p;
    }
"""
_BCE_CUDA = """
    __global__ static void bce_kernel(@ARGS_DEF) {
        @PRECALC
        for (int64 i = blockIdx.x * blockDim.x + threadIdx.x; i < in0_shape0;
             i += blockDim.x * gridDim.x) {
            out0_type p = @in0(i), t = @in1(i);
            out0_type log_p = ::max((out0_type)::log(p), (out0_type)-100);
            out0_type log_1mp = ::max((out0_type)::log1p(-p), (out0_type)-100);
            @out0(i) = (t - 1) * log_1mp - t * log_p;
        }
    }
    bce_kernel<<<(in0_shape0 + 255) / 256, 256>>>(@ARGS);
"""
_BCE_EPS = 1e-12  # PyTorch's floor on p * (1 - p) in the gradient


class BinaryCrossEntropy(jt.Function):
    """Probability-input BCE with PyTorch's forward and backward formulas (target: no grad)."""

    def execute(self, p, target):
        self.p, self.target = p, target
        flat_p, flat_t = p.reshape(-1), target.reshape(-1)
        if flat_p.shape[0] == 0:
            return jt.zeros(p.shape, dtype=p.dtype)
        loss = jt.code(flat_p.shape, flat_p.dtype, [flat_p, flat_t],
                       cpu_header="#include <cmath>\n#include <algorithm>",
                       cpu_src=_BCE_CPU, cuda_src=_BCE_CUDA)
        return loss.reshape(p.shape)

    def grad(self, grad_output):
        p, t = self.p, self.target
        return grad_output * (p - t) / ((1 - p) * p).maximum(_BCE_EPS), None


def binary_cross_entropy(p, target):
    """Element-wise BCE of probabilities `p` (in [0, 1]) against `target`, like PyTorch's."""
    if tuple(p.shape) != tuple(target.shape):
        raise ValueError(f"p {tuple(p.shape)} and target {tuple(target.shape)} differ in shape")
    return BinaryCrossEntropy.apply(p, target.cast(p.dtype).detach())


def quality_focal_loss(pred_prob, label, score, beta=2.0):
    """QFL on probabilities (GFocalV2): (N, C) probs, labels (N,) with bg = C, IoU scores (N,).

    Every class is pushed towards 0 with weight p^beta, except the gt class of a positive:
    towards its IoU score with weight |score - p|^beta. Returns (N,), summed over classes.
    """
    num_classes = pred_prob.shape[1]
    classes = jt.arange(num_classes, dtype="int64")
    is_target = label.int64()[:, None] == classes[None, :]  # bg (= C) matches none
    target = jt.where(is_target, score[:, None].cast(pred_prob.dtype), jt.zeros_like(pred_prob))
    modulation = jt.where(is_target, (target - pred_prob).abs().pow(beta), pred_prob.pow(beta))
    loss = binary_cross_entropy(pred_prob, target) * modulation
    return loss.sum(dim=1)


def cross_entropy(logits, target):
    """Softmax cross entropy per row: (N, K) logits, (N,) int64 classes -> (N,)."""
    shifted = logits - logits.max(dim=1, keepdims=True).detach()
    log_norm = shifted.exp().sum(dim=1).log()
    picked = jt.gather(shifted, 1, target.int64()[:, None])[:, 0]
    return log_norm - picked


def distribution_focal_loss(pred, label):
    """DFL: (N, reg_max + 1) logits, (N,) float targets in [0, reg_max) -> (N,).

    Cross entropy towards the two bins around the target, weighted by closeness.
    """
    dis_left = label.int64()  # floor, the targets are >= 0
    dis_right = dis_left + 1
    weight_left = dis_right.cast(label.dtype) - label
    weight_right = label - dis_left.cast(label.dtype)
    return (cross_entropy(pred, dis_left) * weight_left
            + cross_entropy(pred, dis_right) * weight_right)


def giou_loss(pred, target, eps=1e-6):
    """1 - GIoU of aligned box pairs (N, 4) -> (N,)."""
    return 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
