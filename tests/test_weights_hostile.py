"""A weights file cannot steer the reader to memory: every array is a copy of bytes the file
holds, of a numeric dtype rebuilt from its code alone; nothing read carries attributes from
the file (numpy honours an `__array_interface__` found on any object); and neither reader
admits a global outside the list, not even a neighbour of a listed one."""
import collections
import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch

from gfocal.checkpoint_io import (REFUSAL, CheckpointError, RefusedCheckpoint, _write_jittor,
                                  load_payload)
from tests.official_layout import HistoryBuffer, pickled_as

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRESS = 0x4141410000  # unmapped here: numpy reading it is a SIGSEGV


class Var:
    """Pickles as jt.save pickles a tensor, Var(value), for any value."""

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return Var, (self.value,)


class Crafted:
    """Pickles as its reduce tuple says: the calls a hand-written file can make."""

    def __init__(self, *reduce):
        self.reduce = reduce

    def __reduce__(self):
        return self.reduce


def array_over(address):
    """Var(HistoryBuffer with an __array_interface__): an array over `address`, read by a
    loader that sets a HistoryBuffer's attributes and reads a Var with np.asarray."""
    buffer = HistoryBuffer([0.5], [1])
    buffer.__array_interface__ = {"data": (address, False), "shape": (1 << 20,),
                                  "typestr": "<f4", "version": 3}
    return Var(buffer)


def ours(framework, state_dict=None, momentum=None, meta=None):
    """Our checkpoint layout."""
    return {"state_dict": state_dict or {"backbone.conv1.weight": np.zeros(3, np.float32)},
            "momentum": momentum or {}, "meta": dict(meta or {}, framework=framework)}


WRITERS = {  # reader: (file name, writer of (payload, path))
    "jittor": ("weights.pkl", _write_jittor),
    "torch": ("weights.pth", torch.save),
}


def write(fmt, payload, tmp_path):
    """`payload` in a file of `fmt`, with Var and HistoryBuffer named as Jittor and
    mmengine name them."""
    name, writer = WRITERS[fmt]
    path = str(tmp_path / name)
    with pickled_as(HistoryBuffer, "mmengine.logging.history_buffer"), \
            pickled_as(Var, "jittor.jittor_core"):
        writer(payload, path)
    return path


PROBE = textwrap.dedent("""
    import sys
    from gfocal.checkpoint_io import CheckpointError, load_payload
    from weights_converter.cli import main
    try:
        for value in load_payload(sys.argv[1])["state_dict"].values():
            bytes(memoryview(value))  # what any use of the weights does: read them
    except CheckpointError as exc:
        print(f"{type(exc).__name__}: {exc}")
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_a_file_cannot_point_numpy_at_memory(fmt, tmp_path):
    """Before: the API and gfocal-convert ended in SIGSEGV (rc -11), no line. Run in a
    subprocess, so that a regression fails this test instead of killing the test run."""
    path = write(fmt, ours(fmt, {"backbone.conv1.weight": array_over(ADDRESS)}), tmp_path)
    out = str(tmp_path / "out.pth")
    run = subprocess.run([sys.executable, "-c", PROBE, path, out, "--from", fmt,
                          "--to", "torch"], capture_output=True, text=True, timeout=300,
                         start_new_session=True,
                         cwd=REPO)
    message = (f"{path}: refused to load a Jittor Var of anything but a numeric array "
               f"({REFUSAL})")
    assert run.returncode == 2, (run.returncode, run.stderr[-3000:])
    assert run.stdout.splitlines() == [f"RefusedCheckpoint: {message}"]
    assert run.stderr.splitlines() == [f"gfocal-convert: error: {message}"]
    assert not os.path.exists(out)


ODD_DTYPES = {  # kind: an array numpy pickles with a dtype we refuse
    "object": np.array([1, "a"], dtype=object),
    "structured": np.zeros(2, [("a", "f4")]),
    "structured, of a sub-array": np.zeros(2, [("a", "f4", (2,))]),
    "void": np.zeros(2, "V4"),
    "unicode": np.array(["ab"]),
    "bytes": np.array([b"ab"]),
    "datetime": np.array(["2020-01-01"], "M8[D]"),
    "complex": np.zeros(2, np.complex64),
    "long double": np.zeros(2, np.longdouble),
}
PLACES = {  # where in a checkpoint: payload holding `value` there
    "state_dict": lambda fmt, value: ours(fmt, state_dict={"backbone.conv1.weight": value}),
    "momentum": lambda fmt, value: ours(fmt, momentum={"backbone.conv1.weight": value}),
    "meta": lambda fmt, value: ours(fmt, meta={"history": [{"x": value}]}),
    "meta, as a scalar": lambda fmt, value: ours(fmt, meta={"best": value[0]}),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("kind", sorted(ODD_DTYPES))
def test_only_numeric_arrays_are_read(kind, place, fmt, tmp_path):
    array = ODD_DTYPES[kind]
    if place == "meta, as a scalar" and array.dtype.kind in "OV":
        pytest.skip("an object or void scalar is no numpy scalar in a pickle")
    path = write(fmt, PLACES[place](fmt, array), tmp_path)
    code = array.dtype.__reduce__()[1][0]  # what numpy's pickle calls np.dtype with
    with pytest.raises(RefusedCheckpoint) as info:
        load_payload(path)
    assert info.value.what == f"an array of dtype {code!r}"


def test_numeric_arrays_of_every_allowed_dtype_and_byte_order_are_read(tmp_path):
    arrays = {f"{code}{order}": np.arange(6).astype(np.dtype(code).newbyteorder(order))
              .reshape(2, 3) for code in ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4",
                                          "u8", "f2", "f4", "f8") for order in "<>"}
    arrays["fortran"] = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    arrays["0-d"] = np.array(0.75, np.float32)
    for fmt in WRITERS:
        got = load_payload(write(fmt, ours(fmt, state_dict=arrays), tmp_path))["state_dict"]
        for name, want in arrays.items():
            assert type(got[name]) is np.ndarray and got[name].dtype == want.dtype, name
            assert np.array_equal(got[name], want) and got[name].flags.writeable, name


multiarray = np.core.multiarray  # numpy's own rebuilders, as its pickles name them
INTERFACE = {"data": (ADDRESS, False), "shape": (4,), "typestr": "<f4", "version": 3}
CRAFTED = {  # what a hand-written file can build: (object to pickle, what is refused)
    "np.ndarray(shape) (uninitialised memory)": (
        Crafted(np.ndarray, ((1 << 20,), np.dtype("f4"))), "'numpy.ndarray'"),
    "fewer bytes than the shape needs": (
        Crafted(multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (1 << 20,), np.dtype("f4"), False, b"\0" * 4)),
        "an array of shape (1048576,) and dtype float32 over 4 bytes"),
    "an ndarray subclass": (
        Crafted(multiarray._reconstruct, (np.matrix, (0,), b"b")), "'numpy.matrix'"),
    "a float dtype flagged as holding objects": (
        Crafted(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)),
        "dtype '<f8' with fields, sub-arrays or flags"),
    "a float dtype given fields": (
        Crafted(np.dtype, ("f8", False, True),
                (3, "|", None, ("a",), {"a": (np.dtype("f4"), 0)}, 8, 8, 0)),
        "dtype '<f8' with fields, sub-arrays or flags"),
    "a scalar over too few bytes": (
        Crafted(multiarray.scalar, (np.dtype("f8"), b"\0")),
        "a scalar that is not a numeric scalar's bytes"),
    "a state dict carrying __array_interface__": (
        Crafted(collections.OrderedDict, (), {"__array_interface__": INTERFACE}),
        "a OrderedDict with attributes"),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_array_dtype_or_attribute_is_refused(case, fmt, tmp_path):
    crafted, what = CRAFTED[case]
    path = write(fmt, ours(fmt, meta={"x": crafted}), tmp_path)
    with pytest.raises(RefusedCheckpoint) as info:
        load_payload(path)
    assert info.value.what == what
    assert str(info.value) == f"{path}: refused to load {what} ({REFUSAL})"


# ---- the list of globals, and nothing near it -----------------------------------------------
# Written out here, not taken from the loader: a loader that admits more must fail below.
LISTED = frozenset({
    "collections.OrderedDict", "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
    "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar",
    "mmengine.logging.history_buffer.HistoryBuffer", "jittor.jittor_core.Var"})


TORCH_OWN = ("import json, torch; from torch import _weights_only_unpickler as w; "
             "print(json.dumps(sorted({*w._get_allowed_globals(), "
             "*w._get_user_allowed_globals()})))")


@pytest.fixture(scope="module")
def torch_own():
    """What torch.load(weights_only=True) admits of itself, which the torch reader admits
    besides ours (its tensors' rebuilders, storage types and dtypes, OrderedDict, Counter,
    set, bytearray, complex, _codecs.encode, the builtin exceptions...): torch's list, read
    in a process that imports torch alone, so that nothing of ours can have added to it."""
    run = subprocess.run([sys.executable, "-c", TORCH_OWN], capture_output=True, text=True,
                         timeout=300, check=True)
    return frozenset(json.loads(run.stdout))


def _names(module):
    import builtins
    import codecs  # noqa: F401 (_codecs' names)
    import copyreg
    modules = {"numpy": np, "numpy.core.multiarray": multiarray,
               "numpy._core.multiarray": multiarray, "numpy.core.numeric": np.core.numeric,
               "collections": collections, "builtins": builtins, "copyreg": copyreg,
               "_codecs": sys.modules["_codecs"], "torch": torch, "torch._utils": torch._utils}
    by_hand = {  # not installed here (mmengine) or slow to import (Jittor)
        "mmengine.logging.history_buffer": ["HistoryBuffer", "MessageHub", "np", "torch"],
        "jittor.jittor_core": ["Var", "ops", "flags", "NanoString", "NanoVector", "array"],
        "jittor": ["Var", "load", "save", "array", "compile_extern", "safeunpickle"]}
    names = dir(modules[module]) if module in modules else by_hand[module]
    return {f"{module}.{name}" for name in names} | {
        name for name in LISTED if name.rpartition(".")[0] == module}


MODULES = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
           "collections", "builtins", "copyreg", "_codecs", "torch", "torch._utils",
           "mmengine.logging.history_buffer", "jittor.jittor_core", "jittor")


def global_pickle(name):
    """A pickle (protocol 2) of the object `name` names, and nothing else: GLOBAL, STOP."""
    module, _, attr = name.rpartition(".")
    return b"\x80\x02c" + module.encode() + b"\n" + attr.encode() + b"\n."


def _raw_pickle_module(data):
    """A pickle_module for torch.save whose Pickler writes `data` as the archive's pickle."""
    class Pickler:
        def __init__(self, file, protocol=None):
            self.file = file

        def dump(self, obj):
            self.file.write(data)
    return types.SimpleNamespace(__name__="raw", Pickler=Pickler)


GLOBAL_WRITERS = {  # reader: writer of a file whose pickle is `data`
    "jittor": lambda path, data: open(path, "wb").write(data),
    "torch": lambda path, data: torch.save(None, path, pickle_module=_raw_pickle_module(data)),
}


def admitted(fmt, name, path):
    """Whether the reader of `fmt` let the file name `name` (it may refuse it afterwards, as
    not a checkpoint)."""
    GLOBAL_WRITERS[fmt](path, global_pickle(name))
    try:
        load_payload(path, fmt)
    except RefusedCheckpoint as exc:
        return f"refused to load {name!r} " not in str(exc)
    except CheckpointError:
        pass
    return True


@pytest.mark.parametrize("fmt", sorted(GLOBAL_WRITERS))
@pytest.mark.parametrize("module", MODULES)
def test_only_the_listed_globals_are_admitted(module, fmt, torch_own, tmp_path):
    path = str(tmp_path / "global")
    names = _names(module)
    expected = LISTED | (torch_own if fmt == "torch" else frozenset())
    got = {name for name in names if admitted(fmt, name, path)}
    assert got == expected & names, sorted(got ^ (expected & names))[:20]
