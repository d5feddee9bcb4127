"""A work dir has one owner at a time, a new run never destroys an earlier one, and the
temporary files of a killed writer are removed (gfocal/workdir.py, gfocal train)."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

from gfocal.cli import main
from gfocal.runlog import trim_log
from gfocal.workdir import LOCK_NAME, WorkDirError, own_work_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python(code, **kwargs):
    """A real Python process running `code` (from the repository root), its stdout a pipe."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kwargs)


def write_lock(work_dir, pid, host=None):
    """A lock file as a run of `pid` writes it (without holding its flock)."""
    work_dir.mkdir(exist_ok=True)
    (work_dir / LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "started": "2026-12-07 10:00:00"}))


def test_a_second_owner_is_refused_naming_the_dir_pid_and_host(tmp_path):
    """Two real processes: while one holds the dir, the other is refused in one line; once
    the holder has ended, the dir is free again and the lock file is gone."""
    work = tmp_path / "work"
    holder = python(f"""
        import sys
        from gfocal.workdir import own_work_dir
        with own_work_dir({str(work)!r}):
            print("held", flush=True)
            sys.stdin.read()
        """)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(WorkDirError) as refused:
            with own_work_dir(str(work)):
                pass
        line = str(refused.value)
        assert "\n" not in line and str(work) in line
        assert f"pid {holder.pid} on {socket.gethostname()}" in line
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (work / LOCK_NAME).exists()
    with own_work_dir(str(work)):
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_a_lock_of_a_live_process_holds_and_of_an_ended_one_is_taken_over(tmp_path, capsys):
    work = tmp_path / "work"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_lock(work, sleeper.pid)
        with pytest.raises(WorkDirError, match=f"pid {sleeper.pid} on "):
            with own_work_dir(str(work)):
                pass
    finally:
        sleeper.terminate()  # SIGTERM: Jittor's SIGCHLD handler ends a parent of a child
        sleeper.wait()       # ended by another signal (its "quick exit")
    with own_work_dir(str(work)):  # its pid has ended: a stale lock
        assert json.loads((work / LOCK_NAME).read_text())["pid"] == os.getpid()
    note = capsys.readouterr().err
    assert f"pid {sleeper.pid}" in note and "has ended" in note and "taken over" in note
    assert not (work / LOCK_NAME).exists()


def test_a_lock_of_another_host_is_not_guessed_stale(tmp_path):
    work = tmp_path / "work"
    write_lock(work, 1, host="another-host.example")
    with pytest.raises(WorkDirError, match="pid 1 on another-host.example"):
        with own_work_dir(str(work)):
            pass


def test_the_lock_is_released_when_the_run_fails_and_an_unused_new_dir_removed(tmp_path):
    work = tmp_path / "work"
    with pytest.raises(RuntimeError, match="planted"):
        with own_work_dir(str(work)):
            assert (work / LOCK_NAME).exists()
            raise RuntimeError("planted")
    assert not work.exists()  # created for the run, nothing written in it
    kept = tmp_path / "kept"
    kept.mkdir()
    with own_work_dir(str(kept)):
        (kept / "log_torch.jsonl").write_text("")
    assert os.listdir(kept) == ["log_torch.jsonl"]


def test_a_killed_writers_temporary_file_is_removed_at_the_next_start(tmp_path, capsys):
    """A real writer killed (SIGTERM, no handler) inside atomic_path leaves
    `.latest.pth.<random>.tmp`;
    the next owner of the dir removes it, and nothing else."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "latest.pth").write_bytes(b"the previous checkpoint")
    writer = python(f"""
        import time
        from gfocal.atomic import atomic_path
        with atomic_path({str(work / 'latest.pth')!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a checkpoint")
            print("writing", flush=True)
            time.sleep(60)
        """)
    assert writer.stdout.readline() == "writing\n"
    writer.terminate()  # not SIGKILL: see the test above
    writer.wait()
    orphans = [name for name in os.listdir(work) if name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].startswith(".latest.pth.")
    with own_work_dir(str(work)):
        pass
    assert sorted(os.listdir(work)) == ["latest.pth"]
    assert (work / "latest.pth").read_bytes() == b"the previous checkpoint"
    assert "removed 1 temporary file" in capsys.readouterr().err


def test_a_resumed_log_keeps_the_records_up_to_the_checkpoint(tmp_path):
    """[1, 2, 3, 4] and a line cut short, resumed from iteration 2: [1, 2] (then 3, 4 again),
    not [1, 2, 3, 4, 3, 4]."""
    log = tmp_path / "log_torch.jsonl"
    log.write_text("".join(json.dumps({"iter": i, "loss": 1.0 / i}) + "\n" for i in range(1, 5))
                   + '{"iter": 5, "lo')
    trim_log(str(log), 2)
    assert [json.loads(line)["iter"] for line in log.read_text().splitlines()] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == [log.name]


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize("command,option", [("train", "--max-iters"), ("compare", "--max-iters"),
                                            ("compare", "--epochs")])
def test_a_count_below_1_is_refused_at_parse_time(tiny_config, tmp_path, capsys, command,
                                                  option, value):
    where = (["--framework", "torch", "--work-dir", str(tmp_path / "w")] if command == "train"
             else ["--out-dir", str(tmp_path / "w")])
    with pytest.raises(SystemExit) as stop:
        main([command, tiny_config, *where, option, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {option}: {value} is below 1" in err
    assert not (tmp_path / "w").exists()


def test_a_rerun_into_a_finished_run_is_refused_and_overwrite_keeps_it_aside(
        torch_port, tiny_config, tmp_path, capsys):
    work = tmp_path / "work"
    train = ["train", tiny_config, "--framework", "torch", "--work-dir", str(work),
             "--max-iters", "1", "--device", "cpu"]
    assert main(train) == 0
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    assert sorted(before) == ["latest.pth", "log_torch.jsonl"]
    capsys.readouterr()
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{work} holds a run" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before  # untouched
    assert main(train + ["--overwrite"]) == 0
    err = capsys.readouterr().err
    kept = err.split("were moved to ", 1)[1].split()[0]
    assert os.path.dirname(kept) == str(work / "previous")
    assert {p.name: p.read_bytes() for p in pathlib.Path(kept).iterdir()} == before
    assert sorted(p.name for p in work.iterdir()) == ["latest.pth", "log_torch.jsonl",
                                                       "previous"]
