"""Named intermediate tensors, captured as numpy copies for layer-wise parity checks.

    with capture() as probes:
        model(imgs)
    probes["neck.p3"]  # numpy array

Outside a capture `record` returns at once, so probes cost nothing in normal runs.

    with relu_calls(model) as calls:   # the input of every nn.ReLU call, in call order
        model.loss(batch)

`relu_calls(model, masks)` also lets chosen calls pass their input by a given mask instead of
by its own sign: how the parity suite takes the other port's side of a ReLU kink (an input
within float32 rounding of zero) to compare gradients (parity_tests/TOLERANCES.md).
"""
import contextlib

import numpy as np
import torch
from torch import nn

_active = None  # the dict of the capture in progress, or None
_relu_calls = None  # the list of the relu_calls block in progress, or None


class ProbeError(RuntimeError):
    """Probes used in a way that would mix up two captures."""


@contextlib.contextmanager
def capture():
    """Collect every `record` made inside the block into the yielded dict (forward order)."""
    global _active
    if _active is not None:
        raise ProbeError("probes.capture() is already active: nested captures are not supported")
    _active = {}
    try:
        yield _active
    finally:
        _active = None


def record(name, tensor):
    """Store a numpy copy of `tensor` under `name` (a later record of the name replaces it;
    a half-type tensor of native mixed precision as float32, which holds it exactly)."""
    if _active is None:
        return
    _active.pop(name, None)  # re-insert so the dict order is the order of the latest forward
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.float()
    _active[name] = np.array(tensor.detach().cpu().numpy(), copy=True)


def is_active():
    return _active is not None


@contextlib.contextmanager
def relu_calls(model, masks=None):
    """Every nn.ReLU call inside the block as (module name in `model`, input tensor), in call
    order, in the yielded list. The inputs stay tensors (a Jittor input read at once would be
    computed outside the lazily fused graph of a normal step); the caller turns them into numpy
    after the backward. `masks` {call index: bool array}: those calls
    return input * mask (gradient: grad * mask) instead of relu(input)."""
    global _relu_calls
    if _relu_calls is not None:
        raise ProbeError("relu_calls() is already active: nested blocks are not supported")
    names = {id(module): name for name, module in model.named_modules()}
    masks = masks or {}
    original = nn.ReLU.forward
    calls = _relu_calls = []

    def forward(module, x):
        call = len(calls)
        calls.append((names.get(id(module), "?"), x.detach()))
        if call in masks:
            return x * torch.as_tensor(masks[call], dtype=x.dtype, device=x.device)
        return original(module, x)

    nn.ReLU.forward = forward
    try:
        yield calls
    finally:
        nn.ReLU.forward = original
        _relu_calls = None
