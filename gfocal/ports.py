"""The frameworks, their port packages and the interface a port offers, written once.

Shared code (perf helpers, engine, comparison, tests) calls a port through these members and
never branches on a framework's name; `missing_members` checks a port against the list.
"""
import importlib

FRAMEWORKS = ("torch", "jittor")
PORT_MODULES = {"torch": "gfocal.pytorch", "jittor": "gfocal.jittor"}

# What a port package (gfocal/pytorch/, gfocal/jittor/) offers, in the order of its
# __init__.py, then its sub-modules (docs/ARCHITECTURE.md, "A port").
INTERFACE = (
    "FRAMEWORK",                  # "torch" or "jittor"
    "current_device",             # () -> the device tensor() puts arrays on
    "use_device",                 # (name, tf32=False, deterministic=True): make it current
    "on_device",                  # use_device for a with-block, the previous one restored
    "to_device",                  # (model) -> the model on the current device
    "is_out_of_memory",           # (exc) -> whether it is the framework's out-of-memory error
    "sync",                       # () wait until queued work is done (lazy / asynchronous)
    "release_caches",             # () return cached device memory, reset the peak counters
    "peak_device_memory",         # () -> {name: bytes} of the device allocator's peak
    "no_grad",                    # () -> context manager without autograd recording
    "named_trainable_parameters",  # (model) -> [(name, param)] that training updates
    "trainable_parameters",       # (model) -> [param] of named_trainable_parameters
    "gradients",                  # (loss, params) -> d loss / d params, no .grad touched
    "tensor",                     # (array, dtype=None, requires_grad=False) -> tensor
    "numpy",                      # (tensor) -> numpy array
    "seed",                       # (n) seed Python's, numpy's and the framework's generators
    "build_detector",             # (model_cfg) -> GFocalV2 on the current device
    "probes", "backbone", "fpn", "gfl_head", "box_ops", "anchors", "atss", "losses",
    "postprocess", "detector", "checkpoint", "train", "distributed", "precision",
    "tuning",  # sub-modules
)


def load_port(framework):
    """The port package for 'torch' or 'jittor' (its sub-modules import lazily)."""
    if framework not in PORT_MODULES:
        raise ValueError(f"unknown framework {framework!r} (choose from "
                         f"{', '.join(PORT_MODULES)})")
    return importlib.import_module(PORT_MODULES[framework])


def missing_members(port):
    """The INTERFACE members `port` lacks (a sub-module that fails to import counts)."""
    missing = []
    for name in INTERFACE:
        try:
            getattr(port, name)
        except (AttributeError, ImportError):
            missing.append(name)
    return missing
