"""The ports refuse the same arguments: at each bound of an argument check both accept the
value just inside and refuse the one just outside (a port whose check moved disagrees)."""
import inspect

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
    # frozen_stages: -1 (nothing frozen) .. 4 (every stage)
    ("backbone", {"frozen_stages": -1}, True), ("backbone", {"frozen_stages": -2}, False),
    ("backbone", {"frozen_stages": 4}, True), ("backbone", {"frozen_stages": 5}, False),
    # ATSS targets: one valid flag per anchor (two anchors here)
    ("targets", {"flags": 2}, True), ("targets", {"flags": 3}, False),
]


def refusal(port, what, kwargs):
    """None where the port accepts, else its ValueError's message."""
    try:
        if what == "anchors":
            port.anchors.AnchorGenerator(**kwargs)
        elif what == "fpn":
            port.fpn.FPN(**dict(in_channels=[8, 16, 32], out_channels=8, **kwargs))
        elif what == "targets":
            anchors = [port.tensor(np.array([[0, 0, 8, 8], [8, 0, 16, 8]], np.float32))]
            flags = [[port.tensor(np.ones(kwargs["flags"], bool))]]
            port.atss.ATSSAssigner(topk=1).get_targets(
                anchors, flags, [port.tensor(np.array([[1, 1, 7, 7]], np.float32))],
                [port.tensor(np.array([0]))], 2)
        elif what == "backbone":
            port.backbone.ResNet(18, **kwargs)
        elif what == "integral":
            port.gfl_head.Integral(16)(port.tensor(np.zeros((2, kwargs["last"]), np.float32)))
        else:
            port.gfl_head.GFLHead(**dict(SMALL_HEAD, **kwargs))
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("what, kwargs, accepted", CASES, ids=lambda v: str(v))
def test_both_ports_draw_the_same_bounds(reference_port, subject_port, what, kwargs, accepted):
    """The same verdict, and for a refusal the same message (it names the bound)."""
    message = refusal(reference_port, what, kwargs)
    assert refusal(subject_port, what, kwargs) == message
    assert (message is None) == accepted, message


# Each port's computing modules; `execute` is Jittor's name for `forward`.
MODULES = ("probes", "backbone", "fpn", "gfl_head", "box_ops", "anchors", "atss", "losses",
           "postprocess", "detector", "checkpoint", "train", "precision", "tuning")
LITERALS = (int, float, str, bool, type(None), tuple)


def signatures(port):
    """{module.Class.method or module.function: [(parameter, literal default or None)]} of
    what each module defines."""
    found = {}
    for module_name in MODULES:
        module = getattr(port, module_name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = ({m: f for m, f in vars(obj).items() if inspect.isfunction(f)}
                       if inspect.isclass(obj) else {"": obj} if inspect.isfunction(obj) else {})
            for member, function in members.items():
                member = "forward" if member == "execute" else member
                key = ".".join(filter(None, (module_name, name, member)))
                found[key] = [(p.name, p.default if isinstance(p.default, LITERALS) else None)
                              for p in inspect.signature(function).parameters.values()]
    return found


def test_both_ports_give_their_classes_and_functions_the_same_parameters_and_defaults(
        reference_port, subject_port):
    """The same call must mean the same in both ports: every class and function the two
    define under one name takes the same parameters (constructors) with the same literal
    defaults (a default that differs, say frozen_stages or the head's strides, changes what
    a model built without it computes in one port only)."""
    ours, theirs = signatures(reference_port), signatures(subject_port)
    shared = sorted(set(ours) & set(theirs))
    assert len(shared) > 50, shared  # the comparison covers the modules, not a few names
    for key in shared:
        if key.endswith(".__init__"):
            assert ours[key] == theirs[key], key
        defaults = dict(theirs[key])
        for name, default in ours[key]:
            if name in defaults:
                assert default == defaults[name], (key, name, default, defaults[name])


def plain(value):
    """A constant with each class and dtype replaced by its name (each port has its own)."""
    if inspect.isclass(value) or inspect.isbuiltin(value):
        return value.__name__
    if type(value).__name__ == "dtype":  # torch.bfloat16 -> bfloat16
        return str(value).rpartition(".")[2]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(plain(v) for v in value)
    return value


def constants(port):
    """{module.NAME: value} of each module's upper-case literal constants."""
    return {f"{m}.{name}": plain(value) for m in MODULES
            for name, value in vars(getattr(port, m)).items()
            if name.isupper() and isinstance(value, (*LITERALS, dict, list))}


def test_both_ports_hold_the_same_constants(reference_port, subject_port):
    """Markers, thresholds and switches a module defines once (ATSS's NOT_POSITIVE, the NMS
    offset trick's size limits, ...) have the same value in both ports: many are too close
    to their neighbours (-1e8 vs -99999999) or too far from the parity inputs (the CUDA
    limit on a CPU run) for any computed tensor to show a change."""
    ours, theirs = constants(reference_port), constants(subject_port)
    shared = sorted(set(ours) & set(theirs) - {"checkpoint.EXTENSION"})  # .pth / .pkl
    assert {"atss.NOT_POSITIVE", "atss.MIN_INSIDE", "backbone.ARCH_SETTINGS"} <= set(shared)
    for key in shared:
        assert ours[key] == theirs[key], (key, ours[key], theirs[key])


def test_the_nms_offset_switch_follows_torchvision(subject_port):
    """The PyTorch port calls torchvision's batched_nms, which offsets boxes per class up to
    a size limit per device and loops over classes above it; the Jittor port switches at
    the same limits (read from torchvision's source: they are not exported)."""
    import re

    import torchvision
    source = inspect.getsource(torchvision.ops.boxes.batched_nms)
    found = re.search(r"numel\(\) > \((\d[\d_]*) if boxes\.device\.type == .cpu. else "
                      r"(\d[\d_]*)\)", source)
    assert found, "torchvision's batched_nms no longer has the switch this test reads"
    limits = {"cpu": int(found[1]), "cuda": int(found[2])}
    assert subject_port.postprocess.OFFSET_TRICK_MAX_NUMEL == limits


def test_a_group_norm_given_the_wrong_width_refuses_in_both_ports(reference_port, subject_port):
    """One channel against GroupNorm(4, 8) would broadcast through the affine weights in
    silence; both ports refuse it."""
    for port in (reference_port, subject_port):
        norm = port.fpn.ConvModule(8, 8, 3, padding=1, norm="gn", gn_groups=4).gn
        with pytest.raises((ValueError, RuntimeError)):
            norm(port.tensor(np.ones((1, 1, 2, 2), np.float32)))


def test_a_head_whose_input_width_differs_from_its_own_computes_the_same(reference_port,
                                                                         subject_port):
    """in_channels (the FPN's width) need not equal feat_channels: the first convolution of
    each tower takes in_channels, the others feat_channels."""
    kwargs = dict(SMALL_HEAD, in_channels=4, feat_channels=8, stacked_convs=2)
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((1, 4, 2, 2)).astype(np.float32) for _ in range(5)]
    heads = [port.gfl_head.GFLHead(**kwargs) for port in (reference_port, subject_port)]
    state = reference_port.checkpoint.state_dict_numpy(heads[0])
    subject_port.checkpoint.load_state_dict_numpy(heads[1], state, strict=True)
    outs = []
    for port, head in zip((reference_port, subject_port), heads):
        with port.no_grad():
            cls_scores, bbox_preds = head([port.tensor(f) for f in feats])
        outs.append([port.numpy(t) for t in (*cls_scores, *bbox_preds)])
    for ours, theirs in zip(*outs):
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())
