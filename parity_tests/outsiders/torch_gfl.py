"""An outside PyTorch GFocalV2 as its author would bring it to the parity suite: its own
model class and weight names (body, pyramid, dense_head) over the PyTorch port's building
blocks, and a subject adapter (parity_tests/subject.py) that sees it only through hooks.

    pytest parity_tests --subject parity_tests.outsiders.torch_gfl:subject

`subject(bug=NAME)` plants one of common.BUGS; the code of each bug is below (the
framework-neutral ones in common.py). Mirrored by jittor_gfl.py.
"""
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gfocal.pytorch.anchors import AnchorGenerator
from gfocal.pytorch.atss import ATSSAssigner
from gfocal.pytorch.backbone import ResNet
from gfocal.pytorch.fpn import FPN, GroupNorm  # noqa: F401  (the bug table's GroupNorm)
from gfocal.pytorch.gfl_head import GFLHead, Integral
from gfocal.pytorch.gfl_loss import GFLLoss
from gfocal.pytorch.losses import cross_entropy
from gfocal.pytorch.postprocess import GFLPostProcess
from parity_tests.outsiders.common import OutsiderSubject, private_globals

FRAMEWORK = "torch"
CALL = "forward"  # the method a module's call runs


def as_tensor(array):
    return torch.from_numpy(np.ascontiguousarray(array))


def to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().copy()
    return np.array(value, copy=True)


class LevelLoss(GFLLoss):
    """The port's GFL loss; its per-level step calls the functions in `self.ops`."""

    def __init__(self, model_cfg):
        super().__init__(model_cfg)
        self.ops = private_globals(self, "loss_single")


class Detector(nn.Module):
    """ResNet body, feature pyramid and dense GFL head, under this model's own names."""

    def __init__(self, model_cfg):
        super().__init__()
        m = model_cfg
        self.body = ResNet(m["depth"], frozen_stages=m["frozen_stages"],
                           norm_eval=m["norm_eval"], out_indices=(1, 2, 3))
        self.pyramid = FPN(self.body.out_channels, m["fpn_channels"], num_outs=m["num_outs"])
        self.dense_head = GFLHead(m["num_classes"], m["fpn_channels"],
                                  feat_channels=m["feat_channels"],
                                  stacked_convs=m["stacked_convs"], gn_groups=m["gn_groups"],
                                  reg_max=m["reg_max"], reg_topk=m["reg_topk"],
                                  reg_channels=m["reg_channels"], strides=m["strides"])
        self.criterion = LevelLoss(m)
        self.decoder = GFLPostProcess(m)

    def forward(self, imgs):
        return self.dense_head(self.pyramid(self.body(imgs)))

    def loss(self, batch):
        cls_scores, bbox_preds = self(as_tensor(batch["imgs"]))
        losses = self.criterion(cls_scores, bbox_preds,
                                [as_tensor(b) for b in batch["gt_bboxes"]],
                                [as_tensor(lb) for lb in batch["gt_labels"]],
                                batch["img_metas"], self.dense_head.integral)
        losses["loss"] = losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"]
        return losses

    def predict(self, batch):
        with torch.no_grad():
            cls_scores, bbox_preds = self(as_tensor(batch["imgs"]))
            return self.decoder(cls_scores, bbox_preds, batch["img_metas"],
                                self.dense_head.integral)


def own_weight_names(model):
    return [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]


def load_weights(model, weights):
    own = model.state_dict()
    with torch.no_grad():
        for name, array in weights.items():
            own[name].copy_(as_tensor(array))


def gradients(model, loss):
    """{own parameter name: d loss / d parameter} over the trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {n: to_numpy(torch.zeros_like(p) if g is None else g)
            for (n, p), g in zip(named, grads)}


# ---------------------------------------------------------------- the bugs' code
class HalfStrideAnchors(AnchorGenerator):
    def single_level_grid_anchors(self, featmap_size, stride):
        return super().single_level_grid_anchors(featmap_size, stride) + stride / 2  # bug


class SidesSoftmaxIntegral(Integral):
    def forward(self, x):
        prob = F.softmax(x.reshape(*x.shape[:-1], 4, self.reg_max + 1), dim=-2)  # bug
        return (prob * self.project).sum(dim=-1)


class YXTargetsAssigner(ATSSAssigner):
    def _targets_single(self, *args):
        out = super()._targets_single(*args)
        out["bbox_targets"] = out["bbox_targets"][:, [1, 0, 3, 2]]  # bug
        return out


def dfl_weights_swapped(pred, label):
    left = label.to(torch.int64)
    weight_left = label - left.to(label.dtype)  # bug: the right bin's weight
    weight_right = (left + 1).to(label.dtype) - label  # bug: the left bin's weight
    return cross_entropy(pred, left) * weight_left + cross_entropy(pred, left + 1) * weight_right


def subject(bug=None):
    return OutsiderSubject(sys.modules[__name__], bug)
