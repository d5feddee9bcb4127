"""The device option, written once: `auto | cpu | cuda | cuda:N`.

`parse_device` checks the spelling, `resolve_device` turns `auto` into what this machine has
and refuses CUDA where there is no GPU with its driver. What a framework can do on that device
is the port's own check (`port.use_device`), so a message can say which framework refuses.
"""
import os
import re
import shutil

_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def cuda_available():
    """A CUDA GPU with its driver, not merely an nvcc on PATH."""
    return shutil.which("nvidia-smi") is not None and os.path.exists("/dev/nvidiactl")


class DeviceError(ValueError):
    """A device that cannot be used; the message names it and says what to do instead."""


def parse_device(spec):
    """The spec as given, when it is one of auto, cpu, cuda, cuda:N."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise DeviceError(f"device {spec!r} is not one of auto, cpu, cuda, cuda:N")
    return spec


def resolve_device(spec):
    """`cpu`, `cuda` or `cuda:N`: auto is CUDA when a GPU with its driver is present."""
    spec = parse_device(spec)
    if spec == "auto":
        return "cuda" if cuda_available() else "cpu"
    if is_cuda(spec) and not cuda_available():
        raise DeviceError(f"device {spec!r}: this machine has no CUDA GPU with its driver "
                          "(no nvidia-smi or /dev/nvidiactl); use --device cpu")
    return spec


def is_cuda(spec):
    return spec.startswith("cuda")


def cuda_index(spec):
    """N of cuda:N (0 for plain cuda)."""
    return int(spec.split(":")[1]) if ":" in spec else 0
