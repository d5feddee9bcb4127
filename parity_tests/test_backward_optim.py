"""Backward and optimisation parity: the gradient of every parameter by name, then the
parameters, momentum buffers and learning rate after 1 and after 5 SGD steps, in the warmup
(updates of a few ulps) and at the recipe's full learning rate (past the warmup).
"""
import copy

import numpy as np
import pytest

from gfocal.schedule import learning_rate
from parity_tests import judge, kinks
from parity_tests.port_subject import optimizer_value
from parity_tests.subject import offers
from parity_tests.test_recipe import documented_lr
from gfocal.ports import FRAMEWORKS

STEPS_CHECKED = (1, 5)
# where the steps start in the schedule: iteration 0 (warmup: lr 1e-5 .. 9e-5) and the end of
# the warmup (the recipe's lr 0.01, where an update is hundreds of ulps of its parameter)
SCHEDULES = {"warmup": 0, "full_lr": "warmup_iters"}


def prefixed(prefix, arrays):
    return {prefix + name: value for name, value in arrays.items()}


def test_same_trainable_parameters(runs, subject, require):
    require(subject, "gradients")
    run = runs.get("coco_b2", "train")
    torch_names, jittor_names = list(run["reference"]["grads"]), list(run[subject]["grads"])
    assert torch_names == jittor_names
    frozen = [n for n in torch_names if n.startswith(("backbone.conv1", "backbone.bn1",
                                                      "backbone.layer1."))]
    assert not frozen, f"frozen_stages=1 must freeze the stem and layer1, trainable: {frozen}"


def test_gradients(runs, subject, case, report_table, require):
    """d loss / d parameter for every trainable parameter, compared by name; where the ports
    take different sides of a ReLU kink, against the PyTorch port on the subject's side of
    it, after the ReLU inputs there are held to the forward tolerance (parity_tests/kinks.py);
    likewise at the subject's ATSS ties (parity_tests/ties.py)."""
    require(subject, "gradients")
    resolved = runs.against(subject, case, "train", gradients=True)
    names = list(prefixed("grad.", resolved["reference"]["grads"]))
    rows = resolved["rows"] + runs.rows(subject, case, "train", names, part="grads",
                                        gradients=True)
    report_table(rows, f"{subject} {case}: gradients by parameter", judge.first_failure(rows))
    judge.assert_rows(rows, f"{case} gradients", subject)


def snapshot(port, model, optimizer):
    return {"params": port.checkpoint.state_dict_numpy(model),
            "momentum": port.checkpoint.optimizer_state_numpy(model, optimizer),
            "lr": optimizer_value(optimizer, "lr")}


def step_all(runs, optimizers, cfg, it, scalers=None):
    """One SGD step at schedule iteration `it` by every run ({key: (port, model, batch)},
    the subject first; `scalers` {key: fp16 loss scaler}). The subject records the input of
    each ReLU call and the other runs take its side of every ReLU (identical where the signs
    agree; at a kink see parity_tests/kinks.py), so that a kink does not move every tensor
    upstream of it. Returns the losses by run and the rows of the ReLU inputs at this step's
    kinks."""
    inputs, masks, losses = {}, None, {}
    for key, (port, model, batch) in runs.items():
        port.train.set_lr(optimizers[key], learning_rate(cfg["optim"], it, 0))
        with port.probes.relu_calls(model, masks) as relus:
            losses[key] = port.train.train_step(model, optimizers[key], batch,
                                                (scalers or {}).get(key))
        inputs[key] = [(name, port.numpy(x)) for name, x in relus]
        masks = masks or {call: x > 0 for call, (_, x) in enumerate(inputs[key])}
    found = kinks.kinks(inputs["torch"], inputs["jittor"])
    return losses, kinks.rows(found, inputs["torch"], inputs["jittor"], inputs["float64"])


def build_runs(pair_builder, cfg):
    """Jittor (the subject), PyTorch float32 and float64, from one seeded initialisation, with
    their optimizers, in train mode."""
    tp, jp = pair_builder.ports
    tmodel, jmodel, init = pair_builder(cfg["model"])
    models = {"jittor": (jp, jmodel), "torch": (tp, tmodel),
              "float64": (tp, copy.deepcopy(tmodel).double())}
    optimizers = {key: port.train.build_optimizer(model, cfg["optim"])
                  for key, (port, model) in models.items()}
    for _, model in models.values():
        model.train()
    return models, optimizers, init


def batch_of(key, batches, it):
    batches32, batches64 = batches
    return (batches64 if key == "float64" else batches32)[it]


@pytest.fixture(scope="module")
def sgd_batches(small_cfg):
    """The first max(STEPS_CHECKED) training batches, in float32 and in float64."""
    from gfocal.data.loader import build_dataloader
    loader = build_dataloader(small_cfg, "train")
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == max(STEPS_CHECKED):
            break
    batches64 = [dict(b, imgs=b["imgs"].astype(np.float64),
                      gt_bboxes=[g.astype(np.float64) for g in b["gt_bboxes"]]) for b in batches]
    return batches, batches64


def schedule_start(name, cfg):
    start = SCHEDULES[name]
    return cfg["optim"][start] if isinstance(start, str) else start


@pytest.fixture(scope="module", params=sorted(SCHEDULES))
def sgd_runs(request, pair_builder, small_cfg, sgd_batches):
    """max(STEPS_CHECKED) SGD steps by each run from iteration `start` of the schedule, with
    the snapshots after the steps of STEPS_CHECKED, the losses and the kinks of each step."""
    models, optimizers, init = build_runs(pair_builder, small_cfg)
    start = schedule_start(request.param, small_cfg)
    snaps, losses, kink_rows = {key: {} for key in models}, {key: [] for key in models}, []
    for it in range(max(STEPS_CHECKED)):
        runs = {key: (port, model, batch_of(key, sgd_batches, it))
                for key, (port, model) in models.items()}
        step_losses, rows = step_all(runs, optimizers, small_cfg, start + it)
        kink_rows.append(rows)
        for key, (port, model) in models.items():
            losses[key].append(step_losses[key])
            if it + 1 in STEPS_CHECKED:
                snaps[key][it + 1] = snapshot(port, model, optimizers[key])
    return {"init": init, "start": start, "snaps": snaps, "losses": losses, "kinks": kink_rows}


def optim_rows(snaps, init, step, amp="off"):
    """Rows for the parameter updates (beyond float32 rounding, see judge.update_stats)
    and the momentum buffers, Jittor vs PyTorch, with the float64 run as noise reference
    (tolerances of precision `amp`)."""
    t, j, f64 = snaps["torch"], snaps["jittor"], snaps["float64"]
    assert set(t["params"]) == set(j["params"])
    assert set(t["momentum"]) == set(j["momentum"])
    rows = []
    for name in t["params"]:
        if name.endswith(("running_mean", "running_var")):
            continue  # statistics: checked by test_frozen_parts_and_bn_statistics_do_not_move
        row = judge.update_stats(f"delta.{name}", j["params"][name], t["params"][name],
                                   init[name], step)
        row.noise = judge.update_stats(name, t["params"][name], f64["params"][name],
                                         init[name], step).rel
        rows.append(row)
    for name in t["momentum"]:
        row = judge.error_stats(f"momentum.{name}", j["momentum"][name], t["momentum"][name])
        row.noise = judge.error_stats(name, t["momentum"][name], f64["momentum"][name]).rel
        rows.append(row)
    for row in rows:
        row.tolerance = judge.tolerance(row.name, row.noise, kind="optim", amp=amp)
    return rows


@pytest.mark.parametrize("step", STEPS_CHECKED)
def test_parameters_momentum_lr_after_sgd_steps(sgd_runs, small_cfg, step, report_table):
    snaps = {k: sgd_runs["snaps"][k][step] for k in ("torch", "jittor", "float64")}
    warmup = small_cfg["optim"]
    # the lr of the last step taken (iteration start + step - 1), by the formula of docs/MODEL.md section 8
    last = sgd_runs["start"] + step - 1
    expected_lr = documented_lr(warmup, last, 0)
    for key in FRAMEWORKS:
        assert snaps[key]["lr"] == pytest.approx(expected_lr, rel=1e-12), key
    kink_rows = [row for rows in sgd_runs["kinks"][:step] for row in rows]
    rows = kink_rows + optim_rows(snaps, sgd_runs["init"], step)
    context = f"after {step} SGD steps from iteration {sgd_runs['start']}"
    report_table(rows, context, judge.first_failure(rows))
    judge.assert_rows(rows, context)


def test_losses_during_sgd_steps(sgd_runs):
    for step, (t, j) in enumerate(zip(sgd_runs["losses"]["torch"], sgd_runs["losses"]["jittor"]), 1):
        for key in judge.LOSS_TOTALS:
            assert j[key] == pytest.approx(t[key], rel=judge.CAP["loss"]), (step, key)


def test_frozen_parts_and_bn_statistics_do_not_move(sgd_runs):
    """frozen_stages=1 and norm_eval: stem, layer1 and every BN running statistic stay put."""
    init = sgd_runs["init"]
    for key in FRAMEWORKS:
        params = sgd_runs["snaps"][key][max(STEPS_CHECKED)]["params"]
        moved = [k for k, v in params.items()
                 if (k.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1."))
                     or k.endswith(("running_mean", "running_var")))
                 and not np.array_equal(v, init[k])]
        assert not moved, f"{key}: {moved}"


@pytest.fixture(scope="module", params=sorted(SCHEDULES))
def resynced_steps(request, pair_builder, small_cfg, sgd_batches):
    """Steps 1..5, each taken by both ports from one state: before every step the PyTorch
    port's parameters and momentum buffers are loaded into the Jittor model and into the
    float64 model, so that a step's error cannot carry over and the one-step tolerance holds
    at every step, also where the momentum buffer is no longer zero (a wrong momentum
    coefficient is invisible in step 1). Jittor runs eagerly here (lazy_execution = 0), the
    other execution mode of its users (sgd_runs covers the lazy one)."""
    import jittor as jt
    models, optimizers, _ = build_runs(pair_builder, small_cfg)
    tp, tmodel = models["torch"]
    start, steps = schedule_start(request.param, small_cfg), []
    for it in range(max(STEPS_CHECKED)):
        before = tp.checkpoint.state_dict_numpy(tmodel)
        momentum = tp.checkpoint.optimizer_state_numpy(tmodel, optimizers["torch"])
        for key in ("jittor", "float64"):
            port, model = models[key]
            dtype = np.float64 if key == "float64" else np.float32
            port.checkpoint.load_state_dict_numpy(model, before)
            port.checkpoint.load_optimizer_state_numpy(
                model, optimizers[key], {k: v.astype(dtype) for k, v in momentum.items()})
        runs = {key: (port, model, batch_of(key, sgd_batches, it))
                for key, (port, model) in models.items()}
        with jt.flag_scope(lazy_execution=0):
            _, rows = step_all(runs, optimizers, small_cfg, start + it)
        after = {key: snapshot(port, model, optimizers[key])
                 for key, (port, model) in models.items()}
        steps.append((before, after, rows))
    return {"start": start, "steps": steps}


# CI: five resynced steps per schedule in three models (about 14 s); the lazy trajectory
# above stays in `make test`
@pytest.mark.ci
@pytest.mark.parametrize("step", range(1, max(STEPS_CHECKED) + 1))
def test_each_step_from_one_state_eager_jittor(resynced_steps, step, report_table):
    before, after, kink_rows = resynced_steps["steps"][step - 1]
    rows = kink_rows + optim_rows(after, before, 1)
    context = (f"SGD step {step} from iteration {resynced_steps['start']}, both ports from "
               f"the same parameters and momentum, Jittor eager")
    report_table(rows, context, judge.first_failure(rows))
    judge.assert_rows(rows, context)


def test_one_sgd_step_of_a_subject(runs, subject, require, small_cfg, report_table):
    """One SGD step at the recipe's full learning rate through the subject's own `sgd_steps`
    (an outside implementation's optimizer), parameters and momentum against the
    reference's, at the one-step tolerance. Both are rebuilt from the session's weights
    afterwards (the other checks share them)."""
    require(subject, "sgd")
    if offers(runs.subjects[subject], "port"):
        pytest.skip(f"{subject} is a port: test_parameters_momentum_lr_after_sgd_steps drives "
                    f"its optimizer step by step, with its ReLU kinks resolved")
    batch, optim = runs.batch("coco_b2"), small_cfg["optim"]
    start = optim["warmup_iters"]
    try:
        snaps = {key: who.sgd_steps(batch, optim, 1, start=start)[0]
                 for key, who in (("reference", runs.reference),
                                  (subject, runs.subjects[subject]))}
    finally:
        for who in (runs.reference, runs.subjects[subject]):
            who.build(runs.cfg, runs.state)
    ref, got = snaps["reference"], snaps[subject]
    rows = []
    for name in (n for n in ref if n.startswith(("param.", "momentum."))):
        if name.endswith(("running_mean", "running_var")):
            continue
        if name not in got:
            rows.append(judge.compare_all([name], got, ref)[0])
            continue
        if name.startswith("param."):
            init = runs.state[name[len("param."):]]
            row = judge.update_stats(f"delta.{name[len('param.'):]}", got[name], ref[name],
                                     init, 1)
        else:
            row = judge.error_stats(name, got[name], ref[name])
        row.tolerance = judge.tolerance(row.name, None, kind="optim")
        rows.append(row)
    context = f"one SGD step from iteration {start}"
    report_table(rows, f"{subject} {context}", judge.first_failure(rows))
    judge.assert_rows(rows, context, subject)
