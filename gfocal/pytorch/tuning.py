"""The speed settings in the PyTorch port (gfocal/tuning.py): `tuned` runs the network of
predict() compiled by torch.compile (inductor) and, on CUDA, lets cuDNN autotune."""
import contextlib
import importlib.util
import shutil

import torch

from gfocal.device import DeviceError, is_cuda
from gfocal.tuning import COMPILE_INFERENCE, CUDNN_BENCHMARK, check_setting, features

_setting = "default"
_device = "cpu"  # where the setting was applied (its features depend on it)


def current_setting():
    return _setting


def _compile_unavailable(device):
    """Why torch.compile cannot run on `device` here, or None."""
    try:  # on a Python TorchDynamo cannot run, torch.compile refuses at once (compiles nothing)
        torch.compile(lambda x: x, backend="eager")
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    if is_cuda(device) and importlib.util.find_spec("triton") is None:
        return "inductor's CUDA kernels need Triton, which is not installed"
    if not is_cuda(device) and not (shutil.which("g++") or shutil.which("c++")):
        return "inductor's CPU kernels need a C++ compiler (g++), none on PATH"
    return None


def use_setting(setting, device="cpu"):
    """Make `setting` (default, tuned) the port's speed setting on `device`; DeviceError
    where a feature it needs is missing here."""
    global _setting, _device
    on = features("torch", check_setting(setting), device)
    reason = _compile_unavailable(device) if COMPILE_INFERENCE in on else None
    if reason:
        raise DeviceError(f"--tuning {setting}: torch.compile is unavailable on {device} "
                          f"({reason}); use --tuning default")
    if is_cuda(device):  # use_device turned autotuning off; tuned turns it back on
        torch.backends.cudnn.benchmark = CUDNN_BENCHMARK in on
    _setting, _device = setting, str(device)


@contextlib.contextmanager
def speed_setting(setting, device="cpu"):
    """use_setting for a block, the previous setting (and cuDNN autotuning) restored."""
    global _setting, _device
    previous, benchmark = (_setting, _device), torch.backends.cudnn.benchmark
    use_setting(setting, device)
    try:
        yield setting
    finally:
        _setting, _device = previous
        torch.backends.cudnn.benchmark = benchmark


class _Compiled:
    """One model's compiled network; a copy of the model (copy.deepcopy) compiles its own."""

    def __init__(self):
        self.network = None

    def __deepcopy__(self, memo):
        return _Compiled()


def inference_network(model):
    """What predict() runs the network with: `model` itself or, tuned, `model` compiled by
    torch.compile (once per model; inductor compiles again for a new input shape, which the
    first call of it pays). Training runs eager: compiling it was measured no faster."""
    if COMPILE_INFERENCE not in features("torch", _setting, _device):
        return model
    compiled = vars(model).setdefault("_compiled", _Compiled())  # not a submodule
    if compiled.network is None:
        compiled.network = torch.compile(model)
    return compiled.network
