"""GFocalV2 = ResNet + FPN + GFL head (DGQP), with the loss and the test-time decoding; with
model.head = "gfl_v1" the same detector without DGQP: GFL V1 (docs/MODEL.md section 15)."""
import torch
from torch import nn

from gfocal.finite import INFERENCE_CAUSE, TRAINING_CAUSE, check_finite_outputs

from . import finite_flags, precision, tensor
from .backbone import ResNet
from .fpn import FPN
from .gfl_head import GFLHead
from .gfl_loss import GFLLoss
from .postprocess import GFLPostProcess
from .tuning import inference_network

def stage_channels(depth, out_indices):
    expansion = 4 if depth >= 50 else 1
    return [64 * 2 ** i * expansion for i in out_indices]


def check_outputs(cls_scores, bbox_preds, cause):
    """NonFiniteError unless every output of the head is finite (one host read)."""
    flags = finite_flags([*cls_scores, *bbox_preds])
    check_finite_outputs(flags[:len(cls_scores)], flags[len(cls_scores):], cause)


class GFocalV2(nn.Module):

    def __init__(self, model_cfg):
        super().__init__()
        m = model_cfg
        self.backbone = ResNet(m["depth"], frozen_stages=m["frozen_stages"],
                               norm_eval=m["norm_eval"], out_indices=(1, 2, 3))
        self.neck = FPN(stage_channels(m["depth"], (1, 2, 3)), m["fpn_channels"],
                        num_outs=m["num_outs"], start_level=0)
        self.bbox_head = GFLHead(m["num_classes"], m["fpn_channels"],
                                 feat_channels=m["feat_channels"],
                                 stacked_convs=m["stacked_convs"], gn_groups=m["gn_groups"],
                                 reg_max=m["reg_max"], reg_topk=m["reg_topk"],
                                 reg_channels=m["reg_channels"], strides=m["strides"],
                                 head=m["head"])
        self.loss_fn = GFLLoss(m)
        self.postprocess = GFLPostProcess(m)

    def forward(self, imgs):
        """imgs (N, 3, H, W) -> per-level class scores (V2: probabilities, V1: logits) and reg
        logits."""
        return self.bbox_head(self.neck(self.backbone(imgs)))

    def outputs(self, network, imgs):
        """network(imgs) in the port's precision (native: under autocast), the head's
        outputs in float32."""
        with precision.autocast(imgs):
            cls_scores, bbox_preds = network(imgs)
        return precision.to_float32(cls_scores), precision.to_float32(bbox_preds)

    def loss(self, batch):
        """Losses of a shared-pipeline batch: loss_cls, loss_bbox, loss_dfl and their sum."""
        cls_scores, bbox_preds = self.outputs(self, tensor(batch["imgs"]))
        check_outputs(cls_scores, bbox_preds, TRAINING_CAUSE)
        losses = self.loss_fn(cls_scores, bbox_preds,
                              [tensor(b) for b in batch["gt_bboxes"]],
                              [tensor(lb) for lb in batch["gt_labels"]],
                              batch["img_metas"], self.bbox_head.integral)
        losses["loss"] = losses["loss_cls"] + losses["loss_bbox"] + losses["loss_dfl"]
        return losses

    def predict(self, batch):
        """Per image: numpy boxes (original-image pixels), scores and labels."""
        with torch.no_grad():
            cls_scores, bbox_preds = self.outputs(inference_network(self),
                                                  tensor(batch["imgs"]))
            check_outputs(cls_scores, bbox_preds, INFERENCE_CAUSE)
            return self.postprocess(cls_scores, bbox_preds, batch["img_metas"],
                                    self.bbox_head.integral)
