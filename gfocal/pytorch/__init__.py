"""The PyTorch port of GFocalV2. Sub-modules load on first attribute access."""
import importlib

import numpy as np
import torch

from gfocal.runtime import num_threads

FRAMEWORK = "torch"
torch.set_num_threads(num_threads())


def tensor(array, dtype=None, requires_grad=False):
    """A numpy array as a tensor of the same dtype (float64 stays float64)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        t = t.to(getattr(torch, dtype))
    return t.requires_grad_(requires_grad)


def numpy(t):
    return t.detach().cpu().numpy()


def build_detector(model_cfg):
    from .detector import GFocalV2
    return GFocalV2(model_cfg)


def __getattr__(name):
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        raise AttributeError(name) from exc
