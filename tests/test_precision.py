"""The mixed-precision option (gfocal/precision.py) and each port's side of it: the loss
scale against torch.amp.GradScaler, skipped steps, the option's bad values, training in fp16
with its loss scale logged, checkpointed and resumed; native mode's training step."""
import json

import numpy as np
import pytest

from gfocal import engine
from gfocal.config import ConfigError, from_dict
from gfocal.device import DeviceError
from gfocal.engine import TrainRun
from gfocal.precision import (AMP_CHOICES, BACKOFF_FACTOR, EPS, GROWTH_INTERVAL, INIT_SCALE,
                              NATIVE, LossScale, PrecisionError, amp_list, check_amp,
                              checked_scale_state, half_type)

# overflow at steps 1999 and 4004-4005: a backoff, a growth after 2000 good steps, two
# backoffs in a row
OVERFLOWS = {1999, 4004, 4005}
STEPS = 4010


def test_shared_loss_scale_follows_torch_grad_scaler_step_for_step(torch_port):
    """The Jittor port's scale (the shared LossScale) against PyTorch's GradScaler, driven
    by the same overflow pattern through a one-parameter model."""
    import torch
    w = torch.ones(1, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.0)
    scaler = torch_port.precision.loss_scaler("fp16")
    shared = LossScale()
    for step in range(STEPS):
        factor = torch.tensor(np.inf if step in OVERFLOWS else 1.0)
        optimizer.zero_grad()
        skipped = scaler.step((w * factor).sum(), optimizer)
        shared.update(step in OVERFLOWS)
        assert skipped == (step in OVERFLOWS), step
        assert scaler.state() == shared.state(), step
    assert shared.skipped == len(OVERFLOWS)
    # 512 -> 256 at 1999, doubled 2000 good steps later (3999), halved twice at 4004-4005
    assert shared.scale == INIT_SCALE * BACKOFF_FACTOR ** 3 * 2
    assert shared.good_steps == STEPS - 1 - max(OVERFLOWS)


def test_loss_scaler_unscales_and_skips_an_overflowing_step(port):
    """Both ports: a finite step updates by the unscaled gradient; an inf gradient leaves
    the weight as it was, counts a skip and halves the scale."""
    w = port.tensor(np.ones(2, np.float32), requires_grad=True)
    optimizer = port.train.build_optimizer(_Holder(w), dict(lr=0.5, momentum=0.0,
                                                            weight_decay=0.0))
    scaler = port.precision.loss_scaler("fp16")
    factor = port.tensor(np.array([3.0, -1.0], np.float32))
    assert not scaler.step((w * factor).sum(), optimizer)
    np.testing.assert_array_equal(port.numpy(w), [1 - 0.5 * 3, 1 + 0.5])
    overflow = port.tensor(np.array([np.inf, 1.0], np.float32))
    assert scaler.step((w * overflow).sum(), optimizer)
    np.testing.assert_array_equal(port.numpy(w), [1 - 0.5 * 3, 1 + 0.5])
    assert scaler.state() == {"scale": INIT_SCALE * BACKOFF_FACTOR, "good_steps": 0,
                              "skipped": 1}
    assert port.precision.loss_scaler("bf16") is None
    assert port.precision.loss_scaler("off") is None


class _Holder:
    """The smallest thing build_optimizer and train_step take: one trainable parameter, and
    as its loss the sum of the parameter times the batch."""

    def __init__(self, w):
        self.w = w

    def named_parameters(self):
        return [("w", self.w)]

    def parameters(self):
        return [self.w]

    def state_dict(self):
        return {"w": self.w}

    def loss(self, factor):
        return {"loss": (self.w * factor).sum()}


def test_the_step_after_an_overflow_is_taken(port):
    """Both ports, through their own train_step: step 1 overflows (an inf gradient) and is
    skipped; the steps after it update by their own unscaled gradients only. Caught here:
    a scaler that keeps the overflowed step's gradients, which Jittor's optimizer.backward
    then adds the next step's to (inf again: every later step skipped)."""
    w = port.tensor(np.ones(2, np.float32), requires_grad=True)
    model = _Holder(w)
    optimizer = port.train.build_optimizer(model, dict(lr=0.5, momentum=0.0,
                                                       weight_decay=0.0))
    scaler = port.precision.loss_scaler("fp16")
    port.train.train_step(model, optimizer, port.tensor(np.array([np.inf, 1.0], np.float32)),
                          scaler)
    np.testing.assert_array_equal(port.numpy(w), [1.0, 1.0])
    for step in (2, 3):
        port.train.train_step(model, optimizer, port.tensor(np.array([3.0, -1.0], np.float32)),
                              scaler)
        np.testing.assert_array_equal(port.numpy(w), [1 - 0.5 * 3 * (step - 1),
                                                      1 + 0.5 * (step - 1)],
                                      err_msg=f"step {step}, after an overflow at step 1")
    assert scaler.state() == {"scale": INIT_SCALE * BACKOFF_FACTOR, "good_steps": 2,
                              "skipped": 1}


def test_half_op_leaves_float32_off_and_float64_alone(port):
    x = np.array([1.0 + 2.0 ** -10, 3.0], np.float32)  # not a bf16 value
    double = lambda t: t * 2  # noqa: E731
    assert port.numpy(port.precision.half_op(double, port.tensor(x)))[0] == 2 * x[0]
    with port.precision.mixed_precision("bf16"):
        rounded = port.numpy(port.precision.half_op(double, port.tensor(x)))
        kept = port.numpy(port.precision.half_op(double, port.tensor(x.astype(np.float64))))
    assert rounded.dtype == np.float32 and rounded[0] == 2.0
    assert kept.dtype == np.float64 and kept[0] == 2 * np.float64(x[0])
    assert port.precision.current_precision() == "off"


@pytest.mark.parametrize("amp", ["fp16", "native-fp16"])
def test_a_precision_the_device_cannot_run_is_one_line(port, monkeypatch, amp):
    def broken(*args):
        raise RuntimeError("no kernel for this dtype\nsecond line of the framework's message")
    monkeypatch.setattr(port.precision._state, "probe", broken)
    monkeypatch.setattr(port.precision._state, "runnable", set())  # not probed yet
    with pytest.raises(DeviceError) as err:
        port.precision.use_precision(amp)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--amp {amp}:")
    assert "no kernel for this dtype" in message
    assert port.precision.current_precision() == "off"


def test_each_precision_names_the_epsilon_of_its_compute_type():
    """EPS (the control arm's rounding unit) is the machine epsilon of the type each
    precision computes its convolutions in."""
    import torch
    compute_type = {"off": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    for amp in AMP_CHOICES:
        want = torch.finfo(compute_type[half_type(amp) or "off"]).eps
        assert EPS[amp] == want, (amp, EPS[amp], want)


def test_check_amp_and_the_config_key():
    assert [check_amp(a) for a in ("off", "bf16", "fp16")] == ["off", "bf16", "fp16"]
    with pytest.raises(PrecisionError, match="--amp = 'fp32' is not a precision"):
        check_amp("fp32")
    assert from_dict({"train": {"amp": "bf16"}})["train"]["amp"] == "bf16"
    with pytest.raises(ConfigError, match="my.py: 'train.amp' = 'half' is not a precision"):
        from_dict({"train": {"amp": "half"}}, source="my.py")


def test_the_pytest_option_takes_a_checked_list():
    assert amp_list("off, bf16,fp16,") == ["off", "bf16", "fp16"]
    with pytest.raises(PrecisionError, match="--amp = 'fp8' is not a precision"):
        amp_list("bf16,fp8")


def test_checked_scale_state():
    # a fresh run's state, and one after ten back-offs from 512 (a scale below 1)
    for good in ({"scale": 256.0, "good_steps": 3, "skipped": 1},
                 {"scale": INIT_SCALE, "good_steps": 0, "skipped": 0},
                 {"scale": 0.5, "good_steps": 0, "skipped": 10}):
        assert checked_scale_state(good, "a.pth") == good
    assert checked_scale_state(None, "a.pth") is None
    for bad in ({"scale": -1.0, "good_steps": 0, "skipped": 0},
                {"scale": 0.0, "good_steps": 0, "skipped": 0}, {"scale": 1.0},
                {"scale": "1", "good_steps": 0, "skipped": 0}, [1, 2, 3],
                {"scale": 1.0, "good_steps": True, "skipped": 0}):
        with pytest.raises(PrecisionError, match="a.pth: meta 'loss_scale'"):
            checked_scale_state(bad, "a.pth")


@pytest.fixture(scope="module")
def fp16_cfg(tiny_coco, tiny_model):
    return from_dict({"model": tiny_model,
                      "data": dict(root=tiny_coco, img_scale=[64, 64], batch_size=2),
                      "optim": dict(warmup_iters=5, epochs=1),
                      "train": dict(eval_interval=0, amp="fp16")}, source="tiny fp16 config")


@pytest.mark.ci  # an fp16 run, its checkpoint and a resume (about 9 s in the torch port)
def test_fp16_training_logs_checkpoints_and_resumes_its_loss_scale(port, fp16_cfg, tmp_path,
                                                                   capsys):
    from gfocal.checkpoint_io import read_training_state
    first = engine.train(TrainRun(fp16_cfg, port.FRAMEWORK, str(tmp_path), max_iters=2,
                                  progress=False))
    warned = "PyTorch's CPU float16 convolution backward is about 140x slower"
    assert (warned in capsys.readouterr().err) is (port.FRAMEWORK == "torch")
    with open(first.log) as f:
        records = [json.loads(line) for line in f]
    assert [(r["loss_scale"], r["skipped_steps"]) for r in records] == [(INIT_SCALE, 0)] * 2
    meta = read_training_state(first.checkpoint, num_classes=6)["meta"]
    assert meta["amp"] == "fp16"
    assert meta["loss_scale"] == {"scale": INIT_SCALE, "good_steps": 2, "skipped": 0}
    again = engine.train(TrainRun(fp16_cfg, port.FRAMEWORK, str(tmp_path), max_iters=3,
                                  resume=first.checkpoint, progress=False))
    meta = read_training_state(again.checkpoint, num_classes=6)["meta"]
    assert meta["loss_scale"] == {"scale": INIT_SCALE, "good_steps": 3, "skipped": 0}
    assert port.precision.current_precision() == "fp16"  # the run's; the fixture resets it


def test_growth_interval_is_gradscalers_default():
    """The constants are PyTorch's GradScaler defaults but for the start (mmcv's 512)."""
    import inspect

    import torch
    defaults = inspect.signature(torch.amp.GradScaler).parameters
    assert GROWTH_INTERVAL == defaults["growth_interval"].default
    assert BACKOFF_FACTOR == defaults["backoff_factor"].default
    assert INIT_SCALE == 512.0 and defaults["init_scale"].default == 2.0 ** 16


def _bf16_representable(values):
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return bool(np.all(bits & 0xFFFF == 0))


@pytest.mark.parametrize("amp", ["off", "bf16", "native-bf16"])
def test_a_run_of_the_config_computes_its_convolutions_in_its_precision(port, tiny_config,
                                                                        amp):
    """engine.build_model (what gfocal test and compare use) applies train.amp: in bf16 and
    native-bf16 a convolution's output (the FPN lateral, before any other op) holds bf16
    values only."""
    from gfocal.compare import comparison_config
    from gfocal.data.loader import build_dataloader
    cfg = comparison_config(tiny_config, amp=amp)
    assert cfg["train"]["amp"] == amp
    with pytest.raises(PrecisionError):
        comparison_config(tiny_config, amp="fp64")
    port, model = engine.build_model(cfg, port.FRAMEWORK, device="cpu")
    with build_dataloader(cfg, "val") as loader:
        batch = next(iter(loader))
    with port.probes.capture() as probes:
        detections = model.predict(batch)
    assert len(detections) == len(batch["img_metas"])
    assert _bf16_representable(probes["neck.lateral.0"]) is (half_type(amp) == "bf16")


def _dtype_name(dtype):
    return str(dtype).split(".")[-1]  # torch.bfloat16, bfloat16 -> bfloat16


@pytest.mark.parametrize("amp", [pytest.param(a, marks=pytest.mark.ci) if half_type(a) == "fp16"
                                 else a for a in NATIVE])  # CPU fp16: seconds a step
def test_native_mode_trains_in_the_half_type_with_float32_weights_and_losses(port, tiny_model,
                                                                             amp):
    """A native training step: the convolutions inside it compute in the half type (their
    outputs' dtype, seen by forward hooks), the losses are float32 and finite (force_fp32),
    the weights stay float32 and move, and prediction runs."""
    from parity_tests.cases import make_case
    cfg = from_dict({"model": tiny_model}, source="tiny config")
    port.seed(0)
    model = port.build_detector(cfg["model"])
    model.train()
    optimizer = port.train.build_optimizer(model, cfg["optim"])
    batch = make_case("random_b2", num_classes=tiny_model["num_classes"])
    convs = {"neck": model.neck.lateral_convs[0].conv, "head": model.bbox_head.gfl_cls}
    seen = {}
    for name, conv in convs.items():
        conv.register_forward_hook(
            lambda module, inputs, output, name=name: seen.update({name: output.dtype}))
    before = {n: port.numpy(p).copy() for n, p in port.named_trainable_parameters(model)}
    with port.precision.mixed_precision(amp):
        losses = port.train.train_step(model, optimizer, batch,
                                       port.precision.loss_scaler(amp))
        detections = model.predict(batch)
    want = {"bf16": "bfloat16", "fp16": "float16"}[half_type(amp)]
    assert {n: _dtype_name(d) for n, d in seen.items()} == {"neck": want, "head": want}
    assert all(np.isfinite(v) for v in losses.values()), losses
    with port.precision.mixed_precision(amp):  # force_fp32: the head's outputs in float32
        outputs = model.outputs(model, port.tensor(batch["imgs"]))
    assert {_dtype_name(t.dtype) for level in outputs for t in level} == {"float32"}
    after = dict(port.named_trainable_parameters(model))
    assert {str(port.numpy(p).dtype) for p in after.values()} == {"float32"}
    assert any(not np.array_equal(port.numpy(after[n]), before[n]) for n in before)
    assert len(detections) == 2 and all(np.isfinite(d["boxes"]).all() for d in detections)


def _run_precision_cross(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "scripts/precision_cross.py", *args],
                          capture_output=True, text=True, timeout=600)


def test_precision_cross_refuses_a_bad_precision_in_one_line():
    run = _run_precision_cross("--amp", "off,fp8")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        "precision_cross: error: --amp = 'fp8' is not a precision (choose off, bf16, fp16, "
        "native-bf16, native-fp16)")


@pytest.mark.ci  # both ports' small model, twice (about 20 s)
def test_native_bf16_puts_the_ports_further_apart_than_float32():
    """scripts/precision_cross.py: in float32 the ports agree to float32 noise; in native
    bf16 each framework's own half kernels (Jittor's CPU ones sum in bf16) move them apart
    by orders of magnitude more (measured 2026-12-07: median 4.6e-7 against 0.13)."""
    run = _run_precision_cross("--amp", "off,native-bf16")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[4].strip()
            for line in run.stdout.splitlines() if line.startswith("| ") and "--amp" not in line}
    assert float(rows["off"]) < 1e-5
    assert float(rows["native-bf16"]) > 1e3 * float(rows["off"])
