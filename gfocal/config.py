"""Configs are Python files of plain dicts, checked against one schema for both ports.

A config file may set any of the top-level sections below; what it leaves out comes from
DEFAULTS (the paper recipe, docs/MODEL.md section 8). An unknown key or a value of the wrong type stops with
a message naming the file and the key.
"""
import copy
import os
import runpy

DEFAULTS = {
    "model": {
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

# Keys that take a value of another type besides their default's ("auto" or a count).
ALSO_ALLOWED = {("data", "workers"): int}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


def _check(section_name, given, defaults, source):
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ConfigError(f"{source}: unknown key '{section_name}.{key}' (known: {known})")
        want = defaults[key]
        other = ALSO_ALLOWED.get((section_name, key))
        if other is not None and isinstance(value, other) and not isinstance(value, bool):
            continue
        if isinstance(want, bool):
            ok = isinstance(value, bool)
        elif isinstance(want, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(want, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, type(want))
        if not ok:
            raise ConfigError(f"{source}: '{section_name}.{key}' = {value!r} has the wrong type "
                              f"(expected {type(want).__name__} like {want!r})")


def _validate_values(cfg, source):
    m = cfg["model"]
    if m["depth"] not in (18, 34, 50, 101):
        raise ConfigError(f"{source}: 'model.depth' = {m['depth']} (must be 18, 34, 50 or 101)")
    if m["num_classes"] < 1:
        raise ConfigError(f"{source}: 'model.num_classes' = {m['num_classes']} (must be >= 1)")
    if len(m["strides"]) != m["num_outs"]:
        raise ConfigError(f"{source}: 'model.strides' has {len(m['strides'])} entries but "
                          f"'model.num_outs' = {m['num_outs']}")
    if m["feat_channels"] % m["gn_groups"]:
        raise ConfigError(f"{source}: 'model.feat_channels' = {m['feat_channels']} is not "
                          f"divisible by 'model.gn_groups' = {m['gn_groups']}")
    if len(cfg["data"]["img_scale"]) != 2:
        raise ConfigError(f"{source}: 'data.img_scale' = {cfg['data']['img_scale']!r} "
                          "(must be [long side, short side])")
    if not 0 <= cfg["data"]["flip_prob"] <= 1:
        raise ConfigError(f"{source}: 'data.flip_prob' = {cfg['data']['flip_prob']} "
                          "(must be in [0, 1])")
    for key in ("lr", "epochs"):
        if cfg["optim"][key] <= 0:
            raise ConfigError(f"{source}: 'optim.{key}' = {cfg['optim'][key]} (must be > 0)")
    if cfg["data"]["batch_size"] < 1:
        raise ConfigError(f"{source}: 'data.batch_size' must be >= 1")
    workers = cfg["data"]["workers"]
    if workers != "auto" and not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f"{source}: 'data.workers' = {workers!r} (must be 'auto' or an "
                          "integer >= 0)")
    if cfg["train"]["dist_timeout_s"] <= 0:
        raise ConfigError(f"{source}: 'train.dist_timeout_s' = {cfg['train']['dist_timeout_s']} "
                          "(must be > 0)")
    seed = cfg["train"]["seed"]
    if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
        raise ConfigError(f"{source}: 'train.seed' = {seed!r} (must be an integer in "
                          f"0 .. {MAX_SEED})")
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
