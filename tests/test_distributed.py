"""Data-parallel training on the frameworks' own engines (torchrun + DDP, mpirun + Jittor's
MPI mode), 2 processes x batch 1 against 1 process x batch 2 on the same batches and
weights, and one against the other; faults and bad launches. The tolerances are the parity
suite's (parity_tests/judge.py) at their targets: there is no float64 run here to widen
them."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from gfocal import engine
from gfocal.checkpoint_io import read_training_state
from gfocal.cli import main
from parity_tests import judge, rendering
from gfocal.ports import FRAMEWORKS

# multi-process jobs (torchrun, mpirun), minutes in all: CI runs them (pyproject.toml)
pytestmark = pytest.mark.ci

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
LOSS_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_dfl")
TIMEOUT = 300  # a run is ~10 s: a hang fails the test instead of the suite



def needs_launcher(framework):
    """Skip a Jittor case where OpenMPI's mpirun is missing; torchrun ships with torch."""
    if framework.startswith("jittor") and shutil.which("mpirun") is None:
        pytest.skip("OpenMPI's mpirun is not installed (scripts/setup.sh)")


def launch_command(framework, nproc=2):
    """torchrun / mpirun for `nproc` processes of `python -m gfocal`-like commands."""
    if framework == "torch":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(nproc)]
    return ["mpirun", "-np", str(nproc), "--oversubscribe", sys.executable]


FAULT = os.path.join(ROOT, "tests", "distributed_fault.py")


def run_job(framework, argv, script=("-m", "gfocal"), **extra_env):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1", **extra_env)
    launcher = "pytorch" if framework == "torch" else "mpi"
    cmd = launch_command(framework) + list(script) + argv + ["--launcher", launcher]
    # a session of its own: the launcher's signals when it ends a failed job stay in it
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT,
                          cwd=ROOT, start_new_session=True)


@pytest.fixture(scope="module")
def job(tiny_coco, tiny_model, tmp_path_factory):
    """The config (global batch 2) and one initialisation (written by the PyTorch port)."""
    from gfocal.pytorch.checkpoint import state_dict_numpy
    from gfocal.checkpoint_io import write
    folder = tmp_path_factory.mktemp("distributed")
    config = folder / "tiny.py"
    # size_divisor 128: every image pads to 128 x 128 alone or in a batch. Padding is part
    # of the input (frozen BN turns its zeros into non-zero features next to the image), so
    # only images padded alike give one process of batch 2 the numbers of two of batch 1.
    config.write_text(f"model = {tiny_model!r}\n"
                      f"data = dict(root={tiny_coco!r}, img_scale=[96, 96], batch_size=2, "
                      "size_divisor=128)\n"
                      "optim = dict(warmup_iters=2, epochs=1)\n"
                      # seed 1, not the default 0: from seed 0's initialisation Jittor's
                      # 2 x batch 1 and 1 x batch 2 part after step 1 with the pattern of a
                      # ReLU kink (parity_tests/TOLERANCES.md): head and neck within 1.3e-5, every
                      # backbone tensor upstream of layer4 off by up to 5.6e-3, 101 of 176
                      # tensors within 1e-4 (measured). The parity suite resolves kinks; a
                      # multi-process run cannot, so this test needs an initialisation
                      # without one in its 3 steps.
                      "train = dict(eval_interval=0, seed=1)\n")
    from gfocal.config import load_config
    cfg = load_config(str(config))
    _, model = engine.build_model(cfg, "torch", device="cpu")
    init = str(folder / "init.pth")
    write(init, state_dict_numpy(model), "torch")
    return {"config": str(config), "cfg": cfg, "init": init, "folder": folder}


def snapshot(path, cfg):
    saved = read_training_state(path, num_classes=cfg["model"]["num_classes"])
    return {"params": saved["state_dict"], "momentum": saved["momentum"],
            "iter": saved["meta"]["iter"]}


def read_losses(path):
    with open(path) as f:
        return [{k: r[k] for k in LOSS_KEYS} for r in map(json.loads, f)]


def single_run(job, framework):
    """One process, batch 2: snapshots after step 1 and step STEPS, and the losses."""
    out = {}
    for steps in (1, STEPS):
        work = job["folder"] / f"single_{framework}_{steps}"
        result = engine.train(engine.TrainRun(job["cfg"], framework, str(work),
                                              init_weights=job["init"], max_iters=steps,
                                              device="cpu", progress=False))
        out[steps] = snapshot(result.checkpoint, job["cfg"])
        out["losses"] = read_losses(result.log)
    return out


def parallel_run(job, framework):
    """Two processes, batch 1 each: step 1, then a distributed resume to step STEPS; each
    process records the image ids it trained on (distributed_fault.py, failing nowhere)."""
    work = job["folder"] / f"parallel_{framework}"
    shares = job["folder"] / f"shares_{framework}"
    shares.mkdir()
    base = ["train", job["config"], "--framework", framework, "--work-dir", str(work),
            "--device", "cpu"]
    out = {}
    recorded = {"script": (FAULT, "-1", "0"), "GFOCAL_TEST_SHARES": str(shares)}
    first = run_job(framework, base + ["--max-iters", "1", "--init-weights", job["init"]],
                    **recorded)
    assert first.returncode == 0, first.stderr[-3000:]
    latest = next(p for p in work.iterdir() if p.name.startswith("latest"))
    out[1] = snapshot(str(latest), job["cfg"])
    resumed = run_job(framework, base + ["--max-iters", str(STEPS), "--resume", str(latest)],
                      **recorded)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    out[STEPS] = snapshot(str(latest), job["cfg"])
    out["losses"] = read_losses(str(work / f"log_{framework}.jsonl"))
    out["stdout"] = first.stdout + resumed.stdout
    out["shares"] = {int(p.stem[4:]): [json.loads(line) for line in p.read_text().splitlines()]
                     for p in shares.glob("rank*.jsonl")}
    return out


class Runs(dict):
    """The four training runs, each made on first use (a test that needs only torch's runs
    does not wait for Jittor's, and skips no torch case where mpirun is missing)."""

    def __init__(self, job):
        super().__init__()
        self.job = job

    def __missing__(self, name):
        framework, parallel = name.split()[0], name.endswith(("DDP", "MPI"))
        needs_launcher(framework if parallel else "torch")
        self[name] = (parallel_run if parallel else single_run)(self.job, framework)
        return self[name]


@pytest.fixture(scope="module")
def runs(job):
    return Runs(job)


def rows_after(got, ref, init, steps, kind):
    """The parity suite's rows for one snapshot: parameter updates beyond float32 rounding
    and momentum buffers (after step 1: the all-reduced gradient plus weight decay)."""
    rows = []
    for name in ref["params"]:
        if not name.endswith(("running_mean", "running_var")):
            rows.append(judge.update_stats(f"delta.{name}", got["params"][name],
                                             ref["params"][name], init[name], steps))
    for name in ref["momentum"]:
        rows.append(judge.error_stats(f"momentum.{name}", got["momentum"][name],
                                        ref["momentum"][name]))
    for row in rows:
        row.tolerance = judge.tolerance(row.name, None, kind=kind)
    return rows


def assert_same_training(got, ref, init, context, snapshots=(1, STEPS), trajectory=True):
    """Losses of every step, gradients (momentum after step 1) and parameters after the
    `snapshots` steps, under the parity suite's policy: one step's tolerances after step 1,
    and after several steps the trajectory rule, or (trajectory=False) one step's again."""
    assert len(got["losses"]) == len(ref["losses"]) == STEPS
    for step, (a, b) in enumerate(zip(got["losses"], ref["losses"]), 1):
        for key in LOSS_KEYS:
            assert a[key] == pytest.approx(b[key], rel=judge.TARGET["loss"], abs=1e-9), \
                f"{context}: {key} at step {step}"
    for steps in snapshots:
        assert got[steps]["iter"] == ref[steps]["iter"] == steps
        assert set(got[steps]["params"]) == set(ref[steps]["params"])
        kind = "trajectory" if trajectory and steps > 1 else "optim"
        rows = rows_after(got[steps], ref[steps], init, steps, kind)
        assert judge.first_failure(rows) is None, \
            judge.divergence_message(rows, f"{context}, after {steps} SGD steps")
        strict = [r for r in rows if r.rel <= judge.TARGET["optim"]]
        assert len(strict) >= judge.TRAJECTORY_STRICT * len(rows), \
            rendering.format_table(rows)


@pytest.fixture(scope="module")
def init_state(job):
    return read_training_state(job["init"], num_classes=6)["state_dict"]


@pytest.mark.parametrize("parallel, single", [("torch DDP", "torch"),
                                              ("jittor MPI", "jittor")])
def test_two_processes_of_batch_1_train_as_one_of_batch_2(runs, init_state, parallel, single):
    """PyTorch is held to one step's tolerances after every step: one framework on both
    sides meets no kink a sign apart. Jittor's pair keeps the trajectory rule after 3 steps:
    its 2 x batch 1 and 1 x batch 2 sum the same gradients in another order, and from seed
    0's initialisation that moved a ReLU input across 0 (the job's config says by how much)."""
    assert_same_training(runs[parallel], runs[single], init_state, f"{parallel} vs {single}",
                         trajectory=parallel != "torch DDP")


def test_torch_ddp_and_jittor_mpi_train_alike(runs, init_state):
    """Across frameworks: the losses of every step and the state after one step. The state
    after STEPS steps is left to the pairs above: a ReLU input within rounding of 0 takes
    opposite signs in the two frameworks (parity_tests/TOLERANCES.md, "ReLU kinks"), and from
    that step on the gradients upstream of it differ by up to 5e-2 (measured here in one of
    two runs of one initialisation: 12 of 176 tensors beyond the 1e-2 cap after 3 steps).
    The parity suite resolves such kinks, which needs both ports in one process."""
    assert_same_training(runs["jittor MPI"], runs["torch DDP"], init_state,
                         "jittor MPI vs torch DDP", snapshots=(1,))


@pytest.mark.parametrize("parallel", ["torch DDP", "jittor MPI"])
def test_each_process_trains_on_its_own_share_of_the_global_batch(job, runs, parallel):
    """At every step the two processes saw one image each, different ones, together the
    global batch one process of batch 2 trains on (not each the whole batch, which the
    averaged gradients alone would not reveal)."""
    from gfocal.data.loader import build_dataloader
    single = [[int(m["img_id"]) for m in batch["img_metas"]]
              for batch, _ in zip(build_dataloader(job["cfg"], "train"), range(STEPS))]
    shares = runs[parallel]["shares"]
    assert sorted(shares) == [0, 1] and all(len(s) == STEPS for s in shares.values()), shares
    for step, whole in enumerate(single):
        mine, theirs = shares[0][step], shares[1][step]
        assert len(mine) == len(theirs) == 1 and mine != theirs, (step, shares)
        assert sorted(mine + theirs) == sorted(whole), (step, shares, single)


@pytest.mark.parametrize("name", ["torch DDP", "jittor MPI"])
def test_only_process_0_reports(runs, name):
    assert runs[name]["stdout"].count("checkpoint: ") == 2, runs[name]["stdout"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_failing_process_stops_the_job_and_keeps_the_last_checkpoint(job, framework):
    needs_launcher(framework)
    """Process 1 fails at the 2nd step of a resumed run (iteration 3), process 0 waiting for
    it in the gradient all-reduce: the job ends non-zero within the timeout, the message
    names rank 1, `latest` is still the one of iteration 1."""
    work = job["folder"] / f"fault_{framework}"
    base = ["train", job["config"], "--framework", framework, "--work-dir", str(work),
            "--device", "cpu", "--init-weights", job["init"]]
    first = run_job(framework, base + ["--max-iters", "1"])
    assert first.returncode == 0, first.stderr[-3000:]
    latest = next(p for p in work.iterdir() if p.name.startswith("latest"))
    failed = run_job(framework, base + ["--max-iters", "3", "--resume", str(latest)],
                     script=(FAULT, "1", "2"))
    assert failed.returncode != 0, failed.stdout[-2000:] + failed.stderr[-2000:]
    assert "gfocal train [rank 1 of 2]: error: planted failure at step 2" in failed.stderr
    assert snapshot(str(latest), job["cfg"])["iter"] == 1
    assert len(read_losses(str(work / f"log_{framework}.jsonl"))) == 2  # 1, then 1 resumed


@pytest.mark.parametrize("launcher, framework, env, words", [
    ("mpi", "jittor", {}, ["not started by mpirun", "mpirun -np N"]),
    ("pytorch", "torch", {}, ["not started by torchrun", "torchrun --nproc-per-node N"]),
    ("pytorch", "jittor", {}, ["--launcher pytorch is for --framework torch",
                               "--launcher mpi"]),
    ("pytorch", "torch", {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                          "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     ["'data.batch_size' = 3 is not divisible by the 2 processes"]),
])
def test_bad_launches_are_one_line(job, tmp_path, capsys, monkeypatch, launcher, framework,
                                   env, words):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "odd.py"
    config.write_text(open(job["config"]).read().replace("batch_size=2", "batch_size=3"))
    code = main(["train", str(config), "--framework", framework, "--work-dir",
                 str(tmp_path / "w"), "--launcher", launcher])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "w").exists()
