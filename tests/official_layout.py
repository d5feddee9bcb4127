"""An official GFocalV2 model tree and its checkpoints as mmcv saves them, for the tests.

Written from the official implementation's module structure (mmcv's ConvModule, Scale and
the head's Integral and reg_conf), not from our ports, so a checkpoint built here has the
names, shapes and 0-d tensors a released one has: if our layout drifts from the official
one, the converter tests fail.
"""
import collections
import contextlib
import sys
import types

import numpy as np
import torch
import torchvision
from torch import nn


class ConvModule(nn.Module):
    """mmcv's ConvModule: `conv`, then `gn` when normalised (then the conv has no bias)."""

    def __init__(self, cin, cout, kernel, stride=1, gn_groups=None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=gn_groups is None)
        if gn_groups:
            self.gn = nn.GroupNorm(gn_groups, cout)


class Scale(nn.Module):
    """mmcv's Scale: a 0-d learnable factor."""

    def __init__(self, init=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(init, dtype=torch.float))


class Integral(nn.Module):
    def __init__(self, reg_max):
        super().__init__()
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))


class FPN(nn.Module):
    """start_level 1, add_extra_convs 'on_output', num_outs 5."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            [ConvModule(out_channels, out_channels, 3) for _ in in_channels]
            + [ConvModule(out_channels, out_channels, 3, stride=2) for _ in range(2)])


class GFocalV2Head(nn.Module):
    def __init__(self, cls_out_channels, channels, stacked_convs, gn_groups, reg_max=16,
                 reg_topk=4, reg_channels=64):
        super().__init__()
        self.cls_convs = nn.ModuleList(ConvModule(channels, channels, 3, gn_groups=gn_groups)
                                       for _ in range(stacked_convs))
        self.reg_convs = nn.ModuleList(ConvModule(channels, channels, 3, gn_groups=gn_groups)
                                       for _ in range(stacked_convs))
        self.gfl_cls = nn.Conv2d(channels, cls_out_channels, 3, padding=1)
        self.gfl_reg = nn.Conv2d(channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(5))
        self.reg_conf = nn.Sequential(nn.Conv2d(4 * (reg_topk + 1), reg_channels, 1), nn.ReLU(),
                                      nn.Conv2d(reg_channels, 1, 1), nn.Sigmoid())
        self.integral = Integral(reg_max)


class OfficialGFL(nn.Module):
    """backbone (mmdetection's ResNet: torchvision's names, no fc), neck, bbox_head."""

    def __init__(self, depth, num_classes, channels, stacked_convs, gn_groups,
                 background_channel=True):
        super().__init__()
        self.backbone = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        del self.backbone.fc
        widths = [128, 256, 512] if depth < 50 else [512, 1024, 2048]
        self.neck = FPN(widths, channels)
        self.bbox_head = GFocalV2Head(num_classes + int(background_channel), channels,
                                      stacked_convs, gn_groups)


def official_model(model_cfg, background_channel=True, seed=0):
    """An OfficialGFL with random weights, non-trivial scales and BN statistics."""
    torch.manual_seed(seed)
    model = OfficialGFL(model_cfg["depth"], model_cfg["num_classes"], model_cfg["feat_channels"],
                        model_cfg["stacked_convs"], model_cfg["gn_groups"], background_channel)
    with torch.no_grad():
        for i, scale in enumerate(model.bbox_head.scales):
            scale.scale.fill_(0.75 + 0.1 * i)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(1234)
    return model


class HistoryBuffer:
    """mmengine's HistoryBuffer as it pickles (its attributes only). mmengine is not
    installed here: `pickled_as` gives it mmengine's module path while a file is saved, so
    the pickle names it as a real mmengine checkpoint does."""

    def __init__(self, log_history, count_history, max_length=1000000):
        self.max_length = max_length
        self._log_history = np.array(log_history)
        self._count_history = np.array(count_history)


@contextlib.contextmanager
def pickled_as(cls, module):
    """While the context lasts, `cls` pickles as `module`.`cls.__name__` (a module that is
    not installed, or whose real class is not the one to write), as the library's own
    class would."""
    names = [module.rsplit(".", i)[0] for i in reversed(range(module.count(".") + 1))]
    saved = {n: sys.modules.get(n) for n in names}
    fakes = {n: types.ModuleType(n) for n in names}
    setattr(fakes[module], cls.__name__, cls)
    saved_module = cls.__module__
    cls.__module__ = module
    sys.modules.update(fakes)
    try:
        yield
    finally:
        cls.__module__ = saved_module
        for name, real in saved.items():
            if real is None:
                del sys.modules[name]
            else:
                sys.modules[name] = real


def save_official_checkpoint(path, model, classes, style="mmcv1", prefix="", legacy=False):
    """Save `model` the way the official code's runner does.

    style 'mmcv1': mmcv 1.x's save_checkpoint (official GFocalV2, mmdetection 2.x):
    {'meta': {mmdet_version, CLASSES, config, epoch, iter, ...}, 'state_dict', 'optimizer'}.
    style 'mmengine': mmengine's Runner.save_checkpoint (mmdetection 3.x): class names under
    meta['dataset_meta']['classes'], plus message_hub (loss curves as HistoryBuffers, numpy
    scalars in runtime_info) and param_schedulers.
    `prefix` 'module.' gives the names a DataParallel-wrapped model saves; `legacy` torch's
    format before 1.6 (no zip archive), which the official GFocalV2 release was made with.
    """
    state = collections.OrderedDict((prefix + k, v.detach().cpu().clone())
                                    for k, v in model.state_dict().items())
    state._metadata = model.state_dict()._metadata  # as mmcv's get_state_dict keeps it
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if style == "mmcv1":
        meta = {"mmdet_version": "2.6.0+gfocalv2", "mmcv_version": "1.1.5", "epoch": 12,
                "iter": 87960, "time": "Fri Nov 27 11:45:00 2020", "CLASSES": tuple(classes),
                "config": "model = dict(type='GFL', ...)", "seed": None,
                "hook_msgs": {"last_ckpt": "work_dirs/gfl/epoch_12.pth"}}
        payload = {"meta": meta, "state_dict": state, "optimizer": optimizer.state_dict()}
    elif style == "mmengine":
        meta = {"epoch": 12, "iter": 87960, "cfg": "model = dict(type='GFL', ...)", "seed": 0,
                "experiment_name": "gfl_r50_fpn_1x_coco", "time": "20240101_120000",
                "mmengine_version": "0.10.3",
                "dataset_meta": {"classes": tuple(classes),
                                 "palette": [(220, 20, 60)] * len(classes)}}
        log_scalars = collections.OrderedDict(
            (key, HistoryBuffer([0.5, 0.4], [1, 1])) for key in ("train/lr", "train/loss"))
        runtime_info = collections.OrderedDict(
            epoch=12, iter=87960, max_epochs=12, best_score=np.float64(0.412),
            last_ckpt="work_dirs/gfl/epoch_12.pth")
        resumed = collections.OrderedDict((k, True) for k in [*log_scalars, *runtime_info])
        payload = {"meta": meta, "state_dict": state, "optimizer": optimizer.state_dict(),
                   "message_hub": {"log_scalars": log_scalars, "runtime_info": runtime_info,
                                   "resumed_keys": resumed},
                   "param_schedulers": [{"last_epoch": 12, "base_values": [0.01],
                                         "_get_lr_called_within_step": False}]}
    else:
        raise ValueError(style)
    with pickled_as(HistoryBuffer, "mmengine.logging.history_buffer"):
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return payload
