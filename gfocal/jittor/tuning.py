"""The speed settings in the Jittor port (gfocal/tuning.py): `tuned` sets the Jittor flags
of its features (`FLAGS`). On the CPU none of the flags measured was faster, so there tuned
runs as the default does (docs/MODEL.md section 14); predict() runs under jt.no_grad in
both settings."""
import contextlib

import jittor as jt

from gfocal.tuning import check_setting, features

_setting = "default"
_device = "cpu"  # where the setting was applied (its features depend on it)
FLAGS = {}  # feature -> (Jittor flag, its tuned value): none kept (see the docstring)
_defaults = {}  # Jittor flag -> its value before a setting first changed it


def current_setting():
    return _setting


def use_setting(setting, device="cpu"):
    """Make `setting` (default, tuned) the port's speed setting on `device`: each feature's
    flag at its tuned value where the setting turns the feature on, else at its default."""
    global _setting, _device
    on = features("jittor", check_setting(setting), device)
    for feature, (flag, value) in FLAGS.items():
        default = _defaults.setdefault(flag, getattr(jt.flags, flag))
        setattr(jt.flags, flag, value if feature in on else default)
    _setting, _device = setting, str(device)


@contextlib.contextmanager
def speed_setting(setting, device="cpu"):
    """use_setting for a block, the previous setting (and flags) restored."""
    global _setting, _device
    previous = (_setting, _device)
    use_setting(setting, device)
    try:
        yield setting
    finally:
        use_setting(*previous)


def inference_network(model):
    """What predict() runs the network with: `model` itself (Jittor compiles and caches its
    fused kernels in either setting)."""
    return model
