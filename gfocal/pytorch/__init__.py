"""The PyTorch port of GFocalV2. Sub-modules load on first attribute access."""
import contextlib
import importlib
import random

import numpy as np
import torch

from gfocal.device import DeviceError, cuda_index, is_cuda
from gfocal.runtime import num_threads

FRAMEWORK = "torch"
torch.set_num_threads(num_threads())
_device = torch.device("cpu")  # where tensor() puts inputs and the anchors are made


def current_device():
    return _device


def use_device(name, tf32=False, deterministic=True):
    """Make `name` (cpu, cuda, cuda:N; gfocal.device.resolve_device's output) the port's
    device and apply the numerics policy of parity_tests/TOLERANCES.md ("GPU numerics"):
    full fp32 unless `tf32`, no cuDNN autotuning, deterministic algorithms where PyTorch
    has them. Models are moved by the caller (`model.to(current_device())`)."""
    global _device
    if is_cuda(name):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"device {name!r}: PyTorch {torch.__version__} sees no CUDA GPU "
                              f"(built for CUDA {torch.version.cuda}); use --device cpu")
        if cuda_index(name) >= count:
            raise DeviceError(f"device {name!r}: this machine has {count} GPU(s), "
                              f"cuda:0..cuda:{count - 1}")
        torch.cuda.set_device(cuda_index(name))
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = bool(deterministic)
        # warn_only: an op without a deterministic CUDA kernel warns instead of stopping
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    _device = torch.device(name)
    return _device


def _numerics():
    backends = torch.backends
    return (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32,
            backends.cudnn.benchmark, backends.cudnn.deterministic,
            torch.are_deterministic_algorithms_enabled())


def _restore_numerics(saved):
    backends = torch.backends
    (backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32, backends.cudnn.benchmark,
     backends.cudnn.deterministic, deterministic) = saved
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


@contextlib.contextmanager
def on_device(name, tf32=False, deterministic=True):
    """use_device for a block; the previous device and numerics switches restored after."""
    global _device
    previous, numerics = _device, _numerics()
    use_device(name, tf32, deterministic)
    try:
        yield _device
    finally:
        _device = previous
        if previous.type == "cuda":
            torch.cuda.set_device(previous)
        _restore_numerics(numerics)


def to_device(model):
    return model.to(_device)


def is_out_of_memory(exc):
    return isinstance(exc, torch.OutOfMemoryError)


def sync():
    """Wait until queued work is done: CUDA kernels run asynchronously."""
    if _device.type == "cuda":
        torch.cuda.synchronize()


def release_caches():
    """Return the allocator's cached blocks (after the queued work), so that the next
    step's peak is its own."""
    if _device.type == "cuda":  # the CPU allocator keeps no cache
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()  # the peak peak_device_memory reads


def peak_device_memory():
    """{kind: bytes} of the device allocator's peak since release_caches ({} on the CPU)."""
    if _device.type != "cuda":
        return {}
    return {"allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved()}


def no_grad():
    return torch.no_grad()


def named_trainable_parameters(model):
    """(name, parameter) of every parameter training updates (frozen stages excluded)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def trainable_parameters(model):
    return [p for _, p in named_trainable_parameters(model)]


def gradients(loss, params):
    """d loss / d params without touching .grad or an optimizer (None: unused)."""
    return torch.autograd.grad(loss, params, allow_unused=True)


def tensor(array, dtype=None, requires_grad=False):
    """A numpy array as a tensor of the same dtype (float64 stays float64) on the port's
    device."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        t = t.to(getattr(torch, dtype))
    return t.to(_device).requires_grad_(requires_grad)


def numpy(t):
    return t.detach().cpu().numpy()


def finite_flags(tensors):
    """Per tensor of `tensors`, whether it holds no NaN and no infinity: one reduction per
    tensor on the device, then ONE host read for all of them (a read per tensor would wait
    for the device once per tensor)."""
    return torch.stack([torch.isfinite(t).all() for t in tensors]).tolist()


def seed(n):
    """Seed every random source a run draws from: Python's, numpy's global generator and the
    framework's (the data plan has its own, gfocal/data/loader.py)."""
    random.seed(n)
    np.random.seed(n)
    torch.manual_seed(n)  # the generators of every device


def build_detector(model_cfg):
    """The detector, on the port's current device."""
    from .detector import GFocalV2
    return to_device(GFocalV2(model_cfg))


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise AttributeError(name) from exc
