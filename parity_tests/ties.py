"""ATSS ties: where a subject breaks them the other way.

ATSS (docs/MODEL.md section 5) leaves two choices to the implementation's sort: which of the
anchors at exactly the k-th nearest distance of a level become a gt's candidates (a boundary
tie: mmdetection's `topk` may take the larger anchor index where our ports take the smaller),
and which gt an anchor positive for several gts with exactly equal IoUs goes to. Either
choice is ATSS; the assignments then differ at a few anchors, and every target, loss and
gradient downstream of them with it. That says nothing about the subject, a wrong anchor or
distance would.

So, as for ReLU kinks (parity_tests/kinks.py), the suite decides here, in numpy float64 from
the rules alone (neither implementation is called), whether two assignments of an image
differ ONLY by such choices: each gt that an anchor differing between them names must have,
in each assignment, a legitimate candidate choice whose positives are exactly what that
assignment gives it. Where so, the reference is re-run taking the subject's assignment
(parity_tests/runs.py) and the verdict counts the anchors; anything else is a real
difference, named by its first anchor.

    found = check_batch(ours, theirs, featmap_sizes, strides, octave_base_scale,
                        pad_shapes, gt_bboxes, topk)
    found.anchors, found.real   # anchors assigned differently at ties; Differences
"""
import itertools
import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from parity_tests import judge

MIN_INSIDE = 0.01   # a positive's centre lies more than this inside its gt (docs/MODEL.md)
UNION_EPS = 1e-6    # IoU's union clamp (docs/MODEL.md section 5, step 1)
# A gt whose ties leave more candidate choices than this is not searched (it is reported).
MAX_CHOICES = 20000
# Where float64's mean + std lies this close to an IoU, it is redone in exact rationals.
EXACT_MARGIN = 1e-9
TIE_ROW = "ties.atss"


@dataclass
class Difference:
    """An anchor whose assignment differs and no tie explains."""
    image: int
    anchor: int
    reference: int   # assigned gt index + 1 (0: background)
    subject: int
    why: str

    def __str__(self):
        return (f"image {self.image} anchor {self.anchor}: reference {_named(self.reference)}, "
                f"subject {_named(self.subject)}; {self.why}")


def _named(assigned):
    return "background" if assigned == 0 else f"gt {assigned - 1}"


@dataclass
class TieCheck:
    anchors: int = 0                          # anchors assigned differently, all at ties
    first: tuple = None                       # (image, anchor) of the first of them
    real: list = field(default_factory=list)  # Differences no tie explains, first first

    def note(self):
        image, anchor = self.first
        return (f"{self.anchors} anchors assigned differently at ATSS ties (first: image "
                f"{image} anchor {anchor}); the reference takes the subject's assignment")


# ---------------------------------------------------------------- anchors (docs/MODEL.md 4)
def grid_anchors(featmap_sizes, strides, octave_base_scale=8):
    """Per level, (H*W, 4) square anchors of side octave_base_scale x stride centred on
    (x * stride, y * stride), row-major."""
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        ys, xs = np.meshgrid(np.arange(h) * s, np.arange(w) * s, indexing="ij")
        cx, cy = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
        half = octave_base_scale * s / 2
        out.append(np.stack([cx - half, cy - half, cx + half, cy + half], axis=1))
    return out


def valid_flags(featmap_sizes, strides, pad_shape):
    """Per level, (H*W,) bool: x < min(ceil(pad_w / s), W) and y < min(ceil(pad_h / s), H)."""
    out = []
    for (h, w), s in zip(featmap_sizes, strides):
        vh, vw = min(-(-int(pad_shape[0]) // s), h), min(-(-int(pad_shape[1]) // s), w)
        flags = np.zeros((h, w), bool)
        flags[:vh, :vw] = True
        out.append(flags.ravel())
    return out


# ---------------------------------------------------------------- ATSS of one gt
def iou(anchors, gts):
    """(A, G) IoU in float64 (the union clamped as docs/MODEL.md says)."""
    a, g = anchors[:, None, :], gts[None, :, :]
    wh = np.clip(np.minimum(a[..., 2:], g[..., 2:]) - np.maximum(a[..., :2], g[..., :2]), 0,
                 None)
    overlap = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    return overlap / np.maximum(area_a + area_g - overlap, UNION_EPS)


def above_mean_plus_std(values):
    """values >= mean + std (unbiased); none with fewer than two. Decided in float64, and in
    exact rationals wherever float64 rounding could tip it (equal IoUs pass together)."""
    k = len(values)
    if k < 2:
        return np.zeros(k, bool)
    threshold = values.mean() + values.std(ddof=1)
    passed = values >= threshold
    close = np.abs(values - threshold) <= EXACT_MARGIN * max(1.0, abs(threshold))
    if close.any():
        exact = [Fraction(float(v)) for v in values]
        mean = sum(exact) / k
        variance = sum((v - mean) ** 2 for v in exact) / (k - 1)
        for i in np.flatnonzero(close):
            deviation = exact[i] - mean
            passed[i] = deviation >= 0 and deviation * deviation >= variance
    return passed


class ImageATSS:
    """ATSS of one image from first principles: its anchors (all levels, flat), their valid
    flags, the gt boxes, topk."""

    def __init__(self, anchors, level_sizes, valid, gt_bboxes, topk):
        self.anchors = np.asarray(anchors, np.float64)
        self.valid = np.asarray(valid, bool)
        self.gts = np.asarray(gt_bboxes, np.float64).reshape(-1, 4)
        self.topk = topk
        self.level_of = np.repeat(np.arange(len(level_sizes)), level_sizes)
        self.centres = (self.anchors[:, :2] + self.anchors[:, 2:]) / 2
        gt_centres = (self.gts[:, :2] + self.gts[:, 2:]) / 2
        offsets = self.centres[:, None, :] - gt_centres[None, :, :]
        # squared, exact in float64 for float32 coordinates: ties are exact equalities
        self.distances = (offsets * offsets).sum(axis=-1)
        self.ious = iou(self.anchors, self.gts)

    def candidate_groups(self, gt):
        """Per level with valid anchors: (sure candidates, the anchors tied at the k-th
        distance, how many of those are candidates)."""
        groups = []
        for level in range(self.level_of.max() + 1 if len(self.level_of) else 0):
            members = np.flatnonzero((self.level_of == level) & self.valid)
            if not len(members):
                continue
            k = min(self.topk, len(members))
            dist = self.distances[members, gt]
            kth = np.sort(dist)[k - 1]
            sure, tied = members[dist < kth], members[dist == kth]
            groups.append((sure, tied, k - len(sure)))
        return groups

    def choices(self, gt, required):
        """Every legitimate candidate set of `gt` that holds the anchors `required`."""
        options = []
        for sure, tied, places in self.candidate_groups(gt):
            must = np.intersect1d(tied, required)
            rest = np.setdiff1d(tied, must)
            if len(must) > places:
                return
            options.append([np.concatenate([sure, must, np.asarray(picked, np.int64)])
                            for picked in itertools.combinations(rest, places - len(must))])
        count = math.prod(len(o) for o in options)
        if count > MAX_CHOICES:
            raise TooManyChoices(f"gt {gt}: {count} candidate choices at its ties")
        for chosen in itertools.product(*options):
            yield np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)

    def positives(self, gt, candidates):
        """The candidates that pass IoU >= mean + std and lie inside the gt."""
        passed = above_mean_plus_std(self.ious[candidates, gt])
        x, y = self.centres[candidates, 0], self.centres[candidates, 1]
        box = self.gts[gt]
        inside = np.minimum.reduce([x - box[0], y - box[1], box[2] - x, box[3] - y]) > MIN_INSIDE
        return candidates[passed & inside]

    def explains(self, gt, assigned):
        """Whether some legitimate candidate choice makes `gt`'s positives consistent with
        `assigned` (gt index + 1 per anchor): every anchor it gives `gt` is a positive of
        `gt`, and every positive of `gt` went to a gt of at least its IoU (equal IoUs: either)."""
        required = np.flatnonzero(assigned == gt + 1)
        if not self.valid[required].all():
            return False
        other = np.clip(assigned - 1, 0, None)
        own_iou = self.ious[:, gt]
        taken = (assigned > 0) & (self.ious[np.arange(len(assigned)), other] >= own_iou)
        taken |= assigned == gt + 1
        for candidates in self.choices(gt, required):
            pos = self.positives(gt, candidates)
            if np.isin(required, pos).all() and taken[pos].all():
                return True
        return False


class TooManyChoices(Exception):
    pass


def check_image(ours, theirs, atss, image=0):
    """(anchors assigned differently, Differences no tie explains) of one image."""
    ours, theirs = np.asarray(ours, np.int64), np.asarray(theirs, np.int64)
    differ = np.flatnonzero(ours != theirs)
    if not len(differ):
        return differ, []
    involved = sorted({int(v) - 1 for v in np.concatenate([ours[differ], theirs[differ]])
                       if v > 0 and v - 1 < len(atss.gts)})
    if any(v < 0 or v > len(atss.gts) for v in np.concatenate([ours[differ], theirs[differ]])):
        return differ, [Difference(image, int(differ[0]), int(ours[differ[0]]),
                                   int(theirs[differ[0]]), "an index outside the image's gts")]
    unexplained = {}
    for gt in involved:
        for side, assigned in (("reference", ours), ("subject", theirs)):
            try:
                ok = atss.explains(gt, assigned)
            except TooManyChoices as exc:
                unexplained.setdefault(gt, f"{exc}: not searched")
                continue
            if not ok:
                unexplained.setdefault(gt, f"gt {gt}'s positives in the {side}'s assignment "
                                           f"are ATSS's under no tie-breaking")
    real = [Difference(image, int(a), int(ours[a]), int(theirs[a]),
                       unexplained.get(int(ours[a]) - 1) or unexplained.get(int(theirs[a]) - 1))
            for a in differ
            if int(ours[a]) - 1 in unexplained or int(theirs[a]) - 1 in unexplained]
    return differ, real


def check_batch(ours, theirs, featmap_sizes, strides, octave_base_scale, pad_shapes,
                gt_bboxes, topk):
    """TieCheck of a batch: `ours`, `theirs` (images, anchors) assigned gt index + 1 per
    anchor of all levels (0 background and outside the valid anchors), the feature map sizes
    and strides of the levels, each image's padded shape and gt boxes, ATSS's topk."""
    anchors = np.concatenate(grid_anchors(featmap_sizes, strides, octave_base_scale))
    level_sizes = [h * w for h, w in featmap_sizes]
    found = TieCheck()
    for image, (mine, other, pad, boxes) in enumerate(zip(ours, theirs, pad_shapes, gt_bboxes)):
        valid = np.concatenate(valid_flags(featmap_sizes, strides, pad))
        atss = ImageATSS(anchors, level_sizes, valid, boxes, topk)
        differ, real = check_image(mine, other, atss, image)
        if len(differ) and found.first is None:
            found.first = (image, int(differ[0]))
        found.anchors += len(differ)
        found.real += real
    if found.real:
        found.anchors = 0
    return found


# ---------------------------------------------------------------- rows for the verdict
class TieRow(judge.ErrorStats):
    """The verdict row of a subject's ties: the anchors it assigns differently, every one
    at a tie (check_batch), so it passes; its count shows in the verdict."""

    @property
    def ok(self):
        return True


def tie_row(found):
    return TieRow(TIE_ROW, (), 0.0, 0.0, 0.0, 1.0, mismatches=found.anchors,
                  note=found.note(), tolerance=0.0)


def real_note(found):
    """The note a failing assignment row carries when the difference is not a tie."""
    first = found.real[0]
    return (f"not an ATSS tie ({len(found.real)} anchors): {first}")
