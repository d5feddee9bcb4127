"""GFL losses, per element (no reduction): Quality Focal (on probabilities for V2, on logits
for V1), Distribution Focal and GIoU."""
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
# PyTorch's binary_cross_entropy_with_logits, element by element (its log_sigmoid form).
_BCE_LOGITS_CPU = """
    for (int64 i = 0; i < in0_shape0; i++) {
        out0_type x = @in0(i), t = @in1(i);
        out0_type log_sig = std::min((out0_type)0, x) - std::log1p(std::exp(-std::abs(x)));
        @out0(i) = (1 - t) * x - log_sig;
    }
"""
_BCE_LOGITS_CUDA = """
    __global__ static void bce_logits_kernel(@ARGS_DEF) {
        @PRECALC
        for (int64 i = blockIdx.x * blockDim.x + threadIdx.x; i < in0_shape0;
             i += blockDim.x * gridDim.x) {
            out0_type x = @in0(i), t = @in1(i);
            out0_type log_sig = ::min((out0_type)0, x) - ::log1p(::exp(-::abs(x)));
            @out0(i) = (1 - t) * x - log_sig;
        }
    }
    bce_logits_kernel<<<(in0_shape0 + 255) / 256, 256>>>(@ARGS);
"""
_BCE_EPS = 1e-12  # PyTorch's floor on p * (1 - p) in the gradient


def _elementwise(x, target, cpu_src, cuda_src):
    """One jt.code kernel over x and target of the same shape (an empty input: empty out)."""
    flat_x, flat_t = x.reshape(-1), target.reshape(-1)
    if flat_x.shape[0] == 0:
        return jt.zeros(x.shape, dtype=x.dtype)
    loss = jt.code(flat_x.shape, flat_x.dtype, [flat_x, flat_t],
                   cpu_header="#include <cmath>\n#include <algorithm>",
                   cpu_src=cpu_src, cuda_src=cuda_src)
    return loss.reshape(x.shape)


class BinaryCrossEntropy(jt.Function):
    """Probability-input BCE with PyTorch's forward and backward formulas (target: no grad)."""

    def execute(self, p, target):
        self.p, self.target = p, target
        return _elementwise(p, target, _BCE_CPU, _BCE_CUDA)

    def grad(self, grad_output):
        p, t = self.p, self.target
        return grad_output * (p - t) / ((1 - p) * p).maximum(_BCE_EPS), None


def binary_cross_entropy(p, target):
    """Element-wise BCE of probabilities `p` (in [0, 1]) against `target`, like PyTorch's."""
    if tuple(p.shape) != tuple(target.shape):
        raise ValueError(f"p {tuple(p.shape)} and target {tuple(target.shape)} differ in shape")
    return BinaryCrossEntropy.apply(p, target.cast(p.dtype).detach())


def qfl_targets(pred_prob, label, score, beta):
    """QFL's per-(anchor, class) targets and modulating factors: every class towards 0 with
    weight p^beta, except the gt class of a positive (labels (N,), bg = C): towards its IoU
    score with weight |score - p|^beta. The factors keep their gradient."""
    num_classes = pred_prob.shape[1]
    classes = jt.arange(num_classes, dtype="int64")
    is_target = label.int64()[:, None] == classes[None, :]  # bg (= C) matches none
    target = jt.where(is_target, score[:, None].cast(pred_prob.dtype), jt.zeros_like(pred_prob))
    modulation = jt.where(is_target, (target - pred_prob).abs().pow(beta), pred_prob.pow(beta))
    return target, modulation


def quality_focal_loss(pred_prob, label, score, beta=2.0):
    """QFL on probabilities (GFocalV2): (N, C) probs, labels (N,) with bg = C, IoU scores (N,)
    -> (N,), summed over classes (targets and factors: `qfl_targets`)."""
    target, modulation = qfl_targets(pred_prob, label, score, beta)
    loss = binary_cross_entropy(pred_prob, target) * modulation
    return loss.sum(dim=1)


class BinaryCrossEntropyWithLogits(jt.Function):
    """Logit-input BCE with PyTorch's formulas: (1 - t) * x - log_sigmoid(x), log_sigmoid(x) =
    min(0, x) - log1p(exp(-|x|)); gradient (sigmoid(x) - t) (target: no grad)."""

    def execute(self, logits, target):
        self.logits, self.target = logits, target
        return _elementwise(logits, target, _BCE_LOGITS_CPU, _BCE_LOGITS_CUDA)

    def grad(self, grad_output):
        return grad_output * (self.logits.sigmoid() - self.target), None


def binary_cross_entropy_with_logits(logits, target):
    """Element-wise BCE of sigmoid(`logits`) against `target`, computed from the logits (no
    log1p in Jittor: the kernel calls the C library's, as PyTorch's scalar path does)."""
    if tuple(logits.shape) != tuple(target.shape):
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    return BinaryCrossEntropyWithLogits.apply(logits, target.cast(logits.dtype).detach())


def quality_focal_loss_with_logits(logits, label, score, beta=2.0):
    """QFL on logits (GFL V1, mmdetection's `use_sigmoid=True`): p = sigmoid(logits) in the
    factors, the cross entropy taken from the logits. (N, C) logits -> (N,)."""
    target, modulation = qfl_targets(logits.sigmoid(), label, score, beta)
    loss = binary_cross_entropy_with_logits(logits, target) * modulation
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
