"""Evaluation in a data-parallel job (torchrun + DDP, mpirun + Jittor's MPI mode): the
processes share the val images, process 0 gathers the detections and computes the COCO
statistics. Against a 1-process evaluation of the same checkpoint, on an odd number of val
images (process 0 takes 3, process 1 takes 2); and a process failing in evaluation."""
import json
import os
import subprocess
import sys

import pytest

from gfocal.data.subset import make_subset
from gfocal.data.synthetic import ensure_mini_coco
from gfocal.evaluation.coco_eval import STAT_NAMES, evaluate
from gfocal.ports import FRAMEWORKS
from test_distributed import FAULT, ROOT, TIMEOUT, needs_launcher, run_job

# multi-process jobs (torchrun, mpirun): CI runs them (pyproject.toml)
pytestmark = pytest.mark.ci

VAL_IMAGES = 5  # odd: the 2 processes cannot take equal shares
# one thread in every process, the reference included: the CPU kernels' sums then run in
# one order, and the two evaluations can be compared exactly
THREADS = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def eval_job(tiny_model, tmp_path_factory):
    """A config on 4 train images (global batch 2: 2 steps, then the evaluation of epoch 1)
    and 5 val images, every box kept."""
    src = ensure_mini_coco()
    root = tmp_path_factory.mktemp("odd_coco")
    for split, n in (("train2017", 4), ("val2017", VAL_IMAGES)):
        make_subset(os.path.join(src, "annotations", f"instances_{split}.json"),
                    os.path.join(src, split), n, root, split=split)
    folder = tmp_path_factory.mktemp("distributed_eval")
    config = folder / "tiny.py"
    # score_thr 0: an initialisation trained 2 steps scores below the default 0.05, and
    # the comparison needs detections (up to 20 per image)
    model = dict(tiny_model, score_thr=0.0, max_per_img=20)
    config.write_text(f"model = {model!r}\n"
                      f"data = dict(root={str(root)!r}, img_scale=[96, 96], batch_size=2)\n"
                      "optim = dict(warmup_iters=2, epochs=1)\n"
                      "train = dict(eval_interval=1, seed=1)\n")
    from gfocal.config import load_config
    cfg = load_config(str(config))
    return {"config": str(config), "cfg": cfg, "folder": folder,
            "gt": os.path.join(str(root), cfg["data"]["val_ann"])}


def train_command(eval_job, framework, work):
    return ["train", eval_job["config"], "--framework", framework, "--work-dir", str(work),
            "--device", "cpu"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_two_processes_evaluate_as_one(eval_job, framework):
    """The detections process 0 gathers (in the val split's order) and the 12 statistics
    the job prints are exactly those of one process evaluating the job's checkpoint."""
    needs_launcher(framework)
    folder = eval_job["folder"]
    work, gathered = folder / f"job_{framework}", folder / f"gathered_{framework}.json"
    job = run_job(framework, train_command(eval_job, framework, work),
                  script=(FAULT, "-1", "0"), GFOCAL_TEST_RESULTS=str(gathered), **THREADS)
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    lines = [line for line in job.stdout.splitlines() if line.startswith("epoch 1: ")]
    assert len(lines) == 1, job.stdout
    stats = json.loads(lines[0][len("epoch 1: "):])
    latest = next(p for p in work.iterdir() if p.name.startswith("latest"))

    reference = folder / f"single_{framework}.json"
    single = subprocess.run([sys.executable, "-m", "gfocal", "test", eval_job["config"],
                             str(latest), "--framework", framework, "--device", "cpu",
                             "--out", str(reference)],
                            capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                            env=dict(os.environ, **THREADS))
    assert single.returncode == 0, single.stderr[-3000:]
    want = json.loads(reference.read_text())
    got = json.loads(gathered.read_text())
    assert len({r["image_id"] for r in want}) == VAL_IMAGES, "an image without detections"
    assert got == want
    assert list(stats) == list(STAT_NAMES)
    assert stats == evaluate(eval_job["gt"], want)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_process_failing_in_evaluation_stops_the_job(eval_job, framework):
    """Process 1 fails at its first evaluation batch while process 0 waits for its
    detections: the job ends non-zero, the message names rank 1."""
    needs_launcher(framework)
    work = eval_job["folder"] / f"fault_{framework}"
    failed = run_job(framework, train_command(eval_job, framework, work),
                     script=(FAULT, "1", "1"), GFOCAL_TEST_FAIL_EVAL="1", **THREADS)
    assert failed.returncode != 0, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert ("gfocal train [rank 1 of 2]: error: planted failure at evaluation batch 1"
            in failed.stderr), failed.stderr[-3000:]
    assert "epoch 1: " not in failed.stdout
