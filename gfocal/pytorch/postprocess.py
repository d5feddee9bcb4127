"""Test-time decoding of the GFL head (docs/MODEL.md section 7): per-level top-k, distances to boxes,
score threshold per (anchor, class) pair, class-aware NMS, at most max_per_img detections."""
import numpy as np
import torch
import torchvision

from .anchors import AnchorGenerator
from .box_ops import bbox_centers, distance2bbox, stable_argsort
from .probes import record


def batched_nms(boxes, scores, labels, iou_thr):
    """Class-aware NMS -> kept indices (int64), by score descending, equal scores by index.

    NMS runs on boxes pre-sorted by (score desc, index asc) with strictly decreasing stand-in
    scores, so the framework's own sort never meets a tie.
    """
    num = boxes.shape[0]
    if num == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = stable_argsort(scores, descending=True)
    ranks = torch.arange(num, 0, -1, dtype=torch.float32, device=boxes.device)
    keep = torchvision.ops.batched_nms(boxes[order], ranks, labels[order], iou_thr)
    return order[keep]


def empty_result():
    return {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
            "labels": np.zeros(0, np.int64)}


class GFLPostProcess:

    def __init__(self, model_cfg):
        m = model_cfg
        self.num_classes = m["num_classes"]
        self.reg_max = m["reg_max"]
        self.strides = list(m["strides"])
        self.nms_pre = m["nms_pre"]
        self.score_thr = m["score_thr"]
        self.iou_thr = m["iou_thr"]
        self.max_per_img = m["max_per_img"]
        self.anchor_generator = AnchorGenerator(self.strides, m["octave_base_scale"])

    def __call__(self, cls_scores, bbox_preds, img_metas, integral, rescale=True):
        """Per-level probabilities (B, C, H, W) and reg logits -> per image a dict of numpy
        `boxes` (K, 4) x1y1x2y2 (original-image pixels when rescale), `scores`, `labels`."""
        if not (len(cls_scores) == len(bbox_preds) == len(self.strides)):
            raise ValueError(f"{len(cls_scores)} class-score levels and {len(bbox_preds)} "
                             f"box levels for strides {self.strides}")
        featmap_sizes = [tuple(int(s) for s in score.shape[-2:]) for score in cls_scores]
        anchors = self.anchor_generator.grid_anchors(featmap_sizes)
        level_scores, level_dists = [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            num_imgs = cls_score.shape[0]
            level_scores.append(cls_score.permute(0, 2, 3, 1).reshape(num_imgs, -1,
                                                                       self.num_classes))
            dists = integral(bbox_pred.permute(0, 2, 3, 1).reshape(num_imgs, -1,
                                                                   4 * (self.reg_max + 1)))
            record(f"head.integral.{level}", dists)
            level_dists.append(dists)
        return [self.get_bboxes_single([s[i] for s in level_scores],
                                       [d[i] for d in level_dists], anchors, meta, rescale)
                for i, meta in enumerate(img_metas)]

    def get_bboxes_single(self, scores_per_level, dists_per_level, anchors_per_level,
                          img_meta, rescale=True):
        """One image: (H*W, C) scores and (H*W, 4) stride-unit distances per level."""
        mlvl_boxes, mlvl_scores = [], []
        for scores, dists, anchors, stride in zip(scores_per_level, dists_per_level,
                                                  anchors_per_level, self.strides):
            dists = dists * stride
            if 0 < self.nms_pre < scores.shape[0]:
                top = stable_argsort(scores.amax(dim=1), descending=True)[:self.nms_pre]
                anchors, dists, scores = anchors[top], dists[top], scores[top]
            mlvl_boxes.append(distance2bbox(bbox_centers(anchors), dists,
                                            max_shape=img_meta["img_shape"]))
            mlvl_scores.append(scores)
        boxes = torch.cat(mlvl_boxes, dim=0)
        scores = torch.cat(mlvl_scores, dim=0)
        if rescale:
            scale_factor = np.asarray(img_meta["scale_factor"], np.float32).reshape(-1)
            boxes = boxes / torch.from_numpy(scale_factor).to(boxes.device)

        candidate = scores > self.score_thr  # (M, C): every (anchor, class) pair
        if not bool(candidate.any()):
            return empty_result()
        anchor_idx, labels = torch.nonzero(candidate, as_tuple=True)
        boxes, scores = boxes[anchor_idx], scores[anchor_idx, labels]
        keep = batched_nms(boxes, scores, labels, self.iou_thr)[:self.max_per_img]
        return {"boxes": boxes[keep].detach().cpu().numpy(),
                "scores": scores[keep].detach().cpu().numpy(),
                "labels": labels[keep].to(torch.int64).cpu().numpy()}
