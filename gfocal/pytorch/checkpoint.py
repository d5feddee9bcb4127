"""Checkpoints in PyTorch's format: atomic writes, strict loads naming every bad key."""
import os

import numpy as np
import torch

from gfocal.atomic import atomic_path
from gfocal.state_dict import CheckpointError, diff_state_dicts

EXTENSION = ".pth"


def state_dict_numpy(model):
    """{mmdetection-style name: numpy copy}; `num_batches_tracked` has no Jittor twin."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def load_state_dict_numpy(model, state, strict=True, source="state dict"):
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if strict:
        diff_state_dicts({k: v.shape for k, v in own.items()}, state, source)
    with torch.no_grad():
        for name, array in state.items():
            if name in own:
                own[name].copy_(torch.from_numpy(np.ascontiguousarray(array)))


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def optimizer_state_numpy(model, optimizer):
    """Momentum buffers by parameter name (absent before the first step)."""
    out = {}
    for name, p in _trainable(model):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().numpy().copy()
    return out


def load_optimizer_state_numpy(model, optimizer, momentum):
    for name, p in _trainable(model):
        if name in momentum:
            optimizer.state[p]["momentum_buffer"] = torch.from_numpy(
                np.ascontiguousarray(momentum[name])).to(p.device, copy=True)


def save_checkpoint(path, model, optimizer=None, meta=None):
    payload = {"state_dict": {k: torch.from_numpy(v) for k, v in state_dict_numpy(model).items()},
               "momentum": optimizer_state_numpy(model, optimizer) if optimizer else {},
               "meta": dict(meta or {}, framework="torch")}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path):
    """The raw payload: {'state_dict': {name: numpy}, 'momentum': {...}, 'meta': {...}}."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    return {"state_dict": {k: v.numpy() if torch.is_tensor(v) else np.asarray(v)
                           for k, v in state.items()},
            "momentum": payload.get("momentum", {}),
            "meta": payload.get("meta", {})}


def load_checkpoint(path, model, optimizer=None, strict=True):
    """Load weights (and momentum) into `model` (and `optimizer`); returns the meta dict."""
    payload = read_checkpoint(path)
    load_state_dict_numpy(model, payload["state_dict"], strict=strict, source=path)
    if optimizer is not None:
        load_optimizer_state_numpy(model, optimizer, payload["momentum"])
    return payload["meta"]
