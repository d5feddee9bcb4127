"""The training recipe a subject's own loop applies: learning rate, momentum, weight decay and
batch size at chosen iterations (the warmup's start, middle and end, and both sides of each
step boundary), against the reference's. A scheduler that drops a decay, a warmup of another
shape or a different batch shows at its first iteration, long before a loss curve diverges.
"""
import pytest

from gfocal.schedule import learning_rate
from parity_tests import judge

# recipe values are set, not computed through a network: equal to float64 rounding
RECIPE_TOL = 1e-12


def chosen_iterations(cfg, iters_per_epoch):
    """(iteration, epoch) pairs: the warmup's start, middle, last and first full-lr
    iterations, and the last iteration before and the first after every step epoch."""
    warmup = cfg["optim"]["warmup_iters"]
    points = [(0, 0), (warmup // 2, 0), (max(warmup - 1, 0), 0), (warmup, 0)]
    for step in cfg["optim"]["steps"]:
        first = step * iters_per_epoch
        points += [(first - 1, step - 1), (first, step)]
    return points


@pytest.fixture(scope="module")
def recipe_cfg(small_cfg):
    from gfocal.config import from_dict
    return from_dict({"model": small_cfg["model"], "data": small_cfg["data"],
                      "optim": dict(small_cfg["optim"], warmup_iters=40, steps=[2, 3])},
                     source="parity recipe")


def documented_lr(optim, it, epoch):
    """docs/MODEL.md section 8, written out here on its own: linear warmup from warmup_ratio
    over warmup_iters steps (mmcv) or warmup_iters - 1 steps (mmengine), x gamma at each
    step epoch."""
    span = optim["warmup_iters"] - (optim["warmup_style"] == "mmengine")
    warm = optim["warmup_ratio"] + (1 - optim["warmup_ratio"]) * it / span if it < span else 1
    return optim["lr"] * warm * optim["gamma"] ** sum(epoch >= s for s in optim["steps"])


def test_the_reference_recipe_follows_the_schedule(runs, recipe_cfg):
    """The reference's optimizer holds what docs/MODEL.md section 8 says."""
    optim = recipe_cfg["optim"]
    iterations = chosen_iterations(recipe_cfg, iters_per_epoch=25)
    got = runs.reference.recipe(optim, iterations, recipe_cfg["data"]["batch_size"])
    for it, epoch in iterations:
        lr = documented_lr(optim, it, epoch)
        assert got[(it, epoch)]["lr"] == pytest.approx(lr, rel=RECIPE_TOL), (it, epoch)
        assert got[(it, epoch)]["momentum"] == optim["momentum"]
        assert got[(it, epoch)]["weight_decay"] == optim["weight_decay"]
        assert learning_rate(optim, it, epoch) == pytest.approx(lr, rel=RECIPE_TOL)


def test_recipe(runs, subject, recipe_cfg, require, report_table):
    require(subject, "recipe")
    optim, batch_size = recipe_cfg["optim"], recipe_cfg["data"]["batch_size"]
    iterations = chosen_iterations(recipe_cfg, iters_per_epoch=25)
    ref = runs.reference.recipe(optim, iterations, batch_size)
    got = runs.subjects[subject].recipe(optim, iterations, batch_size)
    rows = []
    for point in iterations:
        for key in ("lr", "momentum", "weight_decay", "batch_size"):
            name = f"recipe.{key}@it{point[0]}/ep{point[1]}"
            have = got.get(point, {}).get(key)
            if have is None:
                rows.append(judge.ErrorStats(name, (), float("inf"), float("nan"), float("inf"),
                                             float("nan"), mismatches=1, tolerance=0.0,
                                             note="not reported by the subject"))
                continue
            row = judge.error_stats(name, float(have), float(ref[point][key]))
            row.tolerance = RECIPE_TOL
            rows.append(row)
    report_table(rows, f"{subject}: training recipe", judge.first_failure(rows))
    judge.assert_rows(rows, "training recipe", subject)
