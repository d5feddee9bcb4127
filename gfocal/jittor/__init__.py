"""The Jittor port of GFocalV2. Sub-modules load on first attribute access.

No torch import anywhere in this package: it must work where PyTorch is not installed.
"""
import contextlib
import importlib
import random
import warnings

import numpy as np

from gfocal.device import DeviceError, cuda_index, is_cuda
from gfocal.runtime import DEFAULT_SEED, configure_frameworks, warn_if_jittor_slow

configure_frameworks()
import jittor as jt  # noqa: E402  (configure_frameworks sets Jittor's env before import)

FRAMEWORK = "jittor"
# Jittor casts float64 input to float32 unless told otherwise (docs/MODEL.md section 10).
jt.flags.auto_convert_64_to_32 = 0
jt.flags.use_cuda = 0  # the CPU until use_device says otherwise
jt.set_global_seed(DEFAULT_SEED)  # Jittor seeds itself from the clock at import
warn_if_jittor_slow()
# Jittor's kernels switch the process to flush-to-zero (parity_tests/TOLERANCES.md); numpy
# then warns at its next finfo that the smallest subnormal reads as zero: expected, not news.
warnings.filterwarnings("ignore", "The value of the smallest subnormal", UserWarning)


def current_device():
    return "cuda" if jt.flags.use_cuda else "cpu"


def use_device(name, tf32=False, deterministic=True):
    """Make `name` (cpu, cuda; gfocal.device.resolve_device's output) the port's device:
    Jittor runs every op where the global `use_cuda` flag says. `tf32` and `deterministic`
    are PyTorch's switches (parity_tests/TOLERANCES.md, "GPU numerics"): Jittor has neither."""
    if is_cuda(name):
        if not jt.has_cuda:
            raise DeviceError(f"device {name!r}: this Jittor {jt.__version__} has no working CUDA "
                              "build (jt.has_cuda = 0; on CUDA 13: scripts/jittor_cuda.py, then "
                              "its env.sh, docs/GPU.md); use --device cpu for --framework "
                              "jittor")
        if cuda_index(name) != 0:
            raise DeviceError(f"device {name!r}: Jittor uses the first visible GPU; run with "
                              f"CUDA_VISIBLE_DEVICES={cuda_index(name)} and --device cuda")
    jt.flags.use_cuda = int(is_cuda(name))
    return current_device()


@contextlib.contextmanager
def on_device(name, tf32=False, deterministic=True):
    """use_device for a block, the previous device restored after it."""
    previous = current_device()
    use_device(name, tf32, deterministic)
    try:
        yield current_device()
    finally:
        use_device(previous)


def to_device(model):
    return model  # Jittor Vars follow the global flag


def is_out_of_memory(exc):
    """Jittor raises a RuntimeError carrying the CUDA or allocator message (its CUDA
    allocator first falls back to unified memory; not yet seen on a GPU here)."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text.lower() or "cudaErrorMemoryAllocation" in text)


def sync():
    """Wait until queued work is done: Jittor is lazy, on the CPU too."""
    jt.sync_all(True)


def release_caches():
    """Return the allocator's cached blocks (after the queued work), so that the next
    step's peak is its own."""
    jt.sync_all(True)
    jt.gc()


def peak_device_memory():
    """{kind: bytes} of the device allocator's peak since release_caches ({} on the CPU)."""
    if not jt.flags.use_cuda:
        return {}
    # the caching allocator keeps the high-water mark: its size after a step is the peak
    return {"reserved": jt.get_mem_info().total_cuda_used}


def no_grad():
    return jt.no_grad()


def named_trainable_parameters(model):
    """(name, parameter) of every parameter training updates (frozen stages excluded)."""
    return [(n, p) for n, p in model.named_parameters() if not p.is_stop_grad()]


def trainable_parameters(model):
    return [p for _, p in named_trainable_parameters(model)]


def gradients(loss, params):
    """d loss / d params without touching an optimizer (zeros: unused)."""
    return jt.grad(loss, params)


def tensor(array, dtype=None, requires_grad=False):
    """A numpy array as a Var of the same dtype (float64 stays float64)."""
    v = jt.array(np.ascontiguousarray(array))
    if dtype is not None:
        v = v.cast(dtype)
    if not requires_grad:
        v = v.stop_grad()
    return v


def numpy(v):
    return v.numpy()


def finite_flags(vars_):
    """Per Var of `vars_`, whether it holds no NaN and no infinity: one reduction per Var,
    then ONE host read for all of them (a read per Var would run the graph once per Var).
    jt.isfinite, not x == x: fused kernels are compiled with -Ofast, which may assume that
    no NaN exists; jt.isfinite is built with -O2."""
    return jt.concat([jt.isfinite(v).all().reshape(1) for v in vars_]).numpy().tolist()


def seed(n):
    """Seed every random source a run draws from: Python's, numpy's global generator and the
    framework's (the data plan has its own, gfocal/data/loader.py)."""
    random.seed(n)
    np.random.seed(n)
    jt.set_seed(n)  # every process alike (jt.set_global_seed adds 2591 x rank under MPI)


def build_detector(model_cfg):
    """The detector, on the port's current device."""
    from .detector import GFocalV2
    return to_device(GFocalV2(model_cfg))


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise AttributeError(name) from exc
