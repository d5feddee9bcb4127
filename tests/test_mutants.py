"""The mutation-testing run (scripts/mutants.py): its inputs stay in step with the ports, and
its report counts what it says. The run itself is `make mutants` (hours), never here."""
import json
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
    assert entry["module"] in mutants.target_modules(entry["port"])
    assert (ROOT / entry["module"]).read_text().count(entry["old"]) == 1


def test_both_ports_plant_the_same_changes():
    planted = load("planted.toml")["planted"]
    by_port = {port: sorted(p["what"] for p in planted if p["port"] == port)
               for port in mutants.PORT_DIRS}
    assert by_port["torch"] == by_port["jittor"] and len(by_port["torch"]) >= 3


def test_every_recorded_survivor_reason_names_one_mutation_of_its_module():
    entries = load("survivors.toml").get("survivor", [])
    keys = [(e["module"], e["line"].strip(), e["mutated"].strip()) for e in entries]
    assert len(set(keys)) == len(keys), "two reasons for one mutation"
    for entry in entries:
        lines = [ln.strip() for ln in (ROOT / entry["module"]).read_text().splitlines()]
        assert entry["line"].strip() in lines, entry
        assert entry["mutated"].strip() != entry["line"].strip(), entry
        assert entry["kind"] in mutants.KINDS, entry
        assert len(entry["reason"]) > 20, entry


def test_every_module_of_a_port_is_a_target_but_glue_and_distributed():
    for port, folder in mutants.PORT_DIRS.items():
        present = {p.stem for p in (ROOT / folder).glob("*.py")}
        mutated = {Path(m).stem for m in mutants.target_modules(port)}
        assert present - mutated == {"__init__", "checkpoint", "distributed", "precision"}, port
        assert f"{folder}/checkpoint.py" in mutants.target_modules("converter")
        assert f"{folder}/precision.py" in mutants.target_modules("precision")


def test_each_module_belongs_to_one_target():
    modules = [m for target in mutants.GROUPS for m in mutants.target_modules(target)]
    assert len(modules) == len(set(modules))
    assert mutants.target_modules("precision") == [
        "gfocal/precision.py", "gfocal/pytorch/precision.py", "gfocal/jittor/precision.py"]


@pytest.mark.parametrize("judges", [mutants.SHARED_JUDGES, mutants.PRECISION_JUDGES],
                         ids=["shared", "precision"])
def test_every_judge_exists_and_the_groups_cover_the_targets(judges):
    for module, tests in judges.items():
        assert (ROOT / module).is_file(), module
        assert all((ROOT / t).is_file() for t in tests), module
    assert set(mutants.GROUPS.values()) == {"port", "converter", "shared", "precision"}


def test_a_survivor_run_against_other_judge_inputs_is_not_equivalent(tmp_path, monkeypatch):
    """The reason is recorded, but the judge changed since: the survivor stays in the
    denominator, marked, until --rerun-survivors."""
    monkeypatch.setattr(mutants, "survivor_reasons", lambda: {
        ("gfocal/pytorch/box_ops.py", "a = 1", "a = 2"): {"kind": "equivalent",
                                                         "reason": "stated for the test"}})
    result = dict(RESULT, jobs=[job("core/NumberReplacer", 3, "survived",
                                    diff="-a = 1\n+a = 2")], fingerprint="old")
    report = tmp_path / "REPORT.md"
    mutants.write_report([result], report)
    text = report.read_text()
    assert ("survived 1 (of which 0 equivalent, 0 not reachable by the judge, 1 last run "
            "against other judge inputs)") in text
    assert "not counted as equivalent until --rerun-survivors" in text


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


def test_a_port_is_judged_by_the_whole_parity_suite_fast_files_first():
    files = mutants.parity_files()
    assert sorted(files) == sorted(p.name for p in (ROOT / "parity_tests").glob("test_*.py"))
    assert files[:2] == ["test_arguments.py", "test_targets_losses.py"]
    for port in mutants.PORT_DIRS:
        assert mutants.judge_union(port) == [f"parity_tests/{f}" for f in files]
    assert mutants.judge_union("converter")[-len(files):] == [f"parity_tests/{f}" for f in files]
    assert not any(f.startswith("parity_tests/") for f in mutants.judge_union("shared"))


@pytest.mark.parametrize("module, first", [
    ("gfocal/jittor/backbone.py", ["test_forward.py", "test_arguments.py"]),
    ("gfocal/pytorch/postprocess.py", ["test_postprocess_regimes.py", "test_inference_coco.py",
                                       "test_arguments.py"]),
    ("gfocal/pytorch/atss.py", ["test_arguments.py", "test_targets_losses.py"])])
def test_a_changed_port_module_runs_its_own_parity_files_first(module, first):
    """Only the order moves: every parity file still runs, each once."""
    files = mutants.parity_files(changed=[module])
    assert files[:len(first)] == first
    assert sorted(files) == sorted(mutants.parity_files())


@pytest.mark.parametrize("target, module, files", [
    ("shared", "gfocal/schedule.py", ["tests/test_schedule.py"]),
    ("precision", "gfocal/jittor/precision.py",
     ["tests/test_precision.py", "parity_tests/test_mixed_precision.py"]),
    ("precision", "gfocal/precision.py",
     ["tests/test_precision.py", "tests/test_control_arm.py",
      "parity_tests/test_mixed_precision.py"])])
def test_the_judge_runs_the_tests_of_the_changed_module(tmp_path, monkeypatch, target, module,
                                                         files):
    """cosmic-ray runs `mutants.py --judge TARGET` in the mutated tree: the judge compares
    the target's modules with their pristine copies and runs that module's tests, those
    that fail fastest first, and nothing else."""
    tree, work = tmp_path / "tree", tmp_path / "work"
    for changed in mutants.target_modules(target):
        for root in (tree, mutants.pristine_dir(work, target)):
            (root / changed).parent.mkdir(parents=True, exist_ok=True)
            (root / changed).write_text("x = 1\n")
    (tree / module).write_text("x = 2\n")
    calls = []
    monkeypatch.chdir(tree)
    monkeypatch.setattr(mutants.os, "execv", lambda path, argv: calls.append(argv))
    mutants.judge(target, work)
    assert calls[0][calls[0].index("no:cacheprovider") + 1:] == files and "-x" in calls[0]


def test_wilson_lower_bound():
    # 95 of 100: the Wilson score interval's lower end at 95 % is 0.8882 (textbook value)
    assert mutants.wilson_lower(95, 100) == pytest.approx(0.8882, abs=1e-4)
    assert mutants.wilson_lower(10, 10) == pytest.approx(0.7225, abs=1e-4)


RESULT = {"target": "torch", "group": "port", "commit": "abc1234", "date": "2026-12-01",
          "sample": 12, "seed": 1, "generated": 30, "after_filter": 20, "drawn": 12, "run": 10,
          "baseline_s": 40, "exec_s": 200, "commands": ["bash scripts/mutants.sh --sample 12"],
          "planted": [{"what": "w", "module": "m", "killed": True, "first_failure": "F"}]}


def job(operator, line_no, outcome, diff="", rerun=None):
    result = {"worker_outcome": "normal", "test_outcome": outcome, "diff": diff}
    if rerun is not None:
        result["rerun"] = rerun
    return [{"mutations": [{"module_path": "gfocal/pytorch/box_ops.py", "operator_name": operator,
                            "occurrence": 0, "start_pos": [line_no, 0]}]}, result]


def test_report_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(mutants, "survivor_reasons", lambda: {
        ("gfocal/pytorch/box_ops.py", "a = 1", "a = 2"): {"kind": "equivalent",
                                                         "reason": "stated for the test"}})
    now = mutants.judge_fingerprint("torch")
    jobs = [job("core/AddNot", 1, "killed") for _ in range(7)] + [
        job("core/NumberReplacer", 3, "survived", diff="-a = 1\n+a = 2"),
        # the same line, another mutation: the reason above is not its reason
        job("core/NumberReplacer", 3, "survived", diff="-a = 1\n+a = 0"),
        job("core/AddNot", 3, "survived", diff="-a = 1\n+a = not 1",
            rerun={"killed": True, "first_failure": "FAILED t", "fingerprint": now}),
        [{"mutations": []}, {"worker_outcome": "skipped"}]]
    result = dict(RESULT, jobs=jobs, fingerprint=now)
    report = tmp_path / "REPORT.md"
    mutants.write_report([result], report)
    text = report.read_text()
    # 7 killed + 1 killed on the re-run; 2 survive, one of them equivalent: 8 / 9
    assert ("killed 8 (1 of them only after new inputs, on a re-run), survived 2 (of which 1 "
            "equivalent, 0 not reachable by the judge, 0 last run against other judge "
            "inputs)") in text
    assert "killed / non-equivalent: 88.9%" in text
    assert "equivalent: stated for the test" in text and "no reason recorded yet" in text
    assert "drawn at random: 12; run: 10 (stopped at the time budget" in text
    assert "abc1234" in text and "    bash scripts/mutants.sh --sample 12" in text
    assert "| port | torch | 12 | 10 | 8 | 2 | 1 | 0 | 88.9% |" in text


@pytest.mark.parametrize("args, message", [
    (["--targets", "tensorflow"], "--targets tensorflow: each must be one of torch, jittor, "
                                  "converter, shared, precision"),
    (["--sample", "-1"], "argument --sample: -1: must be >= 0"),
    (["--sample", "torch=x"], "argument --sample: 'torch=x' is not N or TARGET=N"),
    (["--sample", "pandas=3"], "--sample: unknown target pandas"),
    (["--report-only", "--targets", "torch"], "--report-only: no run of torch in"),
    (["--rerun-survivors"], "--rerun-survivors: no earlier run in"),
    (["--budget-minutes", "-2"], "--budget-minutes -2: must be >= 0"),
    (["--merge", "/nonexistent"], "--merge: no earlier run in /nonexistent/results.json"),
    (["--into", "REPORT.md"], "--into: no run in"),
])
def test_bad_arguments_give_one_line(args, message, tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts/mutants.py"), *args,
                           "--out", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("mutants: error: " + message)
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_relative_out_folder_is_made_absolute(tmp_path):
    """cosmic-ray runs each mutant in a copy of the checkout: --out must not depend on the
    working directory (a relative one once ended a resumed run with exit 78)."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts/mutants.py"), "--report-only",
                           "--targets", "shared", "--out", "work"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == ("mutants: error: --report-only: no run of shared in "
                                   f"{tmp_path / 'work'}")


def test_merge_adds_another_runs_targets_and_rewrites_the_report(tmp_path, monkeypatch):
    """Two folders run apart (say the shared target on its own): --merge puts them in one
    results.json and one report, the merged target recording the command."""
    out, other = tmp_path / "out", tmp_path / "other"
    for folder, target in ((out, "torch"), (other, "shared")):
        folder.mkdir()
        result = dict(RESULT, target=target, group=mutants.GROUPS[target],
                      jobs=[job("core/NumberReplacer", 3, "killed")])
        (folder / "results.json").write_text(json.dumps([result]))
    monkeypatch.setattr(mutants, "judge_fingerprint", lambda target, tree=None: "now")
    report = tmp_path / "REPORT.md"
    assert mutants.main(["--out", str(out), "--merge", str(other), "--report", str(report)]) == 0
    merged = json.loads((out / "results.json").read_text())
    assert [r["target"] for r in merged] == ["torch", "shared"]
    assert merged[1]["commands"][-1].startswith("bash scripts/mutants.sh --out ")
    assert merged[0]["commands"] == RESULT["commands"]
    text = report.read_text()
    assert "## Target `torch`" in text and "## Target `shared`" in text


def test_a_written_report_reads_back_as_it_was(tmp_path):
    results = [dict(RESULT, jobs=[job("core/AddNot", 1, "killed")], fingerprint="x"),
               dict(RESULT, target="shared", group="shared", commit="def5678", date="2026-12-02",
                    jobs=[job("core/AddNot", 1, "survived", diff="-a | b\n+a & b")],
                    fingerprint="x")]
    report = tmp_path / "REPORT.md"
    mutants.write_report(results, report)
    parts = mutants.read_report(report)
    assert list(parts["sections"]) == ["torch", "shared"]
    assert parts["commits"] == ["abc1234", "def5678"]
    assert parts["dates"] == ["2026-12-01", "2026-12-02"]
    assert mutants.render_report(parts) == report.read_text()


def test_into_adds_a_run_to_a_report_whose_other_runs_are_gone(tmp_path, monkeypatch):
    """--into: the precision run's section and per-group row join a written report; the
    other targets' sections, rows and commands stay as written (their results.json gone)."""
    monkeypatch.setattr(mutants, "judge_fingerprint", lambda target, tree=None: "now")
    report, out = tmp_path / "REPORT.md", tmp_path / "out"
    torch_run = dict(RESULT, jobs=[job("core/AddNot", 1, "killed")], fingerprint="now")
    mutants.write_report([torch_run], report)
    before = mutants.read_report(report)
    out.mkdir()
    precision_run = dict(RESULT, target="precision", group="precision", commit="0aa1111",
                         date="2026-12-07", commands=["bash scripts/mutants.sh --targets "
                                                      "precision"], planted=[],
                         jobs=[job("core/AddNot", 1, "killed"), job("core/AddNot", 2, "killed"),
                               job("core/AddNot", 3, "survived", diff="-a = 1\n+a = not 1")],
                         fingerprint="now")
    (out / "results.json").write_text(json.dumps([precision_run]))
    assert mutants.main(["--out", str(out), "--into", str(report)]) == 0
    after = mutants.read_report(report)
    assert after["sections"]["torch"] == before["sections"]["torch"]
    assert after["groups"]["port"] == before["groups"]["port"]
    assert after["groups"]["precision"][2:] == ["12", "10", "2", "1", "0", "0", "66.7%",
                                                f"{mutants.wilson_lower(2, 3):.1%}"]
    assert "## Target `precision` (group precision)" in after["sections"]["precision"]
    assert after["commits"] == ["0aa1111", "abc1234"]
    assert after["commands"][:2] == RESULT["commands"] + precision_run["commands"]
    assert after["commands"][2].startswith("bash scripts/mutants.sh --out ")
    # a later run (its survivor killed on a re-run) replaces the precision section and row
    precision_run["jobs"][2][1]["rerun"] = {"killed": True, "first_failure": "FAILED t"}
    (out / "results.json").write_text(json.dumps([precision_run]))
    assert mutants.main(["--out", str(out), "--into", str(report)]) == 0
    again = mutants.read_report(report)
    assert list(again["sections"]) == ["torch", "precision"] and len(again["groups"]) == 2
    assert again["groups"]["precision"][4:6] == ["3", "0"]
    assert "Survivors:\n\nnone" in again["sections"]["precision"]


def test_into_a_file_that_is_no_report_is_one_line(tmp_path, capsys):
    (tmp_path / "results.json").write_text("[]")
    (tmp_path / "notes.md").write_text("# notes\n")
    assert mutants.main(["--out", str(tmp_path), "--into", str(tmp_path / "notes.md")]) == 2
    assert capsys.readouterr().err == (f"mutants: error: --into {tmp_path / 'notes.md'}: not a "
                                       "mutation report (no command list or no per-group "
                                       "table)\n")
