"""Regime coverage of the parity inputs: how many elements reached each numerical regime in
this run, against the minimum the suite states for it.

A test that builds or reads the inputs of a regime calls `count(regime, hits)` and asserts
`hits >= MINIMUM[regime]` itself (`check`), so an input change that stops exercising a regime
fails the suite; the table (terminal and HTML summary) shows every regime, also those whose
tests did not run in this session.
"""
from gfocal.tables import html_table as render_html_table, text_table
from parity_tests import ledger
from parity_tests.rendering import TABLE_ATTRS

DFL = "test_distance_targets_at_the_clamp_and_on_integer_bins"
ATSS = "test_atss_dense_assignment_near_the_threshold"
CASES = "parity cases"
POST = "test_postprocessing_near_its_thresholds"
# regime -> (minimum hits, where the inputs come from)
MINIMUM = {
    "distance target above the clamp": (50, DFL),
    "distance target at the clamp": (50, DFL),
    "distance target on an integer bin": (50, DFL),
    "distance target below zero (point outside its box)": (50, DFL),
    "ATSS candidate within 1% x std of its threshold": (20, ATSS),
    "anchor positive for several gts": (500, ATSS),
    "gt whose positives all lie on one level": (500, ATSS),
    "anchor outside the valid (padded) area": (100, f"{CASES} (targets.label_weights = 0)"),
    "image without boxes in a batch": (1, f"{CASES} (random_b2_empty)"),
    "batch of one image without boxes (loss normaliser at its floor 1)":
        (1, f"{CASES} (random_b1_empty)"),
    "gt box smaller than the smallest stride": (3, CASES),
    "gt box larger than half the image": (3, CASES),
    "gt pair with equal IoU (identical boxes)": (2, CASES),
    "gt centre half-way between anchor centres (equal distances)": (2, CASES),
    "crowd box (ignored gt)": (1, f"{CASES} (COCO val)"),
    "class score within 1e-3 of score_thr": (1000, POST),
    "level with more candidates than nms_pre": (2, POST),
    "image without any score above score_thr (one at it)":
        (2, "test_images_without_any_score_above_score_thr"),
    "neighbouring boxes with IoU within 0.02 of the NMS threshold": (200, POST),
    "kept box at the left or top border narrower than a pixel":
        (40, "test_boxes_at_the_left_and_top_border_narrower_than_a_pixel"),
    "same-class pair that class offsets move across the NMS threshold":
        (20, "test_nms_on_both_sides_of_the_offset_switch"),
    "loss input of exactly one element (one class, one anchor)":
        (2, "test_quality_focal_loss_on_tiny_shapes"),
}
class RegimeError(KeyError):
    """A regime that MINIMUM does not state."""


def count(regime, hits):
    if regime not in MINIMUM:
        raise RegimeError(f"regime {regime!r} has no stated minimum in parity_tests/regimes.py")
    counted = ledger.active().hits  # this session's, kept on its pytest config
    counted[regime] = counted.get(regime, 0) + int(hits)


def check(regimes):
    """Fail (AssertionError naming them) when one of `regimes` is below its minimum."""
    counted = ledger.active().hits
    low = {r: counted.get(r, 0) for r in regimes if counted.get(r, 0) < MINIMUM[r][0]}
    assert not low, "the parity inputs no longer reach: " + "; ".join(
        f"{r} ({hits} hits, minimum {MINIMUM[r][0]})" for r, hits in low.items())


HEADER = ["regime", "hits", "minimum", "status", "inputs"]


def rows(counted):
    """One row per regime of MINIMUM; `counted`: a session's hits (ledger.Ledger.hits)."""
    out = []
    for regime, (minimum, where) in MINIMUM.items():
        hits = counted.get(regime)
        status = "not run" if hits is None else ("ok" if hits >= minimum else "BELOW")
        out.append([regime, "-" if hits is None else str(hits), str(minimum), status, where])
    return out


def text(counted):
    return text_table(HEADER, rows(counted))


def html_table(counted):
    colour = {"ok": "#cfc", "BELOW": "#f88", "not run": "#eee"}
    body = rows(counted)
    return "<h2>Parity regime coverage</h2>\n" + render_html_table(
        HEADER, body, attrs=" id='parity-regimes'" + TABLE_ATTRS,
        row_attrs=[f" style='background:{colour[row[3]]}'" for row in body], sep="\n")
