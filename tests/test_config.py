"""Config loading: defaults, overrides, and a clear message for every bad key or value."""
import pytest

from gfocal.config import DEFAULTS, ConfigError, load_config

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def write(tmp_path, text):
    path = tmp_path / "cfg.py"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["gfl_r50_fpn_1x_coco.py", "gfl_r18_mini.py"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / name)
    assert set(cfg["model"]) == set(DEFAULTS["model"])


def test_paper_config_is_the_spec_recipe():
    cfg = load_config(ROOT / "configs" / "gfl_r50_fpn_1x_coco.py")
    assert cfg["model"]["depth"] == 50 and cfg["model"]["reg_max"] == 16
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["steps"] == [8, 11]
    assert cfg["data"]["img_scale"] == [1333, 800] and cfg["data"]["batch_size"] == 16


def test_overrides_apply_on_top(tmp_path):
    cfg = load_config(write(tmp_path, "model = dict(depth=18)\n"),
                      overrides={"optim": {"epochs": 2}})
    assert cfg["model"]["depth"] == 18 and cfg["optim"]["epochs"] == 2
    assert cfg["model"]["num_classes"] == 80  # untouched default


@pytest.mark.parametrize("text, words", [
    ("model = dict(detph=50)\n", ["model.detph", "unknown key"]),
    ("modle = dict(depth=50)\n", ["modle", "unknown section"]),
    ("model = dict(depth='50')\n", ["model.depth", "wrong type"]),
    ("model = dict(depth=42)\n", ["model.depth", "42"]),
    ("model = dict(strides=[8, 16])\n", ["model.strides", "num_outs"]),
    ("data = dict(flip_prob=1.5)\n", ["data.flip_prob"]),
    ("data = dict(img_scale=[800])\n", ["data.img_scale"]),
    ("optim = dict(lr=0)\n", ["optim.lr"]),
    ("model = dict(feat_channels=100)\n", ["feat_channels", "gn_groups"]),
    ("model = dict(\n", ["cannot be read"]),
])
def test_bad_config_names_file_and_key(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.py")
