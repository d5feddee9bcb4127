"""Checkpoints of each port: bit-exact save/load of weights and momentum, strict key checks
with the full list, clear errors for unreadable files, atomic replacement."""
import os

import numpy as np
import pytest

from gfocal.state_dict import CheckpointError
from gfocal.checkpoint_io import load_checkpoint, save_checkpoint
from tests.factories import pipeline_batch, tiny_model_cfg

TINY = tiny_model_cfg()
OPTIM = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def tiny_batch():
    rng = np.random.default_rng(0)
    return pipeline_batch(rng.standard_normal((1, 3, 64, 64)).astype(np.float32),
                          [[[8, 10, 40, 50], [30, 5, 60, 30]]], [[1, 4]])


def trained_model(port):
    """A model and optimizer after one SGD step (so momentum buffers are non-zero)."""
    model = port.build_detector(TINY)
    optimizer = port.train.build_optimizer(model, OPTIM)
    model.train()
    port.train.train_step(model, optimizer, tiny_batch())
    return model, optimizer


def assert_same_arrays(got, want):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for name, value in want.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name


def test_save_load_round_trip_is_bit_exact(port, tmp_path):
    model, optimizer = trained_model(port)
    path = str(tmp_path / ("ckpt" + port.checkpoint.EXTENSION))
    save_checkpoint(path, port, model, optimizer, {"iter": 7, "epoch": 1})
    fresh = port.build_detector(TINY)
    fresh_opt = port.train.build_optimizer(fresh, OPTIM)
    meta = load_checkpoint(path, port, fresh, fresh_opt)
    assert meta["iter"] == 7 and meta["epoch"] == 1 and meta["framework"] == port.FRAMEWORK
    assert_same_arrays(port.checkpoint.state_dict_numpy(fresh),
                       port.checkpoint.state_dict_numpy(model))
    momentum = port.checkpoint.optimizer_state_numpy(model, optimizer)
    assert momentum and any(np.any(v != 0) for v in momentum.values())
    assert_same_arrays(port.checkpoint.optimizer_state_numpy(fresh, fresh_opt), momentum)


def test_state_dict_uses_the_mmdetection_names(port):
    names = set(port.checkpoint.state_dict_numpy(port.build_detector(TINY)))
    for name in ("backbone.conv1.weight", "backbone.bn1.running_var",
                 "backbone.layer2.0.downsample.0.weight", "backbone.layer2.0.downsample.1.bias",
                 "neck.lateral_convs.2.conv.bias", "neck.fpn_convs.4.conv.weight",
                 "bbox_head.cls_convs.0.gn.weight", "bbox_head.reg_convs.0.conv.weight",
                 "bbox_head.gfl_cls.bias", "bbox_head.gfl_reg.weight",
                 "bbox_head.reg_conf.0.weight", "bbox_head.reg_conf.2.bias",
                 "bbox_head.scales.4.scale", "bbox_head.integral.project"):
        assert name in names, name
    assert not any(n.endswith("num_batches_tracked") for n in names)


def test_both_ports_have_the_same_state_dict_layout(torch_port, jittor_port):
    t = torch_port.checkpoint.state_dict_numpy(torch_port.build_detector(TINY))
    j = jittor_port.checkpoint.state_dict_numpy(jittor_port.build_detector(TINY))
    assert {k: v.shape for k, v in t.items()} == {k: v.shape for k, v in j.items()}
    assert {k: v.dtype for k, v in t.items()} == {k: v.dtype for k, v in j.items()}


def test_strict_load_names_every_bad_key(port):
    model = port.build_detector(TINY)
    state = port.checkpoint.state_dict_numpy(model)
    del state["bbox_head.gfl_cls.bias"]
    del state["backbone.bn1.running_mean"]
    state["neck.unknown"] = np.zeros(1, np.float32)
    state["bbox_head.scales.0.scale"] = np.ones(2, np.float32)
    with pytest.raises(CheckpointError) as info:
        port.checkpoint.load_state_dict_numpy(model, state, source="my.ckpt")
    msg = str(info.value)
    assert "my.ckpt" in msg
    assert "2 missing: backbone.bn1.running_mean, bbox_head.gfl_cls.bias" in msg
    assert "1 unexpected: neck.unknown" in msg
    assert "bbox_head.scales.0.scale: checkpoint (2,) vs model (1,)" in msg


def test_load_really_assigns_every_tensor(port):
    """Jittor's load_parameters only logs failures (docs/MODEL.md section 10): check the values."""
    source = port.build_detector(TINY)
    state = {k: (v + 0.5).astype(v.dtype) if v.dtype.kind == "f" else v
             for k, v in port.checkpoint.state_dict_numpy(source).items()}
    target = port.build_detector(TINY)
    port.checkpoint.load_state_dict_numpy(target, state)
    assert_same_arrays(port.checkpoint.state_dict_numpy(target), state)


def test_torch_load_tolerates_missing_num_batches_tracked(torch_port):
    """The canonical state dict has no num_batches_tracked (Jittor has none): a strict load
    into the PyTorch port must not ask for it, and the model keeps its own counter."""
    model = torch_port.build_detector(TINY)
    full = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    assert any(k.endswith("num_batches_tracked") for k in full)
    without = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    torch_port.checkpoint.load_state_dict_numpy(model, without, strict=True)
    counter = "backbone.bn1.num_batches_tracked"
    assert int(model.backbone.bn1.num_batches_tracked) == int(full[counter])


@pytest.mark.parametrize("content, words", [(None, "not found"),
                                            (b"definitely not a checkpoint", "not a readable")])
def test_unreadable_checkpoint_is_a_clear_error(port, tmp_path, content, words):
    path = tmp_path / ("bad" + port.checkpoint.EXTENSION)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(str(path), port, port.build_detector(TINY))
    assert str(path) in str(info.value)


def test_save_replaces_atomically(port, tmp_path):
    model = port.build_detector(TINY)
    path = tmp_path / ("ckpt" + port.checkpoint.EXTENSION)
    path.write_bytes(b"old")
    save_checkpoint(str(path), port, model, None, {"iter": 1})
    assert load_checkpoint(str(path), port, port.build_detector(TINY))["iter"] == 1
    assert os.listdir(tmp_path) == [path.name], "temporary files left behind"


def test_jittor_files_are_what_jt_save_writes(jittor_port, tmp_path):
    """The shared writer lays a Jittor checkpoint out as jt.save does (pickle, SHA-1, marker):
    Jittor's own jt.load reads it and verifies the checksum, a flipped byte fails there."""
    import jittor as jt
    model = jittor_port.build_detector(TINY)
    path = str(tmp_path / "ckpt.pkl")
    save_checkpoint(path, jittor_port, model, None, {"iter": 3})
    payload = jt.load(path)
    assert payload["meta"] == {"iter": 3, "framework": "jittor"}
    assert_same_arrays(payload["state_dict"], jittor_port.checkpoint.state_dict_numpy(model))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        jt.load(path)
