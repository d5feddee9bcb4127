"""Weights between the ports, and from mmdetection / torchvision, via one canonical form.

The canonical form is {mmdetection-style name: numpy array}, the layout both ports use
(docs/ARCHITECTURE.md), so every conversion is: read -> canonical -> check -> write.
"""
import os
import pickle

import numpy as np

from gfocal.state_dict import CheckpointError, diff_state_dicts

FORMATS = ("torch", "jittor", "mmdet", "torchvision")
TARGETS = ("torch", "jittor")


def _torch_load(path):
    import torch
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch file "
                              f"({type(exc).__name__}: {exc})") from exc


def _jittor_load(path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable Jittor checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc


def _to_numpy(state, path):
    out = {}
    for name, value in state.items():
        if hasattr(value, "detach"):      # torch tensor
            value = value.detach().cpu().numpy()
        elif hasattr(value, "numpy"):     # jittor Var
            value = value.numpy()
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, "
                                  "not a tensor")
        out[name] = value
    return out


def _state_of(payload, path):
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict")
    return _to_numpy(state, path)


def mmdet_to_canonical(state, num_classes=None):
    """An official GFocalV2 / mmdetection state dict in our layout.

    Drops `num_batches_tracked` and a `module.` prefix. The official config's classifier
    has num_classes + 1 outputs (a by-product of use_sigmoid=False): its last channel is
    only ever trained towards 0 and is never read at test time, so it is dropped.
    """
    out = {}
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.endswith("num_batches_tracked"):
            continue
        out[name] = value
    cls_w = out.get("bbox_head.gfl_cls.weight")
    if cls_w is not None and num_classes is not None and cls_w.shape[0] == num_classes + 1:
        out["bbox_head.gfl_cls.weight"] = cls_w[:num_classes].copy()
        out["bbox_head.gfl_cls.bias"] = out["bbox_head.gfl_cls.bias"][:num_classes].copy()
    if "bbox_head.gfl_reg.weight" in out and "bbox_head.integral.project" not in out:
        reg_max = out["bbox_head.gfl_reg.weight"].shape[0] // 4 - 1
        out["bbox_head.integral.project"] = np.arange(reg_max + 1, dtype=np.float32)
    return out


def torchvision_to_canonical(state):
    """A torchvision ResNet state dict as `backbone.*` keys (the classifier `fc` dropped)."""
    return {"backbone." + k: v for k, v in state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def _canonical(state, fmt, num_classes):
    if fmt == "mmdet":
        return mmdet_to_canonical(state, num_classes)
    if fmt == "torchvision":
        return torchvision_to_canonical(state)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def _load(path, fmt):
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    return _jittor_load(path) if fmt == "jittor" else _torch_load(path)


def read(path, fmt, num_classes=None):
    """Canonical state dict of the file at `path` written in format `fmt`."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown source format {fmt!r} (choose from {', '.join(FORMATS)})")
    return _canonical(_state_of(_load(path, fmt), path), fmt, num_classes)


def detect_format(path, payload):
    """Best guess of a loaded weights file's format, for `init_weights` in a config."""
    if path.endswith(".pkl"):
        return "jittor"
    meta = payload.get("meta", {}) if isinstance(payload, dict) else {}
    if isinstance(meta, dict) and meta.get("framework") == "torch":
        return "torch"
    state = _state_of(payload, path)
    if any(k.startswith("fc.") or k == "conv1.weight" for k in state):
        return "torchvision"
    return "mmdet"


def load_any(path, num_classes=None):
    """Canonical state dict of a weights file in any supported format (read once)."""
    payload = _load(path, "jittor" if path.endswith(".pkl") else "torch")
    fmt = detect_format(path, payload)
    return _canonical(_state_of(payload, path), fmt, num_classes)


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
    from gfocal.engine import load_port
    port = load_port(to)
    return port, port.build_detector(model_cfg)


def check_against_model(state, model_cfg, to, source):
    """Stop with the full list of missing / unexpected / mis-shaped keys."""
    port, model = build_target_model(model_cfg, to)
    expected = {k: v.shape for k, v in port.checkpoint.state_dict_numpy(model).items()}
    diff_state_dicts(expected, state, source)
    return port, model


def write(path, state, to, meta=None):
    """Write a canonical state dict as a checkpoint of port `to` (dtypes and shapes kept)."""
    from gfocal.atomic import atomic_path
    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r} (choose from {', '.join(TARGETS)})")
    payload = {"state_dict": state, "momentum": {}, "meta": dict(meta or {}, framework=to)}
    with atomic_path(path) as tmp:
        if to == "torch":
            import torch
            payload["state_dict"] = {k: torch.from_numpy(np.ascontiguousarray(v))
                                     for k, v in state.items()}
            torch.save(payload, tmp)
        else:
            with open(tmp, "wb") as f:
                pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


def convert(src, dst, src_fmt, to, model_cfg=None):
    """Convert `src` to `dst`; returns the model config the weights were checked against.

    torchvision weights fill the backbone of a freshly initialised detector of `model_cfg`
    (default: the paper's R50 model); every other source must be a complete detector.
    """
    if os.path.abspath(src) == os.path.abspath(dst):
        raise CheckpointError(f"{dst}: refusing to overwrite the source file")
    state = read(src, src_fmt, num_classes=(model_cfg or {}).get("num_classes", 80))
    if src_fmt == "torchvision":
        from gfocal.config import DEFAULTS
        model_cfg = model_cfg or dict(DEFAULTS["model"])
        port, model = build_target_model(model_cfg, to)
        full = port.checkpoint.state_dict_numpy(model)
        backbone = {k: v for k, v in full.items() if k.startswith("backbone.")}
        diff_state_dicts({k: v.shape for k, v in backbone.items()}, state, src)
        full.update(state)
        state = full
    else:
        model_cfg = model_cfg or infer_model_cfg(state)
        check_against_model(state, model_cfg, to, src)
    write(dst, state, to, meta={"source": os.path.basename(src), "source_format": src_fmt,
                                "model": model_cfg})
    return model_cfg
