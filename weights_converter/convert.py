"""Weights between the ports, and from mmdetection / torchvision, via one canonical form.

The canonical form is {mmdetection-style name: numpy array}, the layout both ports use
(docs/ARCHITECTURE.md), so every conversion is: read -> canonical -> check -> write. The
file formats themselves are gfocal/checkpoint_io.py's; this module checks the weights
against a model of the target port.
"""
import os

from gfocal.atomic import check_output_file
from gfocal.checkpoint_io import FORMATS, canonical, classes_of, load_payload, meta_of, write
from gfocal.ports import load_port
from gfocal.state_dict import CheckpointError, diff_state_dicts


def infer_model_cfg(state):
    """The `model` config section that a full detector state dict was made with (a GFL V1
    model when it has no `bbox_head.reg_conf.*`)."""
    from gfocal.config import DEFAULTS, GFL_V1
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
        if "bbox_head.reg_conf.0.weight" in state:  # the DGQP branch: GFocalV2
            cfg["reg_channels"] = state["bbox_head.reg_conf.0.weight"].shape[0]
            cfg["reg_topk"] = state["bbox_head.reg_conf.0.weight"].shape[1] // 4 - 1
        else:  # without it: GFL V1 (docs/MODEL.md section 15)
            cfg["head"] = GFL_V1
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
    check_output_file(dst)  # before the minutes of reading and checking that precede the write
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
