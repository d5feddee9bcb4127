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


@pytest.mark.parametrize("iteration, expected", [
    (0, 0.01 * 0.001),                       # mmengine's LinearLR: start_factor at step 0
    (1, 0.01 * (0.001 + 0.999 / 499)),       # its span is end - begin - 1 = 499 steps
    (250, 0.01 * (0.001 + 0.999 * 250 / 499)),
    (499, 0.01),                             # full one iteration before mmcv's warmup
    (500, 0.01),
])
def test_warmup_in_mmengines_style(iteration, expected):
    optim = dict(OPTIM, warmup_style="mmengine")
    assert learning_rate(optim, iteration, epoch=0) == pytest.approx(expected, rel=1e-12)


def test_an_unknown_warmup_style_is_refused():
    from gfocal.config import ConfigError, from_dict
    with pytest.raises(ConfigError, match="'optim.warmup_style' = 'cosine' .must be one of "
                       "'mmcv', 'mmengine'"):
        from_dict({"optim": {"warmup_style": "cosine"}}, source="x.py")


@pytest.mark.parametrize("epoch, expected", [(7, 0.01), (8, 0.001), (10, 0.001), (11, 0.0001)])
def test_step_decay_after_epochs_8_and_11(epoch, expected):
    assert learning_rate(OPTIM, 10_000, epoch) == pytest.approx(expected, rel=1e-12)
