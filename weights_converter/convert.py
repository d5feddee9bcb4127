"""Weights between the ports, and from mmdetection / torchvision, via one canonical form.

The canonical form is {mmdetection-style name: numpy array}, the layout both ports use
(docs/ARCHITECTURE.md), so every conversion is: read -> canonical -> check -> write.
"""
import os
import pickle

import numpy as np

from gfocal.checkpoint_io import FORMATS, canonical, classes_of, load_payload, load_port, meta_of
from gfocal.state_dict import CheckpointError, diff_state_dicts

TARGETS = ("torch", "jittor", "mmdet")
# The official layout's background channel: zero weights and this bias give it a
# probability of exactly 0.0 in float32 under a sigmoid (exp(1e4) overflows to inf, so
# 1 / (1 + inf) = 0) and under a softmax next to any logit above -9900 (exp(-9900) = 0).
BACKGROUND_BIAS = -1e4


def canonical_to_mmdet(state):
    """Our canonical state dict in the official GFocalV2 / mmdetection layout.

    Scales become 0-d (mmcv's `Scale`); the classifier gets mmdetection's background channel
    appended last, with zero weights and a bias of BACKGROUND_BIAS, so its probability is
    exactly 0 and the official code's detections are those of our num_classes channels.
    """
    out = {}
    for name, value in state.items():
        if name.startswith("bbox_head.scales.") and value.shape == (1,):
            value = value.reshape(())
        elif name == "bbox_head.gfl_cls.weight":
            value = np.concatenate([value, np.zeros_like(value[:1])])
        elif name == "bbox_head.gfl_cls.bias":
            value = np.concatenate([value, np.full(1, BACKGROUND_BIAS, value.dtype)])
        out[name] = value
    return out


def infer_model_cfg(state):
    """The `model` config section that a full detector state dict was made with."""
    from gfocal.config import DEFAULTS
    try:
        cfg = dict(DEFAULTS["model"])
        has_conv3 = "backbone.layer1.0.conv3.weight" in state
        blocks = {i: len({k.split(".")[2] for k in state if k.startswith(f"backbone.layer{i}.")})
                  for i in (1, 2, 3, 4)}
        depth_by_blocks = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34,
                           (3, 4, 6, 3, True): 50, (3, 4, 23, 3, True): 101}
        cfg["depth"] = depth_by_blocks[(blocks[1], blocks[2], blocks[3], blocks[4], has_conv3)]
        cfg["num_classes"] = state["bbox_head.gfl_cls.weight"].shape[0]
        cfg["feat_channels"] = state["bbox_head.cls_convs.0.conv.weight"].shape[0]
        cfg["fpn_channels"] = state["neck.lateral_convs.0.conv.weight"].shape[0]
        cfg["stacked_convs"] = len({k.split(".")[2] for k in state
                                    if k.startswith("bbox_head.cls_convs.")})
        cfg["reg_max"] = state["bbox_head.gfl_reg.weight"].shape[0] // 4 - 1
        cfg["reg_channels"] = state["bbox_head.reg_conf.0.weight"].shape[0]
        cfg["reg_topk"] = state["bbox_head.reg_conf.0.weight"].shape[1] // 4 - 1
        cfg["num_outs"] = len({k.split(".")[2] for k in state if k.startswith("bbox_head.scales.")})
        cfg["strides"] = [8 * 2 ** i for i in range(cfg["num_outs"])]
        return cfg
    except (KeyError, IndexError) as exc:
        raise CheckpointError(f"cannot infer the model from the state dict: missing or odd "
                              f"entry {exc}") from exc


def build_target_model(model_cfg, to):
    """A freshly initialised detector to check weights against (PyTorch's for 'mmdet')."""
    port = load_port("torch" if to == "mmdet" else to)
    return port, port.build_detector(model_cfg)


def check_against_model(state, model_cfg, to, source):
    """Stop with the full list of missing / unexpected / mis-shaped keys."""
    port, model = build_target_model(model_cfg, to)
    expected = {k: v.shape for k, v in port.checkpoint.state_dict_numpy(model).items()}
    diff_state_dicts(expected, state, source)
    return port, model


def _contiguous(value):
    # not np.ascontiguousarray: it turns a 0-d array (an mmcv Scale) into shape (1,)
    return value if value.flags.c_contiguous else value.copy()


def mmdet_payload(state, classes=None, meta=None):
    """What mmcv saves: {'meta': {..., 'CLASSES'}, 'state_dict': {name: torch tensor}}, with
    a `num_batches_tracked` (0) beside every BatchNorm, as the official model has."""
    import torch
    tensors = {}
    for name, value in canonical_to_mmdet(state).items():
        tensors[name] = torch.from_numpy(_contiguous(value))
        if name.endswith(".running_var"):
            tensors[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    meta = dict(meta or {})
    if classes is not None:
        meta["CLASSES"] = tuple(classes)
    return {"meta": meta, "state_dict": tensors}


def write(path, state, to, meta=None, classes=None):
    """Write a canonical state dict as a checkpoint of port `to`, or in the official
    layout for 'mmdet' (dtypes and shapes kept); `classes` are the class names if known."""
    from gfocal.atomic import atomic_path
    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r} (choose from {', '.join(TARGETS)})")
    if to == "mmdet":
        payload = mmdet_payload(state, classes, meta)
    else:
        payload = {"state_dict": state, "momentum": {}, "meta": dict(meta or {}, framework=to)}
        if classes is not None:
            payload["meta"]["classes"] = list(classes)
    with atomic_path(path) as tmp:
        if to == "jittor":
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            return
        import torch
        if to == "torch":
            payload["state_dict"] = {k: torch.from_numpy(_contiguous(v))
                                     for k, v in state.items()}
        torch.save(payload, tmp)


def convert(src, dst, src_fmt, to, model_cfg=None):
    """Convert `src` to `dst`; returns the model config the weights were checked against.

    torchvision weights fill the backbone of a freshly initialised detector of `model_cfg`
    (default: the paper's R50 model); every other source must be a complete detector.
    Class names (an official checkpoint's meta CLASSES, ours' meta classes) travel along.
    """
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CheckpointError(f"{dst}: refusing to overwrite the source file")
    if src_fmt not in FORMATS:
        raise CheckpointError(f"unknown source format {src_fmt!r} (choose from "
                              f"{', '.join(FORMATS)})")
    payload = load_payload(src, src_fmt)
    state = canonical(payload, src_fmt, src, (model_cfg or {}).get("num_classes"))
    classes = classes_of(meta_of(payload))
    if src_fmt == "torchvision":
        from gfocal.config import DEFAULTS
        model_cfg = model_cfg or dict(DEFAULTS["model"])
        port, model = build_target_model(model_cfg, to)
        full = port.checkpoint.state_dict_numpy(model)
        backbone = {k: v for k, v in full.items() if k.startswith("backbone.")}
        diff_state_dicts({k: v.shape for k, v in backbone.items()}, state, src)
        full.update(state)
        state, classes = full, None
    else:
        model_cfg = model_cfg or infer_model_cfg(state)
        check_against_model(state, model_cfg, to, src)
    write(dst, state, to, meta={"source": os.path.basename(src), "source_format": src_fmt,
                                "model": model_cfg}, classes=classes)
    return model_cfg
