"""PyTorch model <-> the canonical {name: numpy} state dict and momentum (strict loads
naming every bad key), its files are gfocal/checkpoint_io.py's (save_checkpoint / load_checkpoint)."""
import numpy as np
import torch

from gfocal.state_dict import diff_state_dicts

from . import named_trainable_parameters

EXTENSION = ".pth"  # of this port's checkpoint files (gfocal/checkpoint_io.py)


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


def optimizer_state_numpy(model, optimizer):
    """Momentum buffers by parameter name (absent before the first step)."""
    out = {}
    for name, p in named_trainable_parameters(model):
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            out[name] = buf.detach().cpu().numpy().copy()
    return out


def load_optimizer_state_numpy(model, optimizer, momentum):
    for name, p in named_trainable_parameters(model):
        if name in momentum:
            optimizer.state[p]["momentum_buffer"] = torch.from_numpy(
                np.ascontiguousarray(momentum[name])).to(p.device, copy=True)
