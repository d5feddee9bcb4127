"""Error metrics, the tolerance policy and the verdict of the parity suite (how they are
shown: parity_tests/rendering.py).

Convention: `a` is the port under test (Jittor), `b` the reference (PyTorch). The relative
error of a tensor is max|a - b| / max(max|b|, TINY): one number per tensor, scaled by the
tensor's own magnitude, so a probe of large activations and one of tiny gradients are judged
alike. The cosine similarity is reported next to it (it spots a wrong sign or permutation
that a loose relative error could hide) but not asserted.

Tolerance policy (parity_tests/TOLERANCES.md explains it with the measured numbers):
    tolerance(probe) = min(CAP[kind], max(TARGET[kind], NOISE_FACTOR * noise(probe)))
where noise(probe) is the relative error between the PyTorch port run in float32 and the
same port run in float64 on the same input, measured live on every run. Integer probes
(assignments, labels, counts, anchors) must be exactly equal.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from parity_tests import ledger, rendering

TINY = 1e-12
# Probe names of docs/ARCHITECTURE.md in forward order (the order the report walks).
NUM_LEVELS = 5
BACKBONE_PROBES = ["backbone.stem"] + [f"backbone.layer{i}" for i in (1, 2, 3, 4)]
NECK_PROBES = [f"neck.lateral.{i}" for i in range(3)] + [f"neck.p{i}" for i in range(3, 8)]
HEAD_PROBES = [f"head.{what}.{lvl}" for lvl in range(NUM_LEVELS)
               for what in ("cls_tower", "reg_tower", "reg_logits", "dgqp_feat", "quality",
                            "cls_score")]
INTEGRAL_PROBES = [f"head.integral.{lvl}" for lvl in range(NUM_LEVELS)]
FORWARD_PROBES = BACKBONE_PROBES + NECK_PROBES + HEAD_PROBES + INTEGRAL_PROBES
# GFL V1 (mmdetection 3.x GFLHead, docs/MODEL.md): no DGQP; the head returns class logits.
HEAD_PROBES_V1 = [f"head.{what}.{lvl}" for lvl in range(NUM_LEVELS)
                  for what in ("cls_tower", "reg_tower", "reg_logits", "cls_logits")]
FORWARD_PROBES_V1 = BACKBONE_PROBES + NECK_PROBES + HEAD_PROBES_V1 + INTEGRAL_PROBES


def forward_probes(head="gfl_v2"):
    """The forward probes of model `head` (gfl_v2 or gfl_v1), in forward order."""
    return FORWARD_PROBES_V1 if head == "gfl_v1" else FORWARD_PROBES


def all_probes(head="gfl_v2"):
    return forward_probes(head) + TARGET_PROBES + LOSS_PROBES
TARGET_PROBES = (["targets.labels", "targets.label_weights", "targets.bbox_targets",
                  "targets.assigned_gt_inds", "targets.num_pos"]
                 + [f"loss.{what}.{lvl}" for lvl in range(NUM_LEVELS)
                    for what in ("score", "weight_targets")]
                 + ["loss.avg_factor"])
LOSS_PROBES = [f"loss.{what}.{lvl}" for lvl in range(NUM_LEVELS)
               for what in ("loss_cls", "loss_bbox", "loss_dfl")]
LOSS_TOTALS = ("loss_cls", "loss_bbox", "loss_dfl", "loss")
ALL_PROBES = FORWARD_PROBES + TARGET_PROBES + LOSS_PROBES

NOISE_FACTOR = 10.0
# The targets the suite was built to meet (CPU, float32) and the loosest tolerance the noise may push them to.
TARGET = {"forward": 1e-5, "targets": 1e-5, "loss": 1e-5, "grad": 1e-4, "optim": 1e-4,
          "detections": 1e-5}
CAP = {"forward": 1e-4, "targets": 1e-4, "loss": 1e-4, "grad": 1e-3, "optim": 1e-3,
       "detections": 1e-4}
# Several SGD steps of runs that cannot take each other's side of a ReLU kink (separate
# processes: the data-parallel tests), TOLERANCES.md "ReLU kinks": one flipped ReLU input
# moves tensors upstream of it (measured 1e-3 .. 6e-2 in the parity cases); there the cap is
# 1e-2, enough for the kinks their inputs have met so far, and at least TRAJECTORY_STRICT of
# the tensors must still meet the one-step tolerance (a real optimizer bug moves most). The parity suite itself resolves kinks (parity_tests/kinks.py).
TARGET["trajectory"] = CAP["trajectory"] = 1e-2
TRAJECTORY_STRICT = 0.9
# Mixed precision (TOLERANCES.md "Mixed precision"): the reference is the PyTorch port in the
# same precision, the noise its half-vs-float64 difference; the targets and caps are set
# from the size of one rounding to the half type (bf16 2**-9, fp16 2**-12 relative) and
# the measured spread of the gradients, where rounding alone moves some by 47 % (bf16).
HALF_TARGET = {
    "bf16": {"forward": 1e-2, "targets": 1e-2, "loss": 1e-2, "grad": 3e-2, "optim": 3e-2},
    "fp16": {"forward": 1e-3, "targets": 1e-3, "loss": 1e-3, "grad": 3e-3, "optim": 3e-3},
}
HALF_CAP = {
    "bf16": {"forward": 1e-1, "targets": 1e-1, "loss": 1e-1, "grad": 5e-1, "optim": 5e-1},
    "fp16": {"forward": 1e-2, "targets": 1e-2, "loss": 1e-2, "grad": 2e-2, "optim": 2e-2},
}
# Probes that hold assignments, labels or counts: compared for equality, not closeness.
EXACT_PROBES = ("targets.labels", "targets.label_weights", "targets.assigned_gt_inds",
                "targets.num_pos")


def probe_kind(name):
    """Which tolerance family a probe belongs to."""
    if name.startswith(("backbone.", "neck.", "head.")):
        return "forward"
    if name.startswith("targets.") or name.startswith(("loss.score.", "loss.weight_targets.")) \
            or name == "loss.avg_factor":
        return "targets"
    if name.startswith("loss"):
        return "loss"
    if name.startswith("grad."):
        return "grad"
    if name.startswith(("param.", "momentum.", "delta.")):
        return "optim"
    return "forward"


def is_exact(name, array=None):
    if name in EXACT_PROBES:
        return True
    return array is not None and (np.issubdtype(array.dtype, np.integer) or array.dtype == bool)


@dataclass
class ErrorStats:
    """The comparison of one tensor; `rel` is inf when shapes differ."""
    name: str
    shape: tuple
    max_abs: float
    ref_max: float
    rel: float
    cosine: float
    mismatches: int = 0        # exact probes: how many elements differ
    note: str = ""
    tolerance: float = field(default=float("nan"))
    noise: float = field(default=float("nan"))

    @property
    def exact(self):
        return self.tolerance == 0.0

    @property
    def ok(self):
        if self.exact:
            return self.mismatches == 0 and not self.note
        return self.rel <= self.tolerance


def cosine_similarity(a, b):
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def error_stats(name, a, b):
    """Compare `a` (port under test) with `b` (reference)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size == b.size == 1:  # Jittor has no 0-d tensors: its scalars have shape (1,)
        a, b = a.reshape(()), b.reshape(())
    if a.shape != b.shape:
        return ErrorStats(name, b.shape, math.inf, math.nan, math.inf, math.nan,
                          mismatches=max(a.size, b.size),
                          note=f"shape {a.shape} vs reference {b.shape}")
    if a.size == 0:
        return ErrorStats(name, b.shape, 0.0, 0.0, 0.0, 1.0)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64) & np.isfinite(b64)
    same_nonfinite = (~finite) & ((a64 == b64) | (np.isnan(a64) & np.isnan(b64)))
    note = ""
    if not np.all(finite | same_nonfinite):
        note = f"{int(np.sum(~(finite | same_nonfinite)))} non-finite mismatches"
    diff = np.where(finite, np.abs(a64 - b64), 0.0)
    max_abs = float(diff.max())
    ref_max = float(np.abs(np.where(finite, b64, 0.0)).max())
    rel = max_abs / max(ref_max, TINY) if not note else math.inf
    mismatches = int(np.sum(a != b)) if is_exact(name, b) else 0
    return ErrorStats(name, b.shape, max_abs, ref_max, rel,
                      cosine_similarity(np.where(finite, a64, 0), np.where(finite, b64, 0)),
                      mismatches=mismatches, note=note)


def update_stats(name, got, ref, init, steps):
    """Compare parameter updates (value - initial value) of two runs of `steps` SGD steps.

    A float32 parameter absorbs each update with one rounding, so two runs whose updates
    differ by a hair may land one unit in the last place (ulp) of the parameter apart per
    step: with warmup learning rates (1e-5) that ulp can be a large part of the update
    itself. The error counted here is what remains beyond steps * ulp(parameter).
    """
    got, ref, init = (np.asarray(x, np.float64) for x in (got, ref, init))
    if got.shape != ref.shape:
        return error_stats(name, got, ref)
    allowance = steps * np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    d_got, d_ref = got - init, ref - init
    excess = np.maximum(np.abs(d_got - d_ref) - allowance, 0.0)
    ref_max = float(np.abs(d_ref).max()) if d_ref.size else 0.0
    max_abs = float(excess.max()) if excess.size else 0.0
    return ErrorStats(name, ref.shape, max_abs, ref_max, max_abs / max(ref_max, TINY),
                      cosine_similarity(d_got, d_ref))


def tolerance(name, noise, reference=None, kind=None, amp="off"):
    """The policy above: 0 for exact probes, else noise-scaled target within the cap (of
    precision `amp`'s table for a mixed-precision run)."""
    if is_exact(name, reference):
        return 0.0
    kind = kind or probe_kind(name)
    target, cap = (TARGET, CAP) if amp == "off" else (HALF_TARGET[amp], HALF_CAP[amp])
    scaled = NOISE_FACTOR * noise if noise is not None and math.isfinite(noise) else 0.0
    return min(cap[kind], max(target[kind], scaled))


def compare_all(names, got, ref, noise=None, amp="off"):
    """ErrorStats for every name (in the given order) with its tolerance filled in."""
    noise = noise or {}
    rows = []
    for name in names:
        if name not in ref or name not in got:
            missing = "reference" if name not in ref else "port under test"
            rows.append(ErrorStats(name, (), math.inf, math.nan, math.inf, math.nan,
                                   mismatches=1, note=f"not recorded by the {missing}",
                                   tolerance=0.0 if name in EXACT_PROBES else TARGET["forward"]))
            continue
        row = error_stats(name, got[name], ref[name])
        row.noise = noise.get(name, math.nan)
        row.tolerance = tolerance(name, noise.get(name), np.asarray(ref[name]), amp=amp)
        rows.append(row)
    return rows


def first_failure(rows):
    """Index of the first row beyond its tolerance (rows are in forward order), or None."""
    for i, row in enumerate(rows):
        if not row.ok:
            return i
    return None


def summarize(rows_by_kind):
    """{kind: (max rel err, median rel err, count)} over non-exact rows, for TOLERANCES.md."""
    out = {}
    for kind, rows in rows_by_kind.items():
        rels = [r.rel for r in rows if not r.exact and math.isfinite(r.rel)]
        if rels:
            out[kind] = (float(np.max(rels)), float(np.median(rels)), len(rels))
    return out


def noise_of(run32, run64):
    """Relative float32-vs-float64 error of the PyTorch port per probe, loss and gradient."""
    noise = {}
    for name, value in run64["probes"].items():
        if name in run32["probes"]:
            noise[name] = error_stats(name, run32["probes"][name], value).rel
    for name, value in run64.get("losses", {}).items():
        noise[name] = error_stats(name, run32["losses"][name], value).rel
    for name, value in (run64.get("grads") or {}).items():
        noise["grad." + name] = error_stats(name, run32["grads"][name], value).rel
    return noise


def assert_rows(rows, context, subject="jittor"):
    """Fail with the first-divergence table when any row is beyond its tolerance; every
    row asserted here counts in the run's verdict table of `subject` (the port under test:
    jittor, or torch@cuda for the PyTorch port on a GPU, against the PyTorch CPU run)."""
    __tracebackhide__ = True
    record_verdict(rows, context, subject)
    if first_failure(rows) is not None:
        import pytest
        pytest.fail(divergence_message(rows, context), pytrace=False)


def divergence_message(rows, context):
    """The failure text of `rows`: the first divergent probe and every probe's statistics."""
    return rendering.divergence_message(rows, context, first_failure(rows))


# ---------------------------------------------------------------- the run's verdict
# One line per kind of check, over every tensor asserted in this run (compare.assert_rows),
# for the top of the HTML report and the end of the terminal output.
CHECKS = ("forward probes", "targets and assignment", "losses", "gradients", "SGD steps",
          "detections", "COCO statistics", "training recipe")
CHECK_OF_KIND = {"forward": "forward probes", "targets": "targets and assignment",
                 "loss": "losses", "grad": "gradients", "optim": "SGD steps"}
# Shown only where a subject has them: its anchors assigned differently at ATSS ties, where
# the reference took its side (parity_tests/ties.py), per case and mode.
TIES_CHECK = "ATSS ties broken differently"


def check_of(name):
    """The verdict line a compared tensor belongs to."""
    if name.startswith("ties."):
        return TIES_CHECK
    if name.startswith("coco."):
        return "COCO statistics"
    if name.startswith("recipe."):
        return "training recipe"
    if name.startswith("detections."):
        return "detections"
    return CHECK_OF_KIND[probe_kind(name)]


# What a subject must offer for each verdict line (parity_tests/subject.py OFFERS).
CHECK_OF_OFFER = {"probes": "forward probes", "losses": "losses", "gradients": "gradients",
                  "sgd": "SGD steps", "predict": "detections", "recipe": "training recipe",
                  "port": "port functions", "amp": "mixed precision"}


def record_not_offered(subject, check):
    """A check the subject does not offer: its verdict line reads "not offered"."""
    ledger.active().not_offered.setdefault(subject, set()).add(check)


def record_verdict(rows, context, subject="jittor"):
    """Into the running session's ledger; a tensor asserted twice counts once."""
    verdict = ledger.active().verdict
    for r in rows:
        verdict[(subject, context, r.name)] = {
            "subject": subject, "check": check_of(r.name), "context": context, "name": r.name,
            "exact": r.exact,
            "ok": r.ok, "rel": r.rel if math.isfinite(r.rel) else None,
            "mismatches": r.mismatches, "tolerance": r.tolerance}


def verdict_lines(records, not_offered=()):
    """One dict per check of CHECKS (in that order) from verdict records, plus the checks
    `not_offered` by the subject (verdict "not offered", never a pass)."""
    out = []
    noted = (TIES_CHECK,) if any(r["check"] == TIES_CHECK for r in records) else ()
    for check in CHECKS + noted + tuple(sorted(set(not_offered) - set(CHECKS))):
        rows = [r for r in records if r["check"] == check]
        close = [r for r in rows if not r["exact"]]
        rels = [r["rel"] for r in close if r["rel"] is not None]
        tols = sorted({r["tolerance"] for r in close})
        failed = sum(not r["ok"] for r in rows)
        exact = [r for r in rows if r["exact"]]
        out.append({
            "check": check, "tensors": len(rows), "exact": len(exact),
            "differing": sum(r["mismatches"] for r in exact),
            "max": max(rels) if rels else None,
            "median": float(np.median(rels)) if rels else None,
            "tol_min": tols[0] if tols else None, "tol_max": tols[-1] if tols else None,
            "nonfinite": len(close) - len(rels), "failed": failed,
            "verdict": ("not offered" if check in not_offered else "not run") if not rows
            else ("FAIL" if failed else "noted" if check == TIES_CHECK else "PASS")})
    return out


def by_subject(records, not_offered=None):
    """{subject: its records}, jittor first: one verdict table per subject (a subject that
    offered none of the checks run has a table too)."""
    out = {}
    for r in sorted(records, key=lambda r: r.get("subject", "jittor") != "jittor"):
        out.setdefault(r.get("subject", "jittor"), []).append(r)
    for subject in (not_offered or {}):
        out.setdefault(subject, [])
    return out


def record_rows(rows, context="rows"):
    """Every compared row, into the running session's ledger (for TOLERANCES.md)."""
    measured = ledger.active().measured.setdefault(context, [])
    for r in rows:
        measured.append({
            "name": r.name, "kind": probe_kind(r.name), "exact": r.exact, "ok": r.ok,
            "rel": r.rel if math.isfinite(r.rel) else None,
            "cosine": r.cosine if math.isfinite(r.cosine) else None,
            "noise": r.noise if math.isfinite(r.noise) else None,
            "tolerance": r.tolerance})


def verdict_tables(records, not_offered=None):
    """{subject: its verdict lines} (by_subject, verdict_lines), what rendering.verdict_text
    and verdict_html draw."""
    not_offered = not_offered or {}
    return {subject: verdict_lines(rows, not_offered.get(subject, ()))
            for subject, rows in by_subject(records, not_offered).items()}
