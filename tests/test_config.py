"""Config loading: defaults, overrides, and a clear message for every bad key or value."""
import math

import pytest

from gfocal.config import DEFAULTS, ConfigError, from_dict, load_config

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
    # types, not only values: every key takes the type of its default
    ("optim = dict(epochs=2.5)\n", ["optim.epochs", "wrong type", "an integer"]),
    ("optim = dict(steps=[1, 'x'])\n", ["optim.steps", "wrong type", "a list of integers"]),
    ("data = dict(img_scale=[800.5, 600])\n", ["data.img_scale", "a list of integers"]),
    ("data = dict(workers=2.0)\n", ["data.workers", "a string or an integer"]),
    ("model = dict(norm_eval=1)\n", ["model.norm_eval", "a boolean"]),
    ("train = dict(checkpoint_interval=0)\n", ["train.checkpoint_interval", "must be >= 1"]),
    ("optim = dict(lr=float('nan'))\n", ["optim.lr", "must be finite"]),
    ("data = dict(mean=[1.0, 2.0, float('inf')])\n", ["data.mean", "must be finite"]),
    ("data = dict(std=[1.0, 0.0, 1.0])\n", ["data.std", "each entry must be > 0"]),
    ("data = dict(mean=[1.0, 2.0])\n", ["data.mean", "3 entries"]),
    ("model = dict(reg_topk=18)\n", ["model.reg_topk", "reg_max"]),
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


def _keys(kind):
    """(section, key) of every default of `kind` (bool is not an int here)."""
    return [(s, k) for s, keys in DEFAULTS.items() for k, v in keys.items()
            if isinstance(v, kind) and not isinstance(v, bool)]


def _refused(section, key, value):
    with pytest.raises(ConfigError, match=f"my.py: '{section}.{key}' = ") as err:
        from_dict({section: {key: value}}, source="my.py")
    return str(err.value)


@pytest.mark.parametrize("section, key", _keys(int))
def test_every_integer_key_refuses_a_float(section, key):
    assert "wrong type" in _refused(section, key, DEFAULTS[section][key] + 0.5)


@pytest.mark.parametrize("section, key", _keys(float))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_key_refuses_nan_and_inf(section, key, value):
    assert "must be finite" in _refused(section, key, value)


@pytest.mark.parametrize("section, key", _keys(list))
def test_every_list_key_checks_its_entries(section, key):
    default = DEFAULTS[section][key]
    assert "wrong type" in _refused(section, key, [*default[:-1], "x"])
    if isinstance(default[0], float):
        assert "must be finite" in _refused(section, key, [*default[:-1], math.nan])


@pytest.mark.parametrize("sections", [
    {}, {"train": {"eval_interval": 0}}, {"data": {"workers": "auto"}},
    {"data": {"workers": 0}}, {"data": {"workers": 3}}, {"optim": {"lr": 1, "steps": []}},
    {"data": {"img_scale": (640, 480), "mean": [0, 0, 0]}},
])
def test_valid_values_still_load(sections):
    cfg = from_dict(sections)
    for name, given in sections.items():
        assert {k: cfg[name][k] for k in given} == given
