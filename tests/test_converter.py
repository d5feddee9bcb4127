"""The weight converter: PyTorch <-> Jittor, mmdetection / official GFocalV2 checkpoints and
torchvision ResNets, strict key checks, and the `gfocal-convert` command."""
import numpy as np
import pytest
import torch

from gfocal.state_dict import CheckpointError
from weights_converter.cli import main
from gfocal.checkpoint_io import mmdet_to_canonical, read, write
from weights_converter.convert import convert, infer_model_cfg
from gfocal.ports import FRAMEWORKS
from gfocal.checkpoint_io import load_checkpoint
from tests.factories import TINY_MODEL, config_text, tiny_model_cfg

TINY = tiny_model_cfg()


@pytest.fixture(scope="module")
def torch_state():
    """A full detector state dict from the PyTorch port, with non-trivial BN statistics."""
    from gfocal.pytorch import build_detector
    from gfocal.pytorch.checkpoint import state_dict_numpy
    torch.manual_seed(0)
    state = state_dict_numpy(build_detector(TINY))
    rng = np.random.default_rng(0)
    for name in state:
        if name.endswith(("running_mean", "running_var")):
            state[name] = rng.uniform(0.5, 1.5, state[name].shape).astype(state[name].dtype)
    return state


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(config_text({"model": TINY_MODEL}))
    return str(path)


def assert_bit_exact(got, want):
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for name, value in want.items():
        assert got[name].dtype == value.dtype, name
        assert got[name].shape == value.shape, name
        assert np.array_equal(got[name], value), name


def test_round_trip_torch_jittor_torch_is_bit_exact(torch_state, tmp_path):
    src, mid, back = (str(tmp_path / n) for n in ("a.pth", "b.pkl", "c.pth"))
    write(src, torch_state, "torch")
    convert(src, mid, "torch", "jittor")
    convert(mid, back, "jittor", "torch")
    assert_bit_exact(read(mid, "jittor"), torch_state)
    assert_bit_exact(read(back, "torch"), torch_state)


def test_converted_weights_load_into_both_ports(torch_state, tmp_path):
    import gfocal.jittor as jittor_port
    src, dst = str(tmp_path / "a.pth"), str(tmp_path / "b.pkl")
    write(src, torch_state, "torch")
    convert(src, dst, "torch", "jittor")
    model = jittor_port.build_detector(TINY)
    meta = load_checkpoint(dst, jittor_port, model)
    assert meta["framework"] == "jittor" and meta["source_format"] == "torch"
    assert_bit_exact(jittor_port.checkpoint.state_dict_numpy(model), torch_state)


def test_dtypes_and_shapes_are_preserved_by_the_writers(tmp_path):
    state = {"a": np.arange(6, dtype=np.float64).reshape(2, 3),
             "b": np.ones((1,), np.float16), "c": np.arange(4, dtype=np.int64)}
    for to in FRAMEWORKS:
        path = str(tmp_path / f"x.{to}")
        write(path, state, to)
        assert_bit_exact(read(path, to), state)


def broken(state):
    bad = dict(state)
    del bad["bbox_head.gfl_reg.bias"]
    bad["bbox_head.extra.weight"] = np.zeros(3, np.float32)
    bad["neck.fpn_convs.0.conv.bias"] = np.zeros(5, np.float32)
    return bad


@pytest.mark.parametrize("to", FRAMEWORKS)
def test_strict_conversion_lists_every_bad_key(torch_state, tmp_path, to):
    src, dst = str(tmp_path / "bad.pth"), str(tmp_path / "out")
    write(src, broken(torch_state), "torch")
    with pytest.raises(CheckpointError) as info:
        convert(src, dst, "torch", to, TINY)
    msg = str(info.value)
    for words in ("1 missing: bbox_head.gfl_reg.bias", "1 unexpected: bbox_head.extra.weight",
                  "1 mis-shaped: neck.fpn_convs.0.conv.bias: checkpoint (5,) vs model (32,)"):
        assert words in msg
    assert not (tmp_path / "out").exists(), "nothing may be written on failure"


def mmdet_checkpoint(state, wrapped=True, prefix=""):
    """The layout of an official GFocalV2 / mmdetection 2.x checkpoint: num_classes + 1
    classifier outputs, num_batches_tracked entries, optionally a 'module.' prefix."""
    out = {}
    for name, value in state.items():
        value = torch.from_numpy(value.copy())
        if name == "bbox_head.gfl_cls.weight":
            value = torch.cat([value, torch.full_like(value[:1], 7.0)])
        if name == "bbox_head.gfl_cls.bias":
            value = torch.cat([value, torch.tensor([-9.0])])
        out[prefix + name] = value
        if name.endswith("running_var"):
            out[prefix + name.replace("running_var", "num_batches_tracked")] = torch.tensor(5)
    out.pop(prefix + "bbox_head.integral.project")  # left out by some exports
    return {"state_dict": out, "meta": {"mmdet_version": "2.6.0"}} if wrapped else out


@pytest.mark.parametrize("wrapped, prefix", [(True, ""), (False, ""), (True, "module.")],
                         ids=["state_dict+meta", "bare", "module-prefix"])
def test_mmdet_checkpoint_drops_the_81st_class_channel(torch_state, tmp_path, config_file,
                                                       wrapped, prefix):
    src, dst = str(tmp_path / "mmdet.pth"), str(tmp_path / "ours.pkl")
    torch.save(mmdet_checkpoint(torch_state, wrapped, prefix), src)
    assert main([src, dst, "--from", "mmdet", "--to", "jittor", "--config", config_file]) == 0
    got = read(dst, "jittor")
    # the extra (always-background) channel is the last one: our 6 classes are unchanged
    assert_bit_exact(got, torch_state)


def test_mmdet_canonical_keeps_a_classifier_of_the_right_size():
    state = {"bbox_head.gfl_cls.weight": np.zeros((6, 4, 3, 3), np.float32),
             "bbox_head.gfl_cls.bias": np.zeros(6, np.float32)}
    assert mmdet_to_canonical(state, num_classes=6)["bbox_head.gfl_cls.weight"].shape[0] == 6


def test_torchvision_resnet_fills_the_backbone(tmp_path, config_file):
    """The converted backbone computes what torchvision's ResNet computes, in both ports."""
    import torchvision

    from gfocal.ports import load_port
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial BN statistics, so a wrong BN key map shows
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    resnet.eval()
    src = str(tmp_path / "resnet18.pth")
    torch.save(resnet.state_dict(), src)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        t = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(torch.from_numpy(x)))))
        expected = {}
        for i in (1, 2, 3, 4):
            t = getattr(resnet, f"layer{i}")(t)
            expected[f"backbone.layer{i}"] = t.numpy()
    for to in FRAMEWORKS:
        port = load_port(to)
        dst = str(tmp_path / f"det.{to}")
        assert main([src, dst, "--from", "torchvision", "--to", to, "--config", config_file]) == 0
        model = port.build_detector(TINY)
        load_checkpoint(dst, port, model)
        model.eval()
        with port.probes.capture() as got:
            model.backbone(port.tensor(x))
        for name, want in expected.items():
            np.testing.assert_allclose(got[name], want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                                       err_msg=f"{to}: {name}")


def test_torchvision_with_missing_backbone_keys_is_refused(tmp_path, config_file):
    import torchvision
    state = torchvision.models.resnet18(weights=None).state_dict()
    del state["layer2.0.conv1.weight"]
    src = str(tmp_path / "r18.pth")
    torch.save(state, src)
    with pytest.raises(CheckpointError, match="missing: backbone.layer2.0.conv1.weight"):
        convert(src, str(tmp_path / "out.pth"), "torchvision", "torch", TINY)


def test_cli_round_trip_and_messages(torch_state, tmp_path, capsys):
    src, mid = str(tmp_path / "a.pth"), str(tmp_path / "b.pkl")
    write(src, torch_state, "torch")
    assert main([src, mid, "--from", "torch", "--to", "jittor"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main([str(tmp_path / "nope.pth"), mid, "--from", "torch", "--to", "jittor"]) == 2
    err = capsys.readouterr().err
    assert "nope.pth" in err and "not found" in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "junk.pth"), mid, "--from", "torch", "--to", "jittor"]) == 2
    assert "junk.pth" in capsys.readouterr().err
    assert main([src, src, "--from", "torch", "--to", "torch"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([src, mid, "--from", "caffe", "--to", "jittor"])


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_the_model_is_inferred_from_a_state_dict_of_every_depth(depth):
    """infer_model_cfg reads depth (block counts, Bottleneck or not), widths and levels back
    from the names and shapes of a full detector's state dict: the config it was made with."""
    from gfocal.pytorch import build_detector
    from gfocal.pytorch.checkpoint import state_dict_numpy
    made = dict(TINY, depth=depth, num_classes=3, reg_max=7, reg_topk=3, reg_channels=16)
    inferred = infer_model_cfg(state_dict_numpy(build_detector(made)))
    keys = ("depth", "num_classes", "feat_channels", "fpn_channels", "stacked_convs",
            "reg_max", "reg_channels", "reg_topk", "num_outs", "strides")
    assert {k: inferred[k] for k in keys} == {k: made[k] for k in keys}
    assert inferred["strides"] == [8, 16, 32, 64, 128]
