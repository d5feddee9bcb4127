"""`gfocal train/test` end to end on a tiny config, and one clear message per bad input."""
import os
import shutil

import pytest

from gfocal.cli import main
from gfocal.ports import FRAMEWORKS


def test_train_then_test_prints_the_12_statistics(port, tiny_config, tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["train", tiny_config, "--framework", port.FRAMEWORK, "--work-dir", str(work),
                 "--max-iters", "1"]) == 0
    ckpt = work / ("latest" + port.checkpoint.EXTENSION)
    assert ckpt.is_file()
    out_json = tmp_path / "results.json"
    assert main(["test", tiny_config, str(ckpt), "--framework", port.FRAMEWORK,
                 "--eval", "bbox", "--out", str(out_json)]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[0] for line in lines if line and line.split()[0].startswith(("AP", "AR"))]
    assert names == ["AP", "AP50", "AP75", "APs", "APm", "APl",
                     "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
    assert out_json.is_file()


@pytest.mark.parametrize("argv_tail, words", [
    (["--framework", "torch", "--work-dir", "W"], ["not found"]),
])
def test_missing_config_is_one_line(tmp_path, capsys, argv_tail, words):
    code = main(["train", str(tmp_path / "missing.py")] + argv_tail)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert str(tmp_path / "missing.py") in err and all(w in err for w in words)


def test_a_corrupt_image_stops_training_with_workers_in_one_line(tiny_coco, tiny_model,
                                                                tmp_path, capsys):
    """A loader worker that cannot read an image stops training: one line naming the file,
    exit 2, and no worker process left."""
    from tests.processes import child_processes
    data = tmp_path / "coco"
    shutil.copytree(tiny_coco, data)
    victim = sorted((data / "train2017").iterdir())[3]
    victim.write_bytes(b"not an image")
    config = tmp_path / "workers.py"
    config.write_text(f"model = {tiny_model!r}\n"
                      f"data = dict(root={str(data)!r}, img_scale=[96, 96], batch_size=2, "
                      "workers=2)\noptim = dict(warmup_iters=5, epochs=1)\n"
                      "train = dict(eval_interval=0)\n")
    before = child_processes()
    code = main(["train", str(config), "--framework", "torch", "--work-dir",
                 str(tmp_path / "work"), "--device", "cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith("gfocal")]
    assert code == 2 and len(errors) == 1, errors
    assert str(victim) in errors[0] and "cannot be decoded" in errors[0]
    assert child_processes() - before == set()


def test_checkpoint_of_another_model_lists_the_bad_keys(tiny_config, tmp_path, capsys):
    from gfocal.checkpoint_io import write
    import numpy as np
    bad = tmp_path / "bad.pth"
    write(str(bad), {"backbone.conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                     "something.else": np.zeros(3, np.float32)}, "torch")
    code = main(["test", tiny_config, str(bad), "--framework", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "something.else" in err and "missing" in err and "unexpected" in err


def printed_paths(text, prefixes):
    """Paths printed after one of `prefixes` at the start of a line."""
    return [line.split(":", 1)[1].strip() for line in text.splitlines()
            if line.startswith(prefixes)]


def test_compare_with_a_missing_data_root_stops_before_any_work(tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["compare", "--data-root", str(tmp_path / "nonexistent"),
                 "--out-dir", str(out_dir)])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert str(tmp_path / "nonexistent") in captured.err and "not found" in captured.err
    assert "training" not in captured.out and not out_dir.exists()


def test_compare_with_a_failed_port_writes_its_report_and_exits_1(tiny_config, tmp_path,
                                                                 capsys, monkeypatch):
    from gfocal import compare
    real_train = compare.engine.train

    def train(run):
        if run.framework == "jittor":
            raise RuntimeError("planted failure")
        return real_train(run)

    monkeypatch.setattr(compare.engine, "train", train)
    out_dir = tmp_path / "out"
    code = main(["compare", tiny_config, "--out-dir", str(out_dir), "--max-iters", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "jittor failed" in captured.err and "planted failure" in captured.out
    report = (out_dir / "report.md").read_text()
    assert "planted failure" in report
    printed = captured.out.split("report:", 1)[1].split()
    assert printed and all(os.path.isfile(p) for p in printed)


@pytest.mark.parametrize("resumed_by", FRAMEWORKS)
def test_resuming_a_finished_run_says_so_and_names_an_existing_file(tiny_config, tmp_path,
                                                                   capsys, resumed_by):
    work = tmp_path / "work"
    assert main(["train", tiny_config, "--framework", "torch", "--work-dir", str(work),
                 "--max-iters", "1"]) == 0
    capsys.readouterr()
    latest = work / "latest.pth"
    again = tmp_path / "again"
    assert main(["train", tiny_config, "--framework", resumed_by, "--work-dir", str(again),
                 "--resume", str(latest), "--max-iters", "1"]) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and str(latest) in out and "iteration 1 of 1" in out
    assert not again.exists()  # no empty log, no checkpoint it would not write
    assert "latest.pkl" not in out


def test_resume_from_an_official_checkpoint_is_one_line(tiny_config, tiny_model, tmp_path,
                                                         capsys):
    from tests.official_layout import official_model, save_official_checkpoint
    path = str(tmp_path / "official.pth")
    save_official_checkpoint(path, official_model(tiny_model), [f"c{i}" for i in range(6)])
    code = main(["train", tiny_config, "--framework", "torch", "--work-dir",
                 str(tmp_path / "w"), "--resume", path])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--init-weights" in err


@pytest.mark.parametrize("module, command", [("gfocal", "gfocal"),
                                             ("weights_converter", "gfocal-convert")])
def test_python_dash_m_is_the_command(module, command, tmp_path):
    """`python -m gfocal` / `python -m weights_converter`: same parser, same exit codes."""
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith(f"usage: {command} ")
    missing = str(tmp_path / "missing.py")
    argv = (["train", missing, "--framework", "torch", "--work-dir", str(tmp_path / "w")]
            if module == "gfocal" else [missing, str(tmp_path / "out.pth"), "--from", "torch",
                                        "--to", "jittor"])
    run = subprocess.run([sys.executable, "-m", module] + argv, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert missing in run.stderr and "not found" in run.stderr


@pytest.mark.parametrize("option, value, kind, choices", [
    ("--amp", "fp8", "a precision", "off, bf16, fp16, native-bf16, native-fp16"),
    ("--amp", "native-fp8", "a precision", "off, bf16, fp16, native-bf16, native-fp16"),
    ("--tuning", "fast", "a speed setting", "default, tuned"),
])
@pytest.mark.parametrize("command", ["train", "test", "compare"])
def test_a_bad_choice_on_the_command_line_is_one_line_and_exit_2(command, option, value, kind,
                                                                 choices, tiny_config,
                                                                 tmp_path, capsys):
    argv = {"train": ["train", tiny_config, "--framework", "torch", "--work-dir",
                      str(tmp_path / "w")],
            "test": ["test", tiny_config, str(tmp_path / "none.pth"), "--framework", "torch"],
            "compare": ["compare", tiny_config, "--out-dir", str(tmp_path / "c")]}[command]
    assert main(argv + [option, value]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gfocal {command}: error: {option} = {value!r} is not {kind} (choose " \
                  f"{choices})"
    assert not (tmp_path / "w").exists() and not (tmp_path / "c").exists()


# ---- outputs that cannot be written: one line naming the path, exit 2, before the work ----
def unwritable(kind, tmp_path, request):
    """(an output path that cannot be written, words the error names it with)."""
    if kind == "a file":
        path = tmp_path / "a_file"
        path.write_text("user data")
        return path, "not a directory"
    if kind == "a directory":
        return tmp_path, "is a directory"
    return request.getfixturevalue("read_only_dir") / "out", "not writable"


def one_error_line(err):
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("kind", ["a file", "read-only"])
def test_compare_into_an_unwritable_out_dir_stops_before_training(kind, tiny_config, tmp_path,
                                                                  request, capsys):
    out_dir, words = unwritable(kind, tmp_path, request)
    code = main(["compare", tiny_config, "--out-dir", str(out_dir), "--max-iters", "1"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err)
    assert code == 2 and line.startswith("gfocal compare: error: ")
    assert str(out_dir) in line and words in line
    assert "training" not in captured.out


@pytest.mark.parametrize("kind", ["a directory", "read-only"])
def test_test_with_an_unwritable_out_stops_before_the_model(kind, tiny_config, tmp_path,
                                                            request, capsys):
    """--out is checked first: the checkpoint (missing here) is never looked at."""
    out, words = unwritable(kind, tmp_path, request)
    code = main(["test", tiny_config, str(tmp_path / "missing.pth"), "--framework", "torch",
                 "--out", str(out)])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and line.startswith("gfocal test: error: ")
    assert str(out) in line and words in line and "missing.pth" not in line


@pytest.mark.ci  # a child process evaluating under a file-size limit
def test_test_whose_results_write_fails_prints_the_statistics_first(tiny_config, tmp_path):
    """The file system refuses the results file only at the end (a file size limit, as a
    full disk would): the 12 statistics are printed, then one error line, exit 2."""
    import resource
    import signal
    import subprocess
    import sys
    from gfocal import engine
    from gfocal.checkpoint_io import write
    from gfocal.config import load_config
    from gfocal.pytorch.checkpoint import state_dict_numpy
    _, model = engine.build_model(load_config(tiny_config), "torch", device="cpu")
    ckpt = tmp_path / "weights.pth"
    write(str(ckpt), state_dict_numpy(model), "torch")
    out = tmp_path / "results.json"

    def limit_file_size():  # any write beyond 1 byte fails with EFBIG (not a SIGXFSZ kill)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))

    run = subprocess.run([sys.executable, "-m", "gfocal", "test", tiny_config, str(ckpt),
                          "--framework", "torch", "--device", "cpu", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=limit_file_size, timeout=300)
    lines = run.stdout.splitlines()
    stats = [i for i, line in enumerate(lines) if line.split()[:1] in (["AP"], ["ARl"])]
    errors = [i for i, line in enumerate(lines) if line.startswith("gfocal test: error:")]
    assert run.returncode == 2 and "Traceback" not in run.stdout, run.stdout
    assert len(stats) == 2 and len(errors) == 1 and stats[1] < errors[0], run.stdout
    assert str(out) in lines[errors[0]] and "File too large" in lines[errors[0]]
    assert sorted(os.listdir(tmp_path)) == ["tiny.py", "weights.pth"]  # no temporary file
