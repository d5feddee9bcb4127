"""The Jittor port of GFocalV2. Sub-modules load on first attribute access.

No torch import anywhere in this package: it must work where PyTorch is not installed.
"""
import importlib

import numpy as np

from gfocal.runtime import DEFAULT_SEED, configure_frameworks, cuda_available, warn_if_jittor_slow

configure_frameworks()
import jittor as jt  # noqa: E402  (configure_frameworks sets Jittor's env before import)

FRAMEWORK = "jittor"
# Jittor casts float64 input to float32 unless told otherwise (SPEC.md section 10).
jt.flags.auto_convert_64_to_32 = 0
jt.flags.use_cuda = int(bool(jt.has_cuda) and cuda_available())
jt.set_global_seed(DEFAULT_SEED)  # Jittor seeds itself from the clock at import
if not jt.flags.use_cuda:
    warn_if_jittor_slow()


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


def build_detector(model_cfg):
    from .detector import GFocalV2
    return GFocalV2(model_cfg)


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise AttributeError(name) from exc
