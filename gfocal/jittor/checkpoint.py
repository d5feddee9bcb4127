"""Checkpoints in Jittor's format: atomic writes, strict loads naming every bad key."""
import os

import jittor as jt
import numpy as np

from gfocal.atomic import atomic_path
from gfocal.state_dict import CheckpointError, diff_state_dicts

EXTENSION = ".pkl"


def state_dict_numpy(model):
    """{mmdetection-style name: numpy copy}."""
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()}


def load_state_dict_numpy(model, state, strict=True, source="state dict"):
    own = model.state_dict()
    if strict:
        diff_state_dicts({k: v.shape for k, v in own.items()}, state, source)
    # load_parameters only logs failures (SPEC.md section 10): assign name by name instead.
    for name, array in state.items():
        if name in own:
            own[name].assign(jt.array(np.ascontiguousarray(array)).cast(own[name].dtype))
    jt.sync(list(own.values()))


def _trainable(model):
    return [(n, p) for n, p in model.named_parameters() if not p.is_stop_grad()]


def _momentum_by_param(optimizer):
    return {id(p): v for pg in optimizer.param_groups for p, v in zip(pg["params"], pg["values"])}


def optimizer_state_numpy(model, optimizer):
    """Momentum buffers by parameter name (all zeros before the first step)."""
    values = _momentum_by_param(optimizer)
    return {name: values[id(p)].numpy().copy() for name, p in _trainable(model)
            if id(p) in values}


def load_optimizer_state_numpy(model, optimizer, momentum):
    values = _momentum_by_param(optimizer)
    for name, p in _trainable(model):
        if name in momentum and id(p) in values:
            values[id(p)].update(jt.array(np.ascontiguousarray(momentum[name])).stop_grad())


def save_checkpoint(path, model, optimizer=None, meta=None):
    payload = {"state_dict": state_dict_numpy(model),
               "momentum": optimizer_state_numpy(model, optimizer) if optimizer else {},
               "meta": dict(meta or {}, framework="jittor")}
    with atomic_path(path) as tmp:
        jt.save(payload, tmp)


def read_checkpoint(path):
    """The raw payload: {'state_dict': {name: numpy}, 'momentum': {...}, 'meta': {...}}."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        payload = jt.load(path)
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable Jittor checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    return {"state_dict": {k: np.asarray(v.numpy() if isinstance(v, jt.Var) else v)
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
