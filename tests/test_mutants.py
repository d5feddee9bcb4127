"""The mutation-testing run (scripts/mutants.py): its inputs stay in step with the ports, and
its report counts what it says. The run itself is `make mutants` (hours), never here."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import mutants  # noqa: E402


def load(name):
    return tomllib.loads((mutants.MUTATION_DIR / name).read_text())


@pytest.mark.parametrize("entry", load("planted.toml")["planted"],
                         ids=lambda e: f"{e['port']}-{Path(e['module']).stem}")
def test_each_planted_change_applies_to_exactly_one_line(entry):
    assert entry["module"].startswith(mutants.PORT_DIRS[entry["port"]] + "/")
    assert (ROOT / entry["module"]).read_text().count(entry["old"]) == 1


def test_both_ports_plant_the_same_changes():
    planted = load("planted.toml")["planted"]
    by_port = {port: sorted(p["what"] for p in planted if p["port"] == port)
               for port in mutants.PORT_DIRS}
    assert by_port["torch"] == by_port["jittor"] and len(by_port["torch"]) >= 3


def test_every_recorded_survivor_reason_still_names_a_line_of_its_module():
    for entry in load("survivors.toml").get("survivor", []):
        lines = [ln.strip() for ln in (ROOT / entry["module"]).read_text().splitlines()]
        assert entry["line"].strip() in lines, entry
        assert entry["kind"] in ("equivalent", "not reachable by parity inputs", "open gap"), entry
        assert len(entry["reason"]) > 20, entry


@pytest.mark.parametrize("operator, excluded", [
    ("core/NumberReplacer", False), ("core/ReplaceBinaryOperator_Add_Sub", False),
    ("core/ReplaceBinaryOperator_Mul_Div", False), ("core/ReplaceComparisonOperator_Lt_LtE", False),
    ("core/ReplaceComparisonOperator_Eq_NotEq", False), ("core/ZeroIterationForLoop", False),
    ("core/ReplaceUnaryOperator_Delete_USub", False), ("core/AddNot", False),
    ("core/ReplaceBinaryOperator_Add_BitXor", True), ("core/ReplaceBinaryOperator_Mul_Pow", True),
    ("core/ReplaceComparisonOperator_Eq_Is", True), ("core/VariableReplacer", True),
])
def test_operator_filter(operator, excluded):
    """cosmic-ray's operators filter matches each expression at the start of the name."""
    patterns = load("cosmic-ray.toml")["exclude-operators"]
    assert any(re.match(p, operator) for p in patterns) == excluded


def test_killing_suite_is_the_whole_parity_suite_fast_files_first():
    files = mutants.parity_files()
    assert sorted(files) == sorted(p.name for p in (ROOT / "parity_tests").glob("test_*.py"))
    assert files[0] == "test_targets_losses.py"
    command = mutants.kill_command(ROOT).replace(str(ROOT), "/tree", 1)
    assert command.startswith("/tree/.venv/bin/python -m pytest -x ")
    assert all(f"parity_tests/{f}" in command for f in files)


def test_wilson_lower_bound():
    # 95 of 100: the Wilson score interval's lower end at 95 % is 0.8882 (textbook value)
    assert mutants.wilson_lower(95, 100) == pytest.approx(0.8882, abs=1e-4)
    assert mutants.wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)


def job(operator, line_no, outcome, diff="", rerun=None):
    result = {"worker_outcome": "normal", "test_outcome": outcome, "diff": diff}
    if rerun is not None:
        result["rerun"] = rerun
    return [{"mutations": [{"module_path": "gfocal/pytorch/box_ops.py", "operator_name": operator,
                            "occurrence": 0, "start_pos": [line_no, 0]}]}, result]


def test_report_counts(tmp_path, monkeypatch):
    source = (ROOT / "gfocal/pytorch/box_ops.py").read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if "def bbox2distance" in text)
    monkeypatch.setattr(mutants, "survivor_reasons", lambda: {
        ("gfocal/pytorch/box_ops.py", source[line - 1].strip(), "core/NumberReplacer"):
            {"kind": "equivalent", "reason": "stated for the test"}})
    jobs = [job("core/AddNot", 1, "killed") for _ in range(7)] + [
        job("core/NumberReplacer", line, "survived", diff="+def bbox2distance(x)"),
        job("core/AddNot", line, "survived"),
        job("core/AddNot", line, "survived", rerun={"killed": True, "first_failure": "FAILED t"}),
        [{"mutations": []}, {"worker_outcome": "skipped"}]]
    result = {"port": "torch", "commit": "abc1234", "date": "2026-12-01", "sample": 12,
              "seed": 1, "generated": 30, "after_filter": 20, "drawn": 12, "run": 10,
              "baseline_s": 40,
              "exec_s": 200, "jobs": jobs,
              "planted": [{"what": "w", "module": "m", "killed": True, "first_failure": "F"}]}
    report = tmp_path / "REPORT.md"
    mutants.write_report([result], report)
    text = report.read_text()
    # 7 killed + 1 killed on the re-run; 2 survive, one of them equivalent: 8 / 9
    assert "killed 8 (1 of them only after new parity inputs, on a re-run), survived 2 " \
           "(of which 1 equivalent)" in text
    assert "killed / non-equivalent: 88.9%" in text
    assert "equivalent: stated for the test" in text and "no reason recorded yet" in text
    assert "drawn at random: 12; run: 10 (stopped at the time budget" in text
    assert "commit abc1234" in text


@pytest.mark.parametrize("args, message", [
    (["--ports", "tensorflow"], "--ports tensorflow: each must be torch or jittor"),
    (["--sample", "-1"], "--sample -1: must be >= 0"),
    (["--rerun-survivors"], "--rerun-survivors: no earlier run in"),
    (["--budget-minutes", "-2"], "--budget-minutes -2: must be >= 0"),
])
def test_bad_arguments_give_one_line(args, message, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts/mutants.py"), *args,
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("mutants: error: " + message)
    assert len(done.stderr.strip().splitlines()) == 1
