"""`gfocal train/test` end to end on a tiny config, and one clear message per bad input."""
import pytest

from gfocal.cli import main


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


def test_checkpoint_of_another_model_lists_the_bad_keys(tiny_config, tmp_path, capsys):
    from weights_converter.convert import write
    import numpy as np
    bad = tmp_path / "bad.pth"
    write(str(bad), {"backbone.conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
                     "something.else": np.zeros(3, np.float32)}, "torch")
    code = main(["test", tiny_config, str(bad), "--framework", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "something.else" in err and "missing" in err and "unexpected" in err
