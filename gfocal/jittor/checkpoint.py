"""Jittor model <-> the canonical {name: numpy} state dict and momentum (strict loads
naming every bad key), its files are gfocal/checkpoint_io.py's (save_checkpoint / load_checkpoint)."""
import jittor as jt
import numpy as np

from gfocal.state_dict import diff_state_dicts

from . import named_trainable_parameters

EXTENSION = ".pkl"  # of this port's checkpoint files (gfocal/checkpoint_io.py)


def state_dict_numpy(model):
    """{mmdetection-style name: numpy copy}."""
    return {k: np.array(v.numpy(), copy=True) for k, v in model.state_dict().items()}


def load_state_dict_numpy(model, state, strict=True, source="state dict"):
    own = model.state_dict()
    if strict:
        diff_state_dicts({k: v.shape for k, v in own.items()}, state, source)
    # load_parameters only logs failures (docs/MODEL.md section 10): assign name by name instead.
    for name, array in state.items():
        if name in own:
            own[name].assign(jt.array(np.ascontiguousarray(array)).cast(own[name].dtype))
    jt.sync(list(own.values()))


def _momentum_by_param(optimizer):
    return {id(p): v for pg in optimizer.param_groups for p, v in zip(pg["params"], pg["values"])}


def optimizer_state_numpy(model, optimizer):
    """Momentum buffers by parameter name (all zeros before the first step)."""
    values = _momentum_by_param(optimizer)
    return {name: values[id(p)].numpy().copy() for name, p in named_trainable_parameters(model)
            if id(p) in values}


def load_optimizer_state_numpy(model, optimizer, momentum):
    values = _momentum_by_param(optimizer)
    for name, p in named_trainable_parameters(model):
        if name in momentum and id(p) in values:
            values[id(p)].update(jt.array(np.ascontiguousarray(momentum[name])).stop_grad())
    jt.sync(list(values.values()))  # stored, as train_step leaves them
