"""`gfocal compare`: quick run on a COCO-format subset (default suite), full run (slow)."""
import os
from types import SimpleNamespace

import pytest

from gfocal.compare import archive_previous_run, run_comparison


def args(**kw):
    base = dict(config=None, data_root=None, out_dir=None, epochs=None, max_iters=None,
                seeds=1, budget_minutes=None)
    return SimpleNamespace(**dict(base, **kw))


@pytest.mark.ci  # a whole compare run (about 11 s); test_cli runs a failing one in make test
def test_compare_on_a_subset_writes_the_report(tiny_config, tiny_coco, tmp_path):
    out_dir = tmp_path / "report"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("user data")
    runs, noise = run_comparison(args(config=tiny_config, data_root=tiny_coco,
                                      out_dir=str(out_dir), max_iters=3))
    assert set(runs) == {"torch", "jittor"}
    for run in runs.values():
        assert run.failure is None, run.traceback
        assert [r["iter"] for r in run.log] == [1, 2, 3]
        assert len(run.final_stats) == 12
    # identical weights and batches: the first iterations agree to the parity suite's loss
    # target (1e-5; measured here: at most 1.8e-7, about 1.5 float32 eps)
    for a, b in zip(runs["torch"].log, runs["jittor"].log):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    md = (out_dir / "report.md").read_text()
    assert "torch" in md and "jittor" in md and "AP50" in md
    assert "| device | cpu |" in md  # the environment table states the device
    assert (out_dir / "report.html").is_file()
    assert (out_dir / "keep.txt").read_text() == "user data"
    # the control arm: the PyTorch port again, from weights one ulp away
    control = noise["control"]
    assert control.failure is None and [r["iter"] for r in control.log] == [1, 2, 3]
    assert noise["check"]["ok"], noise["check"]["text"]
    assert "## Noise or bug? The same-framework control arm" in md
    assert "No verdict: fewer than 21 iterations" in md  # 3 iterations: too few to judge
    assert [r["iter"] for r in noise["traces"]["control"]] == [0]
    assert noise["traces"]["jittor"][0]["total"] == 0.0  # identical initial weights
    assert 0 < noise["traces"]["control"][0]["total"] < 1e-6


@pytest.mark.ci  # six training arms
def test_two_seeds_tabulate_the_spread_of_final_ap(tiny_config, tiny_coco, tmp_path):
    runs, noise = run_comparison(args(config=tiny_config, data_root=tiny_coco,
                                      out_dir=str(tmp_path), max_iters=2, seeds=2))
    assert sorted(noise["seeds"]) == [0, 1]
    for seed, aps in noise["seeds"].items():
        assert set(aps) == {"torch", "jittor", "control"}
        assert all(ap is not None for ap in aps.values()), (seed, aps)
    assert (tmp_path / "seeds" / "seed_1" / "control" / "latest.pth").is_file()
    md = (tmp_path / "report.md").read_text()
    assert "### Final AP across seeds" in md and "| seed 0 | seed 1 | mean | std |" in md


def test_a_second_run_archives_the_first(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "latest.pth").write_bytes(b"checkpoint")
    (tmp_path / "report.md").write_text("old report")
    (tmp_path / "notes.txt").write_text("user file")
    target = archive_previous_run(str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "user file"
    assert not (tmp_path / "torch").exists() and not (tmp_path / "report.md").exists()
    assert open(os.path.join(target, "torch", "latest.pth"), "rb").read() == b"checkpoint"
    assert open(os.path.join(target, "report.md")).read() == "old report"
    assert archive_previous_run(str(tmp_path)) is None  # nothing left to archive


@pytest.mark.slow
def test_full_comparison_on_the_bundled_data(tmp_path):
    """The main command: both ports reach AP >= 0.25 and agree (the acceptance criterion of `gfocal compare`)."""
    from gfocal.report import agreement_summary
    runs, noise = run_comparison(args(out_dir=str(tmp_path)))
    torch_run, jittor_run = runs["torch"], runs["jittor"]
    assert torch_run.failure is None and jittor_run.failure is None
    agreement = agreement_summary(torch_run.log, jittor_run.log, first_n=20)
    assert agreement["max_rel_first_n"] <= 1e-3
    # After iteration 20, float32 rounding differences (and ReLU kinks, see
    # parity_tests/TOLERANCES.md) compound through SGD into two nearby trajectories.
    # Measured on the bundled data (2026-11-24, 480 iterations): max 5.8e-4 over the first
    # 20, median 0.029 and max 0.196 after. The envelope checks the median.
    assert agreement["median_rel_after"] <= 0.05
    for run in (torch_run, jittor_run):
        assert run.final_stats["AP"] >= 0.25
    assert abs(torch_run.final_stats["AP"] - jittor_run.final_stats["AP"]) <= 0.02
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.html").is_file()
    # The control arm (PyTorch again, weights one ulp away) is a real, rounding-sized
    # perturbation, and Jittor-vs-PyTorch stays within its band by the report's rule:
    # R = median loss difference after iteration 20, jittor vs control, <= RATIO_LIMIT (2,
    # fixed before measuring). Measured on this 2-core machine (2026-12-01, make compare):
    # R = 0.916 (0.0291 vs control 0.0318); dAP +0.008 vs control dAP +0.004.
    from gfocal.control_arm import RATIO_LIMIT
    assert noise["check"]["ok"], noise["check"]["text"]
    assert noise["control"].failure is None and len(noise["control"].log) == len(torch_run.log)
    assert noise["verdict"]["ratio"] <= RATIO_LIMIT, noise["verdict"]["line"]
    md = (tmp_path / "report.md").read_text()
    assert noise["verdict"]["line"] in md and "within the same-framework noise band" in md
