"""Training ended from outside: SIGTERM / SIGINT save the progress and say so, a full disk is
one line naming the file with the previous checkpoint intact (gfocal/interrupt.py, engine)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gfocal import engine
from gfocal.checkpoint_io import read_training_state
from gfocal.cli import main
from gfocal.interrupt import TrainingInterrupted

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def long_config(tiny_config, tmp_path):
    """tiny_config with epochs enough to be stopped long before the end (no evaluation on
    the way), an epoch checkpoint every epoch."""
    path = tmp_path / "long.py"
    path.write_text(open(tiny_config).read() + "optim = dict(warmup_iters=5, epochs=50)\n"
                    "train = dict(eval_interval=100)\n")
    return str(path)


def logged_iters(path):
    with open(path) as f:
        return [json.loads(line)["iter"] for line in f if line.endswith("\n")]


def wait_for_iteration(process, log, iteration, limit_s=300):
    """Wait until `log` has a record of `iteration` (or the process ended)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(log) and (logged_iters(log) or [0])[-1] >= iteration:
            return
        time.sleep(0.05)
    raise AssertionError(f"no iteration {iteration} in {log} (process ended: "
                         f"{process.poll()})")


@pytest.mark.ci  # a real `gfocal train` process, two resumes (in-process: the SIGINT test)
def test_sigterm_saves_latest_says_so_and_the_run_resumes(torch_port, tiny_config, tmp_path,
                                                         capsys):
    """A real `gfocal train` process sent a real SIGTERM after its first epoch checkpoint:
    exit 143, one line naming the iteration and `latest`, which holds that iteration; a
    resume from it goes on, and one from the epoch checkpoint keeps the log free of
    repeated iterations."""
    config, work = long_config(tiny_config, tmp_path), tmp_path / "work"
    log, latest = str(work / "log_torch.jsonl"), str(work / "latest.pth")
    child = subprocess.Popen([sys.executable, "-m", "gfocal", "train", config, "--framework",
                              "torch", "--device", "cpu", "--work-dir", str(work)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        wait_for_iteration(child, log, 5)  # past the first epoch (3 iterations)
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.terminate()
            child.wait()
    done = logged_iters(log)[-1]
    assert child.returncode == 128 + signal.SIGTERM, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("gfocal")]
    assert said == [f"gfocal: SIGTERM: training stopped after iteration {done}; the progress "
                    f"is saved in {latest}"]
    epoch_1 = str(work / "epoch_1.pth")
    first_epoch = read_training_state(epoch_1)["meta"]["iter"]
    assert read_training_state(latest)["meta"]["iter"] == done > first_epoch
    assert not [name for name in os.listdir(work) if name.startswith(".")]  # lock, temporaries
    capsys.readouterr()
    resume = ["train", config, "--framework", "torch", "--device", "cpu", "--work-dir",
              str(work)]
    assert main(resume + ["--resume", latest, "--max-iters", str(done + 1)]) == 0
    assert logged_iters(log) == list(range(1, done + 2))
    # the log has iterations past the epoch checkpoint: a resume from it does them again
    assert main(resume + ["--resume", epoch_1, "--max-iters", str(first_epoch + 1)]) == 0
    assert logged_iters(log) == list(range(1, first_epoch + 2))


def test_sigint_saves_latest_and_the_handlers_are_put_back(torch_port, tiny_config, tmp_path,
                                                           capsys):
    """SIGINT (Ctrl-C) to this process in the middle of an epoch: TrainingInterrupted with
    status 130 after `latest` holds the step; the handlers before the run are back."""
    from gfocal.config import load_config
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def interrupt(iteration, model, port):
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as stop:
        engine.train(engine.TrainRun(load_config(tiny_config), "torch", str(tmp_path),
                                     device="cpu", progress=False, on_iter_end=interrupt))
    assert stop.value.code == 130
    assert read_training_state(str(tmp_path / "latest.pth"))["meta"]["iter"] == 2
    assert "SIGINT: training stopped after iteration 2" in capsys.readouterr().err
    assert {s: signal.getsignal(s) for s in before} == before


def fill(directory, leave=64 << 10):
    """Take the free space of `directory`'s file system but `leave` bytes."""
    stat = os.statvfs(directory)
    left, chunk = stat.f_bavail * stat.f_frsize - leave, bytes(16 << 20)
    with open(os.path.join(directory, "filler"), "wb") as f:
        while left > 0:
            left -= f.write(chunk[:left])


def test_a_log_on_a_full_disk_is_one_line_naming_it(small_disk):
    from gfocal.atomic import OutputError
    from gfocal.runlog import RunLog
    path = str(small_disk / "log_torch.jsonl")
    log = RunLog(path)
    fill(small_disk, leave=0)
    record = {"iter": 1, "loss": 1.0, "padding": "x" * 1000}
    with pytest.raises(OutputError) as refused:
        for _ in range(100):  # past the page the file has already
            log.write(record)
    log.close()  # the failure is not raised again
    assert str(refused.value) == f"{path}: cannot write (No space left on device)"


def test_a_full_disk_before_the_run_is_one_line(small_disk):
    from gfocal.atomic import OutputError
    from gfocal.workdir import own_work_dir
    fill(small_disk, leave=0)
    with pytest.raises(OutputError, match="No space left on device"):
        with own_work_dir(str(small_disk / "work")):
            pass


def test_a_full_disk_is_one_line_naming_the_checkpoint_which_stays_intact(
        port, tiny_config, small_disk, capsys):
    framework, work = port.FRAMEWORK, small_disk / "work"
    train = ["train", tiny_config, "--framework", framework, "--device", "cpu", "--work-dir",
             str(work)]
    assert main(train + ["--max-iters", "1"]) == 0
    latest = work / f"latest{port.checkpoint.EXTENSION}"
    before = latest.read_bytes()
    fill(small_disk)
    capsys.readouterr()
    assert main(train + ["--resume", str(latest), "--max-iters", "2"]) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("gfocal")]
    assert said == [f"gfocal train: error: {latest}: cannot write (No space left on device)"]
    assert latest.read_bytes() == before
    assert sorted(os.listdir(work)) == [latest.name, f"log_{framework}.jsonl"]  # no temporaries


# A process that writes `latest` over and over (a 24 MB state, so a write lasts long enough to
# be cut at different places), printing each write's number once it has replaced the file.
WRITER = """
import sys
import numpy as np
from gfocal.checkpoint_io import write
path, fmt = sys.argv[1], sys.argv[2]
state = {f"w{k}": np.full((1000, 1000), 0.5, np.float32) for k in range(6)}
n = 0
while True:
    n += 1
    write(path, state, fmt, meta={"iter": n})
    print(n, flush=True)
"""
# Starts WRITER and SIGKILLs it `fraction` of a write's duration into a write; prints the
# number of the last complete write. A process of its own: Jittor (imported by the tests'
# conftest) ends a process whose child dies of a signal other than SIGTERM (its SIGCHLD
# handler).
KILLER = """
import signal, subprocess, sys, time
path, fmt, fraction = sys.argv[1], sys.argv[2], float(sys.argv[3])
child = subprocess.Popen([sys.executable, "-c", sys.argv[4], path, fmt],
                         stdout=subprocess.PIPE, text=True)
try:
    child.stdout.readline()
    t0 = time.monotonic()
    done = int(child.stdout.readline())
    time.sleep((time.monotonic() - t0) * fraction)  # into the next write
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    print(max([done, *map(int, child.stdout.read().split())]))
finally:
    if child.poll() is None:
        child.kill()
"""


# the torch case in CI only: each of its writers imports torch (5 s in all on 2 cores)
@pytest.mark.parametrize("fmt,name", [pytest.param("torch", "latest.pth", marks=pytest.mark.ci),
                                      ("jittor", "latest.pkl")])
def test_sigkill_at_any_point_of_a_write_leaves_latest_complete(fmt, name, tmp_path):
    """SIGKILL cut into a checkpoint write at a tenth, half and nine tenths of a write's
    duration: `latest` is always a complete write, the last one done, and the temporary file a kill
    leaves is removed when a run next takes the dir."""
    from gfocal.workdir import own_work_dir
    path = tmp_path / name
    for fraction in (0.1, 0.5, 0.9):
        killer = subprocess.run([sys.executable, "-c", KILLER, str(path), fmt, str(fraction),
                                 WRITER], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert killer.returncode == 0, killer.stderr[-3000:]
        saved = read_training_state(str(path))
        # the last write said done, or the one cut between its rename and its print
        assert saved["meta"]["iter"] - int(killer.stdout) in (0, 1), fraction
        assert sorted(saved["state_dict"]) == [f"w{k}" for k in range(6)]
        assert all((v == 0.5).all() for v in saved["state_dict"].values())
    with own_work_dir(str(tmp_path)):
        assert sorted(os.listdir(tmp_path)) == [".gfocal.lock", name]
