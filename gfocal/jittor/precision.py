"""Mixed precision in the Jittor port (gfocal/precision.py).

The policy: Jittor's CPU convolutions and matmuls in float16 / bfloat16 accumulate in the
half type and its CPU bfloat16 conversion truncates (measured: docs/MODEL.md section 13),
which the policy does not allow, so on the CPU the port emulates the policy's roundings
around a float32 convolution: the inputs are rounded to the half type (to nearest, ties to even),
the convolution sums in float32, the result is rounded to the half type; gradients are
rounded at the same places. The numbers are those of a float32-accumulating half
convolution; the speed is float32's plus the roundings. On CUDA (cuDNN accumulates in
float32) the convolution runs in the half type.

Native mode: what Jittor offers for mixed precision, inside the network's forward: each
convolution's input and (float32 master) weight are cast to the half type and run by
Jittor's own half kernel (on the CPU it accumulates in the half type), its result stays in
the half type, and `auto_mixed_precision_level` (AMP_LEVEL) lets the ops after it keep the
half type. The head's outputs go to the loss and the decoding in float32 (mmdetection's
`force_fp32`), and native-fp16 trains with the shared loss scale.
"""
import contextlib

import jittor as jt
from jittor import nn

from gfocal.precision import INIT_SCALE, LossScale, PortPrecision, half_type, is_native, \
    uses_loss_scale

HALF_TYPES = {"bf16": jt.bfloat16, "fp16": jt.float16}
_autocasting = False  # inside autocast() in native mode
# Jittor's "prefer the half type, but sums, exp and the like in float32" (src/var.cc)
AMP_LEVEL = 4


def _probe_convolution(amp, device):
    probe = jt.ones((1, 1, 3, 3)).cast(HALF_TYPES[half_type(amp)])
    nn.conv2d(probe, probe).sync()


# The port's precision (what half_op computes in), set by use_precision / mixed_precision
_state = PortPrecision(f"Jittor {jt.__version__}", _probe_convolution)
use_precision = _state.use
mixed_precision = _state.scope


def current_precision():
    return _state.amp


# float32 -> half type -> float32 rounded to nearest, ties to even (as PyTorch and CUDA
# do), in one pass over the bits. Jittor's CPU bfloat16 conversion truncates
# (src/type/fp16_compute.h: `x >> 16`), a bias of half a unit in the last place the
# emulation must not take on; its float16 conversion rounds correctly but element by
# element in software, 4x slower than this.
_ROUND_TO_HALF = {
    "bf16": """
    for (index_t i = 0; i < in0_shape0; i++) {
        uint32_t bits;
        std::memcpy(&bits, &in0_p[i], 4);
        if ((bits & 0x7f800000u) != 0x7f800000u)  // inf and NaN stay as they are
            bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
        std::memcpy(&out0_p[i], &bits, 4);
    }""",
    "fp16": """
    for (index_t i = 0; i < in0_shape0; i++) {
        uint32_t bits;
        std::memcpy(&bits, &in0_p[i], 4);
        uint32_t sign = bits & 0x80000000u, mag = bits & 0x7fffffffu;
        if (mag >= 0x7f800000u) {                 // inf and NaN stay as they are
        } else if (mag >= 0x477ff000u) {          // >= 65520: beyond float16, to inf
            bits = sign | 0x7f800000u;
        } else if (mag < 0x38800000u) {           // below 2**-14: float16 subnormals
            float a;                              // steps of 2**-24, rounded to even
            std::memcpy(&a, &mag, 4);
            a = std::nearbyint(a * 16777216.0f) * 5.9604644775390625e-8f;
            std::memcpy(&mag, &a, 4);
            bits = sign | mag;
        } else {                                  // 11 significant bits
            bits = sign | ((mag + 0xfffu + ((mag >> 13) & 1u)) & ~0x1fffu);
        }
        std::memcpy(&out0_p[i], &bits, 4);
    }""",
}


def round_to_half(t, amp):
    """float32 `t` rounded to the nearest value of the half type of `amp`, as float32."""
    flat = t.reshape(-1)
    out = jt.code(flat.shape, jt.float32, [flat],
                  cpu_header="#include <cmath>\n#include <cstring>",
                  cpu_src=_ROUND_TO_HALF[amp])
    return out.reshape(t.shape)


class HalfRounding(jt.Function):
    """round_to_half forward and backward: where the policy rounds a tensor to the half
    type, its gradient is rounded too, as PyTorch's cast backward does."""

    def __init__(self, amp):
        self.amp = amp

    def execute(self, t):
        return round_to_half(t, self.amp)

    def grad(self, grad):
        return round_to_half(grad, self.amp)


def _rounded(t, amp):
    return HalfRounding(amp)(t)


@contextlib.contextmanager
def autocast(like):
    """The block the network's forward runs in: in native mode the half convolutions and
    AMP_LEVEL; otherwise nothing. (`like`: the input, whose device PyTorch's needs.)"""
    global _autocasting
    if _state.amp == "off" or not is_native(_state.amp):
        yield
        return
    previous = _autocasting
    _autocasting = True
    try:
        with jt.flag_scope(auto_mixed_precision_level=AMP_LEVEL):
            yield
    finally:
        _autocasting = previous


def to_float32(tensors):
    """The head's outputs as float32 for the loss and the decoding (force_fp32)."""
    return [t if t.dtype == jt.float32 else t.float32() for t in tensors]


def half_op(op, *tensors):
    """op(*tensors) under the policy: float32 tensors are rounded to the half type, op sums
    in float32 and rounds its result to the half type, which is carried on in float32.
    In native mode inside autocast() op runs on half-type copies (Jittor's own half kernel)
    and its result stays in the half type. Otherwise (off, native outside autocast, float64
    tensors) op(*tensors) as it is."""
    if _autocasting:
        half = HALF_TYPES[half_type(_state.amp)]
        return op(*(None if t is None else t.cast(half) for t in tensors))
    if _state.amp == "off" or is_native(_state.amp) or tensors[0].dtype != jt.float32:
        return op(*tensors)
    if jt.flags.use_cuda:
        half = HALF_TYPES[_state.amp]
        return op(*(None if t is None else t.cast(half) for t in tensors)).cast(jt.float32)
    amp = _state.amp
    return _rounded(op(*(None if t is None else _rounded(t, amp) for t in tensors)), amp)


class Conv2d(nn.Conv2d):
    """nn.Conv2d (same parameters) whose convolution follows the port's precision."""

    def _conv_forward(self, x, weight, bias):
        return nn.conv2d(x, weight, bias, self.stride, self.padding, self.dilation,
                         self.groups)

    def execute(self, x):
        return half_op(self._conv_forward, x, self.weight, self.bias)


class LossScaler:
    """fp16's dynamic loss scale (gfocal/precision.py): the shared LossScale around
    Jittor's optimizer (backward, unscale, update or skip); `skipped` counts the steps it
    skipped."""

    def __init__(self, device="cpu", state=None):
        self.scale = LossScale(**(state or {"scale": INIT_SCALE}))

    @property
    def skipped(self):
        return self.scale.skipped

    def step(self, loss, optimizer):
        """Backward of the scaled loss, then the update unless a gradient overflowed;
        returns whether the step was skipped."""
        optimizer.backward(loss * self.scale.scale)
        grads = [g for pg in optimizer.param_groups
                 for p, g in zip(pg["params"], pg["grads"]) if not p.is_stop_grad()]
        inverse = 1.0 / self.scale.scale
        finite = jt.stack([jt.isfinite(g).all() for g in grads]).all()
        found_inf = not bool(finite.item())
        if found_inf:
            optimizer.zero_grad()
        else:
            for g in grads:
                g.update(g * inverse)
            optimizer.step()
        self.scale.update(found_inf)
        return found_inf

    def state(self):
        return self.scale.state()


def loss_scaler(amp, device="cpu", state=None):
    """A LossScaler where `amp` trains with a loss scale (fp16), else None."""
    return LossScaler(str(device), state) if uses_loss_scale(amp) else None
