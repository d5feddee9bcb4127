"""Reading and writing of every weights file format, framework-neutral.

The training engine, `gfocal compare` and the weights converter all read and write weights
through this module; it sits below them (it imports none of them).

Formats read: 'torch' / 'jittor' (our checkpoints, {'state_dict', 'momentum', 'meta'}),
'mmdet' (official GFocalV2 and mmdetection checkpoints as mmcv 1.x and mmengine save them)
and 'torchvision' (an ImageNet ResNet); written: 'torch', 'jittor' and 'mmdet'. Everything
is read into, and written from, the canonical form {mmdetection-style name: numpy array} of
docs/ARCHITECTURE.md.
"""
import collections
import hashlib
import importlib
import os
import pickle
import re
import warnings

import numpy as np

from gfocal.atomic import atomic_path
from gfocal.ports import FRAMEWORKS
from gfocal.state_dict import CheckpointError

FORMATS = ("torch", "jittor", "mmdet", "torchvision")
OWN_FORMATS = FRAMEWORKS
TARGETS = (*OWN_FORMATS, "mmdet")
COCO_NUM_CLASSES = 80
# The official layout's background channel: zero weights and this bias give it a
# probability of exactly 0.0 in float32 under a sigmoid (exp(1e4) overflows to inf, so
# 1 / (1 + inf) = 0) and under a softmax next to any logit above -9900 (exp(-9900) = 0).
BACKGROUND_BIAS = -1e4
# jt.save's layout: a protocol-4 pickle, its SHA-1, then this marker (jt.load checks both).
JITTOR_MARKER = b"HCAJSLHD"


# ---- reading without running code ---------------------------------------------------------
# Unpickling calls whatever a file names, so every reader (pickle's find_class, torch's
# weights_only) may reach only these, each of which builds data from data:
# - numpy's rebuilders of arrays, dtypes and scalars (our momentum, mmengine's meta and
#   message_hub), under numpy 1's and numpy 2's module names;
# - OrderedDict: every torch / mmcv / mmengine state dict;
# - mmengine's HistoryBuffer (loss curves in a message_hub) and Jittor's Var (a tensor as
#   jt.save writes it): inert stand-ins, so neither mmengine nor Jittor runs to read a file.
class _Record:
    """Stands in for a plain-data class we never use: unpickling only sets its attributes."""


def _safe_globals():
    found = {"collections.OrderedDict": collections.OrderedDict,
             "numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype,
             "mmengine.logging.history_buffer.HistoryBuffer": _Record,
             "jittor.jittor_core.Var": np.asarray}  # jt.save pickles a Var as Var(array)
    for core in ("numpy.core", "numpy._core"):
        try:
            with warnings.catch_warnings():  # numpy 2 deprecates the numpy.core name
                warnings.simplefilter("ignore", DeprecationWarning)
                multiarray = importlib.import_module(core + ".multiarray")
        except ImportError:  # numpy before 1.26 has no numpy._core
            continue
        for name in ("_reconstruct", "scalar"):
            found[f"{core}.multiarray.{name}"] = getattr(multiarray, name)
    return found


SAFE_GLOBALS = _safe_globals()
REFUSAL = "a checkpoint may only hold tensors, arrays and plain containers"


class RefusedCheckpoint(CheckpointError):
    """A weights file that names anything but data: refused before any of it runs."""

    def __init__(self, path, name):
        super().__init__(f"{path}: refused to load {name!r} ({REFUSAL})")


class _Refused(pickle.UnpicklingError):
    pass


class _DataUnpickler(pickle.Unpickler):
    """pickle that may build only SAFE_GLOBALS (every other reference to code is a class or
    function looked up here)."""

    def find_class(self, module, name):
        if f"{module}.{name}" in SAFE_GLOBALS:
            return SAFE_GLOBALS[f"{module}.{name}"]
        raise _Refused(f"{module}.{name}")


def _read_pickle(path):
    try:
        with open(path, "rb") as f:  # jt.save appends a checksum after the pickle's end
            return _DataUnpickler(f).load()
    except _Refused as exc:
        raise RefusedCheckpoint(path, str(exc)) from None
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable Jittor checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc


def _is_zip(path):
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _torch_safe_globals():
    """SAFE_GLOBALS for torch.load(weights_only=True), which also checks the type of every
    object it sets state on: numpy's dtype classes (np.dtype('f4') is a Float32DType)."""
    dtypes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    return [(obj, name) for name, obj in SAFE_GLOBALS.items()] + list(dtypes)


def _cause(exc):
    """The cause of a torch.load error, in one line: weights_only wraps it in paragraphs of
    advice after 'Unpickler error:'."""
    text = str(exc).split("Unpickler error:", 1)[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _torch_load(path):
    import torch
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and refused:
            name = refused[1]  # torch drops the 'builtins.' of a builtin
            raise RefusedCheckpoint(path, name if "." in name else "builtins." + name) from None
        raise CheckpointError(f"{path}: not a readable PyTorch file "
                              f"({type(exc).__name__}: {_cause(exc)})") from exc


def load_payload(path, fmt=None):
    """The content of a weights file, rebuilt from data only (a file that names anything
    else is refused, RefusedCheckpoint): a pickle for 'jittor', torch.load for the other
    formats; with `fmt` None, whichever the file's content is. A Jittor checkpoint is a
    pickle of a dict; torch.save writes a zip archive (or, in its legacy format, a pickled
    magic number first, which is not a dict)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    if fmt == "jittor":
        return _read_pickle(path)
    if fmt is None and not _is_zip(path):
        try:
            payload = _read_pickle(path)
        except RefusedCheckpoint:
            raise
        except CheckpointError:
            payload = None
        if isinstance(payload, dict):
            return payload
    return _torch_load(path)


def _to_numpy(state, path):
    out = {}
    for name, value in state.items():
        # a torch tensor (a Jittor Var is read as its array); asked of the type, since an
        # unpickled object's own attributes come from the file
        if hasattr(type(value), "detach"):
            value = value.detach().cpu().numpy()
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, "
                                  "not a tensor")
        out[name] = value
    return out


def state_of(payload, path):
    """The {name: numpy} state dict of a loaded payload (bare, or under 'state_dict')."""
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    state = payload.get("state_dict", payload)
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: holds no state dict")
    return _to_numpy(state, path)


def meta_of(payload):
    meta = payload.get("meta") if isinstance(payload, dict) else None
    return meta if isinstance(meta, dict) else {}


def classes_of(meta):
    """Class names a checkpoint was trained on, or None: mmcv 1.x keeps them in
    meta['CLASSES'], mmengine (mmdetection 3.x) in meta['dataset_meta']['classes'], our
    checkpoints in meta['classes']."""
    classes = meta.get("CLASSES", meta.get("classes"))
    if classes is None and isinstance(meta.get("dataset_meta"), dict):
        classes = meta["dataset_meta"].get("classes")
    if isinstance(classes, str):  # a single-class data set may store a bare string
        classes = [classes]
    return list(classes) if classes is not None else None


def mmdet_to_canonical(state, num_classes=None, classes=None, source="checkpoint"):
    """An official GFocalV2 / mmdetection state dict in our layout.

    - a `module.` prefix (a checkpoint saved from a DataParallel wrapper) is removed and
      `num_batches_tracked` dropped (Jittor has no such buffer);
    - mmcv's `Scale` stores a 0-d parameter: reshaped to our (1,);
    - the official config's classifier has num_classes + 1 outputs (a by-product of
      use_sigmoid=False); mmdetection puts background last, that channel is only ever
      trained towards 0 and never read at test time, so it is dropped;
    - `bbox_head.integral.project` (a fixed 0..reg_max buffer) is added when an export left
      it out.
    `classes` (the checkpoint's meta) must agree with `num_classes` when both are known;
    with neither, the classifier is taken to be COCO's (80 classes, 81 outputs).
    """
    if classes is not None:
        if num_classes is not None and len(classes) != num_classes:
            raise CheckpointError(
                f"{source}: trained on {len(classes)} classes (meta CLASSES) but the model "
                f"has num_classes = {num_classes}")
        num_classes = len(classes)
    if num_classes is None:
        num_classes = COCO_NUM_CLASSES
    out = {}
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.endswith("num_batches_tracked"):
            continue
        if name.startswith("bbox_head.scales.") and value.ndim == 0:
            value = value.reshape(1)
        out[name] = value
    cls_w = out.get("bbox_head.gfl_cls.weight")
    if cls_w is not None and cls_w.shape[0] == num_classes + 1:
        out["bbox_head.gfl_cls.weight"] = cls_w[:num_classes].copy()
        out["bbox_head.gfl_cls.bias"] = out["bbox_head.gfl_cls.bias"][:num_classes].copy()
    if "bbox_head.gfl_reg.weight" in out and "bbox_head.integral.project" not in out:
        reg_max = out["bbox_head.gfl_reg.weight"].shape[0] // 4 - 1
        out["bbox_head.integral.project"] = np.arange(reg_max + 1, dtype=np.float32)
    return out


def torchvision_to_canonical(state):
    """A torchvision ResNet state dict as `backbone.*` keys (the classifier `fc` dropped)."""
    return {"backbone." + k: v for k, v in state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}


def detect_format(path, payload):
    """Best guess of a loaded weights file's format (for `init_weights`, `gfocal test`)."""
    if meta_of(payload).get("framework") in OWN_FORMATS:
        return meta_of(payload)["framework"]
    state = state_of(payload, path)
    if any(k.startswith("fc.") or k == "conv1.weight" for k in state):
        return "torchvision"
    return "mmdet"


def canonical(payload, fmt, path, num_classes=None):
    """The canonical state dict of a payload loaded from `path`, read as format `fmt`."""
    state = state_of(payload, path)
    if fmt == "mmdet":
        return mmdet_to_canonical(state, num_classes, classes_of(meta_of(payload)), path)
    if fmt == "torchvision":
        return torchvision_to_canonical(state)
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def read(path, fmt, num_classes=None):
    """Canonical state dict of the file at `path` written in format `fmt`."""
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown source format {fmt!r} (choose from {', '.join(FORMATS)})")
    return canonical(load_payload(path, fmt), fmt, path, num_classes)


def read_any(path, num_classes=None):
    """(format, canonical state dict, payload) of a weights file in any supported format."""
    payload = load_payload(path)
    fmt = detect_format(path, payload)
    return fmt, canonical(payload, fmt, path, num_classes), payload


def load_any(path, num_classes=None):
    """Canonical state dict of a weights file in any supported format (read once)."""
    return read_any(path, num_classes)[1]


def read_training_state(path, num_classes=None):
    """Weights, SGD momentum (by parameter name) and meta of a checkpoint of either port,
    for resuming: a PyTorch run resumes from a Jittor checkpoint and the other way round."""
    fmt, state, payload = read_any(path, num_classes)
    if fmt not in OWN_FORMATS:
        raise CheckpointError(f"{path}: a {fmt} checkpoint holds no training state of ours; "
                              "start from it with --init-weights instead of --resume")
    momentum = payload.get("momentum") or {}
    return {"state_dict": state, "momentum": _to_numpy(momentum, path),
            "meta": meta_of(payload), "format": fmt}


# ---- writing ---------------------------------------------------------------------------------
def canonical_to_mmdet(state):
    """Our canonical state dict in the official GFocalV2 / mmdetection layout.

    Scales become 0-d (mmcv's `Scale`); the classifier gets mmdetection's background channel
    appended last, with zero weights and a bias of BACKGROUND_BIAS, so its probability is
    exactly 0 and the official code's detections are those of our num_classes channels.
    """
    out = {}
    for name, value in state.items():
        if name.startswith("bbox_head.scales.") and value.shape == (1,):
            value = value.reshape(())
        elif name == "bbox_head.gfl_cls.weight":
            value = np.concatenate([value, np.zeros_like(value[:1])])
        elif name == "bbox_head.gfl_cls.bias":
            value = np.concatenate([value, np.full(1, BACKGROUND_BIAS, value.dtype)])
        out[name] = value
    return out


def _contiguous(value):
    # not np.ascontiguousarray: it turns a 0-d array (an mmcv Scale) into shape (1,)
    return value if value.flags.c_contiguous else value.copy()


def mmdet_payload(state, classes=None, meta=None):
    """What mmcv saves: {'meta': {..., 'CLASSES'}, 'state_dict': {name: torch tensor}}, with
    a `num_batches_tracked` (0) beside every BatchNorm, as the official model has."""
    import torch
    tensors = {}
    for name, value in canonical_to_mmdet(state).items():
        tensors[name] = torch.from_numpy(_contiguous(value))
        if name.endswith(".running_var"):
            tensors[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    meta = dict(meta or {})
    if classes is not None:
        meta["CLASSES"] = tuple(classes)
    return {"meta": meta, "state_dict": tensors}


def _write_jittor(payload, path):  # torch.save's argument order
    """jt.save's bytes, written without Jittor (so shared code and the converter need none)."""
    data = pickle.dumps(payload, protocol=4)
    with open(path, "wb") as f:
        f.write(data + hashlib.sha1(data).digest() + JITTOR_MARKER)


def write(path, state, to, meta=None, classes=None, momentum=None):
    """Write a canonical state dict (and SGD momentum by parameter name) as a checkpoint of
    port `to`, or in the official layout for 'mmdet' (dtypes and shapes kept); `classes` are
    the class names if known. The file is replaced atomically."""
    if to not in TARGETS:
        raise CheckpointError(f"unknown target format {to!r} (choose from {', '.join(TARGETS)})")
    if to == "mmdet":
        payload = mmdet_payload(state, classes, meta)
    else:
        payload = {"state_dict": state, "momentum": dict(momentum or {}),
                   "meta": dict(meta or {}, framework=to)}
        if classes is not None:
            payload["meta"]["classes"] = list(classes)
    with atomic_path(path) as tmp:
        if to == "jittor":
            _write_jittor(payload, tmp)
            return
        import torch
        if to == "torch":
            payload["state_dict"] = {k: torch.from_numpy(_contiguous(v))
                                     for k, v in state.items()}
        torch.save(payload, tmp)


def save_checkpoint(path, port, model, optimizer=None, meta=None):
    """`model`'s weights (and `optimizer`'s momentum) as a checkpoint of `port`."""
    ckpt = port.checkpoint
    momentum = ckpt.optimizer_state_numpy(model, optimizer) if optimizer else {}
    write(path, ckpt.state_dict_numpy(model), port.FRAMEWORK, meta=meta, momentum=momentum)


def load_checkpoint(path, port, model, optimizer=None):
    """Weights (and momentum) of a checkpoint of either port into `model` of `port` (and
    `optimizer`), strictly; returns the meta dict."""
    saved = read_training_state(path)
    port.checkpoint.load_state_dict_numpy(model, saved["state_dict"], source=path)
    if optimizer is not None:
        port.checkpoint.load_optimizer_state_numpy(model, optimizer, saved["momentum"])
    return saved["meta"]
