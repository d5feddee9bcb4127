"""Box geometry (x1, y1, x2, y2) and the small index helpers shared by targets and decoding."""
import torch

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
    lt = torch.maximum(bboxes1[..., :2], bboxes2[..., :2])
    rb = torch.minimum(bboxes1[..., 2:], bboxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclosed_lt = torch.minimum(bboxes1[..., :2], bboxes2[..., :2])
    enclosed_rb = torch.maximum(bboxes1[..., 2:], bboxes2[..., 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose_area - union) / enclose_area


def bbox_centers(boxes):
    """(N, 4) boxes -> (N, 2) centres (x, y)."""
    return torch.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], dim=1)


def distance2bbox(points, distance, max_shape=None):
    """Points (N, 2) and (left, top, right, bottom) distances -> boxes, clipped to (h, w)."""
    x1 = points[:, 0] - distance[:, 0]
    y1 = points[:, 1] - distance[:, 1]
    x2 = points[:, 0] + distance[:, 2]
    y2 = points[:, 1] + distance[:, 3]
    if max_shape is not None:
        h, w = max_shape[0], max_shape[1]
        x1, x2 = x1.clamp(min=0, max=w), x2.clamp(min=0, max=w)
        y1, y2 = y1.clamp(min=0, max=h), y2.clamp(min=0, max=h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points, bbox, max_dis, eps=0.1):
    """Points (N, 2) and boxes -> (left, top, right, bottom) clamped to [0, max_dis - eps]."""
    left = points[:, 0] - bbox[:, 0]
    top = points[:, 1] - bbox[:, 1]
    right = bbox[:, 2] - points[:, 0]
    bottom = bbox[:, 3] - points[:, 1]
    return torch.stack([left, top, right, bottom], dim=-1).clamp(min=0, max=max_dis - eps)


def stable_argsort(x, descending=False):
    """Order along dim 0; equal keys keep ascending index order (the tie rule of both ports)."""
    return torch.sort(x, dim=0, descending=descending, stable=True)[1]


def unmap(values, mask, fill):
    """Rows of `values`, one per True of the 1-D `mask`, put back in place: len(mask) rows,
    `fill` where the mask is False."""
    slot = (torch.cumsum(mask.to(torch.int64), dim=0) - 1).clamp(min=0)
    if values.shape[0] == 0:  # nothing to gather from: every row is fill
        shape = (mask.shape[0],) + tuple(values.shape[1:])
        return torch.full(shape, fill, dtype=values.dtype, device=values.device)
    gathered = values[slot]
    keep = mask.reshape((-1,) + (1,) * (values.ndim - 1))
    return torch.where(keep, gathered, torch.full_like(gathered, fill))
