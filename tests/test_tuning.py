"""The speed settings (gfocal/tuning.py) and each port's side of them: the option's bad
values, what `tuned` turns on where, the settings restored after a block, and predict()'s
network in each setting. Whether a tuned model computes the same numbers is the parity
suite's question (parity_tests/test_tuned.py)."""
import copy

import pytest

from gfocal.config import ConfigError, from_dict
from gfocal.ports import FRAMEWORKS
from gfocal.tuning import COMPILE_INFERENCE, CUDNN_BENCHMARK, SETTINGS, TuningError, \
    check_setting, features, setting_list


def test_check_setting_and_the_config_key():
    assert [check_setting(s) for s in SETTINGS] == ["default", "tuned"]
    with pytest.raises(TuningError, match="--tuning = 'fast' is not a speed setting "
                                          r"\(choose default, tuned\)"):
        check_setting("fast")
    assert from_dict({"train": {"tuning": "tuned"}})["train"]["tuning"] == "tuned"
    assert from_dict({})["train"]["tuning"] == "default"
    with pytest.raises(ConfigError, match="my.py: 'train.tuning' = 'max' is not a speed"):
        from_dict({"train": {"tuning": "max"}}, source="my.py")


def test_the_pytest_option_takes_a_checked_list():
    assert setting_list("default, tuned,") == ["default", "tuned"]
    with pytest.raises(TuningError, match="--tuning = 'eager' is not a speed setting"):
        setting_list("tuned,eager")


def test_what_tuned_turns_on():
    for framework in FRAMEWORKS:
        for device in ("cpu", "cuda", "cuda:1"):
            assert features(framework, "default", device) == ()
    assert features("torch", "tuned", "cpu") == (COMPILE_INFERENCE,)
    assert features("torch", "tuned", "cuda:1") == (COMPILE_INFERENCE, CUDNN_BENCHMARK)
    assert features("jittor", "tuned", "cpu") == ()
    with pytest.raises(TuningError):
        features("torch", "fast")


def test_a_speed_setting_block_restores_the_previous_setting(port):
    tuning = port.tuning
    assert tuning.current_setting() == "default"
    with tuning.speed_setting("tuned"):
        assert tuning.current_setting() == "tuned"
        with tuning.speed_setting("default"):
            assert tuning.current_setting() == "default"
        assert tuning.current_setting() == "tuned"
    assert tuning.current_setting() == "default"
    with pytest.raises(TuningError):
        tuning.use_setting("fast")
    assert tuning.current_setting() == "default"


def test_predict_runs_the_model_itself_in_the_default_setting(port, tiny_model):
    model = port.build_detector(dict(from_dict({})["model"], **tiny_model))
    assert port.tuning.inference_network(model) is model
    with port.tuning.speed_setting("tuned"):
        network = port.tuning.inference_network(model)
        tuned = COMPILE_INFERENCE in features(port.FRAMEWORK, "tuned", "cpu")
        assert (network is not model) == tuned
        assert port.tuning.inference_network(model) is network  # compiled once per model
        if tuned:  # a copy (the parity suite's float64 model) compiles its own
            twin = copy.deepcopy(model)
            assert port.tuning.inference_network(twin) not in (network, twin)
    assert port.tuning.inference_network(model) is model


def test_tuned_is_refused_in_one_line_where_torch_compile_cannot_run(torch_port, monkeypatch):
    from gfocal.device import DeviceError
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(DeviceError) as refused:
        torch_port.tuning.use_setting("tuned", "cpu")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("--tuning tuned: torch.compile is "
                                                      "unavailable on cpu (")
    assert torch_port.tuning.current_setting() == "default"
    torch_port.tuning.use_setting("default", "cpu")  # the default needs no compiler


def test_a_jittor_feature_sets_its_flag_when_tuned_and_restores_it(jittor_port, monkeypatch):
    """The mechanism a kept Jittor flag would use (none is kept: docs/MODEL.md section 14)."""
    import jittor as jt
    import gfocal.tuning
    monkeypatch.setitem(gfocal.tuning.TUNED, ("jittor", "cpu"), ("reuse",))
    monkeypatch.setattr(jittor_port.tuning, "FLAGS", {"reuse": ("reuse_array", 1)})
    before = jt.flags.reuse_array
    with jittor_port.tuning.speed_setting("tuned"):
        assert jt.flags.reuse_array == 1
        with jittor_port.tuning.speed_setting("default"):
            assert jt.flags.reuse_array == before
        assert jt.flags.reuse_array == 1
    assert jt.flags.reuse_array == before


def test_a_run_applies_the_config_setting_to_its_port(port):
    from gfocal.engine import use_port
    try:
        assert use_port(from_dict({"train": {"tuning": "tuned"}}), port.FRAMEWORK,
                        "cpu").tuning.current_setting() == "tuned"
    finally:
        port.tuning.use_setting("default")
    assert use_port(from_dict({}), port.FRAMEWORK, "cpu").tuning.current_setting() == "default"
