"""Each port's own weight initialisation. Everywhere else both ports start from one set of
weights (the PyTorch port's, converted), so this is where the two init codes meet: every
tensor that one port initialises to a constant (biases, norm weights, the Scale modules, the
focal prior bias -log((1 - 0.01) / 0.01) of the class branch, BN statistics) must hold the
same constant in the other, and every random tensor must have the same mean and standard
deviation within its sampling error (the frameworks' random generators differ)."""
import math

import numpy as np
import pytest

from parity_tests.conftest import small_config

# |difference| allowed in sampling-error units: a mean of n draws scatters by std / sqrt(n),
# a standard deviation by about std / sqrt(2n) (normal and uniform draws alike, roughly)
SIGMAS = 6
MIN_RANDOM = 256  # smaller random tensors say too little about their distribution


@pytest.fixture(scope="module")
def own_inits(torch_port, jittor_port):
    import jittor as jt
    import torch

    cfg = small_config()["model"]
    torch.manual_seed(0)
    jt.set_global_seed(0)
    return {port.FRAMEWORK: port.checkpoint.state_dict_numpy(port.build_detector(cfg))
            for port in (torch_port, jittor_port)}


def test_same_tensors(own_inits):
    t, j = own_inits["torch"], own_inits["jittor"]
    assert list(t) == list(j)
    assert {k: v.shape for k, v in t.items()} == {k: v.shape for k, v in j.items()}


def test_constants_are_equal(own_inits):
    t, j = own_inits["torch"], own_inits["jittor"]
    constant = [name for name, value in t.items() if np.all(value == value.flat[0])]
    assert any(name.endswith("gfl_cls.bias") for name in constant)
    wrong = {name: (float(t[name].flat[0]), float(j[name].min()), float(j[name].max()))
             for name in constant
             if not np.allclose(j[name], t[name].flat[0], rtol=1e-6, atol=0)}
    assert not wrong, f"constant in torch, other in jittor (torch, jittor min, max): {wrong}"
    assert float(t["bbox_head.gfl_cls.bias"].flat[0]) == pytest.approx(-math.log(99), rel=1e-6)


def test_random_tensors_have_the_same_distribution(own_inits):
    t, j = own_inits["torch"], own_inits["jittor"]
    random = [name for name, value in t.items()
              if value.size >= MIN_RANDOM and not np.all(value == value.flat[0])]
    assert len(random) > 20
    off = {}
    for name in random:
        a, b = t[name].astype(np.float64).ravel(), j[name].astype(np.float64).ravel()
        std, n = a.std(), a.size
        if (abs(b.mean() - a.mean()) > SIGMAS * std / math.sqrt(n)
                or abs(b.std() - std) > SIGMAS * std / math.sqrt(2 * n)):
            off[name] = (f"mean {a.mean():.3g} vs {b.mean():.3g}, "
                         f"std {std:.4g} vs {b.std():.4g}, n {n}")
    assert not off, f"torch vs jittor initial distributions differ: {off}"
