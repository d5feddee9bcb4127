"""Parity in mixed precision (gfocal/precision.py): both ports in bf16 and in fp16, the
PyTorch port in the same precision as the reference and its half-vs-float64 difference as
the noise (judge.HALF_TARGET / HALF_CAP, TOLERANCES.md "Mixed precision"); and the two
Jittor CPU facts the Jittor port works around, pinned with their measured size.

`--amp` chooses the precisions (default both); the small model, two input cases.
"""
import copy
import functools

import numpy as np
import pytest

from gfocal.precision import INIT_SCALE, POLICY
from gfocal.schedule import learning_rate
from parity_tests import judge
from parity_tests.runs import ParityRuns
from parity_tests.test_backward_optim import optim_rows, step_all
from parity_tests.test_forward import recorded_order

AMP_CASES = ("coco_b2", "random_b1")


def selected_amps(config):
    """The policy's half precisions --amp names (checked by the root conftest and the
    parity conftest; default bf16, fp16)."""
    return [a for a in config.getoption("--amp") or POLICY if a != "off"]


def pytest_generate_tests(metafunc):
    if "amp" in metafunc.fixturenames:
        metafunc.parametrize("amp", selected_amps(metafunc.config), scope="module")
    if "amp_case" in metafunc.fixturenames:
        metafunc.parametrize("amp_case", AMP_CASES)


@pytest.fixture(scope="module")
def amp_runs(amp, runs):
    """The parity runs in `amp`: the session's subjects that offer the policy (Jittor and,
    given --device, the PyTorch port there) against the reference in `amp`."""
    return ParityRuns(runs.cfg, runs.state, runs.reference, runs.subjects, amp=amp)


# PyTorch's CPU half convolution backward must sum in float32 and round once, as the policy
# says, for the PyTorch port to be the reference of the gradient cases. On a CPU without
# AVX512-FP16 (measured 2026-12-04 on an AMD EPYC with AVX512-BF16) its fp16 backward does
# not: 59 % of a 64-channel convolution's input gradient and 27 % of its weight gradient
# differ from the float32 sum rounded once; its bf16 backward 0.01 %, as its forward.
POLICY_BACKWARD_MAX_DIFFERING = 0.01


@functools.cache  # one measurement per precision and session
def backward_off_policy(reference_port, amp):
    """Why PyTorch's CPU `amp` convolution backward cannot be the gradient reference here
    (None: it follows the policy): the fraction of one convolution's input gradient that
    differs from the float32 sum rounded once to the half type."""
    import torch
    half = reference_port.precision.HALF_TYPES[amp]
    rng = np.random.default_rng(7)
    x, w, g = (torch.tensor(rng.standard_normal(shape).astype(np.float32)).to(half)
               for shape in ((2, 64, 16, 16), (64, 64, 3, 3), (2, 64, 16, 16)))
    grads = {}
    for dtype in (half, torch.float32):
        xi = x.to(dtype).detach().requires_grad_()  # a leaf of its own
        torch.nn.functional.conv2d(xi, w.to(dtype), padding=1).backward(g.to(dtype))
        grads[dtype] = xi.grad
    differing = float((grads[half] != grads[torch.float32].to(half)).float().mean())
    if differing <= POLICY_BACKWARD_MAX_DIFFERING:
        return None
    return (f"PyTorch {torch.__version__}'s CPU {amp} convolution backward does not sum in "
            f"float32 on this CPU: {differing:.0%} of a 64-channel convolution's input "
            f"gradient differs from the float32 sum rounded once, so the PyTorch port is no "
            f"reference for the {amp} gradients here (TOLERANCES.md \"Mixed precision\")")


def subject_of(subject, amp):
    """The verdict table's subject: jittor/bf16, torch@cuda/fp16, ..."""
    return f"{subject}/{amp}"


def test_forward_targets_losses(amp_runs, amp, subject, amp_case, report_table, require,
                                parity):
    """Every probe in forward order and the loss totals, train mode (which computes the
    same numbers as eval: BN frozen, GN per sample)."""
    require(subject, "amp")
    run = amp_runs.get(amp_case, "train")
    rows = judge.compare_all(recorded_order(run, parity["head"]), run[subject]["probes"],
                             run["reference"]["probes"], run["noise"], amp=amp)
    rows += judge.compare_all(judge.LOSS_TOTALS, run[subject]["losses"],
                              run["reference"]["losses"], run["noise"], amp=amp)
    report_table(rows, f"{subject} {amp} {amp_case}: every probe", judge.first_failure(rows))
    judge.assert_rows(rows, f"{amp_case}/{amp}", subject_of(subject, amp))


def test_gradients(amp_runs, amp, subject, amp_case, report_table, reference_port, require):
    """Every trainable parameter's gradient (fp16: through the loss scale); ReLU kinks as
    in float32 (parity_tests/kinks.py)."""
    require(subject, "amp")
    reason = backward_off_policy(reference_port, amp)
    if reason:
        pytest.skip(reason)
    run = amp_runs.get(amp_case, "train")
    resolved = run["kinks"][subject] or {"rows": [], "reference": run["reference"],
                                         "noise": run["noise"]}
    ref = {"grad." + n: g for n, g in resolved["reference"]["grads"].items()}
    got = {"grad." + n: g for n, g in run[subject]["grads"].items()}
    for row in resolved["rows"]:
        row.tolerance = judge.tolerance(row.name, row.noise, kind="forward", amp=amp)
    rows = resolved["rows"] + judge.compare_all(list(ref), got, ref, resolved["noise"], amp=amp)
    report_table(rows, f"{subject} {amp} {amp_case}: gradients", judge.first_failure(rows))
    judge.assert_rows(rows, f"{amp_case}/{amp} gradients", subject_of(subject, amp))


@pytest.mark.ci  # a step of each port in each half type (about 10 s)
def test_one_training_step(amp, pair_builder, small_cfg, report_table, reference_port):
    """One train_step of each port from the same weights at the recipe's learning rate
    (fp16: through each port's loss scaler), against the PyTorch port in float64; the
    PyTorch runs take the Jittor port's side of each ReLU, the kinks' inputs held to the
    forward tolerance (as in test_backward_optim.py)."""
    from gfocal.data.loader import build_dataloader
    reason = backward_off_policy(reference_port, amp)
    if reason:
        pytest.skip(reason)
    tp, jp = pair_builder.ports
    tmodel, jmodel, init = pair_builder(small_cfg["model"])
    with build_dataloader(small_cfg, "train") as loader:
        batch = next(iter(loader))
    batch64 = dict(batch, imgs=batch["imgs"].astype(np.float64),
                   gt_bboxes=[g.astype(np.float64) for g in batch["gt_bboxes"]])
    it = small_cfg["optim"]["warmup_iters"]
    lr = learning_rate(small_cfg["optim"], it, 0)
    runs = {"jittor": (jp, jmodel, batch), "torch": (tp, tmodel, batch),  # the subject first
            "float64": (tp, copy.deepcopy(tmodel).double(), batch64)}
    optimizers = {key: port.train.build_optimizer(model, small_cfg["optim"])
                  for key, (port, model, _) in runs.items()}
    scalers = {key: port.precision.loss_scaler(amp) for key, (port, _, _) in runs.items()}
    for _, model, _ in runs.values():
        model.train()
    with tp.precision.mixed_precision(amp), jp.precision.mixed_precision(amp):
        _, kink_rows = step_all(runs, optimizers, small_cfg, it, scalers)
    for row in kink_rows:
        row.tolerance = judge.tolerance(row.name, row.noise, kind="forward", amp=amp)
    snaps = {key: {"params": port.checkpoint.state_dict_numpy(model),
                   "momentum": port.checkpoint.optimizer_state_numpy(model, optimizers[key])}
             for key, (port, model, _) in runs.items()}
    scales = {key: s.state() if s else None for key, s in scalers.items()}
    assert scales["jittor"] == scales["torch"], "the loss scalers disagree after one step"
    if scales["torch"]:
        assert scales["torch"] == {"scale": INIT_SCALE, "good_steps": 1, "skipped": 0}
    rows = kink_rows + optim_rows(snaps, init, 1, amp)
    context = f"one {amp} SGD step at lr {lr:g}"
    report_table(rows, f"jittor {context}", judge.first_failure(rows))
    judge.assert_rows(rows, context, subject_of("jittor", amp))


# ------------------------------------------------ Jittor CPU facts the port works around
def _conv_case(channels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, channels, 10, 10)).astype(np.float32)
    w = (rng.standard_normal((channels, channels, 3, 3)) / np.sqrt(9 * channels)).astype(
        np.float32)
    return x, w


@pytest.mark.parametrize("channels", [8, 256])
def test_jittor_native_half_convolution_accumulates_in_the_half_type(subject_port,
                                                                     reference_port, channels):
    """Pins the reason for the Jittor port's CPU emulation (gfocal/jittor/precision.py):
    Jittor's own bf16 / fp16 CPU convolution sums in the half type, so its error grows with
    the reduction length (measured 2026-12-04: bf16 0.13 of max |y| at 8 channels, 0.89 at
    256; fp16 2.3e-3 and 1.6e-2), while a float32-accumulating convolution of the same
    rounded inputs (PyTorch's, and the port's half_op) is one output rounding away (bf16
    <= 2**-8, fp16 <= 2**-11 of max |y|)."""
    import jittor as jt
    import torch
    x, w = _conv_case(channels)
    for amp, jt_half, bound, native_min in (("bf16", jt.bfloat16, 2.0 ** -8, 0.05),
                                            ("fp16", jt.float16, 2.0 ** -11, 1e-3)):
        torch_half = reference_port.precision.HALF_TYPES[amp]
        xr = torch.tensor(x).to(torch_half).double()
        wr = torch.tensor(w).to(torch_half).double()
        exact = torch.nn.functional.conv2d(xr, wr, padding=1).numpy()  # of the rounded inputs
        scale = np.abs(exact).max()
        native = jt.nn.conv2d(jt.array(x).cast(jt_half), jt.array(w).cast(jt_half),
                              padding=1).cast(jt.float32).numpy()
        with subject_port.precision.mixed_precision(amp):
            policy = subject_port.precision.half_op(
                lambda a, b: jt.nn.conv2d(a, b, padding=1), jt.array(x), jt.array(w)).numpy()
        torch_out = torch.nn.functional.conv2d(torch.tensor(x).to(torch_half),
                                               torch.tensor(w).to(torch_half),
                                               padding=1).float().numpy()
        assert np.abs(policy - exact).max() / scale <= bound, amp
        assert np.abs(torch_out - exact).max() / scale <= bound, amp
        if channels == 256:  # short sums can stay within one rounding by luck
            assert np.abs(native - exact).max() / scale > native_min, \
                f"{amp}: Jittor's native CPU convolution no longer sums in {amp}: the " \
                "emulation in gfocal/jittor/precision.py may be dropped"


def test_jittor_bfloat16_conversion_truncates_and_the_port_rounds_to_nearest(subject_port,
                                                                               reference_port):
    """Jittor's CPU float32 -> bfloat16 conversion drops the low 16 bits (half of the values
    of N(0, 1) data land one unit lower in magnitude than PyTorch's round-to-nearest-even);
    the port's round_to_half equals PyTorch's conversion bit for bit, ties, signed zeros,
    the largest floats (to inf), inf and NaN included; its fp16 rounding too (float16
    subnormals and the overflow at 65520 included)."""
    import jittor as jt
    import torch
    rng = np.random.default_rng(5)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.4e38, -3.4e38, 65504.0,
                        65520.0, 1e-3, -6e-8], np.float32)
    ties = ((np.arange(1 << 12, dtype=np.uint32) << 16) | 0x8000 | 0x3f800000).view(np.float32)
    fp16_ties = ((np.arange(1 << 12, dtype=np.uint32) << 13) | 0x1000 | 0x38000000).view(
        np.float32)  # halfway between two float16 values
    subnormal = (np.arange(-3000, 3000) * 2.0 ** -26).astype(np.float32)  # float16 < 2**-14
    x = np.concatenate([rng.standard_normal(20000).astype(np.float32), special, ties, -ties,
                        fp16_ties, -fp16_ties, subnormal, 65519.996 + np.arange(5) * 4.0,
                        rng.standard_normal(2000) * 3e4]).astype(np.float32)
    truncated = jt.array(x).cast(jt.bfloat16).cast(jt.float32).numpy()
    low = (x.view(np.uint32) & 0xFFFF0000).view(np.float32)
    assert np.array_equal(truncated, low, equal_nan=True), "Jittor's bf16 cast now rounds"
    for amp in ("bf16", "fp16"):
        ours = subject_port.precision.round_to_half(jt.array(x), amp).numpy()
        want = torch.tensor(x).to(reference_port.precision.HALF_TYPES[amp]).float().numpy()
        assert np.array_equal(ours.view(np.uint32)[~np.isnan(x)],
                              want.view(np.uint32)[~np.isnan(x)]), amp
        assert np.isnan(ours[np.isnan(x)]).all(), amp


# ------------------------------------- the policy's rounding points, bit for bit, any CPU
# Inputs whose half-type roundings are known by construction and whose float32 sums are
# exact (few significant bits), so that the policy's numbers do not depend on a
# framework's summation order: the Jittor port's convolution must equal them bit for bit.
# The parity cases above cannot see a missing rounding of the result or of a gradient
# (bf16: 1e-2 .. 5e-1 tolerances against a 2**-9 rounding), nor run where PyTorch's CPU
# fp16 backward is off the policy; these need no PyTorch half convolution at all.
ROUNDING_CHANNELS = 8  # 9 * 8 = 72 products per output: |sum| < 2**19 units, exact in float32


def _off_grid(rng, shape, unit):
    """(t, rounded): `rounded` holds multiples of `unit` up to 63 units (6 significant bits,
    a bf16 and a float16 value); `t` is it moved by 2**-13 of itself, less than half a unit
    in the last place of either half type, so that the half type rounds `t` to `rounded`
    and a missing rounding of `t` shows."""
    rounded = rng.integers(-63, 64, shape).astype(np.float32) * np.float32(unit)
    moved = rounded * (1 + rng.choice([-1, 1], shape) * 2.0 ** -13)
    return moved.astype(np.float32), rounded


def _policy_expectation(amp, pairs):
    """The policy's forward and gradients of a 3x3 convolution (docs/MODEL.md section 13):
    the exact float64 sums of the rounded inputs (exact in float32 too), each rounded once
    to the half type by PyTorch's conversion (to nearest, ties to even). The gradients are
    those of the rounded upstream gradient `gr`, rounded where the forward rounded its
    inputs: dx = half(conv_transpose(half(g), half(w))), dw and db likewise. `pairs`:
    _off_grid's (t, rounded) of x, w, b and g."""
    import torch
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    for moved, rounded in pairs:  # the roundings known by construction, as PyTorch's
        assert np.array_equal(torch.tensor(moved).to(half).float().numpy(), rounded)
    xr, wr, br, gr = (rounded for _, rounded in pairs)
    x, w, b = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (xr, wr, br))
    y = torch.nn.functional.conv2d(x, w, b, padding=1)
    y.backward(torch.tensor(gr, dtype=torch.float64))
    exact = {"y": y.detach(), "dx": x.grad, "dw": w.grad, "db": b.grad}
    for name, t in exact.items():
        assert torch.equal(t.float().double(), t), f"{name}: the float32 sum is not exact"
    return ({k: t.float().numpy() for k, t in exact.items()},
            {k: t.float().to(half).float().numpy() for k, t in exact.items()})


def test_port_convolution_rounds_its_result_and_gradients_bit_for_bit(subject_port, amp):
    """The Jittor port's precision.Conv2d under `amp` (its CPU emulation): the output is the
    float32 convolution of the rounded input, weight and bias rounded once to the half type;
    the gradients w.r.t. input, weight and bias are the float32 sums of the rounded upstream
    gradient rounded once to the half type (where the forward rounds, its gradient is
    rounded too). Bit for bit, in both half types, on any CPU."""
    import jittor as jt
    rng = np.random.default_rng(11)
    c = ROUNDING_CHANNELS
    pairs = [_off_grid(rng, shape, unit) for shape, unit in (((1, c, 10, 10), 2.0 ** -3),
                                                             ((c, c, 3, 3), 2.0 ** -5),
                                                             ((c,), 2.0 ** -8),
                                                             ((1, c, 10, 10), 2.0 ** -4))]
    (x, _), (w, _), (b, _), (g, _) = pairs
    exact, want = _policy_expectation(amp, pairs)
    for name in ("y", "dx", "dw"):  # the roundings to check change most of them
        assert (want[name] != exact[name]).mean() > 0.3, f"{name}: inputs too coarse"
    conv = subject_port.precision.Conv2d(c, c, 3, padding=1)
    conv.weight.assign(jt.array(w))
    conv.bias.assign(jt.array(b))
    xj = jt.array(x)
    with subject_port.precision.mixed_precision(amp):
        y = conv(xj)
        dx, dw, db = jt.grad((y * jt.array(g)).sum(), [xj, conv.weight, conv.bias])
    got = {"y": y.numpy(), "dx": dx.numpy(), "dw": dw.numpy(), "db": db.numpy()}
    for name, value in got.items():
        differing = int((value.view(np.uint32) != want[name].view(np.uint32)).sum())
        assert differing == 0, (
            f"{amp} {name}: {differing} of {value.size} values are not the policy's "
            f"(float32 sum of rounded inputs, rounded once to {amp}); "
            f"{int((value == exact[name]).sum())} equal the unrounded sum")
