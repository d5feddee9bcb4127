"""Is a PyTorch-vs-Jittor difference noise or a bug? The arithmetic of the control arm.

Training is chaotic: any 1-ulp difference between two runs grows until the runs are as far
apart as two unrelated runs of the same recipe. A same-framework control (the PyTorch port
again, from initial weights moved by one ulp) shows how far rounding alone takes two runs;
the Jittor run is read against that band. Framework-neutral: numpy arrays and logs only.
"""
import json
import os

import numpy as np

from gfocal.precision import EPS, EPS_NAME
from gfocal.runlog import paired, relative_difference

FIRST_N = 20           # the verdict compares loss differences after this many iterations
RATIO_LIMIT = 2.0      # within the band: median Jittor-vs-PyTorch difference <= 2x control's
BAND_FACTOR = 2.0      # a weight-distance trace leaves the band above 2x the control's
# The control's first loss must differ from the reference's, by rounding-sized amounts:
# more than 0 (the perturbation is not a no-op) and at most CONTROL_MAX_EPS machine epsilons
# of the run's compute type. float32: 100 (the loss sums ~1e5 rounded terms). Mixed
# precision: one bf16 / fp16 epsilon (the one-ulp move of the float32 weights reaches the
# loss through the few half-type roundings it flips: measured 6.9e-5, 0.009 bf16 eps, on the
# mini preset in bf16, 2026-12-04). Native mode the same (first batch of the mini preset,
# PyTorch port, 2026-12-07: native-bf16 7.0e-5 = 0.009 eps, native-fp16 2.3e-5 = 0.024 eps).
CONTROL_MAX_EPS = {"off": 100, "bf16": 1, "fp16": 1, "native-bf16": 1, "native-fp16": 1}
VERDICT_RULE = (f"Rule: within the band when R <= {RATIO_LIMIT:g}, where R is the median "
                f"relative loss difference |jittor - torch| / |torch| after iteration "
                f"{FIRST_N} divided by the same median for control vs torch (the PyTorch port "
                "again from initial weights moved by one float32 ulp). dAP values are shown "
                "beside it; one seed is too few to decide on them.")
# Parameter groups of the weight-divergence trace, by name prefix, in model order.
PARAM_GROUPS = (
    ("stem", ("backbone.conv1.", "backbone.bn1.")),
    *[(f"layer{i}", (f"backbone.layer{i}.",)) for i in (1, 2, 3, 4)],
    ("fpn", ("neck.",)),
    ("cls tower", ("bbox_head.cls_convs.",)),
    ("reg tower", ("bbox_head.reg_convs.",)),
    ("heads", ("bbox_head.gfl_cls.", "bbox_head.gfl_reg.", "bbox_head.scales.")),
    ("dgqp", ("bbox_head.reg_conf.",)),
)
GROUP_NAMES = ("total", *[name for name, _ in PARAM_GROUPS])
# Not weights that training moves: frozen BN statistics and the fixed 0..reg_max projection.
NOT_WEIGHTS = ("running_mean", "running_var", "num_batches_tracked", "integral.project")


# What the verdict detects: bugs of graded size planted in the Jittor arm, measured by
# scripts/verdict_power.py (which writes this file).
VERDICT_POWER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "verdict_power.json")
PLANT_WORDS = {"lr": "a learning rate off by", "dfl": "a DFL loss weight off by",
               "qfl": "a QFL loss weight off by", "giou": "a GIoU loss weight off by",
               "bn_eps": "a frozen-BatchNorm eps of"}


def plant_words(plant):
    kind, _, value = plant.replace("=", "*").partition("*")
    return f"{PLANT_WORDS.get(kind, kind)} {'' if kind == 'bn_eps' else 'x'}{value}"


def detection_limit_text(path=VERDICT_POWER):
    """One paragraph: the smallest planted bug of each kind the verdict called outside (from
    scripts/verdict_power.py's measurement), and what it missed."""
    try:
        with open(path) as f:
            measured = json.load(f)
    except (OSError, ValueError):
        return ("What this verdict can detect has not been measured (scripts/verdict_power.py); "
                "rely on the parity suite for bugs smaller than a large one.")
    caught = [plant_words(p) for p in measured["limits"].values() if p]
    missed = [plant_words(r["plant"]) for r in measured["rows"][1:] if r["within"] is not False]
    return (f"What this verdict detects (bugs planted in the Jittor arm, "
            f"{measured['config']}, {measured['epochs']} epochs, {measured['date']}): "
            + (", ".join(caught) + " or larger" if caught else "none of the planted bugs")
            + ("; it read " + ", ".join(missed) + " as within the band: below that, rely on "
               "the parity suite" if missed else "") + ".")


def is_weight(name):
    return not name.endswith(NOT_WEIGHTS)


def group_of(name):
    for group, prefixes in PARAM_GROUPS:
        if name.startswith(prefixes):
            return group
    return None


def weights_only(state):
    """The float32 weights of a canonical state dict, as copies (for snapshots)."""
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in state.items()
            if is_weight(k)}


def weight_distances(reference, other):
    """||theta_other - theta_ref|| / ||theta_ref||, in total and per PARAM_GROUPS group."""
    diff2 = dict.fromkeys(GROUP_NAMES, 0.0)
    ref2 = dict.fromkeys(GROUP_NAMES, 0.0)
    for name, ref in reference.items():
        if not is_weight(name):
            continue
        r = ref.astype(np.float64)
        d = np.asarray(other[name], np.float64) - r
        for group in ("total", group_of(name)):
            if group is not None:
                diff2[group] += float(np.sum(d * d))
                ref2[group] += float(np.sum(r * r))
    return {g: float(np.sqrt(diff2[g] / ref2[g])) if ref2[g] > 0 else 0.0 for g in GROUP_NAMES}


def perturb_one_ulp(state, seed=0):
    """Every weight moved by one float32 ulp, up or down at random (seeded).

    Why this perturbation: it is the size of one rounding of each weight, the smallest change
    a different kernel or reduction order could make, and unlike reordering a reduction it
    is under our control and reaches every parameter. Frozen BN statistics and the fixed
    projection are left alone (training never changes them either).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in state.items():
        if is_weight(name) and np.issubdtype(value.dtype, np.floating):
            up = rng.random(value.shape) < 0.5
            value = np.where(up, np.nextafter(value, np.inf), np.nextafter(value, -np.inf))
            value = value.astype(state[name].dtype)
        out[name] = value
    return out


def control_check(reference_log, control_log, amp="off"):
    """Is the control a real, rounding-sized perturbation (in the precision `amp` of the
    runs)? From the first logged loss."""
    iters, ref, ctl = paired(reference_log, control_log)
    if not iters.size:
        return {"first_rel": None, "ok": False, "text": "the control shares no iteration "
                                                        "with the reference"}
    rel = float(relative_difference(ref[:1], ctl[:1])[0])
    eps = EPS[amp]
    ok = 0 < rel <= CONTROL_MAX_EPS[amp] * eps
    text = (f"control vs torch, first loss: relative difference {rel:.3g} "
            f"({rel / eps:.3g} {EPS_NAME[amp]} eps; expected > 0 and <= "
            f"{CONTROL_MAX_EPS[amp]:g} eps)")
    return {"first_rel": rel, "ok": ok, "text": text if ok else "WARNING: " + text}


def median_after(reference_log, other_log, first_n=FIRST_N):
    iters, ref, other = paired(reference_log, other_log)
    tail = relative_difference(ref, other)[first_n:]
    return float(np.median(tail)) if tail.size else None


def verdict(torch_run, jittor_run, control_run, first_n=FIRST_N, amp="off"):
    """The one-line answer: is Jittor-vs-PyTorch within the same-framework noise band?"""
    j = median_after(torch_run.log, jittor_run.log, first_n)
    c = median_after(torch_run.log, control_run.log, first_n)
    ap = {name: (run.stats() or {}).get("AP") for name, run in
          (("torch", torch_run), ("jittor", jittor_run), ("control", control_run))}
    d_ap = ap["jittor"] - ap["torch"] if None not in (ap["jittor"], ap["torch"]) else None
    c_ap = ap["control"] - ap["torch"] if None not in (ap["control"], ap["torch"]) else None
    if j is None or c is None:
        return {"within": None, "ratio": None, "d_ap": d_ap, "c_ap": c_ap,
                "line": f"No verdict: fewer than {first_n + 1} iterations compared.",
                "rule": VERDICT_RULE}
    check = control_check(torch_run.log, control_run.log, amp)
    if not check["ok"]:  # no rounding-sized control, no band to read Jittor against
        return {"within": None, "ratio": None, "d_ap": d_ap, "c_ap": c_ap,
                "line": "Undecided: the control arm is not a rounding-sized perturbation of "
                        "the PyTorch run, so it gives no noise band (" + check["text"] + ").",
                "rule": VERDICT_RULE}
    ratio = j / c if c > 0 else (np.inf if j > 0 else 1.0)
    within = bool(ratio <= RATIO_LIMIT)

    def fmt(x):
        return "n/a" if x is None else f"{x:+.3f}"
    line = (f"Jittor-vs-PyTorch divergence is {'within' if within else 'outside'} the "
            f"same-framework noise band (ratio R = {ratio:.3g} of median loss differences "
            f"after iteration {first_n}: {j:.3g} vs control {c:.3g}; dAP {fmt(d_ap)} vs "
            f"control dAP {fmt(c_ap)}).")
    return {"within": within, "ratio": float(ratio), "jittor_median": j, "control_median": c,
            "d_ap": d_ap, "c_ap": c_ap, "line": line, "rule": VERDICT_RULE}


def band_exit(jittor_trace, control_trace, factor=BAND_FACTOR):
    """(iteration, group) where Jittor's weight distance first exceeds `factor` times the
    control's (the earliest iteration; the group with the largest ratio there), or None."""
    control = {r["iter"]: r for r in control_trace}
    for record in jittor_trace:
        ref = control.get(record["iter"])
        if ref is None:
            continue
        ratios = {g: record[g] / ref[g] for g in GROUP_NAMES[1:]
                  if ref[g] > 0 and record[g] > factor * ref[g]}
        if ratios:
            return record["iter"], max(ratios, key=ratios.get)
    return None


class WeightTrace:
    """Every `every` iterations: the reference run stores its weights; another run records
    its distance to the reference's weights of the same iteration."""

    def __init__(self, every, reference=None):
        self.every = every
        self.reference = reference      # the reference WeightTrace, None for the reference
        self.snapshots = {}             # iteration -> weights (reference only)
        self.records = []               # [{"iter", "total", group: distance}] (others)

    def __call__(self, iteration, state):
        if iteration % self.every:
            return
        weights = weights_only(state)
        if self.reference is None:
            self.snapshots[iteration] = weights
        elif iteration in self.reference.snapshots:
            self.records.append(dict(weight_distances(self.reference.snapshots[iteration],
                                                      weights), iter=iteration))

    def hook(self, iteration, model, port):
        """engine.train's on_iter_end: weights only read on the iterations traced."""
        if iteration % self.every == 0:
            self(iteration, port.checkpoint.state_dict_numpy(model))
