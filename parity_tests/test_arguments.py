"""The ports refuse the same arguments: at each bound of an argument check both accept the
value just inside and refuse the one just outside (a port whose check moved disagrees)."""
import numpy as np
import pytest

SMALL_HEAD = dict(num_classes=1, in_channels=8, feat_channels=8, stacked_convs=1, gn_groups=4)
CASES = [  # (what is built, arguments, accepted)
    ("anchors", {"strides": [1, 2]}, True), ("anchors", {"strides": [8, 0]}, False),
    ("anchors", {"strides": [8, -1]}, False), ("anchors", {"strides": []}, False),
    ("head", {}, True), ("head", {"num_classes": 0}, False),
    ("head", {"reg_topk": 1}, True), ("head", {"reg_topk": 0}, False),
    ("head", {"reg_topk": 17}, True), ("head", {"reg_topk": 18}, False),
    ("head", {"reg_max": 3, "reg_topk": 4}, True), ("head", {"reg_max": 3, "reg_topk": 5}, False),
    # three inputs: as many outputs is the least (no extra level), start_level must index one
    ("fpn", {"num_outs": 3}, True), ("fpn", {"num_outs": 2}, False),
    ("fpn", {"start_level": 2, "num_outs": 1}, True), ("fpn", {"start_level": 3}, False),
    ("fpn", {"start_level": -1}, False),
    # the integral's input: the last dimension must hold 4 x (reg_max + 1) logits
    ("integral", {"last": 68}, True), ("integral", {"last": 67}, False),
]


def refusal(port, what, kwargs):
    """None where the port accepts, else its ValueError's message."""
    try:
        if what == "anchors":
            port.anchors.AnchorGenerator(**kwargs)
        elif what == "fpn":
            port.fpn.FPN(**dict(in_channels=[8, 16, 32], out_channels=8, **kwargs))
        elif what == "integral":
            port.gfl_head.Integral(16)(port.tensor(np.zeros((2, kwargs["last"]), np.float32)))
        else:
            port.gfl_head.GFLHead(**dict(SMALL_HEAD, **kwargs))
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("what, kwargs, accepted", CASES, ids=lambda v: str(v))
def test_both_ports_draw_the_same_bounds(torch_port, jittor_port, what, kwargs, accepted):
    """The same verdict, and for a refusal the same message (it names the bound)."""
    message = refusal(torch_port, what, kwargs)
    assert refusal(jittor_port, what, kwargs) == message
    assert (message is None) == accepted, message
