"""Named intermediate tensors, captured as numpy copies for layer-wise parity checks.

    with capture() as probes:
        model(imgs)
    probes["neck.p3"]  # numpy array

Outside a capture `record` returns at once, so probes cost nothing in normal runs.
"""
import contextlib

import numpy as np

_active = None  # the dict of the capture in progress, or None


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
    """Store a numpy copy of `tensor` under `name` (a later record of the name replaces it)."""
    if _active is None:
        return
    _active.pop(name, None)  # re-insert so the dict order is the order of the latest forward
    _active[name] = np.array(tensor.detach().cpu().numpy(), copy=True)


def is_active():
    return _active is not None
