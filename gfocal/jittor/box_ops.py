"""Box geometry (x1, y1, x2, y2) and the small index helpers shared by targets and decoding."""
import jittor as jt

BOX_MODES = ("iou", "giou")


def _check_boxes(name, boxes):
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def bbox_overlaps(bboxes1, bboxes2, mode="iou", is_aligned=False, eps=1e-6):
    """IoU or GIoU: (N, M) for every pair, or (N,) row by row when `is_aligned`.

    Union and enclosing area are clamped to >= eps (mmdetection 2.x semantics).
    """
    if mode not in BOX_MODES:
        raise ValueError(f"mode = {mode!r} (must be one of {BOX_MODES})")
    _check_boxes("bboxes1", bboxes1)
    _check_boxes("bboxes2", bboxes2)
    if is_aligned and bboxes1.shape[0] != bboxes2.shape[0]:
        raise ValueError(f"is_aligned needs as many boxes on both sides, got "
                         f"{bboxes1.shape[0]} and {bboxes2.shape[0]}")
    if not is_aligned:
        bboxes1, bboxes2 = bboxes1[:, None, :], bboxes2[None, :, :]
    area1 = (bboxes1[..., 2] - bboxes1[..., 0]) * (bboxes1[..., 3] - bboxes1[..., 1])
    area2 = (bboxes2[..., 2] - bboxes2[..., 0]) * (bboxes2[..., 3] - bboxes2[..., 1])
    lt = jt.maximum(bboxes1[..., :2], bboxes2[..., :2])
    rb = jt.minimum(bboxes1[..., 2:], bboxes2[..., 2:])
    wh = (rb - lt).maximum(0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).maximum(eps)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclosed_lt = jt.minimum(bboxes1[..., :2], bboxes2[..., :2])
    enclosed_rb = jt.maximum(bboxes1[..., 2:], bboxes2[..., 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).maximum(0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).maximum(eps)
    return ious - (enclose_area - union) / enclose_area


def bbox_centers(boxes):
    """(N, 4) boxes -> (N, 2) centres (x, y)."""
    return jt.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def distance2bbox(points, distance, max_shape=None):
    """Points (N, 2) and (left, top, right, bottom) distances -> boxes, clipped to (h, w)."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    if max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        x1, x2 = x1.maximum(0).minimum(w), x2.maximum(0).minimum(w)
        y1, y2 = y1.maximum(0).minimum(h), y2.maximum(0).minimum(h)
    return jt.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points, bbox, max_dis, eps=0.1):
    """Points (N, 2) and boxes -> (left, top, right, bottom) clamped to [0, max_dis - eps]."""
    left = points[:, 0] - bbox[:, 0]
    top = points[:, 1] - bbox[:, 1]
    right = bbox[:, 2] - points[:, 0]
    bottom = bbox[:, 3] - points[:, 1]
    return jt.stack([left, top, right, bottom], dim=-1).maximum(0).minimum(max_dis - eps)


def stable_argsort(x, descending=False):
    """Order along dim 0; equal keys keep ascending index order (the tie rule of both ports).

    Jittor's CPU argsort is std::sort (not stable), so runs of equal keys are re-sorted by
    index through a unique integer key (run number, index).
    """
    order, values = jt.argsort(x, dim=0, descending=descending)
    order = order.int64()
    n = x.shape[0]
    if n < 2:
        return order
    changed = (values[1:] != values[:-1]).int64()
    run = jt.concat([jt.zeros_like(changed[:1]), changed], dim=0).cumsum(0)
    tie_order = jt.argsort(run * n + order, dim=0)[0]
    return jt.gather(order, 0, tie_order).int64()


def unmap(values, mask, fill):
    """Rows of `values`, one per True of the 1-D `mask`, put back in place: len(mask) rows,
    `fill` where the mask is False."""
    slot = (jt.cumsum(mask.int64(), dim=0) - 1).maximum(0)
    if values.shape[0] == 0:  # nothing to gather from: every row is fill
        shape = (mask.shape[0],) + tuple(values.shape[1:])
        return jt.full(shape, fill, dtype=values.dtype)
    gathered = values[slot]
    keep = mask.reshape((-1,) + (1,) * (values.ndim - 1))
    return jt.where(keep, gathered, jt.full_like(gathered, fill))
