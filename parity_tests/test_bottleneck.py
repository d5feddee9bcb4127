"""ResNet-50 (Bottleneck) backbone parity: the cases in conftest.py run ResNet-18, whose
blocks have no 1x1 stride-1 convolution, so the Jittor port's sgemm path for those
(gfocal/jittor/kernels.py) and its BatchNorm backward meet PyTorch here. Stage outputs and
every trainable gradient, batch 1 and 2, PyTorch float32-vs-float64 noise as elsewhere, and
ReLU kinks resolved as elsewhere (parity_tests/kinks.py): with one thread a layer2 ReLU input
within rounding of zero took the other side in one port, moving every gradient upstream of it
by up to 8.8e-3."""
import numpy as np
import pytest

from perf_tests.measure import benchmark_weights
from parity_tests import judge, kinks

STAGES = ("backbone.stem", "backbone.layer1", "backbone.layer2", "backbone.layer3",
          "backbone.layer4")


def run_port(port, state, imgs, grad_seed, float64=False, relu_masks=None):
    """Stage outputs, d(sum of outputs * fixed random weights)/d(trainable params) and the
    input of every ReLU call (`relu_masks`: parity_tests/kinks.py)."""
    model = port.backbone.ResNet(50, frozen_stages=1, norm_eval=True)
    port.checkpoint.load_state_dict_numpy(model, state, strict=True)
    model.train()
    dtype = None  # the inputs' float32
    if float64:  # PyTorch's float64 reference (the noise estimate)
        model, dtype = model.double(), "float64"
    with port.probes.capture() as probes, port.probes.relu_calls(model, relu_masks) as relus:
        outs = model(port.tensor(imgs, dtype=dtype))
    weights = output_weights(outs, grad_seed)
    loss = sum((o * port.tensor(w, dtype=dtype)).sum() for o, w in zip(outs, weights))
    named = port.named_trainable_parameters(model)
    grads = port.gradients(loss, [p for _, p in named])
    return {"probes": dict(probes), "grads": {n: port.numpy(g) for (n, _), g in zip(named, grads)},
            "relu_inputs": [(name, port.numpy(x)) for name, x in relus]}


def output_weights(outs, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outs]


@pytest.fixture(scope="module")
def r50_state(reference_port):
    return benchmark_weights(reference_port.checkpoint.state_dict_numpy(
        reference_port.backbone.ResNet(50)))


@pytest.mark.parametrize("batch", [1, 2])
def test_r50_stages_and_gradients(reference_port, subject_port, r50_state, batch):
    imgs = np.random.default_rng(batch).standard_normal((batch, 3, 70, 54)).astype(np.float32)
    run32 = run_port(reference_port, r50_state, imgs, batch)
    run64 = run_port(reference_port, r50_state, imgs, batch, float64=True)
    subject = run_port(subject_port, r50_state, imgs, batch)
    assert len(subject["grads"]) == len(run32["grads"]) > 100  # layer2..layer4, every parameter
    found = kinks.kinks(run32["relu_inputs"], subject["relu_inputs"])
    kink_rows = kinks.rows(found, run32["relu_inputs"], subject["relu_inputs"],
                           run64["relu_inputs"])
    if found:  # the reference (and its noise) recomputed on the subject's side of each kink
        masks = kinks.masks(subject["relu_inputs"], found)
        run32 = run_port(reference_port, r50_state, imgs, batch, relu_masks=masks)
        run64 = run_port(reference_port, r50_state, imgs, batch, float64=True, relu_masks=masks)
    noise = judge.noise_of(run32, run64)
    ref = dict(run32["probes"], **{"grad." + k: v for k, v in run32["grads"].items()})
    got = dict(subject["probes"], **{"grad." + k: v for k, v in subject["grads"].items()})
    names = list(STAGES) + ["grad." + k for k in run32["grads"]]
    rows = kink_rows + judge.compare_all(names, got, ref, noise)
    judge.assert_rows(rows, f"ResNet-50 backbone, batch {batch}")
