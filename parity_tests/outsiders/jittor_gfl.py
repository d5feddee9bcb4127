"""An outside Jittor GFocalV2 as its author would bring it to the parity suite: its own
model class and weight names (body, pyramid, dense_head) over the Jittor port's building
blocks, and a subject adapter (parity_tests/subject.py) that sees it only through hooks.

    pytest parity_tests --subject parity_tests.outsiders.jittor_gfl:subject

`subject(bug=NAME)` plants one of common.BUGS; the code of each bug is below (the
framework-neutral ones in common.py). Mirrors torch_gfl.py.
"""
import sys

import numpy as np

from gfocal.ports import load_port

load_port("jittor")  # Jittor's environment is set before its first import
import jittor as jt  # noqa: E402
from jittor import nn  # noqa: E402

from gfocal.jittor.anchors import AnchorGenerator  # noqa: E402
from gfocal.jittor.atss import ATSSAssigner  # noqa: E402
from gfocal.jittor.backbone import ResNet  # noqa: E402
from gfocal.jittor.fpn import FPN, GroupNorm  # noqa: E402,F401  (the bug table's GroupNorm)
from gfocal.jittor.gfl_head import GFLHead, Integral  # noqa: E402
from gfocal.jittor.gfl_loss import GFLLoss  # noqa: E402
from gfocal.jittor.losses import cross_entropy  # noqa: E402
from gfocal.jittor.postprocess import GFLPostProcess  # noqa: E402
from parity_tests.outsiders.common import OutsiderSubject, private_globals  # noqa: E402

FRAMEWORK = "jittor"
CALL = "execute"  # the method a module's call runs


def as_tensor(array):
    return jt.array(np.ascontiguousarray(array)).stop_grad()


def to_numpy(value):
    if isinstance(value, jt.Var):
        return np.array(value.numpy(), copy=True)
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

    def execute(self, imgs):
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
        with jt.no_grad():
            cls_scores, bbox_preds = self(as_tensor(batch["imgs"]))
            return self.decoder(cls_scores, bbox_preds, batch["img_metas"],
                                self.dense_head.integral)


def own_weight_names(model):
    return list(model.state_dict())


def load_weights(model, weights):
    own = model.state_dict()
    for name, array in weights.items():
        own[name].assign(jt.array(np.ascontiguousarray(array)).cast(own[name].dtype))
    jt.sync(list(own.values()))  # stored now, not fused into the first forward


def gradients(model, loss):
    """{own parameter name: d loss / d parameter} over the trainable parameters."""
    named = [(n, p) for n, p in model.named_parameters() if not p.is_stop_grad()]
    grads = jt.grad(loss, [p for _, p in named])
    return {n: to_numpy(g) for (n, _), g in zip(named, grads)}


# ---------------------------------------------------------------- the bugs' code
class HalfStrideAnchors(AnchorGenerator):
    def single_level_grid_anchors(self, featmap_size, stride):
        return super().single_level_grid_anchors(featmap_size, stride) + stride / 2  # bug


class SidesSoftmaxIntegral(Integral):
    def execute(self, x):
        prob = nn.softmax(x.reshape(*x.shape[:-1], 4, self.reg_max + 1), dim=-2)  # bug
        return (prob * self.project).sum(dim=-1)


class YXTargetsAssigner(ATSSAssigner):
    def _targets_single(self, *args):
        out = super()._targets_single(*args)
        out["bbox_targets"] = out["bbox_targets"][:, [1, 0, 3, 2]]  # bug
        return out


def dfl_weights_swapped(pred, label):
    left = label.int64()
    weight_left = label - left.cast(label.dtype)  # bug: the right bin's weight
    weight_right = (left + 1).cast(label.dtype) - label  # bug: the left bin's weight
    return cross_entropy(pred, left) * weight_left + cross_entropy(pred, left + 1) * weight_right


def subject(bug=None):
    return OutsiderSubject(sys.modules[__name__], bug)
