"""The shared training loop with each port: log schema, resume, NaN stop, atomic checkpoints."""
import copy
import dataclasses
import json
import os

import numpy as np
import pytest

from gfocal import engine
from gfocal.engine import TrainRun
from gfocal.config import from_dict
from gfocal.runlog import NonFiniteLoss
from gfocal.ports import FRAMEWORKS
from gfocal.checkpoint_io import load_checkpoint

LOG_KEYS = {"iter", "epoch", "lr", "loss", "loss_cls", "loss_bbox", "loss_dfl", "time",
            "data_time"}


@pytest.fixture(scope="module")
def cfg(tiny_coco, tiny_model):
    return from_dict({"model": tiny_model,
                      "data": dict(root=tiny_coco, img_scale=[96, 96], batch_size=2),
                      "optim": dict(warmup_iters=5, epochs=1),
                      "train": dict(eval_interval=0)}, source="tiny test config")


@pytest.fixture(scope="module")
def init_weights(cfg, tmp_path_factory):
    """One initialisation for every run of this module (both ports)."""
    from gfocal.pytorch.checkpoint import state_dict_numpy
    from gfocal.checkpoint_io import write
    _, model = engine.build_model(cfg, "torch")
    path = str(tmp_path_factory.mktemp("init") / "init.pth")
    write(path, state_dict_numpy(model), "torch")
    return path


def train(cfg, framework, work_dir, **choices):
    """engine.train of one TrainRun, without the progress bar."""
    return engine.train(TrainRun(cfg, framework, str(work_dir), progress=False, **choices))


def read_log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_log_schema_and_checkpoint(port, cfg, init_weights, tmp_path):
    out = train(cfg, port.FRAMEWORK, tmp_path, max_iters=2, init_weights=init_weights,
                keep_model=True)
    records = read_log(out.log)
    assert [r["iter"] for r in records] == [1, 2]
    assert all(set(r) == LOG_KEYS for r in records)
    assert records[0]["lr"] < records[1]["lr"]  # warmup
    assert os.path.isfile(out.checkpoint)
    meta = load_checkpoint(out.checkpoint, port, out.model)
    assert meta["iter"] == 2 and meta["framework"] == port.FRAMEWORK


def test_resume_gives_the_same_next_loss(port, cfg, init_weights, tmp_path):
    straight = train(cfg, port.FRAMEWORK, tmp_path / "a", max_iters=3,
                     init_weights=init_weights)
    first = train(cfg, port.FRAMEWORK, tmp_path / "b", max_iters=2, init_weights=init_weights)
    resumed = train(cfg, port.FRAMEWORK, tmp_path / "b", max_iters=3, resume=first.checkpoint)
    a, b = read_log(straight.log), read_log(resumed.log)
    assert [r["iter"] for r in b] == [1, 2, 3]  # appended, not overwritten
    for key in ("loss", "loss_cls", "loss_bbox", "loss_dfl", "lr"):
        assert b[2][key] == pytest.approx(a[2][key], rel=1e-6, abs=1e-9), key


def test_resume_mid_epoch_with_worker_processes(torch_port, cfg, init_weights, tmp_path):
    """Two loader workers and a resume in the middle of an epoch (iteration 2 of 4) give
    exactly the losses of one straight run without workers."""
    with_workers = copy.deepcopy(cfg)
    with_workers["data"]["workers"] = 2
    straight = train(cfg, "torch", tmp_path / "a", max_iters=3, init_weights=init_weights)
    first = train(with_workers, "torch", tmp_path / "b", max_iters=2,
                  init_weights=init_weights, device="cpu")
    resumed = train(with_workers, "torch", tmp_path / "b", max_iters=3,
                    resume=first.checkpoint)
    keys = ("loss", "loss_cls", "loss_bbox", "loss_dfl", "lr")
    assert [[r[k] for k in keys] for r in read_log(resumed.log)] == \
        [[r[k] for k in keys] for r in read_log(straight.log)]


def test_nan_loss_stops_with_the_iteration(port, cfg, init_weights, tmp_path, monkeypatch):
    real_step = port.train.train_step
    calls = []

    def step(model, optimizer, batch, scaler=None):
        losses = real_step(model, optimizer, batch, scaler)
        calls.append(1)
        return dict(losses, loss=float("nan")) if len(calls) == 2 else losses

    monkeypatch.setattr(port.train, "train_step", step)
    with pytest.raises(NonFiniteLoss, match="iteration 2"):
        train(cfg, port.FRAMEWORK, tmp_path, max_iters=5, init_weights=init_weights)
    assert [r["iter"] for r in read_log(tmp_path / f"log_{port.FRAMEWORK}.jsonl")] == [1]


@pytest.mark.ci  # two training runs and a resume per direction (about 9 s)
@pytest.mark.parametrize("saved_by, resumed_by", [FRAMEWORKS, FRAMEWORKS[::-1]])
def test_resume_from_the_other_ports_checkpoint(cfg, init_weights, tmp_path, saved_by,
                                                resumed_by):
    """Weights and momentum convert: the other port continues as the saving port would."""
    from gfocal.checkpoint_io import read_training_state
    from gfocal.ports import load_port
    first = train(cfg, saved_by, tmp_path / "a", max_iters=2, init_weights=init_weights)
    port = load_port(resumed_by)
    model = port.build_detector(cfg["model"])
    optimizer = port.train.build_optimizer(model, cfg["optim"])
    meta = engine.resume_training(port, model, optimizer, first.checkpoint, cfg)
    saved = read_training_state(first.checkpoint)
    assert meta["iter"] == 2 and len(saved["momentum"]) > 10
    restored = port.checkpoint.optimizer_state_numpy(model, optimizer)
    for name, value in saved["momentum"].items():
        assert np.array_equal(restored[name], value), name
    same = train(cfg, saved_by, tmp_path / "c", max_iters=3, resume=first.checkpoint)
    other = train(cfg, resumed_by, tmp_path / "b", max_iters=3, resume=first.checkpoint)
    a, b = read_log(same.log)[-1], read_log(other.log)[-1]
    assert a["iter"] == b["iter"] == 3
    # one forward of each port on identical weights and batch: the parity suite's loss
    # tolerance (1e-4 relative) bounds what they may differ by
    for key in ("loss", "loss_cls", "loss_bbox", "loss_dfl"):
        assert b[key] == pytest.approx(a[key], rel=1e-4), key


def test_resuming_a_finished_run_trains_and_writes_nothing(port, cfg, init_weights, tmp_path):
    done = train(cfg, port.FRAMEWORK, tmp_path / "a", max_iters=2, init_weights=init_weights)
    again = train(cfg, port.FRAMEWORK, tmp_path / "b", max_iters=2, resume=done.checkpoint)
    assert again.complete and again.checkpoint == done.checkpoint
    assert again.log is None and not (tmp_path / "b").exists()
    # plain values only: no model or port is kept alive unless the run asks (keep_model)
    assert done.model is None and done.port is None
    assert json.loads(json.dumps(dataclasses.asdict(done)))["iters"] == 2


def with_lr(cfg, lr):
    """cfg with optim.lr set past the config check (a NaN there is the config's to refuse;
    here it stands for weights that a step turns non-finite)."""
    changed = copy.deepcopy(cfg)
    changed["optim"]["lr"] = lr
    return changed


def test_weights_made_nan_by_a_step_are_never_saved(port, cfg, init_weights, tmp_path):
    """lr NaN: the step's loss is finite (the weights it started from were), the weights after
    it are not: one line naming the iteration, no checkpoint written (before: exit 0 with a
    checkpoint of 86 NaN tensors)."""
    with pytest.raises(NonFiniteLoss) as stop:
        train(with_lr(cfg, float("nan")), port.FRAMEWORK, tmp_path, max_iters=1,
              init_weights=init_weights)
    line = str(stop.value)
    assert "\n" not in line and f"[{port.FRAMEWORK}] training stopped at iteration 1" in line
    assert line.endswith("no checkpoint written")
    assert sorted(os.listdir(tmp_path)) == [f"log_{port.FRAMEWORK}.jsonl"]


def test_a_diverging_run_stops_naming_the_checkpoint_kept(port, cfg, init_weights, tmp_path):
    """lr 1e6 from a checkpoint: NonFiniteLoss (the port's outputs or losses, caught before the
    loss functions crash on them) naming the iteration and the checkpoint kept, unchanged."""
    first = train(cfg, port.FRAMEWORK, tmp_path, max_iters=1, init_weights=init_weights)
    before = open(first.checkpoint, "rb").read()
    with pytest.raises(NonFiniteLoss) as stop:
        train(with_lr(cfg, 1e6), port.FRAMEWORK, tmp_path, max_iters=4,
              resume=first.checkpoint)
    line = str(stop.value)
    assert "\n" not in line and "training stopped at iteration" in line
    assert line.endswith(f"the last checkpoint, {first.checkpoint} (iteration 1), is kept")
    assert open(first.checkpoint, "rb").read() == before


def test_eval_interval_0_evaluates_once_at_the_end(torch_port, cfg, init_weights, tmp_path):
    """As config.py documents it (before: never)."""
    out = train(cfg, "torch", tmp_path, init_weights=init_weights)  # 1 epoch
    assert cfg["train"]["eval_interval"] == 0 and cfg["optim"]["epochs"] == 1
    assert [ev["epoch"] for ev in out.evals] == [1] and len(out.evals[0]["stats"]) == 12
