"""The ports refuse the same arguments: at each bound of an argument check both accept the
value just inside and refuse the one just outside (a port whose check moved disagrees)."""
import pytest

SMALL_HEAD = dict(num_classes=1, in_channels=8, feat_channels=8, stacked_convs=1, gn_groups=4)
CASES = [  # (what is built, arguments, accepted)
    ("anchors", {"strides": [1, 2]}, True), ("anchors", {"strides": [8, 0]}, False),
    ("anchors", {"strides": [8, -1]}, False), ("anchors", {"strides": []}, False),
    ("head", {}, True), ("head", {"num_classes": 0}, False),
    ("head", {"reg_topk": 1}, True), ("head", {"reg_topk": 0}, False),
    ("head", {"reg_topk": 17}, True), ("head", {"reg_topk": 18}, False),
    ("head", {"reg_max": 3, "reg_topk": 4}, True), ("head", {"reg_max": 3, "reg_topk": 5}, False),
]


def accepts(port, what, kwargs):
    try:
        if what == "anchors":
            port.anchors.AnchorGenerator(**kwargs)
        else:
            port.gfl_head.GFLHead(**dict(SMALL_HEAD, **kwargs))
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("what, kwargs, accepted", CASES, ids=lambda v: str(v))
def test_both_ports_draw_the_same_bounds(torch_port, jittor_port, what, kwargs, accepted):
    assert accepts(torch_port, what, kwargs) == accepts(jittor_port, what, kwargs) == accepted
