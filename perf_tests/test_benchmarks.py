"""pytest-benchmark cases, PyTorch and Jittor side by side (benchmark.group = case).

Cases: backbone forward, full forward, forward + backward, one training step (loss,
backward, SGD) with its peak memory, inference (forward + decoding + NMS), and the last
two again with both ports interleaved call by call (`paired`). Batch 1 and 2 (and 8 for
the GPU training step); a small input on the CPU, the paper's 800x1333 on a GPU (marked
`gpu`, device `cuda`), there in full fp32 and, for PyTorch, again with TF32 (id `gpu-tf32`);
the paired cases in fp32 on both. `--amp off,bf16,fp16` times every case again in each
mixed precision given (gfocal/precision.py; group label and extra_info `precision`; default
off). `--tuning default,tuned` times every case again in each speed setting given
(gfocal/tuning.py; group label and extra_info `setting`; default: default). Warm-up rounds
keep Jittor's compilation, torch.compile's and both ports' caches out of the timings; the
first call of each timed case is timed apart (extra_info `first_call_s`). With
--benchmark-disable every case runs once as a smoke test.
Workflow and baselines: perf_tests/README.md.
"""
import contextlib
import os
import time

import numpy as np
import pytest

from perf_tests import measure
from perf_tests.measure import CPU_SIZE, GPU_SIZE, SMOKE_SIZE, make_batch, model_config
from gfocal.precision import slow_on_cpu
from gfocal.runtime import num_threads

# (device kind, TF32): the GPU cases (device "cuda"; the ids say gpu) in full fp32 and with
# PyTorch's TF32 convolutions and matmuls, labelled in extra_info (parity_tests/TOLERANCES.md,
# "GPU numerics").
PLACEMENTS = [pytest.param(("cpu", False), id="cpu"),
              pytest.param(("cuda", False), id="gpu", marks=pytest.mark.gpu),
              pytest.param(("cuda", True), id="gpu-tf32", marks=pytest.mark.gpu)]
BATCHES = [1, 2]
TRAIN_BATCHES = [1, 2, 8]  # 8: a GPU case only (the paper trains 2 per GPU; 8 probes memory)
WARMUP_ROUNDS = 2        # Jittor compiles on the first call and settles its caches on the next
ROUNDS = {"backbone_forward": 8, "forward": 8, "forward_backward": 5, "train_step": 5,
          "inference": 8, "paired": 6}


# PyTorch's CPU float16 convolution backward has no oneDNN kernel here: 2805 ms against
# 19.8 ms in float32 for one 2x128x64x64 3x3 convolution (measured 2026-12-04), hours for
# the R50 cases, so they are not run (the forward-only cases are).
TORCH_CPU_FP16_BACKWARD = ("forward_backward", "train_step")


def pytest_generate_tests(metafunc):
    if "precision" in metafunc.fixturenames:  # --amp, checked by the root conftest
        metafunc.parametrize("precision", metafunc.config.getoption("--amp") or ["off"])
    if "setting" in metafunc.fixturenames:  # --tuning, checked by the root conftest
        metafunc.parametrize("setting", metafunc.config.getoption("--tuning") or ["default"])


def label_of(device, tf32=False, precision="off", setting="default"):
    """The device part of a group name: cpu, gpu-tf32, cpu-bf16, cpu-tuned, ..."""
    return (device + ("-tf32" if tf32 else "") + ("" if precision == "off" else f"-{precision}")
            + ("" if setting == "default" else f"-{setting}"))


def rounds_for(case):
    """Timed rounds: the case's default, or GFOCAL_PERF_ROUNDS for every case."""
    return int(os.environ.get("GFOCAL_PERF_ROUNDS", ROUNDS[case]))


def input_size(device, timed=True):
    if not timed:  # --benchmark-disable: one untimed call per case, a smoke test
        return SMOKE_SIZE
    return CPU_SIZE if device == "cpu" else GPU_SIZE


class Case:
    """One benchmark: model, batch and bookkeeping for a (port, device, batch) triple."""

    def __init__(self, name, port, placement, batch_size, model_cache, benchmark,
                 precision="off", setting="default"):
        self.name, self.port, (self.device, tf32) = name, port, placement
        self.precision = precision
        h, w = input_size(self.device, benchmark.enabled)
        self.batch = make_batch(batch_size, (h, w), model_config()["num_classes"])
        self.model = model_cache.get(port, str(port.current_device()))
        self.benchmark = benchmark
        benchmark.group = (f"{name} {label_of(self.device, tf32, precision, setting)} "
                           f"{h}x{w} b{batch_size}")
        benchmark.extra_info.update(measure.framework_info(port, self.device),
                                    case=name, input_size=f"{h}x{w}", batch=batch_size,
                                    precision=precision,
                                    **measure.setting_info(port, setting, self.device))

    def imgs(self):
        return self.port.tensor(self.batch["imgs"])  # on the port's device

    def run(self, fn):
        """Time fn (warm-up first); the device is synchronised inside the timed call. The
        first call (compilation for this shape, caches) is timed apart: first_call_s."""
        def timed():
            out = fn()
            self.port.sync()
            return out
        warmup = WARMUP_ROUNDS
        if self.benchmark.enabled:
            start = time.perf_counter()
            timed()
            self.note(first_call_s=time.perf_counter() - start)
            warmup -= 1
        return self.benchmark.pedantic(timed, rounds=rounds_for(self.name),
                                       warmup_rounds=warmup, iterations=1)

    def note(self, **info):
        self.benchmark.extra_info.update(info)


@pytest.fixture(params=PLACEMENTS)
def placement(request):
    return request.param


def skip_reason(framework, kind, tf32, precision, name):
    """Why a (framework, device kind, TF32, precision) case of `name` does not run, or None."""
    if tf32 and framework == "jittor":
        return ("TF32 is PyTorch's switch: Jittor's use_tensorcore also lets cuDNN convert "
                "fp32 to fp16 (CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION), not TF32 alone")
    if tf32 and precision != "off":
        return "TF32 applies to float32 convolutions only"
    slow = slow_on_cpu(framework, precision) if kind == "cpu" else None
    if slow and (framework == "jittor" or name in TORCH_CPU_FP16_BACKWARD):
        return f"{slow}: not timed"
    return None


@pytest.fixture
def case_factory(port, placement, precision, setting, model_cache, benchmark, device_option):
    """Case(name, batch) with the port on the case's device, in the case's precision and
    speed setting for the whole test (--device picks which cases run and which GPU); a port
    that cannot use them skips, saying why."""
    from gfocal.device import DeviceError
    kind, tf32 = placement
    if device_option is not None and (device_option == "cpu") != (kind == "cpu"):
        pytest.skip(f"a {kind} case; --device {device_option}")
    target = "cpu" if kind == "cpu" else device_option or "cuda"
    with contextlib.ExitStack() as scope:
        try:
            scope.enter_context(port.on_device(target, tf32=tf32, deterministic=False))
            scope.enter_context(port.precision.mixed_precision(precision, target))
            scope.enter_context(port.tuning.speed_setting(setting, target))
        except DeviceError as exc:
            pytest.skip(str(exc))

        def make(name, batch_size):
            reason = skip_reason(port.FRAMEWORK, kind, tf32, precision, name)
            if reason:
                pytest.skip(reason)
            return Case(name, port, placement, batch_size, model_cache, benchmark, precision,
                        setting)
        yield make


def _total(outputs):
    cls_scores, bbox_preds = outputs
    return sum(c.sum() for c in cls_scores) + sum(r.sum() for r in bbox_preds)


@pytest.mark.parametrize("batch_size", BATCHES)
def test_backbone_forward(case_factory, batch_size):
    case = case_factory("backbone_forward", batch_size)
    case.model.eval()
    imgs = case.imgs()

    def forward():
        with case.port.no_grad(), case.port.precision.autocast(imgs):
            return case.model.backbone(imgs)

    feats = case.run(forward)
    note_peak_memory(case, forward)
    h, w = case.batch["imgs"].shape[2:]
    assert [tuple(f.shape) for f in feats] == [
        (batch_size, c, -(-h // s), -(-w // s)) for c, s in ((512, 8), (1024, 16), (2048, 32))]


@pytest.mark.parametrize("batch_size", BATCHES)
def test_forward(case_factory, batch_size):
    case = case_factory("forward", batch_size)
    case.model.eval()
    imgs = case.imgs()

    def forward():
        with case.port.no_grad(), case.port.precision.autocast(imgs):
            return case.model(imgs)

    cls_scores, bbox_preds = case.run(forward)
    note_peak_memory(case, forward)
    assert len(cls_scores) == len(bbox_preds) == 5
    assert tuple(cls_scores[0].shape)[:2] == (batch_size, 80)
    assert tuple(bbox_preds[0].shape)[:2] == (batch_size, 68)


@pytest.mark.parametrize("batch_size", BATCHES)
def test_forward_backward(case_factory, batch_size):
    """Network autograd only (sum of the outputs): no targets, loss or optimizer."""
    case = case_factory("forward_backward", batch_size)
    case.model.train()
    imgs = case.imgs()
    params = case.port.trainable_parameters(case.model)

    def forward_backward():
        with case.port.precision.autocast(imgs):  # native mode: the forward under autocast
            outputs = case.model(imgs)
        return case.port.gradients(_total(outputs), params)

    grads = case.run(forward_backward)
    note_peak_memory(case, forward_backward)
    assert len(grads) == len(params)
    assert np.isfinite(case.port.numpy(grads[-1])).all()


def train_step_fn(port, model, batch):
    """One training step in the port's current precision (fp16: with its loss scaler)."""
    model.train()
    train = port.train
    optimizer = train.build_optimizer(model, {"lr": 1e-4, "momentum": 0.9,
                                              "weight_decay": 1e-4})
    train.set_lr(optimizer, 1e-4)
    scaler = port.precision.loss_scaler(port.precision.current_precision(),
                                        port.current_device())
    return lambda: train.train_step(model, optimizer, batch, scaler)


def inference_fn(port, model, batch):
    model.eval()
    return lambda: model.predict(batch)


STEPS = {"train_step": train_step_fn, "inference": inference_fn}


def note_peak_memory(case, step):
    """The peak memory of one more, untimed call of `step`, into extra_info."""
    if case.benchmark.enabled:
        memory = measure.measure_peak_memory(case.port, case.device, step)
        case.note(**{k: None if v is None else round(v, 1) for k, v in memory.items()})


@pytest.mark.parametrize("batch_size", TRAIN_BATCHES)
def test_train_step(case_factory, placement, batch_size):
    """port.train.train_step: loss (targets included), backward, SGD update; peak memory."""
    if batch_size not in BATCHES and placement[0] == "cpu":
        pytest.skip(f"batch {batch_size} is a GPU case")
    case = case_factory("train_step", batch_size)
    step = train_step_fn(case.port, case.model, case.batch)
    losses = case.run(step)
    assert set(losses) >= {"loss", "loss_cls", "loss_bbox", "loss_dfl"}
    assert np.isfinite(losses["loss"])
    note_peak_memory(case, step)


@pytest.mark.parametrize("batch_size", BATCHES)
def test_inference(case_factory, batch_size):
    """model.predict: forward, integral decoding, nms_pre, score threshold, batched NMS; peak
    memory."""
    case = case_factory("inference", batch_size)
    step = inference_fn(case.port, case.model, case.batch)
    detections = case.run(step)
    assert len(detections) == batch_size
    max_per_img = model_config()["max_per_img"]
    counts = [len(d["scores"]) for d in detections]
    assert all(0 < n <= max_per_img for n in counts), counts
    case.note(detections_per_image=counts)
    stats = case.benchmark.stats
    if stats:
        case.note(per_image_min_s=stats.stats.min / batch_size,
                  per_image_median_s=stats.stats.median / batch_size,
                  fps_median=batch_size / stats.stats.median)
    note_peak_memory(case, step)


@pytest.mark.parametrize("batch_size", BATCHES)
@pytest.mark.parametrize("name", ["train_step", "inference"])
def test_paired(name, batch_size, placement, precision, setting, torch_port, jittor_port,
                model_cache, benchmark, device_option):
    """One PyTorch and one Jittor call per round, alternating which goes first, so that load
    drifting over minutes on a shared machine hits both alike. The benchmark times a pair;
    extra_info splits it, holds the median of the per-pair Jittor/PyTorch ratios and each
    port's numerics flags. On the CPU and, in full fp32, on a GPU."""
    from gfocal.device import DeviceError
    kind, tf32 = placement
    if tf32:
        pytest.skip("paired cases compare the ports in full fp32")
    if device_option is not None and (device_option == "cpu") != (kind == "cpu"):
        pytest.skip(f"a {kind} case; --device {device_option}")
    target = "cpu" if kind == "cpu" else device_option or "cuda"
    reasons = [skip_reason(port.FRAMEWORK, kind, tf32, precision, name)
               for port in (torch_port, jittor_port)]
    if any(reasons):
        pytest.skip(next(r for r in reasons if r))
    h, w = input_size(kind, benchmark.enabled)
    batch = make_batch(batch_size, (h, w), model_config()["num_classes"])
    ports = (torch_port, jittor_port)
    with contextlib.ExitStack() as scope:
        for port in ports:  # both ports on the case's device and precision for the whole test
            try:
                scope.enter_context(port.on_device(target, deterministic=False))
                scope.enter_context(port.precision.mixed_precision(precision, target))
                scope.enter_context(port.tuning.speed_setting(setting, target))
            except DeviceError as exc:
                pytest.skip(str(exc))
        steps = [STEPS[name](port, model_cache.get(port, str(port.current_device())), batch)
                 for port in ports]
        times = {port.FRAMEWORK: [] for port in ports}

        def pair():
            first = len(times["torch"]) % 2  # alternate which port goes first
            for i in (first, 1 - first):
                framework = ports[i].FRAMEWORK
                start = time.perf_counter()
                steps[i]()
                ports[i].sync()
                times[framework].append(time.perf_counter() - start)

        rounds = rounds_for("paired")
        benchmark.group = (f"paired {name} {label_of(kind, precision=precision, setting=setting)}"
                           f" {h}x{w} b{batch_size}")
        benchmark.extra_info.update(framework="paired", device=kind, threads=num_threads(),
                                    case=name, input_size=f"{h}x{w}", batch=batch_size,
                                    precision=precision, setting=setting,
                                    **{f"{port.FRAMEWORK}_info": dict(
                                        measure.framework_info(port, kind),
                                        **measure.setting_info(port, setting, kind))
                                       for port in ports})
        benchmark.pedantic(pair, rounds=rounds, warmup_rounds=WARMUP_ROUNDS, iterations=1)
    timed = {fw: t[-rounds:] for fw, t in times.items()}  # the warm-up pairs dropped
    assert len(timed["torch"]) == len(timed["jittor"]) >= 1
    assert all(t > 0 for t in timed["torch"] + timed["jittor"])
    benchmark.extra_info.update(torch_times=timed["torch"], jittor_times=timed["jittor"],
                                **measure.paired_ratios(timed["torch"], timed["jittor"]))
    if benchmark.enabled:  # each port's first call: compilation for this shape, caches
        benchmark.extra_info.update({f"{fw}_first_call_s": t[0] for fw, t in times.items()})
