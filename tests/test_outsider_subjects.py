"""The parity suite locates bugs in code it does not own (the subject interface's proof of power).

Two outside subjects (parity_tests/outsiders/: a PyTorch and a Jittor GFocalV2 under their
own module and weight names, probes taken only through hooks) are judged against the
reference, our PyTorch port, on one small random batch by the suite's own runner
(parity_tests/runs.py) at its live-noise tolerances: clean, each agrees on every probe,
loss and gradient; with one planted bug, the first diverging probe in forward order is the
one named in EXPECTED below.
"""
import ast
import importlib
import pathlib

import pytest
import torch

from gfocal.pytorch.losses import giou_loss
from parity_tests import judge
from parity_tests.cases import small_config
from gfocal.ports import FRAMEWORKS
from parity_tests.outsiders import common
from parity_tests.port_subject import PortSubject
from parity_tests.runs import ParityRuns
from parity_tests.subject import SubjectError, UnassignedWeights

CASE, MODE = "random_b1", "train"
# Where each bug must first show, reasoned from where it sits in the model (probes are
# walked in judge's forward order: network, targets, per-level loss terms):
EXPECTED = {
    # the network never sees anchors; ATSS picks other positives, so the labels move first
    "anchors_half_stride": "targets.labels",
    # DGQP takes its own softmax over the bins, so every head probe before the integral holds
    "integral_softmax_axis": "head.integral.0",
    # the FPN has no GroupNorm: the first normalised output is level 0's class tower
    "gn_eps": "head.cls_tower.0",
    # the eps only clamps unions and hulls below 1e-6 (stride units); a positive's boxes are
    # far larger, so no value moves and none may be reported
    "giou_no_eps": None,
    # the QFL scores, weight targets and average factor do not use the weight; level 0
    # holds positives (the case's 16-pixel box), its class term comes first, then this one
    "loss_bbox_doubled": "loss.loss_bbox.0",
    # labels and label weights are unchanged; the box targets are the next target probe
    "targets_yx": "targets.bbox_targets",
    # the DFL enters no target probe; level 0's class and box terms come before it
    "dfl_weights_swapped": "loss.loss_dfl.0",
}


def outsider(framework):
    try:
        return importlib.import_module(f"parity_tests.outsiders.{framework}_gfl")
    except ImportError as exc:
        pytest.skip(f"{framework} is not installed ({exc})")


@pytest.fixture(scope="module")
def setting():
    """The small model's config and the PyTorch port's seeded weights (canonical names)."""
    from gfocal.ports import load_port
    model_cfg = small_config()["model"]
    port = load_port("torch")
    torch.manual_seed(0)
    return model_cfg, port.checkpoint.state_dict_numpy(port.build_detector(model_cfg))


@pytest.fixture(scope="module")
def judged(setting):
    """judged(framework, matrix) -> ParityRuns of the clean outsider (name None) against the
    reference, with matrix each bug's outsider too (names: EXPECTED's), made once."""
    made = {}

    def get(framework, matrix):
        if (framework, matrix) not in made:
            kit = outsider(framework)
            subjects = {None: kit.subject()}
            for bug in EXPECTED if matrix else ():
                subjects[bug] = kit.subject(bug)
                # the matrix looks for the first diverging probe: its gradients cost time only
                subjects[bug].offers = subjects[bug].offers - {"gradients"}
            made[(framework, matrix)] = ParityRuns(*setting, PortSubject("torch"), subjects)
        return made[(framework, matrix)]
    return get


# The PyTorch matrix runs in the default suite, so its clean subject shares its reference run.
IN_DEFAULT_MATRIX = {"torch": True, "jittor": False}


def _prefixed(prefix, arrays):
    return {prefix + name: value for name, value in arrays.items()}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_clean_outsider_agrees_on_every_probe_loss_and_gradient(judged, framework):
    runs = judged(framework, IN_DEFAULT_MATRIX[framework])
    run = runs.get(CASE, MODE)
    ours, theirs = run["reference"], run[None]
    assert list(theirs["probes"]) == list(ours["probes"]), "probes in another order"
    assert set(theirs["grads"]) == set(ours["grads"]), "gradients of other parameters"
    rows = (runs.compared_rows(None, CASE, MODE)
            + judge.compare_all(judge.LOSS_TOTALS, theirs["losses"], ours["losses"],
                                run["noise"])
            + judge.compare_all(sorted(_prefixed("grad.", ours["grads"])),
                                _prefixed("grad.", theirs["grads"]),
                                _prefixed("grad.", ours["grads"]), run["noise"]))
    assert judge.first_failure(rows) is None, judge.divergence_message(
        rows, f"clean {framework} outsider")


BUG_MATRIX = [pytest.param(framework, bug, id=f"{framework}-{bug}",
                           marks=[] if IN_DEFAULT_MATRIX[framework] else [pytest.mark.ci])
              for framework in FRAMEWORKS for bug in EXPECTED]


@pytest.mark.parametrize("framework, bug", BUG_MATRIX)
def test_planted_bug_is_found_at_its_first_probe(judged, framework, bug):
    runs = judged(framework, True)
    found = runs.first_divergence(bug, CASE, MODE)
    assert (found.name if found else None) == EXPECTED[bug], judge.divergence_message(
        runs.compared_rows(bug, CASE, MODE), f"{framework} outsider with {bug}")


def test_giou_without_eps_differs_only_on_degenerate_boxes():
    """The bug the matrix must not report is real: on zero-area boxes it gives NaN."""
    kit = outsider("torch")
    model = kit.Detector(small_config()["model"])
    common.BUGS["giou_no_eps"][0](model, kit)
    buggy = model.criterion.ops.giou_loss
    point = torch.tensor([[4.0, 4.0, 4.0, 4.0]])
    box = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    assert torch.equal(buggy(box, box + 1), giou_loss(box, box + 1))
    assert torch.isfinite(giou_loss(point, point)).all() and torch.isnan(buggy(point, point)).all()


def test_weights_reach_the_outsider_only_through_its_key_map(setting):
    """Its own names share none with the canonical ones; a canonical state missing a weight
    is refused naming it."""
    model_cfg, state = setting
    kit = outsider("torch")
    own = kit.own_weight_names(kit.Detector(model_cfg))
    assert not set(own) & set(state) and sorted(common.key_map(own).values()) == sorted(state)
    short = dict(state)
    del short["bbox_head.gfl_reg.weight"]
    with pytest.raises(UnassignedWeights, match="dense_head.gfl_reg.weight"):
        kit.subject().build(model_cfg, short)


def test_unknown_bug_is_one_line():
    with pytest.raises(SubjectError, match="unknown bug 'nope'"):
        outsider("torch").subject("nope")


ALLOWED = {"parity_tests.subject", "parity_tests.hook_probes", "parity_tests.outsiders.common"}
PORT_PROBES = {"record", "probes", "relu_calls"}  # the ports' own probe machinery


@pytest.mark.parametrize("module", ["common", "torch_gfl", "jittor_gfl"])
def test_outsiders_use_the_suite_only_through_its_interface(module):
    """No import from parity_tests beyond the subject interface and the hook probes, and no
    use of the ports' own probes (gfocal/*/probes.py: record, capture)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "parity_tests" / "outsiders"
    tree = ast.parse((path / f"{module}.py").read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    suite = {node.module for node in imports if node.module.startswith("parity_tests")}
    assert suite <= ALLOWED, suite - ALLOWED
    imported = {alias.name for node in imports for alias in node.names}
    used = {node.attr if isinstance(node, ast.Attribute) else node.id
            for node in ast.walk(tree) if isinstance(node, (ast.Attribute, ast.Name))}
    assert not (imported | used) & PORT_PROBES, (imported | used) & PORT_PROBES
    assert not [node.module for node in imports if node.module.endswith(".probes")]
