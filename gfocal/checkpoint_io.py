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
import math
import os
import pickle
import re
import warnings
import zipfile

import numpy as np

from gfocal.atomic import atomic_path
from gfocal.finite import check_finite_state
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


# ---- reading without running code or reading memory -----------------------------------------
# Unpickling calls whatever a file names, so every reader (pickle's find_class, torch's
# weights_only) may reach only the names below. Apart from OrderedDict, none of them is the
# library's own object: each is a stand-in that builds plain data from data the file holds
# (and refuses anything else, _Refused), so a file can neither run code nor point numpy at
# memory (numpy honours an `__array_interface__` found on any object it is given, and
# np.ndarray(shape) alone hands out uninitialised memory):
# - numpy's array, dtype and scalar rebuilders (our momentum, mmengine's meta and
#   message_hub), under numpy 1's and numpy 2's module names: every array is a copy of the
#   bytes the file holds, of a numeric dtype (NUMERIC_DTYPES) rebuilt from its code alone;
# - OrderedDict: every torch / mmcv / mmengine state dict;
# - mmengine's HistoryBuffer (loss curves in a message_hub) and Jittor's Var (a tensor as
#   jt.save writes it), so neither mmengine nor Jittor runs to read a file.
# Whatever the file builds is then checked as a whole (_plain): no object but a torch /
# mmcv state dict's `_metadata` carries attributes from the file.
NUMERIC_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")
REFUSAL = "a checkpoint may only hold tensors, numeric arrays and plain containers"


class RefusedCheckpoint(CheckpointError):
    """A weights file that names or builds anything but data: refused before any of it runs
    (`what`: the refused global's name, or the refused construct)."""

    def __init__(self, path, what):
        self.what = what
        super().__init__(f"{path}: refused to load {what} ({REFUSAL})")


class _Refused(Exception):
    """Raised inside a reader (not a pickle.UnpicklingError, which torch rewraps)."""


class _Name:
    """A name a file may mention but never call (numpy.ndarray, only as _reconstruct's
    first argument: called, it would allocate uninitialised memory)."""
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __call__(self, *args):
        raise _Refused(repr(self.name))


_NDARRAY = _Name("numpy.ndarray")


class _Dtype:
    """numpy.dtype(code, align, copy) as a pickle calls it, then its state set: a fresh
    numeric dtype from the code alone; the state may only choose the byte order (a file's
    fields, sub-array, size or flags would make numpy misread the array's bytes)."""
    __slots__ = ("dtype",)

    def __new__(cls, code=None, align=False, copy=True):
        if not isinstance(code, str) or code not in NUMERIC_DTYPES:
            raise _Refused(f"an array of dtype {str(code)[:40]!r}")
        self = object.__new__(cls)
        self.dtype = np.dtype(code)
        return self

    def __setstate__(self, state):
        # (version, byte order, sub-array, names, fields, size, alignment, flags)
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                and state[1] in ("<", ">", "|", "=") and state[2:] == (None,) * 3 + (-1, -1, 0)):
            raise _Refused(f"dtype {self.dtype.str!r} with fields, sub-arrays or flags")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _Array:
    """numpy's _reconstruct(ndarray, shape, typecode), then its state (version, shape, dtype,
    Fortran order, bytes) set: the array is a copy of those bytes, which must be exactly
    shape x item size, in a _Dtype."""
    __slots__ = ("array",)

    def __new__(cls, subtype=None, shape=None, typecode=None):
        if subtype is not _NDARRAY:
            raise _Refused("an array of a type other than numpy.ndarray")
        self = object.__new__(cls)
        self.array = None
        return self

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("an array state that is not numpy's")
        _, shape, dtype, fortran, data = state
        if not (isinstance(dtype, _Dtype) and isinstance(data, (bytes, bytearray))
                and isinstance(fortran, bool) and isinstance(shape, tuple)
                and all(type(n) is int and n >= 0 for n in shape)):
            raise _Refused("an array that is not a numeric array's shape and bytes")
        if len(data) != math.prod(shape) * dtype.dtype.itemsize:
            raise _Refused(f"an array of shape {shape} and dtype {dtype.dtype} over "
                           f"{len(data)} bytes")
        view = np.frombuffer(data, dtype.dtype).reshape(shape, order="F" if fortran else "C")
        self.array = view.copy(order="K")


def _scalar(dtype=None, data=None):
    """numpy's multiarray.scalar(dtype, bytes): a numeric scalar from exactly its bytes."""
    if not (isinstance(dtype, _Dtype) and isinstance(data, bytes)
            and len(data) == dtype.dtype.itemsize):
        raise _Refused("a scalar that is not a numeric scalar's bytes")
    return np.frombuffer(data, dtype.dtype)[0]


class _Record:
    """mmengine's HistoryBuffer, never used here: its pickled attributes are kept as a plain
    dict, `fields`, never set on the instance."""
    __slots__ = ("fields",)

    def __new__(cls):
        self = object.__new__(cls)
        self.fields = {}
        return self

    def __setstate__(self, state):
        if not (isinstance(state, dict) and all(isinstance(k, str) for k in state)):
            raise _Refused("a HistoryBuffer whose state is not a dict of attributes")
        self.fields = dict(state)


def _var(array=None):
    """Jittor's Var(array), as jt.save pickles a tensor: only an array rebuilt by _Array, a
    copy of the file's bytes already (not copied again: a file may name one array in any
    number of Vars)."""
    if not isinstance(array, _Array) or array.array is None:
        raise _Refused("a Jittor Var of anything but a numeric array")
    return array.array


def _safe_globals():
    found = {"collections.OrderedDict": collections.OrderedDict,
             "numpy.ndarray": _NDARRAY, "numpy.dtype": _Dtype,
             "mmengine.logging.history_buffer.HistoryBuffer": _Record,
             "jittor.jittor_core.Var": _var}
    for core in ("numpy.core", "numpy._core"):  # numpy 1's and numpy 2's names
        found[f"{core}.multiarray._reconstruct"] = _Array
        found[f"{core}.multiarray.scalar"] = _scalar
    return found


SAFE_GLOBALS = _safe_globals()


def _plain(obj, seen):
    """`obj` as read, with every stand-in replaced by the array or dtype it rebuilt; refused
    where anything carries attributes from the file (a torch / mmcv state dict's
    `_metadata` excepted). `seen` maps id -> result, for shared and cyclic containers."""
    if isinstance(obj, _Array):
        if obj.array is None:
            raise _Refused("an array with no state")
        return obj.array
    if isinstance(obj, _Dtype):
        return obj.dtype
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = obj
    attributes = getattr(obj, "__dict__", None)
    if attributes and (not isinstance(obj, dict) or set(attributes) - {"_metadata"}):
        raise _Refused(f"a {type(obj).__name__} with attributes")
    if isinstance(obj, _Record):
        obj.fields = _plain(obj.fields, seen)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _plain(value, seen)
        if attributes:
            obj._metadata = _plain(obj._metadata, seen)
    elif isinstance(obj, list):
        obj[:] = [_plain(value, seen) for value in obj]
    elif isinstance(obj, (tuple, set, frozenset)):
        seen[id(obj)] = type(obj)(_plain(value, seen) for value in obj)
    return seen[id(obj)]


def _rebuilt(read, path):
    """What `read()` (a reader of `path`) returns, made plain by _plain; every refusal is
    RefusedCheckpoint naming `path`."""
    try:
        return _plain(read(), {})
    except _Refused as exc:
        raise RefusedCheckpoint(path, str(exc)) from None
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply to be a checkpoint") from None


class _DataUnpickler(pickle.Unpickler):
    """pickle that may build only SAFE_GLOBALS (every other reference to code is a class or
    function looked up here)."""

    def find_class(self, module, name):
        if f"{module}.{name}" in SAFE_GLOBALS:
            return SAFE_GLOBALS[f"{module}.{name}"]
        raise _Refused(repr(f"{module}.{name}"))


def _unpickle(path):
    try:
        with open(path, "rb") as f:  # jt.save appends a checksum after the pickle's end
            return _DataUnpickler(f).load()
    except _Refused:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: a truncated or corrupt Jittor checkpoint "
                              f"({type(exc).__name__}: {exc})") from exc


def _read_pickle(path):
    return _rebuilt(lambda: _unpickle(path), path)


# The most a zipped weights file may inflate to, as its zip directory declares (checked
# before torch.load reads a byte, since a 3 MB deflated entry can inflate to gigabytes): the
# largest model we support, R101 GFocalV2 (under LARGEST_MODEL_PARAMS float32 parameters,
# 206 MB), four times over, for the weights and an optimizer's state (SGD's momentum is one
# copy of the weights, Adam's moments two) with room to spare.
LARGEST_MODEL_PARAMS = 52_000_000
MAX_INFLATED_BYTES = 4 * 4 * LARGEST_MODEL_PARAMS


def check_inflated_size(path, limit=MAX_INFLATED_BYTES):
    """Refuse a zip archive whose entries together inflate to more than `limit` bytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(entry.file_size for entry in archive.infolist())
    except Exception as exc:  # a crafted directory may break zipfile in many ways
        raise CheckpointError(f"{path}: not a readable PyTorch file (a broken zip archive: "
                              f"{exc})") from None
    if total > limit:
        raise CheckpointError(
            f"{path}: refused to load: its zip entries inflate to {total} bytes, more than "
            f"the {limit} bytes any checkpoint of a supported model needs "
            f"(file size {os.path.getsize(path)} bytes)")


def _torch_safe_globals():
    """SAFE_GLOBALS for torch.load(weights_only=True): (object, name the file uses)."""
    return [(obj, name) for name, obj in SAFE_GLOBALS.items()]


def _cause(exc):
    """The cause of a torch.load error, in one line: weights_only wraps it in paragraphs of
    advice after 'Unpickler error:'."""
    text = str(exc).split("Unpickler error:", 1)[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _unpickle_torch(path):
    import torch
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()), \
                warnings.catch_warnings():
            # a pickle of another protocol (a Jittor file read as --from torch) fails with
            # the error below: torch's warning before it would be a second line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except _Refused:
        raise
    except Exception as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and refused:
            name = refused[1]  # torch drops the 'builtins.' of a builtin
            raise _Refused(repr(name if "." in name else "builtins." + name)) from None
        raise CheckpointError(f"{path}: not a readable PyTorch file "
                              f"({type(exc).__name__}: {_cause(exc)})") from exc


def _torch_load(path, limit=MAX_INFLATED_BYTES):
    if _is_zip(path):
        check_inflated_size(path, limit)
    return _rebuilt(lambda: _unpickle_torch(path), path)


def _starts_with(path, prefix):
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def _is_zip(path):
    return _starts_with(path, b"PK\x03\x04")


# torch.save's format before torch 1.6 begins with a pickle (protocol 2) of this number
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


def _check_is_file(path):
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a weights file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file, not a weights file")


def load_payload(path, fmt=None, limit=MAX_INFLATED_BYTES):
    """The content of a weights file, rebuilt from data only (a file that names or builds
    anything else is refused, RefusedCheckpoint; one that would inflate beyond `limit` bytes
    too): a pickle for 'jittor', torch.load for the other formats; with `fmt` None,
    whichever the file is: torch.save writes a zip archive (or, in its legacy format, a
    pickled magic number first), jt.save a pickle."""
    _check_is_file(path)
    if fmt == "jittor":
        return _read_pickle(path)
    if fmt is not None or _is_zip(path) or _starts_with(path, TORCH_LEGACY_MAGIC):
        return _torch_load(path, limit)
    if _starts_with(path, pickle.PROTO):
        return _read_pickle(path)
    raise CheckpointError(f"{path}: not a readable checkpoint (neither a PyTorch file nor "
                          "a Jittor pickle)")


def _to_numpy(state, path):
    out = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: an entry named {type(name).__name__} "
                                  f"{str(name)[:40]!r}, not a string")
        out[name] = _numeric_array(value, name, path)
    return out


def _numeric_array(value, name, path):
    """A torch tensor or numpy array of a numeric dtype as a numpy array (a Jittor Var is
    read as its array)."""
    # a torch tensor; asked of the type, since an unpickled object's own attributes come
    # from the file
    if hasattr(type(value), "detach"):
        try:
            value = value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as exc:  # bfloat16, quantized...: no numpy dtype
            raise CheckpointError(f"{path}: entry '{name}' is a tensor numpy cannot hold "
                                  f"({exc})") from None
    if not isinstance(value, np.ndarray):
        raise CheckpointError(f"{path}: entry '{name}' is a {type(value).__name__}, "
                              "not a tensor")
    if value.dtype.str[1:] not in NUMERIC_DTYPES:
        raise CheckpointError(f"{path}: entry '{name}' has dtype {value.dtype}, not a "
                              "numeric one (bool, integer or float)")
    return value


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
    check_finite_state(state, path)
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
    momentum = _to_numpy(payload.get("momentum") or {}, path)
    check_finite_state(momentum, path, "momentum")
    return {"state_dict": state, "momentum": momentum,
            "meta": meta_of(payload), "format": fmt}


# ---- writing ---------------------------------------------------------------------------------
def canonical_to_mmdet(state):
    """Our canonical state dict in the official GFocalV2 / mmdetection layout.

    Scales become 0-d (mmcv's `Scale`); a GFocalV2 classifier gets the official config's
    background channel appended last, with zero weights and a bias of BACKGROUND_BIAS, so its
    probability is exactly 0 and the official code's detections are those of our num_classes
    channels. A GFL V1 model (no `reg_conf`: mmdetection 3.x's GFLHead, use_sigmoid) has none.
    """
    v2 = any(name.startswith("bbox_head.reg_conf.") for name in state)
    out = {}
    for name, value in state.items():
        if name.startswith("bbox_head.scales.") and value.shape == (1,):
            value = value.reshape(())
        elif not v2:
            pass
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
    check_finite_state(state, path)  # so that no checkpoint of NaN is ever written
    check_finite_state(dict(momentum or {}), path, "momentum")
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
        # into a Python file: a refused write is then an OSError with its errno (a full
        # disk), not torch's own "unexpected pos" error from writing to a path itself
        with open(tmp, "wb") as f:
            torch.save(payload, f)


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
