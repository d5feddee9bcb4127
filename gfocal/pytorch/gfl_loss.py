"""The GFL training loss: ATSS targets, then QFL + GIoU + DFL per FPN level.

V2 follows the official head (implus/GFocalV2, mmdetection 2.6 `loss` / `loss_single`),
docs/MODEL.md section 6; V1 mmdetection 3.x's `GFLHead.loss_by_feat` (section 15). A plain
object, not a Module, so it adds no parameters to the detector.
"""
import numpy as np
import torch

from gfocal.config import GFL_V1

from .anchors import AnchorGenerator
from .atss import ATSSAssigner
from .box_ops import bbox2distance, bbox_centers, bbox_overlaps, distance2bbox, unmap
from .distributed import reduce_mean
from .gfl_head import class_probabilities
from .losses import (distribution_focal_loss, giou_loss, quality_focal_loss,
                     quality_focal_loss_with_logits)
from .probes import is_active, record

# mmdetection 3.x divides every averaged loss by (its normaliser + this), float32's epsilon
# (`mmdet/models/losses/utils.py: weight_reduce_loss`); the official V2 code adds nothing.
FLOAT32_EPS = float(np.finfo(np.float32).eps)


class GFLLoss:

    def __init__(self, model_cfg):
        m = model_cfg
        self.num_classes = m["num_classes"]
        self.reg_max = m["reg_max"]
        self.strides = list(m["strides"])
        self.loss_cls_weight = m["loss_cls_weight"]
        self.loss_bbox_weight = m["loss_bbox_weight"]
        self.loss_dfl_weight = m["loss_dfl_weight"]
        self.qfl_beta = m["qfl_beta"]
        self.head = m["head"]
        self.quality_focal_loss = (quality_focal_loss_with_logits if self.head == GFL_V1
                                   else quality_focal_loss)
        self.mean_eps = FLOAT32_EPS if self.head == GFL_V1 else 0.0
        self.anchor_generator = AnchorGenerator(self.strides, m["octave_base_scale"])
        self.assigner = ATSSAssigner(m["atss_topk"])

    def __call__(self, cls_scores, bbox_preds, gt_bboxes, gt_labels, img_metas, integral):
        """Per-level class outputs (B, C, H, W: V2's probabilities, V1's logits) and reg logits
        (B, 4*(reg_max+1), H, W) -> dict(loss_cls, loss_bbox, loss_dfl) of scalar tensors."""
        if not (len(cls_scores) == len(bbox_preds) == len(self.strides)):
            raise ValueError(f"{len(cls_scores)} class-score levels and {len(bbox_preds)} "
                             f"box levels for strides {self.strides}")
        featmap_sizes = [tuple(int(s) for s in score.shape[-2:]) for score in cls_scores]
        anchors = self.anchor_generator.grid_anchors(featmap_sizes)
        valid_flags = [self.anchor_generator.valid_flags(featmap_sizes, meta["pad_shape"])
                       for meta in img_metas]
        targets = self.assigner.get_targets(anchors, valid_flags, gt_bboxes, gt_labels,
                                            self.num_classes)
        self._record_targets(targets)
        # Data-parallel: both normalisers are averaged over the processes before dividing
        # (as the official code does) and the engine averages the gradients, so with frozen
        # BN, per-sample GN (and images padded alike) N processes x batch b make the update
        # of 1 x batch N*b.
        num_total_samples = max(reduce_mean([float(targets["num_total_pos"])])[0], 1.0)

        losses_cls, losses_bbox, losses_dfl, weight_sums = [], [], [], []
        for level, stride in enumerate(self.strides):
            loss_cls, loss_bbox, loss_dfl, weight_sum = self.loss_single(
                level, targets["anchors"][level], cls_scores[level], bbox_preds[level],
                targets["labels"][level], targets["label_weights"][level],
                targets["bbox_targets"][level], stride, num_total_samples, integral)
            losses_cls.append(loss_cls)
            losses_bbox.append(loss_bbox)
            losses_dfl.append(loss_dfl)
            weight_sums.append(weight_sum)
        avg_factor = self.avg_factor(weight_sums)
        if is_active():  # a host number: made into a tensor only for a capture
            record("loss.avg_factor", torch.tensor(avg_factor, dtype=torch.float64))
        if avg_factor > 0:  # V2 with no positive at all: the box terms are 0, left undivided
            losses_bbox = [loss / avg_factor for loss in losses_bbox]
            losses_dfl = [loss / avg_factor for loss in losses_dfl]
        for level in range(len(self.strides)):
            record(f"loss.loss_cls.{level}", losses_cls[level])
            record(f"loss.loss_bbox.{level}", losses_bbox[level])
            record(f"loss.loss_dfl.{level}", losses_dfl[level])
        return {"loss_cls": sum(losses_cls), "loss_bbox": sum(losses_bbox),
                "loss_dfl": sum(losses_dfl)}

    def avg_factor(self, weight_sums):
        """The box terms' normaliser, a plain number (no gradient), from the per-level sums of
        the positives' weight targets (0-d tensors), averaged over the processes.

        V2 (official): the level sums added as Python floats, not clamped (0 without any
        positive). V1 (mmdetection 3.x): added as tensors, in the loss's precision, and
        clamped to at least 1."""
        if self.head == GFL_V1:
            return max(reduce_mean([float(sum(weight_sums).item())])[0], 1.0)
        return reduce_mean([float(sum(w.item() for w in weight_sums))])[0]

    def loss_single(self, level, anchors, cls_score, bbox_pred, labels, label_weights,
                    bbox_targets, stride, num_total_samples, integral):
        """One level -> loss_cls, loss_bbox and loss_dfl (box terms not yet divided by the
        avg factor) and the sum of the positives' weight targets (a 0-d tensor)."""
        num_imgs = cls_score.shape[0]
        anchors = anchors.reshape(-1, 4)
        cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, self.num_classes)
        bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (self.reg_max + 1))
        bbox_targets = bbox_targets.reshape(-1, 4)
        labels = labels.reshape(-1)
        label_weights = label_weights.reshape(-1)
        pred_corners = integral(bbox_pred)  # (N, 4) distances in stride units
        record(f"head.integral.{level}", pred_corners.reshape(num_imgs, -1, 4))

        pos = (labels >= 0) & (labels < self.num_classes)
        num_pos = int(pos.sum().item())
        if num_pos > 0:
            pos_bbox_targets = bbox_targets[pos]
            pos_bbox_pred = bbox_pred[pos]
            pos_anchor_centers = bbox_centers(anchors[pos]) / stride
            weight_targets = class_probabilities(cls_score.detach(), self.head).amax(dim=1)[pos]
            pos_decode_bbox_pred = distance2bbox(pos_anchor_centers, pred_corners[pos])
            pos_decode_bbox_targets = pos_bbox_targets / stride
            pos_score = bbox_overlaps(pos_decode_bbox_pred.detach(), pos_decode_bbox_targets,
                                      is_aligned=True)
            score = unmap(pos_score, pos, 0)
            pos_pred_corners = pos_bbox_pred.reshape(-1, self.reg_max + 1)
            target_corners = bbox2distance(pos_anchor_centers, pos_decode_bbox_targets,
                                           self.reg_max).reshape(-1)
            # V1 averages over 1.0 + eps (mmdetection 3.x); for V2, / 1.0 is exact.
            loss_bbox = self.loss_bbox_weight * ((
                giou_loss(pos_decode_bbox_pred, pos_decode_bbox_targets) * weight_targets
            ).sum() / (1.0 + self.mean_eps))
            dfl_weights = weight_targets[:, None].expand(-1, 4).reshape(-1)
            loss_dfl = self.loss_dfl_weight * ((
                distribution_focal_loss(pos_pred_corners, target_corners) * dfl_weights
            ).sum() / (4.0 + self.mean_eps))
        else:
            score = torch.zeros_like(label_weights)
            weight_targets = score[:0]
            loss_bbox = bbox_pred.sum() * 0
            loss_dfl = bbox_pred.sum() * 0
        record(f"loss.score.{level}", score)
        record(f"loss.weight_targets.{level}", weight_targets)
        weight_sum = weight_targets.sum()

        loss_cls = self.loss_cls_weight * ((
            self.quality_focal_loss(cls_score, labels, score, beta=self.qfl_beta) * label_weights
        ).sum() / (num_total_samples + self.mean_eps))
        return loss_cls, loss_bbox, loss_dfl, weight_sum

    def _record_targets(self, targets):
        if not is_active():
            return
        record("targets.labels", torch.cat(targets["labels"], dim=1))
        record("targets.label_weights", torch.cat(targets["label_weights"], dim=1))
        record("targets.bbox_targets", torch.cat(targets["bbox_targets"], dim=1))
        record("targets.assigned_gt_inds", targets["assigned_gt_inds"])
        record("targets.num_pos", torch.tensor(targets["num_total_pos"], dtype=torch.int64))
