"""Reading weights runs no code from the file: every reader rebuilds tensors, arrays and plain
containers only, and refuses anything else in one line before it runs; checkpoints saved as
mmcv 1.x, mmengine, torchvision and Jittor save them still load."""
import collections
import copyreg
import io
import os
import pickle
import shlex

import numpy as np
import pytest
import torch

from gfocal.checkpoint_io import CheckpointError, _write_jittor, load_payload, read_any
from gfocal.cli import main as gfocal_main
from tests.official_layout import HistoryBuffer, official_model, save_official_checkpoint
from weights_converter.cli import main as convert_main

REFUSED = f"{os.system.__module__}.system"  # 'posix.system' on Linux
CLASSES = ("cat", "dog", "car", "person", "bus", "tree")


class Bait:
    """What a malicious checkpoint holds: unpickling it runs a shell command (writes `marker`)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def ours(framework, bait, weight):
    """Our checkpoint layout (either port), `bait` among the momentum."""
    return {"state_dict": {"backbone.conv1.weight": weight},
            "momentum": {"backbone.conv1.weight": bait}, "meta": {"framework": framework}}


def torch_file(payload, legacy=False):
    return lambda path: torch.save(payload, path, _use_new_zipfile_serialization=not legacy)


def baited_writers(bait):
    """format: (file name, gfocal-convert's --from, writer of a file holding `bait`)."""
    tensors = collections.OrderedDict({"conv1.weight": torch.zeros(4, 3, 1, 1)})
    official = {"meta": {"mmdet_version": "2.6.0", "CLASSES": CLASSES, "config": bait},
                "state_dict": tensors}
    jittor = ours("jittor", bait, np.zeros((4, 3, 1, 1), np.float32))
    return {
        "torch": ("ours.pth", "torch", torch_file(ours("torch", bait, tensors["conv1.weight"]))),
        "jittor": ("ours.pkl", "jittor", lambda path: _write_jittor(jittor, path)),
        "mmdet": ("official.pth", "mmdet", torch_file(official)),
        "mmdet-legacy-format": ("official_2020.pth", "mmdet", torch_file(official, legacy=True)),
        "torchvision": ("resnet18.pth", "torchvision",
                        torch_file(collections.OrderedDict(tensors, **{"fc.weight": bait}))),
    }


FORMATS = sorted(baited_writers(None))


def baited(fmt, tmp_path):
    """(path of a `fmt` file that writes `marker` when unpickled, its --from, marker)."""
    marker = tmp_path / "code-ran"
    name, src_fmt, write = baited_writers(Bait(marker))[fmt]
    path = tmp_path / name
    write(str(path))
    return str(path), src_fmt, marker


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_bait_runs_code_when_unpickled_unrestricted(fmt, tmp_path):
    """The files below are real attacks: a plain pickle / torch.load runs their command
    (deliberately unsafe here, on files this test wrote: it proves the bait is real)."""
    path, src_fmt, marker = baited(fmt, tmp_path)
    if src_fmt == "jittor":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()


COMMANDS = {  # name: (entry point, argv for (weights path, --from, config, scratch dir))
    "gfocal test": (gfocal_main, lambda w, f, cfg, d: ["test", cfg, w, "--framework", "torch"]),
    "gfocal train --resume": (gfocal_main, lambda w, f, cfg, d: [
        "train", cfg, "--framework", "torch", "--work-dir", d, "--resume", w]),
    "gfocal train --init-weights": (gfocal_main, lambda w, f, cfg, d: [
        "train", cfg, "--framework", "torch", "--work-dir", d, "--init-weights", w,
        "--max-iters", "1"]),
    "gfocal-convert": (convert_main, lambda w, f, cfg, d: [
        w, os.path.join(d, "out.pth"), "--from", f, "--to", "torch"]),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_a_checkpoint_that_runs_code_is_refused(fmt, command, tiny_config, tmp_path, capsys):
    path, src_fmt, marker = baited(fmt, tmp_path)
    main, argv = COMMANDS[command]
    code = main(argv(path, src_fmt, tiny_config, str(tmp_path / "work")))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1, lines
    assert path in lines[0] and f"refused to load {REFUSED!r}" in lines[0], lines[0]
    assert not marker.exists(), "the file's code ran"
    assert not (tmp_path / "work").exists(), "nothing is written"


def torchvision_save(path, resnet):
    """torchvision's weights: a bare state dict (an OrderedDict with its _metadata)."""
    state = resnet.state_dict()
    torch.save(state, path)
    return state


def jt_save(path, model):
    try:
        import jittor as jt
    except ImportError as exc:
        pytest.skip(f"jittor is not installed ({exc})")
    payload = {"state_dict": {k: jt.array(v.numpy()) for k, v in model.state_dict().items()
                              if v.dtype == torch.float32},
               "meta": {"iter": 3, "framework": "jittor"}}
    jt.save(payload, path)
    return {"state_dict": {k: v.numpy() for k, v in payload["state_dict"].items()},
            "meta": payload["meta"]}


PLAIN = {  # kind: (writer of (path, official model), the format read_any should see)
    "mmcv1": (lambda path, m: save_official_checkpoint(path, m, CLASSES, "mmcv1"), "mmdet"),
    "mmcv1-legacy-format": (lambda path, m: save_official_checkpoint(
        path, m, CLASSES, "mmcv1", legacy=True), "mmdet"),
    "mmengine": (lambda path, m: save_official_checkpoint(path, m, CLASSES, "mmengine"),
                 "mmdet"),
    "torchvision": (lambda path, m: torchvision_save(path, m.backbone), "torchvision"),
    "jt.save": (jt_save, "jittor"),
}


def same(got, want):
    """Equal in value and type, all the way down (a HistoryBuffer by its attributes, which
    the loader keeps as a plain dict, `fields`)."""
    if isinstance(want, HistoryBuffer):
        return same(got.fields, vars(want))
    if type(got) is not type(want):
        return False
    if isinstance(want, torch.Tensor):
        return got.dtype == want.dtype and torch.equal(got, want)
    if isinstance(want, np.ndarray):
        return got.dtype == want.dtype and np.array_equal(got, want)
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    if isinstance(want, (list, tuple)):
        return len(got) == len(want) and all(map(same, got, want))
    return got == want


@pytest.mark.parametrize("kind", sorted(PLAIN))
def test_checkpoints_of_plain_data_still_load(kind, tiny_model, tmp_path):
    write, fmt = PLAIN[kind]
    path = str(tmp_path / "weights")
    saved = write(path, official_model(tiny_model))
    assert same(load_payload(path), saved)
    assert read_any(path)[0] == fmt


def test_a_pickle_the_safe_loader_cannot_read_fails_with_its_cause_in_one_line(tmp_path):
    """torch.load(weights_only=True) buries the cause under paragraphs of advice: the error
    keeps only the cause (here an extension-registry opcode, EXT1 = 130, that the safe
    unpickler does not read)."""
    copyreg.add_extension("collections", "OrderedDict", 240)
    try:
        buffer = io.BytesIO()
        torch.save({"x": collections.OrderedDict(a=1)}, buffer)
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 240)
    path = tmp_path / "ext.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(CheckpointError) as info:
        load_payload(str(path), "torch")
    assert str(info.value) == (f"{path}: not a readable PyTorch file (UnpicklingError: "
                               "Unsupported operand 130)")
