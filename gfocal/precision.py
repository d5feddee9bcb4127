"""Mixed precision (`train.amp`, `--amp`), written once for both ports.

Precisions: `off` (float32 everywhere, the default); the parity policy `bf16`, `fp16`; and
each framework's own AMP, `native-bf16`, `native-fp16`.

The policy is for parity, not speed: it rounds at the same places in both ports, so their
half-precision runs can be held to each other number by number. Native mode is what users
run (torch.autocast and GradScaler; Jittor's half convolutions with
`auto_mixed_precision_level`): faster and smaller, but each framework picks its own types
and kernels, so native runs are judged by their accuracy against float32, not by parity
(docs/MODEL.md section 13).

What the policy runs in the half type (docs/MODEL.md section 13 gives the reasons and the
numbers):
- every convolution (the backbone, the FPN, the head towers, `gfl_cls`, `gfl_reg` and the
  DGQP 1x1 convolutions): its input, weight and bias are rounded to the half type, the sum
  accumulates in float32 and the result is rounded to the half type, then carried on in
  float32. The model has no other matmul.
- everything else stays float32: BatchNorm, GroupNorm, ReLU, Scale, the softmax / integral,
  the DGQP top-k, the sigmoid, target assignment, the losses and post-processing.
- weights, gradients and the SGD momentum are float32 ("master weights"): the rounding is
  applied to a copy in each forward, and the gradient flows back through it.

fp16 trains with a dynamic loss scale (`LossScale`): the loss is multiplied by the scale
before the backward pass and the gradients divided by it before the update; a step whose
gradients hold an inf or NaN is skipped (counted and logged) and halves the scale; 2000
good steps in a row double it. That is PyTorch's `GradScaler` state machine (the PyTorch
port uses GradScaler itself), started at mmcv's static fp16 scale of 512 instead of 2**16.
bf16 has float32's exponent range and trains without a scale. native-fp16 uses the same
loss scale.
"""
import contextlib

from gfocal.choices import checked, checked_list
from gfocal.device import DeviceError

POLICY = ("bf16", "fp16")
NATIVE = ("native-bf16", "native-fp16")
AMP_CHOICES = ("off",) + POLICY + NATIVE
SCALED = ("fp16", "native-fp16")  # the precisions that train with a loss scale

INIT_SCALE = 512.0
GROWTH_FACTOR = 2.0
BACKOFF_FACTOR = 0.5
GROWTH_INTERVAL = 2000


# Machine epsilon of the type the convolutions compute in: what "a rounding-sized move" of a
# run means in each precision (gfocal/control_arm.py's control check).
EPS = {"off": 2.0 ** -23, "bf16": 2.0 ** -7, "fp16": 2.0 ** -10,
       "native-bf16": 2.0 ** -7, "native-fp16": 2.0 ** -10}
EPS_NAME = {"off": "float32", "bf16": "bf16", "fp16": "fp16",
            "native-bf16": "bf16", "native-fp16": "fp16"}


class PrecisionError(ValueError):
    """A precision name that is not one of AMP_CHOICES."""


def check_amp(value, where="--amp"):
    """`value` if it is a precision name, else PrecisionError naming `where`."""
    return checked(value, AMP_CHOICES, PrecisionError, where, "a precision")


def amp_list(text, where="--amp"):
    """A comma-separated list of precision names (pytest's --amp), each checked."""
    return checked_list(text, check_amp, where)


def uses_loss_scale(amp):
    return check_amp(amp) in SCALED


def is_native(amp):
    """Whether `amp` is a framework's own AMP (native-bf16, native-fp16)."""
    return check_amp(amp) in NATIVE


def half_type(amp):
    """The half type `amp` computes in ("bf16", "fp16"), None for off."""
    return None if check_amp(amp) == "off" else amp.removeprefix("native-")


class LossScale:
    """The dynamic loss scale of fp16 training, as plain Python numbers (the Jittor port's;
    tests/test_precision.py holds it to torch.amp.GradScaler step for step)."""

    def __init__(self, scale=INIT_SCALE, good_steps=0, skipped=0):
        self.scale = float(scale)
        self.good_steps = int(good_steps)  # finite steps since the last change of scale
        self.skipped = int(skipped)        # steps skipped over the whole run

    def update(self, found_inf):
        """After a step: back off (and count the skip) or count towards growth."""
        if found_inf:
            self.scale *= BACKOFF_FACTOR
            self.good_steps = 0
            self.skipped += 1
        else:
            self.good_steps += 1
            if self.good_steps == GROWTH_INTERVAL:
                self.scale *= GROWTH_FACTOR
                self.good_steps = 0

    def state(self):
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}


class PortPrecision:
    """The precision one port computes in, and the (precision, device) pairs where its half
    convolution was seen to run: the bookkeeping both ports share. `probe(amp, device)`
    runs one half convolution of the port; `framework` (name and version) is named in the
    one-line refusal."""

    def __init__(self, framework, probe):
        self.framework, self.probe = framework, probe
        self.amp = "off"
        self.runnable = set()

    def use(self, amp, device="cpu"):
        """Make `amp` the port's precision; DeviceError where `device` cannot run a
        convolution in it."""
        check_amp(amp)
        if amp != "off" and (amp, str(device)) not in self.runnable:
            try:
                self.probe(amp, device)
            except RuntimeError as exc:
                raise DeviceError(f"--amp {amp}: {self.framework} cannot run a {amp} "
                                  f"convolution on {device} ({str(exc).splitlines()[0]})"
                                  ) from None
            self.runnable.add((amp, str(device)))
        self.amp = amp

    @contextlib.contextmanager
    def scope(self, amp, device="cpu"):
        """use() for a block, the previous precision restored after it."""
        previous = self.amp
        self.use(amp, device)
        try:
            yield amp
        finally:
            self.amp = previous


# What a half precision costs on the CPU where a framework has no fast kernel for it
# (measured on 2 Xeon cores, docs/MODEL.md section 13): the run still works.
_JITTOR_HALF_CONV = ("Jittor 1.3.11 runs half convolutions on the CPU with its generic "
                     "kernels, not oneDNN: {} convolution is about {}x slower than float32")
SLOW_ON_CPU = {
    ("torch", "fp16"): "PyTorch's CPU float16 convolution backward is about 140x slower than "
                       "float32; bf16 is the CPU's half type",
    ("jittor", "native-bf16"): _JITTOR_HALF_CONV.format("a bf16", 170),
    ("jittor", "native-fp16"): _JITTOR_HALF_CONV.format("an fp16", 1000),
}
SLOW_ON_CPU[("torch", "native-fp16")] = SLOW_ON_CPU[("torch", "fp16")]


def slow_on_cpu(framework, amp):
    """Why `amp` is slow in `framework`'s CPU training (a warning to print), or None."""
    return SLOW_ON_CPU.get((framework, check_amp(amp)))


def checked_scale_state(state, source):
    """A checkpoint's saved LossScale.state() (None where it has none), checked: a
    PrecisionError naming `source` where it is not one."""
    if state is None:
        return None
    keys = ("scale", "good_steps", "skipped")
    ok = (isinstance(state, dict) and set(state) == set(keys)
          and all(isinstance(state[k], (int, float)) and not isinstance(state[k], bool)
                  for k in keys)
          and state["scale"] > 0 and state["good_steps"] >= 0 and state["skipped"] >= 0)
    if not ok:
        raise PrecisionError(f"{source}: meta 'loss_scale' = {state!r} is not a loss-scale "
                             f"state ({', '.join(keys)}: numbers, the scale > 0)")
    return {k: state[k] for k in keys}
