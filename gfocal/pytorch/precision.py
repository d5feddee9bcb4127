"""Mixed precision in the PyTorch port (gfocal/precision.py).

The policy: PyTorch's half convolutions accumulate in float32 on the CPU (oneDNN) and on
CUDA (cuDNN) and round the result once, as the policy says, so the port runs them as they
are and carries their results on in float32.

Native mode: torch.autocast around the network's forward (autocast's own op lists pick
each op's type), the head's outputs in float32 for the loss and the decoding (mmdetection's
`force_fp32` on the GFL head's loss and get_bboxes), and GradScaler for native-fp16.
"""
import contextlib

import torch
from torch import nn

from gfocal.precision import BACKOFF_FACTOR, GROWTH_FACTOR, GROWTH_INTERVAL, INIT_SCALE, \
    PortPrecision, half_type, is_native, uses_loss_scale

HALF_TYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _probe_convolution(amp, device):
    probe = torch.ones((1, 1, 3, 3), dtype=HALF_TYPES[half_type(amp)], device=device)
    nn.functional.conv2d(probe, probe)


# The port's precision (what half_op computes in), set by use_precision / mixed_precision
_state = PortPrecision(f"PyTorch {torch.__version__}", _probe_convolution)
use_precision = _state.use
mixed_precision = _state.scope


def current_precision():
    return _state.amp


def autocast(like):
    """The block the network's forward runs in: in native mode torch.autocast on the device
    of tensor `like`, in the half type; otherwise nothing."""
    if _state.amp == "off" or not is_native(_state.amp):
        return contextlib.nullcontext()
    return torch.autocast(like.device.type, dtype=HALF_TYPES[half_type(_state.amp)])


def to_float32(tensors):
    """The head's outputs as float32 for the loss and the decoding (force_fp32)."""
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


def half_op(op, *tensors):
    """op(*tensors) under the policy: float32 tensors are rounded to the half type, op sums
    in float32 and rounds its result to the half type, which is carried on in float32.
    Outside the policy (off, native: autocast decides; float64 tensors) op(*tensors) as it
    is."""
    if _state.amp == "off" or is_native(_state.amp) or tensors[0].dtype != torch.float32:
        return op(*tensors)
    half = HALF_TYPES[_state.amp]
    return op(*(None if t is None else t.to(half) for t in tensors)).float()


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters) whose convolution follows the port's precision."""

    def forward(self, x):
        return half_op(self._conv_forward, x, self.weight, self.bias)


class LossScaler:
    """fp16's dynamic loss scale (gfocal/precision.py): torch.amp.GradScaler with the
    shared constants; `skipped` counts the steps it skipped."""

    def __init__(self, device="cpu", state=None):
        self.scaler = torch.amp.GradScaler(
            device.split(":")[0], init_scale=INIT_SCALE, growth_factor=GROWTH_FACTOR,
            backoff_factor=BACKOFF_FACTOR, growth_interval=GROWTH_INTERVAL)
        self.skipped = 0
        if state:
            # the good steps' only public way in and out: state_dict's "_growth_tracker" entry
            self.scaler.load_state_dict({"scale": state["scale"],
                                         "_growth_tracker": state["good_steps"],
                                         "growth_factor": GROWTH_FACTOR,
                                         "backoff_factor": BACKOFF_FACTOR,
                                         "growth_interval": GROWTH_INTERVAL})
            self.skipped = state["skipped"]

    def step(self, loss, optimizer):
        """Backward of the scaled loss, then the update unless a gradient overflowed;
        returns whether the step was skipped."""
        scale = self.scaler.get_scale()
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
        skipped = self.scaler.get_scale() < scale
        self.skipped += int(skipped)
        return skipped

    def state(self):
        scaler = self.scaler.state_dict()  # its entries: tests/test_dependency_apis.py
        return {"scale": float(scaler["scale"]), "good_steps": int(scaler["_growth_tracker"]),
                "skipped": self.skipped}


def loss_scaler(amp, device="cpu", state=None):
    """A LossScaler where `amp` trains with a loss scale (fp16), else None."""
    return LossScaler(str(device), state) if uses_loss_scale(amp) else None
