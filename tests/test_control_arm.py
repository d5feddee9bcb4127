"""The control arm's arithmetic (gfocal/control_arm.py) on hand-made numbers, and a short
real run with a bug planted in one port that the verdict must call outside the band."""
import json
import os
import sys

import numpy as np
import pytest

from gfocal.report import RunData
from gfocal import control_arm


def test_weight_distances_total_and_per_group():
    ref = {"backbone.layer1.0.conv1.weight": np.array([3.0, 4.0], np.float32),     # norm 5
           "bbox_head.reg_conf.0.weight": np.array([0.0, 12.0], np.float32),       # norm 12
           "backbone.bn1.running_var": np.array([1.0], np.float32),                # not a weight
           "bbox_head.integral.project": np.arange(3, dtype=np.float32)}
    other = dict(ref)
    other["backbone.layer1.0.conv1.weight"] = np.array([3.0, 5.0], np.float32)    # moved by 1
    other["backbone.bn1.running_var"] = np.array([100.0], np.float32)             # ignored
    d = control_arm.weight_distances(ref, other)
    assert d["layer1"] == pytest.approx(1 / 5) and d["dgqp"] == 0.0
    assert d["total"] == pytest.approx(1 / 13)  # sqrt(1) / sqrt(25 + 144)
    assert d["stem"] == 0.0 and set(d) == set(control_arm.GROUP_NAMES)


def test_perturbation_moves_every_weight_by_exactly_one_ulp():
    rng = np.random.default_rng(0)
    state = {"neck.fpn_convs.0.conv.weight": rng.standard_normal((8, 8)).astype(np.float32),
             "backbone.bn1.running_mean": rng.standard_normal(8).astype(np.float32),
             "bbox_head.integral.project": np.arange(17, dtype=np.float32)}
    moved = control_arm.perturb_one_ulp(state, seed=3)
    w, w2 = state["neck.fpn_convs.0.conv.weight"], moved["neck.fpn_convs.0.conv.weight"]
    assert w2.dtype == np.float32
    assert np.array_equal(np.abs(w2.astype(np.float64) - w), np.spacing(np.abs(w)))
    up = w2 > w
    assert 0 < up.sum() < w.size  # both directions
    for name in ("backbone.bn1.running_mean", "bbox_head.integral.project"):
        assert np.array_equal(moved[name], state[name])


def log_of(losses):
    return [{"iter": i + 1, "epoch": 1, "loss": float(v)} for i, v in enumerate(losses)]


@pytest.mark.parametrize("amp, first_rel, ok", [
    ("off", 0.0, False), ("off", 3e-7, True), ("off", 1e-3, False),
    # mixed precision: rounding-sized means up to one epsilon of the half type
    ("bf16", 6.9e-5, True), ("bf16", 1e-2, False), ("fp16", 6.9e-5, True),
    ("fp16", 2e-3, False), ("native-bf16", 7.0e-5, True), ("native-bf16", 1e-2, False),
    ("native-fp16", 2.3e-5, True), ("native-fp16", 2e-3, False)])
def test_control_check_wants_a_rounding_sized_first_difference(amp, first_rel, ok):
    check = control_arm.control_check(log_of([2.0, 1.9]), log_of([2.0 * (1 + first_rel), 1.9]),
                                      amp)
    assert check["ok"] is ok and check["first_rel"] == pytest.approx(first_rel)
    assert check["text"].startswith("WARNING") is (not ok)
    assert f"{amp.removeprefix('native-').replace('off', 'float32')} eps" in check["text"]


def synthetic(seed, scale, n=200):
    """A decaying loss curve, moved by relative noise that grows from 1e-7 to `scale`."""
    rng = np.random.default_rng(seed)
    base = 2.0 / np.sqrt(np.arange(1, n + 1))
    growth = np.minimum(1e-7 * np.exp(np.arange(n) / 5.0), scale)
    return base * (1 + growth * rng.standard_normal(n))


def test_verdict_within_for_noise_of_the_controls_size_outside_for_a_bug():
    n = 200
    ref = RunData("torch", log=log_of(2.0 / np.sqrt(np.arange(1, n + 1))),
                  final_stats={"AP": 0.40})
    control = RunData("torch", log=log_of(synthetic(1, 0.03)), final_stats={"AP": 0.41})
    same = RunData("jittor", log=log_of(synthetic(2, 0.03)), final_stats={"AP": 0.395})
    bug = RunData("jittor", log=log_of(synthetic(3, 0.3)), final_stats={"AP": 0.30})
    ok = control_arm.verdict(ref, same, control)
    assert ok["within"] and ok["ratio"] <= control_arm.RATIO_LIMIT
    assert ok["line"].startswith("Jittor-vs-PyTorch divergence is within")
    assert "dAP -0.005 vs control dAP +0.010" in ok["line"]
    bad = control_arm.verdict(ref, bug, control)
    assert bad["within"] is False and bad["ratio"] > 5
    assert "outside the same-framework noise band" in bad["line"]


@pytest.mark.parametrize("first_rel, why", [(0.0, "not moved at all"),
                                             (1e-3, "moved far beyond rounding")])
def test_verdict_is_undecided_when_the_control_check_fails(first_rel, why):
    """A control that is no rounding-sized perturbation gives no band: no within / outside,
    even for a Jittor run that would read "within" against it."""
    n = 200
    ref_losses = 2.0 / np.sqrt(np.arange(1, n + 1))
    ref = RunData("torch", log=log_of(ref_losses), final_stats={"AP": 0.40})
    control_losses = synthetic(1, 0.03)
    control_losses[0] = ref_losses[0] * (1 + first_rel)
    control = RunData("torch", log=log_of(control_losses), final_stats={"AP": 0.41})
    same = RunData("jittor", log=log_of(synthetic(2, 0.03)), final_stats={"AP": 0.395})
    out = control_arm.verdict(ref, same, control)
    assert out["within"] is None and out["ratio"] is None, why
    assert out["line"].startswith("Undecided: the control arm is not a rounding-sized")


def test_band_exit_is_the_first_iteration_and_largest_group():
    def rec(it, **groups):
        return dict(dict.fromkeys(control_arm.GROUP_NAMES, 1e-6), iter=it, **groups)
    control = [rec(0), rec(20), rec(40)]
    jittor = [rec(0), rec(20, fpn=1.5e-6), rec(40, fpn=3e-6, dgqp=9e-6)]
    assert control_arm.band_exit(jittor, control) == (40, "dgqp")
    assert control_arm.band_exit(jittor[:2], control) is None


def test_control_runs_the_whole_epochs_that_fit(tiny_config):
    from gfocal.compare import control_iterations
    from gfocal.config import load_config
    cfg = load_config(tiny_config, {"optim": {"epochs": 8}})
    reference = RunData("torch", log=log_of(np.ones(32)), wall_time=64.0)  # 2 s / iteration
    assert control_iterations(cfg, 4, reference, None) == (32, None)
    assert control_iterations(cfg, 4, reference, 1000.0) == (32, None)
    iters, note = control_iterations(cfg, 4, reference, 20.0)  # 10 iterations: 2 epochs
    assert iters == 8 and "2 of 8 epochs" in note
    iters, note = control_iterations(cfg, 4, reference, 5.0)
    assert iters == 0 and "did not run" in note


@pytest.mark.ci  # three training arms
def test_a_planted_learning_rate_bug_is_outside_the_band(tiny_coco, tiny_model, tmp_path,
                                                         monkeypatch):
    """Real training: the Jittor port with its learning rate tripled, 8 short epochs (24
    iterations of 3; the verdict compares the 4 after FIRST_N = 20). The bug puts R far
    outside the band (R = 737 at 10 epochs, 1620 at 8, against the limit 2), so a few
    iterations past FIRST_N decide it: the cost is the iterations, three arms of them."""
    from gfocal.ports import load_port
    from gfocal.compare import check_inputs, run_arms
    from gfocal.config import from_dict
    cfg = from_dict({"model": tiny_model,
                     "data": dict(root=tiny_coco, img_scale=[96, 96], batch_size=2),
                     "optim": dict(warmup_iters=5, epochs=8),
                     "train": dict(eval_interval=0)}, source="tiny noise config")
    jittor_train = load_port("jittor").train
    real_set_lr = jittor_train.set_lr
    monkeypatch.setattr(jittor_train, "set_lr", lambda opt, lr: real_set_lr(opt, 3 * lr))
    runs, result = run_arms(cfg, str(tmp_path), check_inputs(cfg), progress=False)
    assert result["check"]["ok"], result["check"]["text"]
    n = len(runs["torch"].log)
    assert n > control_arm.FIRST_N + 3
    assert len(runs["jittor"].log) == len(result["control"].log) == n
    print(result["verdict"]["line"])
    assert result["verdict"]["within"] is False, result["verdict"]["line"]
    assert result["verdict"]["ratio"] > 10 * control_arm.RATIO_LIMIT  # decided with margin
    assert result["exit"] is not None  # the weights leave the band too


# ---------------------------------------------------------------- what the verdict detects
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "scripts"))
import verdict_power  # noqa: E402


def power_rows(*rows):
    return {"config": "configs/gfl_r18_mini.py", "epochs": 2, "iterations": 120,
            "date": "2026-12-03", "check": "ok",
            "rows": [{"plant": p, "ratio": r, "within": w, "line": ""} for p, r, w in rows]}


def test_the_detection_limit_is_the_smallest_bug_of_each_kind_called_outside():
    measured = power_rows(("none", 0.5, True), ("lr*1.02", 1.1, True), ("lr*1.1", 9.0, False),
                          ("lr*1.3", 80.0, False), ("lr*1.05", 3.0, False),
                          ("dfl*0.9", 1.2, True), ("bn_eps=0.001", 5.0, False))
    assert verdict_power.limits(measured) == {"lr": "lr*1.05", "dfl": None,
                                              "bn_eps": "bn_eps=0.001"}


def test_the_report_quotes_what_the_verdict_detects_and_what_it_missed(tmp_path):
    measured = power_rows(("none", 0.5, True), ("lr*1.02", 1.1, True), ("lr*1.05", 3.0, False))
    measured["limits"] = verdict_power.limits(measured)
    path = tmp_path / "power.json"
    path.write_text(json.dumps(measured))
    text = control_arm.detection_limit_text(str(path))
    assert "a learning rate off by x1.05 or larger" in text
    assert "it read a learning rate off by x1.02 as within the band" in text
    assert "rely on the parity suite" in text and "2 epochs" in text
    assert "has not been measured" in control_arm.detection_limit_text(str(tmp_path / "no"))


@pytest.mark.parametrize("plant", ["lr", "lr*x", "speed*2", "bn_eps"])
def test_a_bad_plant_is_one_line(plant, capsys):
    assert verdict_power.main(["--plants", plant, "--out", "/nonexistent/never"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("verdict_power: error: --plants: ") and err.count("\n") == 1


@pytest.mark.slow
def test_graded_planted_bugs_on_a_short_run(tiny_coco, tiny_model, tmp_path):
    """The smallest graded learning-rate bug, x1.02, planted in the Jittor arm of 36
    iterations: outside the band (R = 236 measured), while the unplanted port reads within
    (R = 0.04): on a short run the band is far below any real bug."""
    from gfocal.config import from_dict
    cfg = from_dict({"model": tiny_model,
                     "data": dict(root=tiny_coco, img_scale=[96, 96], batch_size=2),
                     "optim": dict(warmup_iters=5, epochs=12),
                     "train": dict(eval_interval=0)}, source="tiny noise config")
    measured = verdict_power.measure(cfg, str(tmp_path), ["lr*1.02"], log=lambda _: None)
    assert [r["within"] for r in measured["rows"]] == [True, False], measured["rows"]
    assert measured["rows"][1]["ratio"] > 10 * control_arm.RATIO_LIMIT
