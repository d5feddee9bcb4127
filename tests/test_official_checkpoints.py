"""Official GFocalV2 / mmdetection checkpoints, built as mmcv saves them: read into both
ports, evaluated by `gfocal test` directly, and written back (`--to mmdet`) bit-exactly."""
import numpy as np
import pytest
import torch

from gfocal.checkpoint_io import BACKGROUND_BIAS, read
from tests.official_layout import official_model, save_official_checkpoint
from weights_converter.cli import main as convert_main
from gfocal.ports import FRAMEWORKS
from gfocal.checkpoint_io import load_checkpoint

STYLES = {  # style: (save style, name prefix, background channel)
    "mmcv1": ("mmcv1", "", True),
    "mmcv1-dataparallel": ("mmcv1", "module.", True),
    "mmengine": ("mmengine", "", False),
}
CLASSES = ("cat", "dog", "car", "person", "bus", "tree")


@pytest.fixture(scope="module")
def full_model_cfg(tiny_model):
    from gfocal.config import DEFAULTS
    return dict(DEFAULTS["model"], **tiny_model)


@pytest.fixture(params=sorted(STYLES))
def official(request, tiny_model, tmp_path):
    """(path, the official model, its state as numpy, whether it has the background channel)."""
    style, prefix, background = STYLES[request.param]
    model = official_model(tiny_model, background_channel=background)
    path = tmp_path / f"official_{request.param}.pth"
    save_official_checkpoint(str(path), model, CLASSES, style, prefix)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    return str(path), model, state, background


def shared_tensors_equal(ours, official_state, num_classes):
    """Every tensor of the official state that our layout holds, compared bit for bit."""
    for name, want in official_state.items():
        if name.endswith("num_batches_tracked"):
            assert name not in ours
            continue
        got = ours[name]
        if name.startswith("bbox_head.gfl_cls."):
            want = want[:num_classes]
        if name.startswith("bbox_head.scales."):
            assert want.shape == () and got.shape == (1,), name
            want = want.reshape(1)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    assert set(ours) == {k for k in official_state if not k.endswith("num_batches_tracked")}


@pytest.mark.parametrize("to", FRAMEWORKS)
def test_official_checkpoint_converts_and_loads(official, full_model_cfg, tiny_config,
                                                tmp_path, to):
    from gfocal.ports import load_port
    path, _, state, _ = official
    dst = str(tmp_path / f"ours.{to}")
    assert convert_main([path, dst, "--from", "mmdet", "--to", to,
                         "--config", tiny_config]) == 0
    port = load_port(to)
    model = port.build_detector(full_model_cfg)
    meta = load_checkpoint(dst, port, model)  # strict: every key, every shape
    assert meta["classes"] == list(CLASSES)
    shared_tensors_equal(port.checkpoint.state_dict_numpy(model), state,
                         full_model_cfg["num_classes"])


def test_official_checkpoint_without_a_config(official, tmp_path):
    """The model is inferred; meta CLASSES says 6 classes, so the 7th channel goes."""
    path, _, state, _ = official
    dst = str(tmp_path / "ours.pkl")
    assert convert_main([path, dst, "--from", "mmdet", "--to", "jittor"]) == 0
    shared_tensors_equal(read(dst, "jittor"), state, len(CLASSES))


@pytest.mark.parametrize("via", FRAMEWORKS)
def test_round_trip_official_ours_official_is_bit_exact(official, tiny_model, tiny_config,
                                                        tmp_path, via):
    path, _, state, _ = official
    mid, back = str(tmp_path / f"mid.{via}"), str(tmp_path / "back.pth")
    assert convert_main([path, mid, "--from", "mmdet", "--to", via,
                         "--config", tiny_config]) == 0
    assert convert_main([mid, back, "--from", via, "--to", "mmdet",
                         "--config", tiny_config]) == 0
    # weights_only, as torch.load is by default since torch 2.6 in the official code too
    payload = torch.load(back, map_location="cpu", weights_only=True)
    assert payload["meta"]["CLASSES"] == CLASSES
    written = payload["state_dict"]
    n = len(CLASSES)
    assert set(written) == set(state)
    for name, want in state.items():
        got = written[name].numpy()
        if name.startswith("bbox_head.gfl_cls."):  # the background channel is ours (below)
            assert got.shape[0] == n + 1
            got, want = got[:n], want[:n]
        if not name.endswith("num_batches_tracked"):  # not in our layout: written as 0
            assert got.shape == want.shape and got.dtype == want.dtype, name
            assert np.array_equal(got, want), name
    # the written file is what the official model (with its background channel) loads
    official_model(tiny_model, background_channel=True).load_state_dict(written, strict=True)


def test_background_channel_has_probability_exactly_zero(official, tiny_config, tmp_path):
    path = official[0]
    mid, back = str(tmp_path / "mid.pth"), str(tmp_path / "back.pth")
    convert_main([path, mid, "--from", "mmdet", "--to", "torch", "--config", tiny_config])
    convert_main([mid, back, "--from", "torch", "--to", "mmdet", "--config", tiny_config])
    written = torch.load(back, map_location="cpu", weights_only=True)["state_dict"]
    weight, bias = written["bbox_head.gfl_cls.weight"], written["bbox_head.gfl_cls.bias"]
    assert weight.shape[0] == len(CLASSES) + 1
    assert torch.count_nonzero(weight[-1]) == 0 and float(bias[-1]) == BACKGROUND_BIAS
    # sigmoid (use_sigmoid=True) and softmax (use_sigmoid=False) both give exactly 0
    logits = torch.cat([torch.linspace(-50, 50, len(CLASSES)), bias[-1:]])
    assert float(torch.sigmoid(bias[-1])) == 0.0
    assert float(torch.softmax(logits, 0)[-1]) == 0.0
    assert written["bbox_head.scales.0.scale"].shape == ()


def test_class_count_disagreement_names_both(tiny_model, tiny_config, tmp_path, capsys):
    model = official_model(tiny_model)
    path = str(tmp_path / "five.pth")
    save_official_checkpoint(path, model, CLASSES[:5])
    assert convert_main([path, str(tmp_path / "out.pth"), "--from", "mmdet", "--to", "torch",
                         "--config", tiny_config]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "5 classes" in err and "num_classes = 6" in err and path in err
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_gfocal_test_evaluates_an_official_checkpoint(tiny_model, tiny_config, tmp_path,
                                                      capsys, framework):
    """Directly (converted in memory), with the statistics of the converted checkpoint."""
    from gfocal.cli import main
    model = official_model(tiny_model)
    with torch.no_grad():  # a classifier prior that lets scores pass the 0.05 threshold
        model.bbox_head.gfl_cls.bias.zero_()
    official_path = str(tmp_path / "official.pth")
    save_official_checkpoint(official_path, model, CLASSES)
    converted = str(tmp_path / f"converted.{framework}")
    assert convert_main([official_path, converted, "--from", "mmdet", "--to", framework,
                         "--config", tiny_config]) == 0
    capsys.readouterr()
    stats = {}
    for name, ckpt in (("official", official_path), ("converted", converted)):
        assert main(["test", tiny_config, ckpt, "--framework", framework]) == 0
        lines = capsys.readouterr().out.splitlines()
        stats[name] = [line for line in lines if line.split()[:1] and
                       line.split()[0] in ("AP", "AP50", "AR100")]
    assert len(stats["official"]) == 3 and stats["official"] == stats["converted"]
