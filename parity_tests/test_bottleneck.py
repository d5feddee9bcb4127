"""ResNet-50 (Bottleneck) backbone parity: the cases in conftest.py run ResNet-18, whose
blocks have no 1x1 stride-1 convolution, so the Jittor port's sgemm path for those
(gfocal/jittor/kernels.py) and its BatchNorm backward meet PyTorch here. Stage outputs and
every trainable gradient, batch 1 and 2, PyTorch float32-vs-float64 noise as elsewhere."""
import numpy as np
import pytest

from perf_tests.measure import benchmark_weights
from parity_tests import judge

STAGES = ("backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3",
          "backbone.layer4")


def run_port(port, state, imgs, grad_seed, float64=False):
    """Stage outputs and d(sum of outputs * fixed random weights)/d(trainable params)."""
    model = port.backbone.ResNet(50, frozen_stages=1, norm_eval=True)
    port.checkpoint.load_state_dict_numpy(model, state, strict=True)
    model.train()
    dtype = None  # the inputs' float32
    if float64:  # PyTorch's float64 reference (the noise estimate)
        model, dtype = model.double(), "float64"
    with port.probes.capture() as probes:
        outs = model(port.tensor(imgs, dtype=dtype))
    weights = output_weights(outs, grad_seed)
    loss = sum((o * port.tensor(w, dtype=dtype)).sum() for o, w in zip(outs, weights))
    named = port.named_trainable_parameters(model)
    grads = port.gradients(loss, [p for _, p in named])
    return dict(probes), {n: port.numpy(g) for (n, _), g in zip(named, grads)}


def output_weights(outs, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outs]


@pytest.fixture(scope="module")
def r50_state(torch_port):
    return benchmark_weights(torch_port.checkpoint.state_dict_numpy(
        torch_port.backbone.ResNet(50)))


@pytest.mark.parametrize("batch", [1, 2])
def test_r50_stages_and_gradients(torch_port, jittor_port, r50_state, batch):
    imgs = np.random.default_rng(batch).standard_normal((batch, 3, 70, 54)).astype(np.float32)
    probes32, grads32 = run_port(torch_port, r50_state, imgs, batch)
    probes64, grads64 = run_port(torch_port, r50_state, imgs, batch, float64=True)
    probes, grads = run_port(jittor_port, r50_state, imgs, batch)
    assert len(grads) == len(grads32) > 100  # layer2..layer4 of ResNet-50, every parameter
    noise = judge.noise_of({"probes": probes32, "grads": grads32},
                             {"probes": probes64, "grads": grads64})
    ref = dict(probes32, **{"grad." + k: v for k, v in grads32.items()})
    got = dict(probes, **{"grad." + k: v for k, v in grads.items()})
    names = list(STAGES) + ["grad." + k for k in grads32]
    rows = judge.compare_all(names, got, ref, noise)
    judge.assert_rows(rows, f"ResNet-50 backbone, batch {batch}")
