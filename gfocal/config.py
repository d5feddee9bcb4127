"""Configs are Python files of plain dicts, checked against one schema for both ports.

A config file may set any of the top-level sections below; what it leaves out comes from
DEFAULTS (the paper recipe, docs/MODEL.md section 8). An unknown key or a value of the wrong type stops with
a message naming the file and the key. Each value's type follows from its default (an int
default takes integers only, a float default any finite number, a list default a list whose
entries follow its first entry); RULES bound the values.
"""
import copy
import math
import os
import runpy

# model.head: which GFL head the detector has (docs/MODEL.md sections 3 and 15).
HEADS = {"gfl_v2": "GFocalV2: class probability x DGQP quality (the paper, official code)",
         "gfl_v1": "GFL V1 as mmdetection 3.x: class logits, no quality branch"}
GFL_V1 = "gfl_v1"
# optim.warmup_style: where the linear warmup reaches the full lr (docs/MODEL.md section 8).
WARMUP_STYLES = {"mmcv": "mmcv 1.x's LrUpdaterHook (the official GFocalV2): at warmup_iters",
                 "mmengine": "mmengine's LinearLR (mmdetection 3.x): at warmup_iters - 1"}

DEFAULTS = {
    "model": {
        "head": "gfl_v2",            # one of HEADS
        "depth": 50,                 # ResNet depth: 18, 34, 50, 101
        "num_classes": 80,
        "frozen_stages": 1,
        "norm_eval": True,
        "fpn_channels": 256,
        "num_outs": 5,
        "stacked_convs": 4,
        "feat_channels": 256,
        "gn_groups": 32,
        "reg_max": 16,
        "reg_topk": 4,
        "reg_channels": 64,
        "strides": [8, 16, 32, 64, 128],
        "octave_base_scale": 8,
        "atss_topk": 9,
        "loss_cls_weight": 1.0,
        "loss_bbox_weight": 2.0,
        "loss_dfl_weight": 0.25,
        "qfl_beta": 2.0,
        "nms_pre": 1000,
        "score_thr": 0.05,
        "iou_thr": 0.6,
        "max_per_img": 100,
        "min_bbox_size": -1.0,       # test time: drop boxes whose width or height (original
                                     # pixels) is not above this before NMS; < 0: off
    },
    "data": {
        "root": "",                  # "" = the bundled mini COCO (generated on first use)
        "train_ann": "annotations/instances_train2017.json",
        "train_img": "train2017",
        "val_ann": "annotations/instances_val2017.json",
        "val_img": "val2017",
        "img_scale": [1333, 800],    # (long side, short side) limits, keep ratio
        "flip_prob": 0.5,
        "size_divisor": 32,
        "mean": [123.675, 116.28, 103.53],
        "std": [58.395, 57.12, 57.375],
        "to_rgb": True,
        "batch_size": 16,
        "val_batch_size": 1,
        "workers": "auto",           # loader processes: "auto" (0 on the CPU) or 0, 1, 2, ...
    },
    "optim": {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_iters": 500,
        "warmup_ratio": 0.001,
        "warmup_style": "mmcv",      # one of WARMUP_STYLES
        "steps": [8, 11],            # epochs after which lr *= gamma
        "gamma": 0.1,
        "epochs": 12,
    },
    "train": {
        "seed": 0,                   # weight initialisation, data order and flips of a run
                                     # (gfocal train/compare --seed overrides it)
        "log_interval": 1,
        "checkpoint_interval": 1,    # epochs
        "eval_interval": 1,          # epochs; 0 = only at the end
        "init_weights": "",          # a checkpoint (any --from format the converter reads)
        "device": "auto",            # auto | cpu | cuda | cuda:N (auto: CUDA when present)
        "tf32": False,               # PyTorch on CUDA: TF32 convolutions/matmuls (off = fp32)
        "amp": "off",                # mixed precision: off | bf16 | fp16 (gfocal/precision.py)
        "tuning": "default",         # speed setting: default | tuned (gfocal/tuning.py)
        "dist_timeout_s": 3600,      # torchrun jobs: seconds a process waits in one collective
                                     # (the lead's COCOeval, a slow peer) before it gives up
    },
}


MAX_SEED = 2 ** 32 - 1  # numpy's global generator takes no larger seed

# Keys that also take values of the type of another example besides their default's
# ("auto" or a count).
ALSO_ALLOWED = {("data", "workers"): 0}


def at_least(low):
    return (lambda v: v >= low), f"must be >= {low}"


def above(low):
    return (lambda v: v > low), f"must be > {low}"


def between(low, high):
    return (lambda v: low <= v <= high), f"must be in [{low}, {high}]"


# What a value must satisfy beyond its type (a list: each of its entries). The type comes
# from the default (see _fits); choices and rules that relate two keys are in _validate_values.
RULES = {
    ("model", "num_classes"): at_least(1),
    ("model", "frozen_stages"): between(-1, 4),
    ("model", "fpn_channels"): at_least(1),
    ("model", "num_outs"): at_least(1),
    ("model", "stacked_convs"): at_least(0),
    ("model", "feat_channels"): at_least(1),
    ("model", "gn_groups"): at_least(1),
    ("model", "reg_max"): at_least(1),
    ("model", "reg_topk"): at_least(1),
    ("model", "reg_channels"): at_least(1),
    ("model", "strides"): at_least(1),
    ("model", "octave_base_scale"): at_least(1),
    ("model", "atss_topk"): at_least(1),
    ("model", "loss_cls_weight"): at_least(0),
    ("model", "loss_bbox_weight"): at_least(0),
    ("model", "loss_dfl_weight"): at_least(0),
    ("model", "qfl_beta"): at_least(0),
    ("model", "score_thr"): between(0, 1),
    ("model", "iou_thr"): between(0, 1),
    ("model", "max_per_img"): at_least(1),
    ("data", "img_scale"): at_least(1),
    ("data", "flip_prob"): between(0, 1),
    ("data", "size_divisor"): at_least(1),
    ("data", "std"): above(0),
    ("data", "batch_size"): at_least(1),
    ("data", "val_batch_size"): at_least(1),
    ("data", "workers"): at_least(0),       # or "auto"
    ("optim", "lr"): above(0),
    ("optim", "momentum"): at_least(0),
    ("optim", "weight_decay"): at_least(0),
    ("optim", "warmup_iters"): at_least(0),
    ("optim", "warmup_ratio"): between(0, 1),
    ("optim", "steps"): at_least(1),         # epochs, counted from 1
    ("optim", "gamma"): above(0),
    ("optim", "epochs"): at_least(1),
    ("train", "seed"): between(0, MAX_SEED),
    ("train", "log_interval"): at_least(1),
    ("train", "checkpoint_interval"): at_least(1),
    ("train", "eval_interval"): at_least(0),  # 0: only at the end
    ("train", "dist_timeout_s"): above(0),
}

# Lists of a fixed length: (long side, short side); one value per colour channel.
LENGTHS = {("data", "img_scale"): 2, ("data", "mean"): 3, ("data", "std"): 3}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def _fits(value, want):
    """Whether `value` has the type the default `want` implies: a bool for a bool, an int
    (not a bool) for an int, any real number for a float, a list or tuple whose entries fit
    the default's entries for a list, the default's type otherwise."""
    if isinstance(want, bool):
        return isinstance(value, bool)
    if isinstance(want, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(want, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(want, (list, tuple)):
        return isinstance(value, (list, tuple)) and all(_fits(v, want[0]) for v in value)
    return isinstance(value, type(want))


def _describe(want):
    if isinstance(want, (list, tuple)):
        return f"a list of {_describe(want[0]).split(' ', 1)[1]}s"
    if isinstance(want, bool):
        return "a boolean"
    return {int: "an integer", float: "a number", str: "a string"}.get(type(want),
                                                                      f"a {type(want).__name__}")


def _entries(value):
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_value(name, value, want, source):
    """Type (derived from the default `want`), finiteness, length and RULES of one value."""
    where = f"{source}: '{'.'.join(name)}' = {value!r}"
    other = ALSO_ALLOWED.get(name)
    if not (_fits(value, want) or (other is not None and _fits(value, other))):
        expected = " or ".join(_describe(w) for w in (want, other) if w is not None)
        raise ConfigError(f"{where} has the wrong type (expected {expected}, like {want!r})")
    numbers = [v for v in _entries(value) if isinstance(v, float)]
    if not all(math.isfinite(v) for v in numbers):
        raise ConfigError(f"{where} (must be finite: not nan or inf)")
    if name in LENGTHS and len(value) != LENGTHS[name]:
        raise ConfigError(f"{where} (must have {LENGTHS[name]} entries)")
    if name in RULES and not isinstance(value, str):
        holds, rule = RULES[name]
        if not all(holds(v) for v in _entries(value)):
            each = "each entry " if isinstance(value, (list, tuple)) else ""
            raise ConfigError(f"{where} ({each}{rule})")


def _check(section_name, given, defaults, source):
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{source}: unknown key '{section_name}.{key}' (known: {known})")
        _check_value((section_name, key), value, defaults[key], source)


def _validate_values(cfg, source):
    """What RULES cannot say: choices, and rules that relate two keys."""
    m = cfg["model"]
    if m["head"] not in HEADS:
        raise ConfigError(f"{source}: 'model.head' = {m['head']!r} (must be one of "
                          f"{', '.join(map(repr, HEADS))})")
    style = cfg["optim"]["warmup_style"]
    if style not in WARMUP_STYLES:
        raise ConfigError(f"{source}: 'optim.warmup_style' = {style!r} (must be one of "
                          f"{', '.join(map(repr, WARMUP_STYLES))})")
    if m["depth"] not in (18, 34, 50, 101):
        raise ConfigError(f"{source}: 'model.depth' = {m['depth']} (must be 18, 34, 50 or 101)")
    if len(m["strides"]) != m["num_outs"]:
        raise ConfigError(f"{source}: 'model.strides' has {len(m['strides'])} entries but "
                          f"'model.num_outs' = {m['num_outs']}")
    if m["feat_channels"] % m["gn_groups"]:
        raise ConfigError(f"{source}: 'model.feat_channels' = {m['feat_channels']} is not "
                          f"divisible by 'model.gn_groups' = {m['gn_groups']}")
    if m["reg_topk"] > m["reg_max"] + 1:
        raise ConfigError(f"{source}: 'model.reg_topk' = {m['reg_topk']} (must be at most "
                          f"'model.reg_max' + 1 = {m['reg_max'] + 1})")
    workers = cfg["data"]["workers"]
    if isinstance(workers, str) and workers != "auto":
        raise ConfigError(f"{source}: 'data.workers' = {workers!r} (must be 'auto' or an "
                          "integer >= 0)")
    from gfocal.precision import PrecisionError, check_amp
    try:
        check_amp(cfg["train"]["amp"], "'train.amp'")
    except PrecisionError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    from gfocal.tuning import TuningError, check_setting
    try:
        check_setting(cfg["train"]["tuning"], "'train.tuning'")
    except TuningError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    from gfocal.device import DeviceError, parse_device
    try:
        parse_device(cfg["train"]["device"])
    except DeviceError as exc:
        raise ConfigError(f"{source}: 'train.device': {exc}") from None


def from_dict(sections, source="<dict>"):
    """Defaults overridden by `sections` ({'model': {...}, ...}), validated."""
    cfg = copy.deepcopy(DEFAULTS)
    for name, given in sections.items():
        if name not in DEFAULTS:
            raise ConfigError(f"{source}: unknown section '{name}' "
                              f"(known: {', '.join(DEFAULTS)})")
        if not isinstance(given, dict):
            raise ConfigError(f"{source}: section '{name}' must be a dict, got {given!r}")
        _check(name, given, DEFAULTS[name], source)
        cfg[name].update(copy.deepcopy(given))
    _validate_values(cfg, source)
    cfg["source"] = source
    return cfg


def load_config(path, overrides=None):
    """Read a config file; `overrides` is a dict of sections applied on top."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        namespace = runpy.run_path(path)
    except Exception as exc:  # a syntax or name error in the user's file
        raise ConfigError(f"{path}: cannot be read as a config: {type(exc).__name__}: {exc}") \
            from exc
    sections = {k: v for k, v in namespace.items()
                if not k.startswith("_") and not callable(v) and not isinstance(v, type(os))}
    for name, given in (overrides or {}).items():
        sections.setdefault(name, {})
        sections[name] = {**sections[name], **given}
    return from_dict(sections, source=path)
