"""Test-time decoding of the GFL head (docs/MODEL.md section 7): per-level top-k, distances to boxes,
score threshold per (anchor, class) pair, class-aware NMS, at most max_per_img detections.
GFL V1 (section 15): sigmoid of the logits, and per level the threshold first, then the top-k
of the surviving (anchor, class) pairs (mmdetection 3.x's `filter_scores_and_topk`)."""
import numpy as np
import jittor as jt

from gfocal.config import GFL_V1

from .anchors import AnchorGenerator
from .box_ops import bbox_centers, distance2bbox, stable_argsort
from .gfl_head import class_probabilities
from .probes import record

# torchvision's batched_nms offsets boxes per class up to this many numbers (boxes * 4) and
# loops over classes above it; following it keeps the two ports' arithmetic identical.
OFFSET_TRICK_MAX_NUMEL = {"cpu": 4000, "cuda": 100_000}
# Intersection of box i (later in score order) with a kept box j, for jt.candidate. Columns
# 0-3 are the box, 4 its area; same operand order as torchvision's NMS kernel. The outer
# max keeps the product rounded before the union's subtraction (no fused multiply-add).
# Unqualified max/min, as jt.nms writes them, compile for the CPU and for CUDA.
_INTERSECTION = ("max((Tx)0, max((Tx)0, min(@x(j,2),@x(i,2)) - max(@x(j,0),@x(i,0))) * "
                 "max((Tx)0, min(@x(j,3),@x(i,3)) - max(@x(j,1),@x(i,1))))")


def nms_sorted(boxes, iou_thr):
    """Greedy NMS of boxes already sorted by score (desc) -> kept positions (int64), in order."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dets = jt.concat([boxes, areas[:, None]], dim=1)
    iou = f"{_INTERSECTION} / (@x(j,4) + @x(i,4) - {_INTERSECTION})"
    return jt.candidate(dets, f"{iou} > {float(iou_thr)!r}").int64()


def _nms_offset_trick(boxes, labels, iou_thr):
    max_coordinate = boxes.max()
    offsets = labels.cast(boxes.dtype) * (max_coordinate + 1)
    offsets.sync()  # materialised, so the add below cannot fuse with the product
    return nms_sorted(boxes + offsets[:, None], iou_thr)


def _nms_per_class(boxes, labels, iou_thr):
    labels_np = labels.numpy()
    keep_mask = np.zeros(labels_np.shape[0], bool)
    for label in np.unique(labels_np):
        members = np.nonzero(labels_np == label)[0]
        kept = nms_sorted(boxes[jt.array(members)], iou_thr).numpy()
        keep_mask[members[kept]] = True
    return jt.array(np.nonzero(keep_mask)[0].astype(np.int64))


def batched_nms(boxes, scores, labels, iou_thr):
    """Class-aware NMS -> kept indices (int64), by score descending, equal scores by index.

    NMS runs on boxes pre-sorted by (score desc, index asc), so its order never meets a tie.
    """
    num = boxes.shape[0]
    if num == 0:
        return jt.zeros(0, dtype="int64")
    order = stable_argsort(scores, descending=True)
    boxes, labels = boxes[order], labels[order]
    device = "cuda" if jt.flags.use_cuda else "cpu"
    if num * 4 > OFFSET_TRICK_MAX_NUMEL[device]:
        keep = _nms_per_class(boxes, labels, iou_thr)
    else:
        keep = _nms_offset_trick(boxes, labels, iou_thr)
    return order[keep]


def pairs_above_threshold(scores, score_thr):
    """(M, C) scores -> anchor indices and labels (int64) of the (anchor, class) pairs with a
    score above `score_thr`, in pair order (anchor-major, then class)."""
    pairs = jt.nonzero(scores > score_thr).int64()
    return pairs[:, 0], pairs[:, 1]


def filter_scores_and_topk(scores, score_thr, topk):
    """(M, C) scores -> anchor indices, labels and scores of the (anchor, class) pairs with a
    score above `score_thr`, at most the `topk` highest of them (all when topk <= 0), by score
    descending; equal scores keep pair order."""
    anchor_idx, labels = pairs_above_threshold(scores, score_thr)
    kept = scores[anchor_idx, labels]
    order = stable_argsort(kept, descending=True)
    if topk > 0:
        order = order[:topk]
    return anchor_idx[order], labels[order], kept[order]


def boxes_above_threshold(boxes, scores, score_thr):
    """(M, 4) boxes and (M, C) scores -> boxes, scores and labels of every (anchor, class)
    pair with a score above `score_thr`, in pair order."""
    anchor_idx, labels = pairs_above_threshold(scores, score_thr)
    return boxes[anchor_idx], scores[anchor_idx, labels], labels


def drop_small_boxes(boxes, scores, labels, min_size):
    """Only the boxes wider and taller than `min_size` (all of them when min_size < 0)."""
    if min_size < 0:
        return boxes, scores, labels
    keep = jt.nonzero((boxes[:, 2] - boxes[:, 0] > min_size)
                      & (boxes[:, 3] - boxes[:, 1] > min_size))[:, 0].int64()
    return boxes[keep], scores[keep], labels[keep]


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
        self.min_bbox_size = m["min_bbox_size"]
        self.head = m["head"]
        self.anchor_generator = AnchorGenerator(self.strides, m["octave_base_scale"])

    def __call__(self, cls_scores, bbox_preds, img_metas, integral, rescale=True):
        """Per-level class outputs (B, C, H, W) and reg logits -> per image a dict of numpy
        `boxes` (K, 4) x1y1x2y2 (original-image pixels when rescale), `scores`, `labels`."""
        if not (len(cls_scores) == len(bbox_preds) == len(self.strides)):
            raise ValueError(f"{len(cls_scores)} class-score levels and {len(bbox_preds)} "
                             f"box levels for strides {self.strides}")
        featmap_sizes = [tuple(int(s) for s in score.shape[-2:]) for score in cls_scores]
        anchors = self.anchor_generator.grid_anchors(featmap_sizes)
        level_scores, level_dists = [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            num_imgs = cls_score.shape[0]
            scores = cls_score.permute(0, 2, 3, 1).reshape(num_imgs, -1, self.num_classes)
            level_scores.append(class_probabilities(scores, self.head))
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
        mlvl_boxes, mlvl_scores, mlvl_labels = [], [], []
        for scores, dists, anchors, stride in zip(scores_per_level, dists_per_level,
                                                  anchors_per_level, self.strides):
            dists = dists * stride
            anchors, dists, scores, labels = self.level_candidates(scores, dists, anchors)
            mlvl_boxes.append(distance2bbox(bbox_centers(anchors), dists,
                                            max_shape=img_meta["img_shape"]))
            mlvl_scores.append(scores)
            mlvl_labels.append(labels)
        boxes = jt.concat(mlvl_boxes, dim=0)
        scores = jt.concat(mlvl_scores, dim=0)
        if rescale:
            boxes = self.rescale(boxes, img_meta["scale_factor"])
        if self.head == GFL_V1:
            labels = jt.concat(mlvl_labels, dim=0)
        else:
            boxes, scores, labels = boxes_above_threshold(boxes, scores, self.score_thr)
        boxes, scores, labels = drop_small_boxes(boxes, scores, labels, self.min_bbox_size)
        if boxes.shape[0] == 0:
            return empty_result()
        keep = batched_nms(boxes, scores, labels, self.iou_thr)[:self.max_per_img]
        return {"boxes": boxes[keep].numpy(), "scores": scores[keep].numpy(),
                "labels": labels[keep].int64().numpy()}

    def level_candidates(self, scores, dists, anchors):
        """One level's (H*W, C) scores -> its candidates' anchors, distances and scores, and
        their labels. V2: the nms_pre locations of highest maximum score, whole score rows
        (labels None: the threshold comes after all levels). V1: the (anchor, class) pairs
        of `filter_scores_and_topk`."""
        if self.head == GFL_V1:
            anchor_idx, labels, scores = filter_scores_and_topk(scores, self.score_thr,
                                                                self.nms_pre)
            return anchors[anchor_idx], dists[anchor_idx], scores, labels
        if 0 < self.nms_pre < scores.shape[0]:
            top = stable_argsort(scores.max(dim=1), descending=True)[:self.nms_pre]
            anchors, dists, scores = anchors[top], dists[top], scores[top]
        return anchors, dists, scores, None

    def rescale(self, boxes, scale_factor):
        """Boxes back to original-image pixels: V2 divides by the scale factor (official),
        V1 multiplies by its reciprocal, taken in float64 (mmdetection 3.x `scale_boxes`)."""
        if self.head == GFL_V1:
            reciprocal = 1.0 / np.asarray(scale_factor, np.float64).reshape(-1)
            return boxes * jt.array(reciprocal).cast(boxes.dtype)
        scale_factor = np.asarray(scale_factor, np.float32).reshape(-1)
        return boxes / jt.array(scale_factor)
