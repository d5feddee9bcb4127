"""Image and box transforms of docs/MODEL.md section 9 (mmcv/mmdetection 2.x rules), numpy only.

Order in the pipeline: resize (keep ratio) -> flip -> normalise -> pad.
"""
import cv2
import numpy as np


def rescale_size(w, h, img_scale):
    """(new_w, new_h, scale) fitting (w, h) into img_scale = (long edge, short edge) limits.

    mmcv's keep-ratio rule: scale = min(long / max(h, w), short / min(h, w)), then each side
    int(side * scale + 0.5).
    """
    if w <= 0 or h <= 0:
        raise ValueError(f"image size must be positive, got w={w}, h={h}")
    if len(img_scale) != 2 or min(img_scale) <= 0:
        raise ValueError(f"img_scale must be two positive numbers, got {img_scale!r}")
    long_edge, short_edge = max(img_scale), min(img_scale)
    scale = min(long_edge / max(h, w), short_edge / min(h, w))
    # at least 1 px: only extreme aspect ratios would otherwise round a side to 0
    return max(int(w * scale + 0.5), 1), max(int(h * scale + 0.5), 1), scale


def scale_boxes(boxes, scale_factor, img_shape):
    """Boxes (N, 4) times [w_scale, h_scale, w_scale, h_scale], clipped to img_shape (h, w)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale_factor
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, img_shape[1])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, img_shape[0])
    return boxes


def resize(img, boxes, img_scale):
    """Keep-ratio bilinear resize; returns (img, boxes, scale_factor float32 (4,)).

    The scale factors are the realised ones, new_w / w and new_h / h (they differ slightly
    after rounding); boxes (None allowed) are scaled and clipped to the resized image.
    """
    h, w = img.shape[:2]
    new_w, new_h, _ = rescale_size(w, h, img_scale)
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    w_scale, h_scale = new_w / w, new_h / h
    scale_factor = np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
    if boxes is not None:
        boxes = scale_boxes(boxes, scale_factor, (new_h, new_w))
    return resized, boxes, scale_factor


def flip_boxes(boxes, width):
    """Horizontal flip of x1y1x2y2 boxes in an image `width` wide: x1' = W - x2, x2' = W - x1."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def flip(img, boxes):
    """Horizontally flipped image (a contiguous copy) and boxes (None allowed)."""
    width = img.shape[1]
    flipped = np.ascontiguousarray(img[:, ::-1])
    return flipped, (None if boxes is None else flip_boxes(boxes, width))


def normalize(img, mean, std, to_rgb=True):
    """float32 (img - mean) / std, after BGR -> RGB when to_rgb (mean/std are in RGB then)."""
    img = img.astype(np.float32)
    if to_rgb:
        img = img[:, :, ::-1]
    mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(std, dtype=np.float32).reshape(1, 1, -1)
    if np.any(std <= 0):
        raise ValueError(f"std must be positive, got {std.ravel().tolist()}")
    return np.ascontiguousarray((img - mean) / std, dtype=np.float32)


def padded_size(h, w, size_divisor):
    """(h, w) rounded up to multiples of size_divisor."""
    if size_divisor < 1:
        raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
    return (-(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor)


def pad(img, size_divisor):
    """Zero pad at the bottom and right to a multiple of size_divisor."""
    h, w = img.shape[:2]
    pad_h, pad_w = padded_size(h, w, size_divisor)
    out = np.zeros((pad_h, pad_w) + img.shape[2:], dtype=img.dtype)
    out[:h, :w] = img
    return out
