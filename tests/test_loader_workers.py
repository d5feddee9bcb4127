"""Loader workers that die at start-up or hang: one line within a bound, never a wait for
ever, no worker left behind."""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import types
from concurrent.futures import ProcessPoolExecutor

import pytest

from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.loader import SPAWN_HINT, DataLoader, _stop_pool
from tests.test_loader import SCALE, batches, new_children, root, train_files  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOUND_S = 60

# Iterates a 2-worker loader, run as `python - < script` (no file for the workers to import)
# or from a file, with argv: annotation file, image folder, what goes wrong. "start": a
# worker's import of the main module ends it (as a crashing import would); "kill": after
# the first batch a worker is killed (as by the out-of-memory killer; not in the test
# process: Jittor, imported there, ends a process whose child a signal kills). The dataset
# carries 1 MiB, as a real annotation file does: more than a pipe holds, so spawning with it
# as an argument would block for ever once the worker is gone.
SCRIPT = """\
import multiprocessing
import os
import signal
import sys
if __name__ == "__mp_main__" and sys.argv[3] == "start":
    sys.exit(3)
from gfocal.data.coco import CocoDataset
from gfocal.data.loader import DataLoader
from gfocal.errors import USER_ERRORS
from tests.processes import child_processes
if __name__ == "__main__":
    dataset = CocoDataset(*sys.argv[1:3])
    dataset.padding = bytes(1 << 20)
    try:
        with DataLoader(dataset, batch_size=1, img_scale=(160, 128), workers=2) as loader:
            batches = iter(loader)
            next(batches)
            if sys.argv[3] == "kill":
                victim = min(child_processes())
                os.kill(victim, signal.SIGKILL)
                print("killed", victim)
            list(batches)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("workers left:", len(multiprocessing.active_children()))
        sys.exit(2)
"""


def run_bounded(command, stdin):
    """subprocess.run with a bound; past it the process is stopped with SIGTERM (a child
    killed by another signal would make Jittor end this process) and the test fails."""
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}) as process:
        try:
            out, err = process.communicate(stdin, timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.communicate(timeout=BOUND_S)
            pytest.fail(f"still running after {BOUND_S} s: {command}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


# "kill" ran past its 60 s bound once in a loaded full run (passed alone): kept in the slow
# tests until that is understood; the start-up cases and tests/test_loader.py's dead-worker
# test stay in the default suite.
@pytest.mark.parametrize("main, fault", [("stdin", "start"), ("file", "start"),
                                         pytest.param("file", "kill", marks=pytest.mark.slow)])
def test_a_worker_that_cannot_start_or_is_killed_ends_in_one_line(root, tmp_path, main,
                                                                  fault):
    args = [*train_files(root), fault]
    if main == "stdin":
        command, stdin = [sys.executable, "-", *args], SCRIPT
    else:
        script = tmp_path / "script.py"
        script.write_text(SCRIPT)
        command, stdin = [sys.executable, str(script), *args], ""
    done = run_bounded(command, stdin)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line, = done.stderr.splitlines()
    if main == "stdin":
        assert line == (f"error: data workers cannot start: the main module '<stdin>' is not "
                        f"a file; {SPAWN_HINT}")
    elif fault == "start":
        assert re.match(r"error: data worker [12] of 2 \(pid \d+\) exited with code 3 while "
                        r"the batch with files \S+\.png in ", line)
        assert line.endswith(f"; no batch had come back yet: {SPAWN_HINT}")
    else:
        victim = done.stdout.splitlines()[0].split()[1]
        assert re.match(rf"error: data worker [12] of 2 \(pid {victim}\) was killed by signal "
                        r"9 \(SIGKILL\) while the batch with files \S+\.png in ", line)
        assert SPAWN_HINT not in line
    assert done.stdout.splitlines()[-1] == "workers left: 0"


class SlowDataset(CocoDataset):
    """Its first 2 samples, each taking `delay` seconds to load."""

    def __init__(self, ann_file, img_dir, delay):
        super().__init__(ann_file, img_dir)
        self.delay = delay

    def __len__(self):
        return 2

    def load(self, idx):
        time.sleep(self.delay)
        return super().load(idx)


@pytest.mark.parametrize("delay, done", [(1.2, True),
                                         pytest.param(60, False, marks=pytest.mark.ci)])
def test_a_live_worker_is_awaited_up_to_the_timeout(root, delay, done, new_children):
    """Batches slower than the poll but within `timeout` come; one past it ends the
    iteration with one line, and the stuck worker is stopped."""
    slow = DataLoader(SlowDataset(*train_files(root), delay=delay), batch_size=1,
                      img_scale=SCALE, shuffle=False, workers=1, timeout=4)
    start = time.monotonic()
    if done:
        with slow:
            ids = [meta["img_id"] for batch in batches(slow) for meta in batch["img_metas"]]
        assert ids == slow.dataset.img_ids[:2]
    else:
        with pytest.raises(DatasetError, match=r"^no batch from the 1 data workers in 4 s "
                                               r"although they are alive .* files \S+\.png in "):
            batches(slow)
        assert time.monotonic() - start < 20
    assert new_children() == []


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got 0"):
        DataLoader([], batch_size=1, img_scale=SCALE, timeout=0)


@pytest.mark.parametrize("ahead, words", [
    (0, ""), (1, " (or one of the 1 batch prefetched after it)"),
    (2, " (or one of the 2 batches prefetched after it)")])
def test_a_death_message_names_the_batches_prefetched_after_the_awaited_one(ahead, words):
    """The pool fails every pending batch at once, so the message counts the batches
    prefetched after the awaited one, in the singular for one."""
    stub = types.SimpleNamespace(workers=2, dataset=None, _delivered=True)
    message = DataLoader._death_message(stub, [(1, 4242, 3)], [(5, False)], ahead)
    assert message == ("data worker 1 of 2 (pid 4242) exited with code 3 while the batch "
                       f"with files sample 5{words} was awaited")


class FreedMemory:
    """Stands for the loader's shared copy: records that _stop_pool freed it."""
    closed = unlinked = False

    def close(self):
        self.closed = True

    def unlink(self):
        self.unlinked = True


def test_stopping_the_pool_cancels_the_batches_no_worker_has_started(new_children):
    """A closed loader must not leave its queued batches to run: the pool cancels every
    future that no worker has taken yet, the worker ends on its own once its queued tasks
    are done (1.5 s at most, within JOIN_TIMEOUT_S) and the shared copy is freed."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    futures = [pool.submit(time.sleep, 0.5) for _ in range(8)]
    futures[0].result(timeout=BOUND_S)  # the worker is up and has taken the first tasks
    memory = FreedMemory()
    _stop_pool(pool, memory)
    # a 1-worker pool hands a worker its running task and queues two more (max_workers +
    # EXTRA_QUEUED_CALLS): after the first is done, the fifth onwards have not been taken
    assert all(f.cancelled() for f in futures[4:])
    assert memory.closed and memory.unlinked
    assert new_children() == []


class EndedWorker:
    """A pool process that has ended with `exitcode`: its sentinel is a readable pipe."""

    def __init__(self, pid, exitcode):
        self.sentinel, write_end = os.pipe()
        os.write(write_end, b"x")
        os.close(write_end)
        self.pid, self.exitcode = pid, exitcode


@pytest.mark.parametrize("codes, named", [
    ((-signal.SIGTERM, 3, -signal.SIGTERM), [(2, 12, 3)]),  # the others: the pool's SIGTERM
    ((-signal.SIGTERM, -signal.SIGKILL), [(2, 12, -signal.SIGKILL)]),
    ((-signal.SIGTERM,), [(1, 11, -signal.SIGTERM)])])  # only terminated ones: all named
def test_a_broken_pool_names_the_worker_that_began_it(codes, named):
    """A worker that dies breaks the pool, which then terminates the others (SIGTERM): the
    death message must name the first, not one of those."""
    workers = {11 + i: EndedWorker(11 + i, code) for i, code in enumerate(codes)}
    stub = types.SimpleNamespace(_pool=types.SimpleNamespace(_processes=workers))
    try:
        assert DataLoader._ended_workers(stub) == named
    finally:
        for worker in workers.values():
            os.close(worker.sentinel)
