"""NaN in the network's outputs, in both ports: a training step and predict() stop with
gfocal.finite.NonFiniteError before the loss or the decoding meets it, instead of a
cross-entropy's range check (PyTorch), detections computed from NaN (PyTorch, exit 0) or a
segfault in Jittor's CPU sort.

The NaN cases run in a child process, one per port: on code without the checks the
Jittor port segfaults, which must fail these tests, not end pytest. Run as
`python -m tests.test_nonfinite FRAMEWORK`, this file is that child.
"""
import functools
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One weight of the head set to NaN makes these outputs NaN in both ports.
POISONED = {"class scores": "bbox_head.gfl_cls.weight",
            "box logits": "bbox_head.gfl_reg.weight"}
STEPS = ("train_step", "predict")
CHILD_TIMEOUT_S = 300  # both frameworks' kernels are compiled and cached well before this
# The head's top-k (DGQP) over a row with a NaN: jt.topk would hand the NaN to std::sort.
NAN_ROWS = np.array([[0.1, 0.4, 0.2, 0.3], [0.2, np.nan, 0.5, 0.1]], np.float32)


# ---------------------------------------------------------------- the child process

def poisoned_detector(port, weight):
    """The tiny detector with the first number of `weight` set to NaN."""
    from tests.test_checkpoint import TINY
    from tests.test_network import load_numpy, state_numpy
    model = port.build_detector(TINY)
    poisoned = state_numpy(port, model)[weight]
    poisoned.flat[0] = np.nan
    load_numpy(port, model, {weight: poisoned})
    return model


def run_step(port, step, what):
    """One training step or one predict() of a detector whose `what` outputs are NaN."""
    from tests.test_checkpoint import OPTIM, tiny_batch
    model = poisoned_detector(port, POISONED[what])
    if step == "train_step":
        model.train()
        port.train.train_step(model, port.train.build_optimizer(model, OPTIM), tiny_batch())
    else:
        model.eval()
        model.predict(tiny_batch())


def top_values_of_nan_rows(port):
    return port.numpy(port.gfl_head.top_values(port.tensor(NAN_ROWS), 2, dim=1)).tolist()


CASES = {**{(step, what): functools.partial(run_step, step=step, what=what)
            for step in STEPS for what in POISONED},
         ("top_values", "NaN"): top_values_of_nan_rows}


def child(framework):
    """Print one JSON line per case: its result, or the exception it raised."""
    from gfocal.ports import load_port
    port = load_port(framework)
    for case, run in CASES.items():
        outcome = {"case": case, "result": None, "error": None, "message": None}
        try:
            outcome["result"] = run(port)
        except Exception as exc:  # noqa: BLE001 (reported to the parent, which judges)
            outcome.update(error=type(exc).__name__, message=str(exc))
        print(json.dumps(outcome), flush=True)


# ---------------------------------------------------------------- the tests

def run_behind_a_shell(command):
    """(return code, stdout, stderr) of `command` run behind a shell that waits for it: a
    child of this process that dies of a signal other than SIGTERM makes Jittor's SIGCHLD
    handler end this process, pytest with it; the shell turns such a death into exit status
    128 + the signal. Past the bound, the process group gets SIGTERM and the test fails."""
    with subprocess.Popen(["sh", "-c", '"$@"; exit $?', "sh", *command], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.communicate()
            pytest.fail(f"still running after {CHILD_TIMEOUT_S} s: {command}")
    return process.returncode, out, err


@functools.cache
def child_run(framework):
    """(outcome by case, return code, stderr's tail) of the child process for `framework`."""
    rc, out, err = run_behind_a_shell([sys.executable, "-m", "tests.test_nonfinite", framework])
    outcomes = {tuple(o["case"]): o for o in
                (json.loads(line) for line in out.splitlines() if line.startswith('{"case"'))}
    return outcomes, rc, err[-1000:]


def outcome(port, *case):
    outcomes, rc, stderr = child_run(port.FRAMEWORK)
    if case not in outcomes:
        died = f"signal {signal.Signals(rc - 128).name}" if rc > 128 else f"exit status {rc}"
        pytest.fail(f"the {port.FRAMEWORK} child ended ({died}) before case {case}; its "
                    f"stderr ends:\n{stderr}")
    return outcomes[case]


@pytest.mark.parametrize("what", POISONED)
@pytest.mark.parametrize("step,cause", [("train_step", "training diverged"),
                                        ("predict", "usually means non-finite weights")])
def test_non_finite_outputs_stop_before_the_loss_and_the_decoding(port, step, cause, what):
    got = outcome(port, step, what)
    assert got["error"] == "NonFiniteError", got
    message = got["message"]
    assert message.startswith("the network's outputs hold NaN or infinity (")
    assert f"{what} at level" in message and cause in message and "\n" not in message


def test_top_values_orders_nan_first_and_keeps_it(port):
    """The head's top-k: a NaN taken as the largest (as torch.topk does) and kept NaN."""
    got = outcome(port, "top_values", "NaN")
    assert got["error"] is None, got
    assert np.array_equal(np.array(got["result"], np.float32),
                          np.array([[0.4, 0.3], [np.nan, 0.5]], np.float32), equal_nan=True)


def test_top_values_gradient_reaches_the_chosen_entries(port):
    rng = np.random.default_rng(0)
    x = rng.permutation(24).astype(np.float32).reshape(2, 3, 4) / 24
    w = rng.standard_normal((2, 2, 4)).astype(np.float32)
    xt = port.tensor(x, requires_grad=True)
    top = port.gfl_head.top_values(xt, 2, dim=1)
    (grad,) = port.gradients((top * port.tensor(w)).sum(), [xt])
    expected = np.zeros_like(x)
    order = np.argsort(-x, axis=1)[:, :2]
    np.put_along_axis(expected, order, w, axis=1)
    assert np.array_equal(port.numpy(top), np.take_along_axis(x, order, axis=1))
    assert np.array_equal(port.numpy(grad), expected)


if __name__ == "__main__":
    child(sys.argv[1])
