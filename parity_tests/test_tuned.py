"""Parity in the tuned setting (gfocal/tuning.py): what each port's predict() runs when
tuned (the PyTorch port: the network compiled by torch.compile / inductor; the Jittor port:
its tuned flags) against the same port in its default setting, from the same weights.

What this proves. The network's outputs (per level: class scores and regression logits,
named as their forward probes) of the tuned run are held to the forward tolerance, scaled by
the live noise (the PyTorch port's float32-vs-float64 difference of the same outputs,
TOLERANCES.md "Tuned setting"); the detections after them must match one to one. The probes
inside the network are not compared: recording them inside a compiled graph would break it
into pieces, which is not the program a tuned run executes. `--tuning tuned` runs the rest of
the parity suite with both ports tuned (TOLERANCES.md says what that adds).
"""
import copy

import numpy as np
import pytest

from parity_tests import judge
from parity_tests.cases import make_case
from parity_tests.test_inference_coco import at_boundary, match_detections

OUTPUT_PROBES = [f"head.{what}.{lvl}" for lvl in range(judge.NUM_LEVELS)
                 for what in ("cls_score", "reg_logits")]
# two input shapes: inductor compiles each, the second as a dynamic-shape graph (CI only:
# about 10 s of compilation on 2 cores)
CASES = ("coco_b2", pytest.param("random_b1", marks=pytest.mark.ci))


def outputs(port, network, imgs):
    """{probe name: numpy} of the network's per-level outputs, without autograd."""
    with port.no_grad():
        cls_scores, bbox_preds = network(imgs)
    out = {}
    for lvl, (c, r) in enumerate(zip(cls_scores, bbox_preds)):
        out[f"head.cls_score.{lvl}"], out[f"head.reg_logits.{lvl}"] = port.numpy(c), port.numpy(r)
    return out


@pytest.fixture(scope="module")
def models(pair_builder, small_cfg):
    """Both ports' small detectors with the same seeded weights (eval mode) and the PyTorch
    one in float64, for the noise. The classifier's prior bias is 0, as in
    test_inference_coco.py, so that thousands of boxes reach the decoding and NMS."""
    tmodel, jmodel, state = pair_builder(small_cfg["model"])
    state["bbox_head.gfl_cls.bias"][:] = 0.0
    for port, model in zip(pair_builder.ports, (tmodel, jmodel)):
        port.checkpoint.load_state_dict_numpy(model, state)
    tmodel64 = copy.deepcopy(tmodel).double()
    for m in (tmodel, jmodel, tmodel64):
        m.eval()
    return {"torch": tmodel, "jittor": jmodel, "float64": tmodel64, "cfg": small_cfg["model"]}


@pytest.mark.parametrize("batch_case", CASES)
def test_tuned_inference_matches_the_default(port, reference_port, models, batch_case):
    import torch
    model = models[port.FRAMEWORK]
    batch = make_case(batch_case)
    imgs = port.tensor(batch["imgs"])
    with port.tuning.speed_setting("default"):  # also under --tuning tuned
        default = outputs(port, port.tuning.inference_network(model), imgs)
        default_dets = model.predict(batch)
    # the live noise: the PyTorch port's float32 vs float64 outputs
    ref64 = outputs(reference_port, models["float64"], torch.from_numpy(batch["imgs"]).double())
    ref32 = outputs(reference_port, models["torch"], reference_port.tensor(batch["imgs"]))
    noise = {name: judge.error_stats(name, ref32[name], ref64[name]).rel for name in ref64}
    with port.tuning.speed_setting("tuned"):
        network = port.tuning.inference_network(model)
        tuned = outputs(port, network, imgs)
        tuned_dets = model.predict(batch)
    subject = f"{port.FRAMEWORK}/tuned"
    rows = judge.compare_all(OUTPUT_PROBES, tuned, default, noise)
    judge.assert_rows(rows, f"tuned inference vs default, {batch_case}", subject=subject)

    total, problems = 0, []
    for i, (d, t) in enumerate(zip(default_dets, tuned_dets)):
        scale = max(batch["img_metas"][i]["ori_shape"][:2])
        pairs, miss_d, miss_t = match_detections(d, t, scale)
        total += len(d["scores"])
        # a score within SCORE_TOL of a threshold may fall on either side
        miss_d = [k for k in miss_d if not at_boundary(d, k, models["cfg"])]
        miss_t = [k for k in miss_t if not at_boundary(t, k, models["cfg"])]
        if miss_d or miss_t:
            problems.append(f"image {i}: {len(miss_d)} default and {len(miss_t)} tuned "
                            "detections unmatched")
    assert total > 10 * len(default_dets), f"only {total} detections: too few to prove much"
    unmatched = judge.ErrorStats("detections.unmatched", (len(default_dets),), np.nan, np.nan,
                                 np.nan, np.nan, mismatches=len(problems), tolerance=0.0)
    judge.assert_rows([unmatched], f"tuned detections vs default, {batch_case}", subject=subject)
