"""GFL losses, per element (no reduction): Quality Focal (on probabilities for V2, on logits
for V1), Distribution Focal and GIoU."""
import torch
import torch.nn.functional as F

from .box_ops import bbox_overlaps


def qfl_targets(pred_prob, label, score, beta):
    """QFL's per-(anchor, class) targets and modulating factors: every class towards 0 with
    weight p^beta, except the gt class of a positive (labels (N,), bg = C): towards its IoU
    score with weight |score - p|^beta. The factors keep their gradient."""
    num_classes = pred_prob.shape[1]
    classes = torch.arange(num_classes, device=pred_prob.device)
    is_target = label.to(torch.int64)[:, None] == classes[None, :]  # bg (= C) matches none
    target = torch.where(is_target, score[:, None].to(pred_prob.dtype), torch.zeros_like(pred_prob))
    modulation = torch.where(is_target, (target - pred_prob).abs().pow(beta), pred_prob.pow(beta))
    return target, modulation


def quality_focal_loss(pred_prob, label, score, beta=2.0):
    """QFL on probabilities (GFocalV2): (N, C) probs, labels (N,) with bg = C, IoU scores (N,)
    -> (N,), summed over classes (targets and factors: `qfl_targets`)."""
    target, modulation = qfl_targets(pred_prob, label, score, beta)
    loss = F.binary_cross_entropy(pred_prob, target, reduction="none") * modulation
    return loss.sum(dim=1)


def binary_cross_entropy_with_logits(logits, target):
    """Element-wise BCE of sigmoid(`logits`) against `target`, computed from the logits."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


def quality_focal_loss_with_logits(logits, label, score, beta=2.0):
    """QFL on logits (GFL V1, mmdetection's `use_sigmoid=True`): p = sigmoid(logits) in the
    factors, the cross entropy taken from the logits. (N, C) logits -> (N,)."""
    target, modulation = qfl_targets(logits.sigmoid(), label, score, beta)
    loss = binary_cross_entropy_with_logits(logits, target) * modulation
    return loss.sum(dim=1)


def cross_entropy(logits, target):
    """Softmax cross entropy per row: (N, K) logits, (N,) int64 classes -> (N,)."""
    return F.cross_entropy(logits, target, reduction="none")


def distribution_focal_loss(pred, label):
    """DFL: (N, reg_max + 1) logits, (N,) float targets in [0, reg_max) -> (N,).

    Cross entropy towards the two bins around the target, weighted by closeness.
    """
    dis_left = label.to(torch.int64)  # floor, the targets are >= 0
    dis_right = dis_left + 1
    weight_left = dis_right.to(label.dtype) - label
    weight_right = label - dis_left.to(label.dtype)
    return (cross_entropy(pred, dis_left) * weight_left
            + cross_entropy(pred, dis_right) * weight_right)


def giou_loss(pred, target, eps=1e-6):
    """1 - GIoU of aligned box pairs (N, 4) -> (N,)."""
    return 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
