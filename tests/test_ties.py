"""ATSS ties (parity_tests/ties.py): two assignments that differ only where ATSS leaves the
choice to the implementation are told apart from real differences, and the parity runner
takes a subject's side of its ties (the reference re-run with its assignment), so a
subject that breaks them the other way passes with the anchors counted, while a real
assignment bug still fails at targets.labels, naming its first anchor."""
import numpy as np
import pytest
import torch

from parity_tests import judge, ties
from parity_tests.cases import small_config
from parity_tests.outsiders import torch_gfl
from parity_tests.port_subject import PortSubject
from parity_tests.runs import ParityRuns

# One level of 4 x 4 anchors at stride 8 (side 64, centres 0, 8, 16, 24); index = 4 y + x.
SIZES, STRIDES = [(4, 4)], [8]
# Centred at (12, 12): anchors 5 (8, 8), 6 (16, 8), 9 (8, 16) and 10 (16, 16) are the four
# nearest, all at squared distance 32, and by symmetry all of equal IoU with it (std 0: the
# candidates are all positive; each centre lies inside the box).
CENTRED = [2.0, 2.0, 22.0, 22.0]
NEAREST = [5, 6, 9, 10]


def check(ours, theirs, gts, topk=2):
    """ties.check_batch on the one level, one image of 16 x 16 pixels (all anchors valid)."""
    def per_anchor(assigned):
        out = np.zeros((1, 16), np.int64)
        for anchor, gt in assigned.items():
            out[0, anchor] = gt + 1
        return out
    return ties.check_batch(per_anchor(ours), per_anchor(theirs), SIZES, STRIDES, 8,
                            [(32, 32)], [np.asarray(gts, np.float32)], topk)


def test_a_boundary_distance_tie_taken_the_other_way_is_a_tie():
    """topk 2 of four anchors at one distance: any two are ATSS's candidates."""
    found = check({5: 0, 6: 0}, {9: 0, 10: 0}, [CENTRED])
    assert found.real == [] and found.anchors == 4 and found.first == (0, 5)
    assert "4 anchors assigned differently at ATSS ties" in found.note()


def test_a_candidate_beyond_the_tie_is_a_real_difference():
    """Anchor 1 (8, 0) lies at squared distance 160, beyond the tie at 32: no tie-breaking
    makes it a candidate."""
    found = check({5: 0, 6: 0}, {5: 0, 1: 0}, [CENTRED])
    assert found.anchors == 0 and [d.anchor for d in found.real] == [1, 6]
    assert "image 0 anchor 1: reference background, subject gt 0" in ties.real_note(found)


def test_more_tied_anchors_than_places_is_a_real_difference():
    found = check({5: 0, 6: 0}, {5: 0, 6: 0, 9: 0}, [CENTRED])
    assert [d.anchor for d in found.real] == [9]


def test_equal_ious_may_go_to_either_gt():
    """Two identical gts: every positive has equal IoUs with both."""
    found = check({5: 0, 6: 0}, {5: 1, 6: 0}, [CENTRED, CENTRED])
    assert found.real == [] and found.anchors == 1


def test_the_lower_iou_is_a_real_difference():
    """A smaller gt of the same centre: anchors 5 and 6 contain both boxes, so their IoU is
    the gt's area over the anchor's: the larger gt 0 must win."""
    smaller = [3.0, 3.0, 21.0, 21.0]
    assert check({5: 0, 6: 0}, {5: 0, 6: 0}, [CENTRED, smaller]).anchors == 0
    found = check({5: 0, 6: 0}, {5: 1, 6: 0}, [CENTRED, smaller])
    assert [d.anchor for d in found.real] == [5]
    # gt 0's positive 5 went to a gt of lower IoU
    assert "gt 0's positives in the subject's assignment" in found.real[0].why


def test_an_assignment_of_no_gt_of_the_image_is_a_real_difference():
    found = check({5: 0, 6: 0}, {5: 3, 6: 0}, [CENTRED])
    assert [d.anchor for d in found.real] == [5]


def test_equal_ious_reach_mean_plus_std_together():
    """std 0: every value equals mean + std, decided exactly (in float64, the mean plus std
    of 45 copies of this value lies above it); one value has no std: none passes."""
    values = np.full(45, 0.2697867137638703)
    assert not np.any(values >= values.mean() + values.std(ddof=1))  # what float64 says
    assert ties.above_mean_plus_std(values).all()
    assert not ties.above_mean_plus_std(values[:1]).any()
    # mean 0.25, std 0.125: 0.375 is exactly at the threshold
    assert ties.above_mean_plus_std(np.array([0.125, 0.25, 0.375])).tolist() == [
        False, False, True]


def test_the_tie_row_passes_and_the_verdict_counts_its_anchors():
    found = check({5: 0, 6: 0}, {9: 0, 10: 0}, [CENTRED])
    row = ties.tie_row(found)
    assert row.ok and row.mismatches == 4 and judge.check_of(row.name) == judge.TIES_CHECK
    record = {"check": judge.TIES_CHECK, "exact": True, "ok": True, "rel": None,
              "mismatches": 4, "tolerance": 0.0}
    line = {line["check"]: line for line in judge.verdict_lines([record])}[judge.TIES_CHECK]
    assert (line["differing"], line["verdict"]) == (4, "noted")
    assert judge.TIES_CHECK not in {line["check"] for line in judge.verdict_lines([])}


# ---------------------------------------------------------------- through the runner
CASE = "random_b1"


@pytest.fixture(scope="module")
def judged():
    """The PyTorch outsider breaking ATSS ties larger index first, and with anchors half a
    stride off (a real bug), against our PyTorch port, on random_b1 (its border box has
    its centre equally far from two level-0 anchors competing for the last place)."""
    model_cfg = small_config()["model"]
    torch.manual_seed(0)
    port = PortSubject("torch").port
    state = port.checkpoint.state_dict_numpy(port.build_detector(model_cfg))
    half = torch_gfl.subject("anchors_half_stride")
    half.offers = half.offers - {"gradients"}  # it must fail before them
    return ParityRuns(model_cfg, state, PortSubject("torch"),
                      {"ties-last": torch_gfl.subject("atss_ties_last"), "half-stride": half})


def test_a_subject_breaking_ties_the_other_way_passes_with_the_count(judged):
    run = judged.get(CASE, "train")
    found = run["ties"]["ties-last"]["check"]
    assert found.real == [] and found.anchors > 0
    ours = run["reference"]["probes"]["targets.assigned_gt_inds"]
    theirs = run["ties-last"]["probes"]["targets.assigned_gt_inds"]
    assert int(np.sum(ours != theirs)) == found.anchors
    # against the reference as it is, the targets differ ...
    plain = judge.compare_all(["targets.labels"], run["ties-last"]["probes"],
                              run["reference"]["probes"], run["noise"])
    assert not plain[0].ok
    # ... against the reference on the subject's side of the ties, everything agrees
    rows = judged.compared_rows("ties-last", CASE, "train")
    assert rows[0].name == ties.TIE_ROW and rows[0].mismatches == found.anchors
    assert judge.first_failure(rows) is None, judge.divergence_message(rows, "ties")
    resolved = judged.against("ties-last", CASE, "train", gradients=True)
    grads = resolved["rows"] + judged.rows("ties-last", CASE, "train",
                                           ["grad." + n for n in resolved["reference"]["grads"]],
                                           part="grads", gradients=True)
    totals = judged.rows("ties-last", CASE, "train", judge.LOSS_TOTALS, part="losses")
    assert judge.first_failure(grads + totals) is None, judge.divergence_message(
        grads + totals, "ties: gradients and loss totals")


def test_eval_mode_takes_the_same_side(judged):
    rows = judged.compared_rows("ties-last", CASE, "eval")
    assert rows[0].name == ties.TIE_ROW and judge.first_failure(rows) is None


def test_a_real_assignment_bug_still_fails_at_the_labels_naming_its_anchor(judged):
    assert judged.get(CASE, "train")["ties"]["half-stride"]["check"].real
    found = judged.first_divergence("half-stride", CASE, "train")
    assert found.name == "targets.labels"
    assert "not an ATSS tie" in found.note and "image 0 anchor " in found.note


def test_the_reference_takes_an_assignment_only_for_that_run(judged):
    """PortSubject.run(assigned_gt_inds=...): the targets follow it, and the next run is the
    port's own again."""
    batch = judged.batch(CASE)
    reference = judged.reference
    own = reference.run(batch, "eval")["probes"]
    wanted = np.zeros_like(own["targets.assigned_gt_inds"])
    wanted[0, np.flatnonzero(own["targets.assigned_gt_inds"][0])[:3]] = 1
    taken = reference.run(batch, "eval", assigned_gt_inds=list(wanted))["probes"]
    assert np.array_equal(taken["targets.assigned_gt_inds"], wanted)
    positive = wanted[0] > 0
    assert np.all(taken["targets.labels"][0, positive] == batch["gt_labels"][0][0])
    assert np.all(taken["targets.labels"][0, ~positive] == judged.cfg["num_classes"])
    again = reference.run(batch, "eval")["probes"]
    assert np.array_equal(again["targets.assigned_gt_inds"], own["targets.assigned_gt_inds"])
