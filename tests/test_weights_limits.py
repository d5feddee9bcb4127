"""What a weights file may cost and claim: a zip archive that would inflate beyond the bound
is refused before torch.load reads it; NaN is refused at every load and never written; a
file that is a directory, empty, a truncated Jittor pickle or neither format is called what
it is; gfocal-convert checks where it writes before it reads. One line each, exit 2."""
import os
import warnings
import zipfile

import numpy as np
import pytest
import torch

from gfocal.checkpoint_io import (LARGEST_MODEL_PARAMS, MAX_INFLATED_BYTES, _write_jittor,
                                  load_any, load_payload, read_training_state, write)
from gfocal.cli import main as gfocal_main
from gfocal.config import DEFAULTS
from gfocal.finite import NonFiniteError
from gfocal.state_dict import CheckpointError
from weights_converter.cli import main as convert_main

MIB = 1 << 20


def zip_bomb(path, inflated, numel=4):
    """A torch.save archive of a tensor of `numel` zeros whose storage entry is `inflated`
    zero bytes, deflated (the file stays small: zeros deflate about 1000 to 1)."""
    torch.save({"w": torch.zeros(numel)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            if not info.filename.endswith("/data/0"):
                archive.writestr(info, data)
                continue
            bomb = zipfile.ZipInfo(info.filename)
            bomb.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(bomb, "w", force_zip64=True) as f:
                for _ in range(inflated // MIB):
                    f.write(bytes(MIB))
    return str(path)


def bomb_refusal(path, limit):
    inflated = sum(info.file_size for info in zipfile.ZipFile(path).infolist())
    return (f"{path}: refused to load: its zip entries inflate to {inflated} bytes, "
            f"more than the {limit} bytes any checkpoint of a supported model needs "
            f"(file size {os.path.getsize(path)} bytes)")


def test_a_zip_bomb_is_refused_before_torch_inflates_it(tmp_path):
    """The bound is a parameter: a small bomb against a small bound. Under a larger bound
    the same file loads, so torch really inflates such an entry."""
    path = zip_bomb(tmp_path / "bomb.pth", 8 * MIB, numel=2 * MIB)
    assert os.path.getsize(path) < MIB // 8
    with pytest.raises(CheckpointError) as info:
        load_payload(path, limit=4 * MIB)
    assert str(info.value) == bomb_refusal(path, 4 * MIB)
    assert torch.equal(load_payload(path, limit=16 * MIB)["w"], torch.zeros(2 * MIB))


def test_gfocal_convert_refuses_a_bomb_beyond_the_default_bound(tmp_path, capsys):
    """Before: a 3 MB file took gfocal test to 3.9 GB of memory. This one's entry inflates
    to just over MAX_INFLATED_BYTES (zeros, 1 MB on disk): refused from its zip directory
    alone, before torch opens it."""
    inflated = MAX_INFLATED_BYTES + MIB - MAX_INFLATED_BYTES % MIB
    path = zip_bomb(tmp_path / "bomb.pth", inflated)
    assert os.path.getsize(path) < MAX_INFLATED_BYTES // 200
    code = convert_main([path, str(tmp_path / "out.pkl"), "--from", "torch", "--to", "jittor"])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        "gfocal-convert: error: " + bomb_refusal(path, MAX_INFLATED_BYTES)]


def test_the_bound_covers_the_largest_supported_model(torch_port):
    """MAX_INFLATED_BYTES is four float32 copies of LARGEST_MODEL_PARAMS: true of R101."""
    model = torch_port.build_detector(dict(DEFAULTS["model"], depth=101))
    params = sum(v.size for v in torch_port.checkpoint.state_dict_numpy(model).values())
    assert params <= LARGEST_MODEL_PARAMS < 1.05 * params
    assert MAX_INFLATED_BYTES == 4 * 4 * LARGEST_MODEL_PARAMS


# ---- NaN -----------------------------------------------------------------------------------
def weights(nan_in=()):
    """A small canonical state dict; NaN in the entries named."""
    state = {name: np.ones(3, np.float32) for name in ("a.weight", "b.weight", "c.bias")}
    state["steps"] = np.arange(3)
    for name in nan_in:
        state[name][1] = np.nan
    return state


NAN_FILES = {  # name: writer of (path, weights, momentum) bypassing write()'s check
    "ours.pth": lambda path, w, m: torch.save(
        {"state_dict": {k: torch.from_numpy(v) for k, v in w.items()},
         "momentum": m, "meta": {"framework": "torch"}}, path),
    "ours.pkl": lambda path, w, m: _write_jittor(
        {"state_dict": w, "momentum": m, "meta": {"framework": "jittor"}}, path),
}


def nan_refusal(path, bad, what="weights"):
    return (f"{path}: {len(bad)} of 4 {what} tensors hold NaN or infinity "
            f"({', '.join(bad)})")


@pytest.mark.parametrize("name", sorted(NAN_FILES))
def test_nan_weights_or_momentum_are_refused_at_load(name, tmp_path):
    """Before: read, and the Jittor port segfaulted in jt.topk, the PyTorch one reported
    AP 0.000. gfocal test reads with load_any, train --resume with read_training_state."""
    path = str(tmp_path / name)
    NAN_FILES[name](path, weights(["b.weight", "c.bias"]), {})
    for read in (load_any, read_training_state):
        with pytest.raises(NonFiniteError) as info:
            read(path)
        assert str(info.value) == nan_refusal(path, ["b.weight", "c.bias"])
    NAN_FILES[name](path, weights(), weights(["a.weight"]))
    with pytest.raises(NonFiniteError) as info:
        read_training_state(path)
    assert str(info.value) == nan_refusal(path, ["a.weight"], "momentum")


@pytest.mark.parametrize("to", ["torch", "jittor", "mmdet"])
def test_nan_is_never_written(to, tmp_path):
    path = str(tmp_path / "ckpt")
    with pytest.raises(NonFiniteError) as info:
        write(path, weights(["c.bias"]), to)
    assert str(info.value) == nan_refusal(path, ["c.bias"])
    with pytest.raises(NonFiniteError) as info:
        write(path, weights(), to, momentum=weights(["a.weight"]))
    assert str(info.value) == nan_refusal(path, ["a.weight"], "momentum")
    assert os.listdir(tmp_path) == []


# ---- one true line from the commands -------------------------------------------------------
def one_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def truncated_jittor(path):
    _write_jittor({"state_dict": {"w": np.zeros(4096, np.float32)}, "meta": {}}, path)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def nan_checkpoint(path):
    NAN_FILES["ours.pkl"](path, weights(["b.weight"]), {})


BAD_FILES = {  # name: (maker of the file at path, or None for a directory; the message)
    "a directory": (os.mkdir, "{path}: is a directory, not a weights file"),
    "an empty file": (lambda path: open(path, "wb").close(),
                      "{path}: empty file, not a weights file"),
    "a truncated Jittor checkpoint": (
        truncated_jittor,
        "{path}: a truncated or corrupt Jittor checkpoint (UnpicklingError: pickle data was "
        "truncated)"),
    "a text file": (lambda path: open(path, "w").write("not weights\n"),
                    "{path}: not a readable checkpoint (neither a PyTorch file nor a Jittor "
                    "pickle)"),
    "a checkpoint holding NaN": (nan_checkpoint, nan_refusal("{path}", ["b.weight"])),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_gfocal_test_says_what_a_bad_checkpoint_is(case, tiny_config, tmp_path, capsys):
    """Before: 'file not found' for a directory, '(EOFError: )' for an empty file, 'not a
    readable PyTorch file' and a torch warning line for a truncated Jittor pickle."""
    make, message = BAD_FILES[case]
    path = str(tmp_path / "weights.pkl")
    make(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = gfocal_main(["test", tiny_config, path, "--framework", "torch"])
    assert code == 2 and not [str(w.message) for w in seen]
    assert one_line(capsys) == "gfocal test: error: " + message.format(path=path)


def a_jittor_checkpoint(path):
    _write_jittor({"state_dict": weights(), "meta": {"framework": "jittor"}}, path)


CONVERT_CASES = {  # case: (maker of the file at path, --from, the message)
    "a truncated Jittor checkpoint": (BAD_FILES["a truncated Jittor checkpoint"][0], "jittor",
                                      BAD_FILES["a truncated Jittor checkpoint"][1]),
    "a checkpoint holding NaN": (nan_checkpoint, "jittor",
                                 BAD_FILES["a checkpoint holding NaN"][1]),
    "a Jittor checkpoint read as --from torch": (
        a_jittor_checkpoint, "torch",
        "{path}: not a readable PyTorch file (UnpicklingError: Unsupported operand 149)"),
}


@pytest.mark.parametrize("case", sorted(CONVERT_CASES))
def test_gfocal_convert_says_what_a_bad_checkpoint_is(case, tmp_path, capsys):
    """Before: a Jittor pickle read by torch.load printed torch's warning line first."""
    make, src_fmt, message = CONVERT_CASES[case]
    path = str(tmp_path / "weights.pkl")
    make(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        code = convert_main([path, str(tmp_path / "out.pth"), "--from", src_fmt,
                             "--to", "torch"])
    assert code == 2 and not [str(w.message) for w in seen]
    assert one_line(capsys) == "gfocal-convert: error: " + message.format(path=path)
    assert os.listdir(tmp_path) == ["weights.pkl"]


# ---- where gfocal-convert writes, checked before it reads ----------------------------------
@pytest.mark.parametrize("where", ["a directory", "a read-only place"])
def test_gfocal_convert_checks_its_output_before_reading(where, tmp_path, request, capsys):
    """Before: a traceback, exit 1, after reading and checking the weights. The source here
    is no checkpoint at all: the output is refused before it is read."""
    src = tmp_path / "src.pth"
    src.write_text("not read")
    if where == "a directory":
        dst = str(tmp_path / "out")
        os.mkdir(dst)
        message = f"{dst}: is a directory (give a file name)"
    else:
        ro = request.getfixturevalue("read_only_dir")
        dst = os.path.join(ro, "out.pth")
        message = f"{dst}: {ro} is not writable"
    code = convert_main([str(src), dst, "--from", "torch", "--to", "jittor"])
    assert code == 2
    assert one_line(capsys) == "gfocal-convert: error: " + message
