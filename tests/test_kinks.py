"""The parity suite's handling of ReLU kinks (parity_tests/kinks.py): each port's record of
its ReLU calls, the masks that take the other port's side, and the checks that keep a real
port bug from passing as a kink."""
import numpy as np
import pytest

from parity_tests import judge, kinks


def relu_module(port):
    return port.backbone.nn.ReLU()


def test_relu_calls_are_recorded_in_call_order_with_module_names(port):
    block = port.backbone.BasicBlock(4, 4)
    block.eval()
    x = np.random.default_rng(0).standard_normal((1, 4, 5, 5)).astype(np.float32)
    with port.probes.relu_calls(block) as calls:
        out = block(port.tensor(x))
    assert [name for name, _ in calls] == ["relu", "relu"]  # one module, called twice
    last = port.numpy(calls[1][1])
    assert np.array_equal(port.numpy(out), np.maximum(last, 0))


def test_a_mask_decides_the_relu_forward_and_backward(port):
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((2, 3, 4)).astype(np.float32)
    g = rng.standard_normal(x_np.shape).astype(np.float32)
    mask = rng.random(x_np.shape) < 0.5  # independent of the sign: both sides are forced
    relu = relu_module(port)
    x = port.tensor(x_np, requires_grad=True)
    with port.probes.relu_calls(relu, {0: mask}) as calls:
        y = relu(x)
    assert np.array_equal(port.numpy(calls[0][1]), x_np)
    assert np.array_equal(port.numpy(y), x_np * mask)
    (grad,) = port.gradients((y * port.tensor(g)).sum(), [x])
    assert np.array_equal(port.numpy(grad), g * mask)


def test_relu_is_restored_after_the_block_and_blocks_do_not_nest(port):
    relu = relu_module(port)
    x = port.tensor(np.array([-1.0, 2.0], dtype=np.float32))
    with pytest.raises(port.probes.ProbeError):
        with port.probes.relu_calls(relu, {0: np.array([True, True])}):
            with port.probes.relu_calls(relu):
                pass
    with port.probes.relu_calls(relu) as calls:
        pass
    assert np.array_equal(port.numpy(relu(x)), [0.0, 2.0]) and calls == []


def calls_of(*arrays, names=None):
    return [(name, np.asarray(a, dtype=np.float32))
            for name, a in zip(names or [f"relu{i}" for i in range(len(arrays))], arrays)]


def test_kinks_are_the_calls_whose_input_signs_differ():
    ref = calls_of([1.0, -2e-7, 3.0], [[-1.0, 2.0]])
    got = calls_of([1.0, 3e-7, 3.0], [[-1.0, 2.0]])
    (kink,) = kinks.kinks(ref, got)
    assert (kink.call, kink.module, kink.flips, kink.where) == (0, "relu0", 1, (1,))
    assert kink.reference == pytest.approx(-2e-7) and kink.subject == pytest.approx(3e-7)
    assert kink.name == "relu_input.relu0#0"
    assert kinks.kinks(ref, ref) == []
    (call, mask), = kinks.masks(got, [kink]).items()
    assert call == 0 and mask.tolist() == [True, True, True]


def test_ports_calling_their_relus_differently_fail():
    with pytest.raises(AssertionError, match="call their ReLUs differently"):
        kinks.kinks(calls_of([1.0], [1.0]), calls_of([1.0], names=["relu0"]))
    with pytest.raises(AssertionError, match="call their ReLUs differently"):
        kinks.kinks(calls_of([1.0], names=["a"]), calls_of([1.0], names=["b"]))


@pytest.mark.parametrize("moved, passes", [(5e-7, True), (1e-3, False)])
def test_a_flip_counts_as_a_kink_only_where_the_relu_inputs_agree(moved, passes):
    """A sign flip from rounding (inputs within the forward tolerance) is a kink; the same
    flip with the inputs moved beyond it (a port bug) fails its row."""
    base = np.linspace(-1, 1, 101).astype(np.float32)
    base[50] = -2e-7
    shifted = base.copy()
    shifted[50] = 3e-7
    shifted[0] += moved
    ref, got, f64 = calls_of(base), calls_of(shifted), calls_of(base.astype(np.float64))
    (row,) = kinks.rows(kinks.kinks(ref, got), ref, got, f64)
    assert row.ok is passes
    assert row.tolerance == judge.TARGET["forward"]
    assert "1 sign flip(s)" in row.note
