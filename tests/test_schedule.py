"""Learning-rate schedule against the formulas of docs/MODEL.md section 8, worked by hand."""
import pytest

from gfocal.config import DEFAULTS
from gfocal.schedule import learning_rate

OPTIM = DEFAULTS["optim"]


@pytest.mark.parametrize("iteration, expected", [
    (0, 0.01 * 0.001),                       # warmup starts at lr * warmup_ratio
    (250, 0.01 * (1 - 0.5 * 0.999)),         # half way: 0.0050050
    (499, 0.01 * (1 - (1 / 500) * 0.999)),
    (500, 0.01),                             # warmup over
])
def test_warmup(iteration, expected):
    assert learning_rate(OPTIM, iteration, epoch=0) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("epoch, expected", [(7, 0.01), (8, 0.001), (10, 0.001), (11, 0.0001)])
def test_step_decay_after_epochs_8_and_11(epoch, expected):
    assert learning_rate(OPTIM, 10_000, epoch) == pytest.approx(expected, rel=1e-12)
