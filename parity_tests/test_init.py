"""Each port's own weight initialisation. Everywhere else both ports start from one set of
weights (the PyTorch port's, converted), so this is where the two init codes meet. Every
tensor is checked: one that a port initialises to a constant (biases, norm weights, the
Scale modules, the focal prior bias -log((1 - 0.01) / 0.01) of the class branch, BN
statistics) must hold the same constant in the other; every random tensor must be drawn
from the same distribution, whatever its size, by a two-sample Kolmogorov-Smirnov test (the
frameworks' random generators differ, so the values themselves cannot be compared)."""
import math

import numpy as np
import pytest

from parity_tests.cases import small_config

# Level of the KS test, for the whole family of random tensors (Bonferroni: each tensor is
# tested at FAMILY_LEVEL / number of tensors). The draws are seeded, so a run is
# deterministic; the level says how unlikely it is that a change of seed or of the number of
# tensors turns a correct port red: at 1 % for the family, once in a hundred such changes.
# The test's power is what catches a wrong init: with ~9,000 draws per conv, uniform instead
# of normal of equal variance (sup |F - G| = 0.05) exceeds the critical value ~0.031 at
# this level.
FAMILY_LEVEL = 0.01


def ks_statistic(a, b):
    """sup_x |F_a(x) - F_b(x)| of the two empirical distribution functions."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / a.size
    fb = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(fa - fb)))


def ks_critical(n, m, level):
    """Asymptotic (Smirnov) critical value of the two-sample statistic at `level`:
    c(level) sqrt((n + m) / (n m)), c = sqrt(-ln(level / 2) / 2). For small samples it is
    conservative (the exact tail is lighter), so tiny tensors are tested too, with less power."""
    return math.sqrt(-math.log(level / 2) / 2) * math.sqrt((n + m) / (n * m))


def is_constant(value):
    return bool(np.all(value == value.flat[0]))


@pytest.fixture(scope="module")
def own_inits(reference_port, subject_port):
    import jittor as jt
    import torch

    cfg = small_config()["model"]
    torch.manual_seed(0)
    jt.set_global_seed(0)
    return {port.FRAMEWORK: port.checkpoint.state_dict_numpy(port.build_detector(cfg))
            for port in (reference_port, subject_port)}


def test_same_tensors(own_inits):
    t, j = own_inits["torch"], own_inits["jittor"]
    assert list(t) == list(j)
    assert {k: v.shape for k, v in t.items()} == {k: v.shape for k, v in j.items()}


def test_constants_are_equal(own_inits):
    """Constant in either port (size-1 tensors included): the same constant in both."""
    t, j = own_inits["torch"], own_inits["jittor"]
    constant = [name for name in t if is_constant(t[name]) or is_constant(j[name])]
    assert any(name.endswith("gfl_cls.bias") for name in constant)
    wrong = {name: (float(t[name].min()), float(t[name].max()),
                    float(j[name].min()), float(j[name].max()))
             for name in constant
             if not (is_constant(t[name]) and is_constant(j[name])
                     and np.allclose(j[name].astype(np.float64), float(t[name].flat[0]),
                                     rtol=1e-6, atol=0))}
    assert not wrong, ("constant in one port, other or random in the other "
                       f"(torch min, max, jittor min, max): {wrong}")
    assert float(t["bbox_head.gfl_cls.bias"].flat[0]) == pytest.approx(-math.log(99), rel=1e-6)


def test_random_tensors_have_the_same_distribution(own_inits):
    t, j = own_inits["torch"], own_inits["jittor"]
    random = [name for name in t if not (is_constant(t[name]) or is_constant(j[name]))]
    assert len(random) > 20
    assert len(random) + sum(is_constant(t[n]) for n in t) == len(t)  # every tensor checked
    level = FAMILY_LEVEL / len(random)
    off = {}
    for name in random:
        a, b = t[name].astype(np.float64).ravel(), j[name].astype(np.float64).ravel()
        d, crit = ks_statistic(a, b), ks_critical(a.size, b.size, level)
        if d > crit:
            off[name] = (f"KS D {d:.4f} > {crit:.4f} (n {a.size}); mean {a.mean():.3g} vs "
                         f"{b.mean():.3g}, std {a.std():.4g} vs {b.std():.4g}, range "
                         f"[{a.min():.3g}, {a.max():.3g}] vs [{b.min():.3g}, {b.max():.3g}]")
    assert not off, f"torch vs jittor initial distributions differ (level {level:.2g}): {off}"


def test_ks_statistic_on_known_samples():
    """The statistic against hand-computed values, and its power on the bug it is for."""
    assert ks_statistic(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])) == 0.0
    assert ks_statistic(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ks_statistic(np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 4.0])) == 0.5
    rng = np.random.default_rng(0)
    n, level = 9216, FAMILY_LEVEL / 100
    normal = rng.normal(0, 0.01, n)
    uniform = rng.uniform(-0.01 * math.sqrt(3), 0.01 * math.sqrt(3), n)  # equal variance
    assert ks_statistic(normal, uniform) > ks_critical(n, n, level)
    assert ks_statistic(normal, rng.normal(0, 0.01, n)) < ks_critical(n, n, level)


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_every_resnet_depth_has_torchvisions_layout_in_both_ports(reference_port, subject_port,
                                                                  depth):
    """Each depth the config accepts, not only the small model's 18: the backbone's tensors
    (names and shapes) are torchvision's ResNet's without its classifier, in both ports."""
    import torchvision
    reference = torchvision.models.get_model(f"resnet{depth}", weights=None).state_dict()
    want = {k: tuple(v.shape) for k, v in reference.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for port in (reference_port, subject_port):
        got = {k: tuple(v.shape) for k, v in port.backbone.ResNet(depth).state_dict().items()
               if not k.endswith("num_batches_tracked")}
        assert got == want, (port.FRAMEWORK, sorted(set(got) ^ set(want))[:5])
