"""One square anchor per feature-map location (GFL/ATSS): side octave_base_scale * stride."""
import math

import torch

from . import current_device


class AnchorGenerator:
    """Anchors centred at (x * stride, y * stride), no half-stride offset, row-major per level."""

    num_base_anchors = 1

    def __init__(self, strides, octave_base_scale=8):
        if not strides or any(int(s) != s or s <= 0 for s in strides):
            raise ValueError(f"strides = {strides!r} (must be positive integers)")
        self.strides = [int(s) for s in strides]
        self.octave_base_scale = octave_base_scale

    def _check_sizes(self, featmap_sizes):
        if len(featmap_sizes) != len(self.strides):
            raise ValueError(f"{len(featmap_sizes)} feature-map sizes for "
                             f"{len(self.strides)} strides {self.strides}")

    @staticmethod
    def _grid(featmap_size):
        """Column and row index of every location, row-major: (x, y) each (H*W,) int64."""
        h, w = int(featmap_size[0]), int(featmap_size[1])
        index = torch.arange(h * w, dtype=torch.int64, device=current_device())
        return index % w, index // w

    def single_level_grid_anchors(self, featmap_size, stride):
        xs, ys = self._grid(featmap_size)
        cx, cy = (xs * stride).to(torch.float32), (ys * stride).to(torch.float32)
        half = 0.5 * self.octave_base_scale * stride
        return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)

    def grid_anchors(self, featmap_sizes):
        """List per level of (H*W, 4) float32 anchors."""
        self._check_sizes(featmap_sizes)
        return [self.single_level_grid_anchors(size, stride)
                for size, stride in zip(featmap_sizes, self.strides)]

    def valid_flags(self, featmap_sizes, pad_shape):
        """List per level of (H*W,) bool: the location lies inside the image's padded shape."""
        self._check_sizes(featmap_sizes)
        pad_h, pad_w = int(pad_shape[0]), int(pad_shape[1])
        flags = []
        for (h, w), stride in zip(featmap_sizes, self.strides):
            valid_h = min(int(math.ceil(pad_h / stride)), int(h))
            valid_w = min(int(math.ceil(pad_w / stride)), int(w))
            xs, ys = self._grid((h, w))
            flags.append((xs < valid_w) & (ys < valid_h))
        return flags
