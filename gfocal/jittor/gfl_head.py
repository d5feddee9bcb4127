"""GFL head: GFocalV2's with the Distribution-Guided Quality Predictor (docs/MODEL.md section 3),
or GFL V1's without it (class logits, section 15)."""
import math

import jittor as jt
import numpy as np
from jittor import nn

from gfocal.config import GFL_V1, HEADS

from .fpn import ConvModule, GroupNorm
from .kernels import ReLU
from .precision import Conv2d
from .probes import record


def top_values(x, k, dim):
    """The k largest values of `x` along `dim`, in descending order (a NaN counts as the
    largest, as in torch.topk, and stays NaN: the detector's finiteness check reports it).

    jt.topk sorts with std::sort on the CPU, which a NaN key sends past the end of the
    array (a segfault): the order is taken from keys with NaN made +inf, the values are
    gathered from `x`. For finite `x` the keys are `x` and the values jt.topk's, bit for
    bit, gradients included. Half keys (native mixed precision) are sorted as float32:
    Jittor 1.3.11's CPU argsort does not compile for half types."""
    keys = x.float32() if x.dtype != jt.float32 else x  # argsort does not compile on halves
    keys = jt.ternary(jt.isnan(keys), jt.full_like(keys, float("inf")), keys)
    order = jt.argsort(keys, dim=dim, descending=True)[0]
    return jt.gather(x, dim, order[(slice(None),) * dim + (slice(0, k),)])


def class_probabilities(cls_out, head):
    """The head's class output as probabilities: V1 gives logits, V2 probabilities already."""
    return cls_out.sigmoid() if head == GFL_V1 else cls_out


class Scale(nn.Module):
    """A learnable scalar (shape (1,)) multiplying a level's reg logits."""

    def __init__(self, init=1.0):
        super().__init__()
        self.scale = jt.array(np.array([init], dtype=np.float32))

    def execute(self, x):
        return x * self.scale


class Integral(nn.Module):
    """(..., 4*(reg_max+1)) side-major logits -> (..., 4) expected distances (bins 0..reg_max).

    `project` is a buffer: saved in the state dict, never trained. Every Var attribute of a
    Jittor module is a parameter, so it is a stop_grad Var: the optimizers skip it and
    jt.grad does not flow into it."""

    def __init__(self, reg_max=16):
        super().__init__()
        self.reg_max = reg_max
        self.project = jt.array(np.arange(reg_max + 1, dtype=np.float32)).stop_grad()

    def execute(self, x):
        bins = self.reg_max + 1
        if x.shape[-1] != 4 * bins:
            raise ValueError(f"Integral(reg_max={self.reg_max}) expects a last dimension of "
                             f"{4 * bins}, got shape {tuple(x.shape)}")
        prob = nn.softmax(x.reshape(*x.shape[:-1], 4, bins), dim=-1)
        return (prob * self.project).sum(dim=-1)


class GFLHead(nn.Module):
    """Shared cls/reg towers over the pyramid levels; `forward(feats)` returns per level the
    class scores (N x C x H x W) and the scaled reg logits (N x 4*(reg_max+1) x H x W,
    channel = side * (reg_max+1) + bin). The class scores are, with head "gfl_v2",
    sigmoid * DGQP quality (probabilities); with "gfl_v1", logits (no `reg_conf` branch)."""

    def __init__(self, num_classes, in_channels, feat_channels=256, stacked_convs=4,
                 gn_groups=32, reg_max=16, reg_topk=4, reg_channels=64,
                 strides=(8, 16, 32, 64, 128), head="gfl_v2"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"GFLHead head = {head!r} (must be one of {', '.join(HEADS)})")
        if num_classes < 1:
            raise ValueError(f"GFLHead num_classes = {num_classes} (must be >= 1)")
        if not 1 <= reg_topk <= reg_max + 1:
            raise ValueError(f"GFLHead reg_topk = {reg_topk} (must be in 1..reg_max+1 = "
                             f"{reg_max + 1})")
        if feat_channels % gn_groups:
            raise ValueError(f"GFLHead feat_channels = {feat_channels} is not divisible by "
                             f"gn_groups = {gn_groups}")
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.reg_topk = reg_topk
        self.strides = tuple(strides)
        self.head = head
        self.cls_convs = self._tower(in_channels, feat_channels, stacked_convs, gn_groups)
        self.reg_convs = self._tower(in_channels, feat_channels, stacked_convs, gn_groups)
        tower_out = feat_channels if stacked_convs else in_channels
        self.gfl_cls = Conv2d(tower_out, num_classes, 3, padding=1)
        self.gfl_reg = Conv2d(tower_out, 4 * (reg_max + 1), 3, padding=1)
        self.reg_conf = None if head == GFL_V1 else nn.Sequential(
            Conv2d(4 * (reg_topk + 1), reg_channels, 1),
            ReLU(),
            Conv2d(reg_channels, 1, 1),
            nn.Sigmoid())
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.integral = Integral(reg_max)
        self.init_weights()

    @staticmethod
    def _tower(in_channels, feat_channels, stacked_convs, gn_groups):
        return nn.ModuleList([
            ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, padding=1,
                       bias=False, norm="gn", gn_groups=gn_groups, act="relu")
            for i in range(stacked_convs)])

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                jt.init.gauss_(m.weight, mean=0.0, std=0.01)
                if m.bias is not None:
                    jt.init.zero_(m.bias)
            elif isinstance(m, GroupNorm):
                jt.init.one_(m.weight)
                jt.init.zero_(m.bias)
        prior_prob = 0.01
        jt.init.constant_(self.gfl_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def execute(self, feats):
        if len(feats) != len(self.scales):
            raise ValueError(f"GFLHead has {len(self.scales)} levels (strides {self.strides}), "
                             f"got {len(feats)} feature maps")
        cls_scores, bbox_preds = [], []
        for level, (x, scale) in enumerate(zip(feats, self.scales)):
            cls_score, bbox_pred = self.forward_single(x, scale, level)
            cls_scores.append(cls_score)
            bbox_preds.append(bbox_pred)
        return cls_scores, bbox_preds

    def forward_single(self, x, scale, level):
        cls_feat = x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        record(f"head.cls_tower.{level}", cls_feat)
        reg_feat = x
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        record(f"head.reg_tower.{level}", reg_feat)
        bbox_pred = scale(self.gfl_reg(reg_feat))
        record(f"head.reg_logits.{level}", bbox_pred)
        cls_logits = self.gfl_cls(cls_feat)
        if self.reg_conf is None:  # GFL V1
            record(f"head.cls_logits.{level}", cls_logits)
            return cls_logits, bbox_pred
        stat = self.dgqp_features(bbox_pred)
        record(f"head.dgqp_feat.{level}", stat)
        quality = self.reg_conf(stat)
        record(f"head.quality.{level}", quality)
        cls_score = cls_logits.sigmoid() * quality
        record(f"head.cls_score.{level}", cls_score)
        return cls_score, bbox_pred

    def dgqp_features(self, bbox_pred):
        """Reg logits -> (N, 4*(reg_topk+1), H, W): per side, its top-k bin probabilities in
        descending order, then their mean. Not detached: gradients reach the reg logits."""
        n, _, h, w = bbox_pred.shape
        prob = nn.softmax(bbox_pred.reshape(n, 4, self.reg_max + 1, h, w), dim=2)
        topk = top_values(prob, self.reg_topk, dim=2)
        stat = jt.concat([topk, topk.mean(dim=2, keepdims=True)], dim=2)
        return stat.reshape(n, 4 * (self.reg_topk + 1), h, w)
