"""Mutation testing of the project's numerical code, each group of modules judged by the
tests that can see it. Run through `make mutants` (scripts/mutants.sh sets up cosmic-ray in
its own environment and runs this file with it).

Targets (TARGETS below says which modules and which tests judge them):
  torch, jittor  every numerical module of the port (group "port"), judged by the parity suite
                 alone (`pytest -x parity_tests`): it must see a port bug without unit tests;
  converter      the checkpoint readers and writers and the converter (group "converter"),
                 judged by the converter and checkpoint-safety tests and the parity suite;
  shared         the framework-neutral data, evaluation and schedule code both ports use
                 (group "shared"): the parity suite cannot see it by design (both ports get
                 the same inputs), so its judge is the unit tests of tests/ for that module;
  precision      the mixed-precision modules, gfocal/precision.py and each port's
                 precision.py (group "precision"; not in the port and shared targets), judged
                 by the tests that exercise them directly: tests/test_precision.py and
                 parity_tests/test_mixed_precision.py (and tests/test_control_arm.py for
                 gfocal/precision.py, whose EPS the control arm reads).
Every module belongs to one target. Judges run pytest with the project's addopts: tests
marked ci or slow are not part of any judge.

For each target, in a copy of this checkout (cosmic-ray edits the files it mutates; the copy
keeps your tree untouched even when a run is interrupted):
  1. the judge once, unmutated (it must pass; its time sets the per-mutant timeout);
  2. cosmic-ray's catalogue of the target's modules, less the operators excluded in
     parity_tests/mutation/cosmic-ray.toml (and, with --sample N, all but N drawn by --seed);
  3. `cosmic-ray exec`: each mutant applied alone, its module's judge run with -x;
  4. the planted mutants of parity_tests/mutation/planted.toml through the same judge.
Then one report (markdown): per group the kill rate with its Wilson 95 % lower bound, per
target the planted mutants and each survivor with its mutation and the reason recorded for
that mutation in parity_tests/mutation/survivors.toml (or "no reason recorded yet").

  python scripts/mutants.py [--targets torch,jittor,converter,shared,precision] [--sample N]
                            [--seed S] [--out DIR] [--report FILE] [--parallel]
                            [--budget-minutes M] [--resume] [--rerun-survivors]
                            [--report-only] [--merge DIR] [--into REPORT]

--budget-minutes stops each target's mutants after M minutes and reports those that ran (in
cosmic-ray's random order, so still a random sample); --resume goes on with the rest;
--rerun-survivors runs again, on this checkout, every survivor whose judge's inputs (its test
files, conftests, fixtures) changed since it last ran, labelled equivalent or not: a survivor
counts as equivalent only when its last run saw the judge as it is now; --report-only writes
the report of what ran so far (after an interrupted run), running nothing; --into REPORT
puts OUT's targets into an existing report (their sections and per-group rows replaced or
added, the other targets' kept as written) where the other runs' results.json are gone.
"""
import argparse
import concurrent.futures
import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# cosmic-ray's environment has no numpy: import only stdlib-only modules of the checkout
sys.path.insert(0, str(ROOT))
from gfocal.tables import markdown_table  # noqa: E402

MUTATION_DIR = ROOT / "parity_tests" / "mutation"
PORT_DIRS = {"torch": "gfocal/pytorch", "jittor": "gfocal/jittor"}
# Every module of a port that computes: not __init__ (the port's interface and glue),
# checkpoint (the converter target's), precision (the precision target's) and distributed
# (judged by the multi-process tests of tests/, minutes a run: not mutated, said in the
# report).
PORT_MODULES = ("anchors", "atss", "backbone", "box_ops", "detector", "fpn", "gfl_head",
                "gfl_loss", "losses", "postprocess", "probes", "train", "kernels", "tuning")
# Parity files that fail fastest on a broken target come first (the seconds-long argument,
# signature and constant checks, then loss and decoding): with -x a killed mutant stops at
# its first failure. Files not named here follow in name order.
FIRST_FILES = ("test_arguments.py", "test_targets_losses.py", "test_postprocess_regimes.py",
               "test_forward.py", "test_inference_coco.py", "test_backward_optim.py")
# A changed port module's own parity files go first: a backbone mutant fails test_forward.py
# in seconds, after minutes of test_targets_losses.py. Only the order changes, never the set.
MODULE_FIRST_FILES = {
    "backbone": ("test_forward.py",), "fpn": ("test_forward.py",),
    "detector": ("test_forward.py",), "gfl_head": ("test_forward.py",),
    "probes": ("test_forward.py",), "kernels": ("test_forward.py",),
    "box_ops": ("test_postprocess_regimes.py", "test_properties.py"),
    "postprocess": ("test_postprocess_regimes.py", "test_inference_coco.py"),
    "train": ("test_backward_optim.py",),
    "tuning": ("test_tuned.py",),
}
PARITY = "parity_tests"  # a judge entry: every parity file, in parity_files() order
CONVERTER_MODULES = ("gfocal/pytorch/checkpoint.py", "gfocal/jittor/checkpoint.py",
                     "gfocal/checkpoint_io.py", "weights_converter/convert.py")
CONVERTER_JUDGE = ("tests/test_checkpoint_safety.py", "tests/test_converter.py",
                   "tests/test_official_checkpoints.py", PARITY)
# shared module -> the unit tests that judge it (those that exercise it directly; the
# training and end-to-end tests of tests/ would see more, at minutes a mutant)
SHARED_JUDGES = {
    "gfocal/data/transforms.py": ("tests/test_transforms.py", "tests/test_loader.py"),
    "gfocal/data/loader.py": ("tests/test_loader.py", "tests/test_loader_workers.py"),
    "gfocal/data/coco.py": ("tests/test_coco_dataset.py", "tests/test_loader.py"),
    "gfocal/data/subset.py": ("tests/test_subset.py",),
    "gfocal/data/synthetic.py": ("tests/test_synthetic.py",),
    "gfocal/evaluation/coco_eval.py": ("tests/test_evaluation.py",),
    "gfocal/schedule.py": ("tests/test_schedule.py",),
    "gfocal/tuning.py": ("tests/test_tuning.py",),
}
# precision module -> its judge, fastest-failing first (the unit tests run in seconds, the
# parity file in about a minute)
PRECISION_JUDGE = ("tests/test_precision.py", "parity_tests/test_mixed_precision.py")
PRECISION_JUDGES = {
    "gfocal/precision.py": ("tests/test_precision.py", "tests/test_control_arm.py",
                            "parity_tests/test_mixed_precision.py"),
    "gfocal/pytorch/precision.py": PRECISION_JUDGE,
    "gfocal/jittor/precision.py": PRECISION_JUDGE,
}
GROUPS = {"torch": "port", "jittor": "port", "converter": "converter", "shared": "shared",
          "precision": "precision"}


class MutantsError(Exception):
    """A problem with the run's inputs or environment: one line, exit 2."""


def target_judges(target):
    """{module: judge entries} of a target's modules (those present in this checkout)."""
    if target in PORT_DIRS:
        judges = {f"{PORT_DIRS[target]}/{m}.py": (PARITY,) for m in PORT_MODULES}
    elif target == "converter":
        judges = {m: CONVERTER_JUDGE for m in CONVERTER_MODULES}
    elif target == "precision":
        judges = dict(PRECISION_JUDGES)
    else:
        judges = dict(SHARED_JUDGES)
    return {m: j for m, j in judges.items() if (ROOT / m).exists()}


def target_modules(target):
    return list(target_judges(target))


def judge_files(entries, tree=ROOT, changed=()):
    """Test files (relative to the tree) of judge entries, each once, in order (the parity
    files of the `changed` modules first)."""
    files = []
    for entry in entries:
        for f in ([f"parity_tests/{f}" for f in parity_files(tree, changed)] if entry == PARITY
                  else [entry]):
            if f not in files:
                files.append(f)
    return files


def judge_union(target, tree=ROOT):
    return judge_files([e for judge in target_judges(target).values() for e in judge], tree)


def judge_fingerprint(target, tree=ROOT):
    """What a survivor's verdict depends on besides its module: the judge's test files, every
    conftest above them, the parity helpers and the fixtures' generator (sha256, 12 hex
    digits; the generated data is git-ignored and follows from fixtures/*.py)."""
    files = set(judge_union(target, tree)) | {"conftest.py"}
    for f in list(files):
        files.add(str(Path(f).parent / "conftest.py"))
        if f.startswith("parity_tests/"):
            files.update(str(p.relative_to(tree)) for p in (tree / "parity_tests").glob("*.py"))
    files.update(str(p.relative_to(tree)) for p in (tree / "fixtures").glob("*.py"))
    digest = hashlib.sha256()
    for f in sorted(files):
        if (tree / f).is_file():
            digest.update(f.encode() + b"\0" + (tree / f).read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def parity_files(tree=ROOT, changed=()):
    files = sorted(p.name for p in (tree / "parity_tests").glob("test_*.py"))
    first = [f for m in changed for f in MODULE_FIRST_FILES.get(Path(m).stem, ())]
    order = list(dict.fromkeys(first + list(FIRST_FILES)))
    return [f for f in order if f in files] + [f for f in files if f not in order]


def copy_checkout(dest):
    """Tracked and untracked-but-not-ignored files of this checkout into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = ROOT / name
        if source.is_file() and not name.startswith("reports/"):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    subprocess.run(["bash", "scripts/setup.sh"], cwd=dest, check=True,
                   stdout=subprocess.DEVNULL)


def kill_command(tree, target, work):
    """What cosmic-ray runs after applying a mutant: this script as the target's judge."""
    return (f"{sys.executable} {tree}/scripts/mutants.py --judge {target} "
            f"--out {work}")


def pristine_dir(work, target):
    return work / f"pristine-{target}"


def judge(target, work):
    """Run (exec) the judge of the module of the target that differs from its pristine copy
    (cwd: the mutated tree); with none changed, the judges of every module."""
    tree = Path.cwd()
    judges = target_judges(target)
    pristine = pristine_dir(work, target)
    changed = [m for m in judges
               if (tree / m).read_bytes() != (pristine / m).read_bytes()]
    entries = [e for m in (changed or judges) for e in judges[m]]
    files = judge_files(entries, tree, changed)
    python = str(tree / ".venv" / "bin" / "python")
    os.execv(python, [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *files])


def run_killing_suite(tree, target, work, timeout):
    """-> (killed, seconds, first failure line); pytest's usage errors (exit 4, 5: a file
    missing, nothing collected) are the run's problem, not a kill."""
    rc, seconds, output = run_timed(kill_command(tree, target, work), tree, timeout)
    if rc in (4, 5):
        raise MutantsError(f"the killing suite cannot run in {tree} (pytest exit {rc}): "
                           f"{output.strip().splitlines()[-1] if output.strip() else ''}")
    failed = [ln for ln in output.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return rc != 0, seconds, failed[0] if failed else output[-200:]


def run_mutated(tree, target, work, module, mutate, timeout):
    """run_killing_suite with mutate(path, original text) applied to tree/module, which is
    put back afterwards whatever happens."""
    path = tree / module
    original = path.read_text()
    try:
        mutate(path, original)
        return run_killing_suite(tree, target, work, timeout)
    finally:
        path.write_text(original)


def run_timed(command, cwd, timeout=None):
    start = time.monotonic()
    try:
        done = subprocess.run(shlex.split(command), cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
        return done.returncode, time.monotonic() - start, done.stdout + done.stderr
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - start, "timeout"


def mutant_timeout(baseline_s):
    """A mutant's parity run may take twice the unmutated one, plus a minute (Jittor
    compiles the kernels of a mutated expression)."""
    return 2 * baseline_s + 60


def write_config(target, tree, work, timeout, path):
    base = tomllib.loads((MUTATION_DIR / "cosmic-ray.toml").read_text())
    excluded = base["exclude-operators"]
    quoted = ", ".join(json.dumps(m) for m in target_modules(target))
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = [{quoted}]\n"
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(kill_command(tree, target, work))}\n"
        "[cosmic-ray.distributor]\nname = \"local\"\n"
        "[cosmic-ray.filters.operators-filter]\n"
        f"exclude-operators = {json.dumps(excluded)}\n")


def tool(name):
    return str(Path(sys.executable).parent / name)


def keep_sample(session, sample, seed):
    """Mark all pending mutants but `sample` of them (drawn with `seed`) as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = sorted(item.job_id for item in db.pending_work_items)
        if sample <= 0 or sample >= len(pending):
            return len(pending), len(pending)
        drawn = set(random.Random(seed).sample(pending, sample))
        skipped = [job for job in pending if job not in drawn]
        db.set_multiple_results(skipped, WorkResult(output="not in the sample",
                                                    worker_outcome=WorkerOutcome.SKIPPED))
        return len(pending), sample


def catalogue(session):
    dump = subprocess.run([tool("cosmic-ray"), "dump", str(session)], capture_output=True,
                          text=True, check=True).stdout
    return [json.loads(line) for line in dump.splitlines() if line.strip()]


def run_planted(target, tree, work, timeout):
    planted = tomllib.loads((MUTATION_DIR / "planted.toml").read_text())["planted"]
    results = []
    for entry in (p for p in planted if p["port"] == target):
        def plant(path, original, entry=entry):
            if original.count(entry["old"]) != 1:
                raise MutantsError(f"planted.toml: {entry['old']!r} does not occur exactly "
                                   f"once in {entry['module']}")
            path.write_text(original.replace(entry["old"], entry["new"]))
        killed, seconds, failure = run_mutated(tree, target, work, entry["module"], plant,
                                               timeout)
        results.append({**entry, "killed": killed, "seconds": seconds,
                        "first_failure": failure})
    return results


def fresh_tree(work, target):
    """A copy of this checkout for the target, and a pristine copy of its modules beside it
    (how the judge tells which module a mutant changed)."""
    tree = work / f"tree-{target}"
    for folder in (tree, pristine_dir(work, target)):
        if folder.exists():
            shutil.rmtree(folder)
    tree.mkdir(parents=True)
    copy_checkout(tree)
    for module in target_modules(target):
        (pristine_dir(work, target) / module).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / module, pristine_dir(work, target) / module)
    return tree


def start_session(target, work, sample, seed, log):
    """Copy, baseline, catalogue, operator filter and sample; -> the run's state."""
    tree = fresh_tree(work, target)
    log(f"{target}: baseline (its judges, unmutated)")
    rc, baseline, output = run_timed(kill_command(tree, target, work), tree)
    if rc != 0:
        (work / f"baseline-{target}.log").write_text(output)
        raise MutantsError(f"the judge fails on the unmutated {target} tree: see "
                           f"{work / f'baseline-{target}.log'}")
    config, session = work / f"cosmic-ray-{target}.toml", work / f"session-{target}.sqlite"
    session.unlink(missing_ok=True)
    write_config(target, tree, work, mutant_timeout(baseline), config)
    subprocess.run([tool("cosmic-ray"), "init", str(config), str(session)], cwd=tree,
                   check=True)
    generated = len(catalogue(session))
    subprocess.run([tool("cr-filter-operators"), str(session), str(config)], cwd=tree,
                   check=True)
    kept, drawn = keep_sample(session, sample, seed)
    return {"target": target, "group": GROUPS[target], "commit": commit(),
            "date": time.strftime("%Y-%m-%d"), "sample": sample, "seed": seed,
            "generated": generated, "after_filter": kept, "drawn": drawn,
            "baseline_s": baseline, "exec_s": 0.0,
            "fingerprint": judge_fingerprint(target, tree), "commands": []}


def restore_modules(tree, target):
    """The target's modules of `tree` as in this checkout (after a stopped exec)."""
    for module in target_modules(target):
        shutil.copy2(ROOT / module, tree / module)


def exec_session(tree, config, session, budget_s):
    """`cosmic-ray exec` for at most budget_s seconds (None: to the end); a stopped run
    leaves its pending mutants for --resume (and a mutated file: run_target restores it)."""
    proc = subprocess.Popen([tool("cosmic-ray"), "exec", str(config), str(session)], cwd=tree,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        rc = proc.wait(timeout=budget_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 0
    if rc != 0:
        raise MutantsError(f"cosmic-ray exec {config} exited {rc}")


def run_target(target, work, sample, seed, log, command, resume=False, budget_s=None,
               report_only=False):
    state_file = work / f"state-{target}.json"
    config, session = work / f"cosmic-ray-{target}.toml", work / f"session-{target}.sqlite"
    tree = work / f"tree-{target}"
    if (resume or report_only) and state_file.is_file() and session.is_file():
        state = json.loads(state_file.read_text())
    elif report_only:
        raise MutantsError(f"--report-only: no run of {target} in {work}")
    else:
        state = start_session(target, work, sample, seed, log)
    if report_only:  # what ran so far; planted mutants not run
        jobs = catalogue(session)
        ran = sum(1 for _, res in jobs if res and res.get("worker_outcome") != "skipped")
        return {**state, "run": ran, "jobs": jobs, "planted": [], "planted_run": False}
    state["commands"].append(command)
    state_file.write_text(json.dumps(state))
    timeout = mutant_timeout(state["baseline_s"])
    log(f"{target}: {state['generated']} mutants, {state['after_filter']} after the operator "
        f"filter, {state['drawn']} drawn (baseline {state['baseline_s']:.0f} s, timeout "
        f"{timeout:.0f} s)" + (f", for at most {budget_s:.0f} s" if budget_s else ""))
    start = time.monotonic()
    try:
        if budget_s is None or budget_s > 0:
            exec_session(tree, config, session, budget_s)
    finally:
        restore_modules(tree, target)
    state["exec_s"] += time.monotonic() - start
    state_file.write_text(json.dumps(state))
    jobs = catalogue(session)
    ran = sum(1 for _, res in jobs if res and res.get("worker_outcome") != "skipped")
    return {**state, "run": ran, "jobs": jobs,
            "planted": run_planted(target, tree, work, timeout)}


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


def last_fingerprint(result, res):
    """The judge fingerprint of a mutant's latest run (its re-run's, else the session's)."""
    return res.get("rerun", {}).get("fingerprint", result["fingerprint"])


def rerun_survivors(result, work, log, command):
    """Every survivor of an earlier run (no re-run killed yet) whose last run saw other judge
    inputs than this checkout's, labelled or not, again on a fresh copy of this checkout:
    its result gets `rerun` = killed, the first failure and the judge fingerprint."""
    target = result["target"]
    tree = fresh_tree(work, target)
    now = judge_fingerprint(target, tree)
    survivors = [(job, res) for job, res in result["jobs"]
                 if res and res.get("test_outcome") == "survived"
                 and not res.get("rerun", {}).get("killed")
                 and last_fingerprint(result, res) != now]
    log(f"{target}: re-running {len(survivors)} survivors")
    timeout = mutant_timeout(result["baseline_s"])
    for job, res in survivors:
        mutation = job["mutations"][0]

        def apply(path, original, mutation=mutation):
            subprocess.run([tool("cosmic-ray"), "apply", mutation["module_path"],
                            mutation["operator_name"], str(mutation["occurrence"])],
                           cwd=tree, check=True, capture_output=True)
        killed, _, failure = run_mutated(tree, target, work, mutation["module_path"], apply,
                                         timeout)
        res["rerun"] = {"killed": killed, "first_failure": failure, "fingerprint": now,
                        "commit": commit()}
    result.setdefault("commands", []).append(command)
    return result


# ---------------------------------------------------------------- report

KINDS = ("equivalent", "not reachable by the judge", "open gap")


def survivor_reasons():
    """survivors.toml by mutation: (module, stripped original line, stripped mutated line)."""
    path = MUTATION_DIR / "survivors.toml"
    entries = tomllib.loads(path.read_text()).get("survivor", []) if path.exists() else []
    return {(e["module"], e["line"].strip(), e["mutated"].strip()): e for e in entries}


def mutation_lines(job, res):
    """(module, line number, original line, mutated line) of a mutant, from its diff."""
    mutation = job["mutations"][0]
    diff = (res.get("diff") or "").splitlines()
    removed = next((d[1:] for d in diff if d.startswith("-") and not d.startswith("---")), "?")
    added = next((d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")), "?")
    return mutation["module_path"], mutation["start_pos"][0], removed.strip(), added.strip()


def reason_for(job, res, reasons):
    """survivors.toml's entry for this very mutation, or None."""
    module, _, original, mutated = mutation_lines(job, res)
    return reasons.get((module, original, mutated))


def wilson_lower(killed, n, z=1.96):
    if n == 0:
        return float("nan")
    p = killed / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def tally(result, reasons, fingerprints):
    """Counts of one target's run and its rows: a survivor is equivalent only with a
    recorded reason of that kind and a last run against the judge as it is now."""
    now = fingerprints[result["target"]]
    ran = [(job, res) for job, res in result["jobs"]
           if res and res.get("worker_outcome") != "skipped"]
    count = {"killed": 0, "survived": 0, "incompetent": 0, "equivalent": 0, "closed": 0,
             "stale": 0, "unreachable": 0}
    closed_rows, survivor_rows = [], []
    for job, res in ran:
        outcome = res.get("test_outcome") or "incompetent"
        module, line, original, mutated = mutation_lines(job, res)
        where = f"`{module}:{line}`"
        if outcome == "survived" and res.get("rerun", {}).get("killed"):
            count["killed"] += 1
            count["closed"] += 1
            closed_rows.append([where, f"`{original}` -> `{mutated}`",
                                f"`{res['rerun']['first_failure'][:100]}`"])
            continue
        count[outcome] += 1
        if outcome != "survived":
            continue
        entry = reason_for(job, res, reasons)
        stale = last_fingerprint(result, res) != now
        count["stale"] += stale
        if entry and not stale:
            count["equivalent"] += entry["kind"] == "equivalent"
            count["unreachable"] += entry["kind"] == "not reachable by the judge"
        reason = f"{entry['kind']}: {entry['reason']}" if entry else "no reason recorded yet"
        if stale:
            reason = ("**last run against other judge inputs: not counted as equivalent "
                      "until --rerun-survivors** " + reason)
        survivor_rows.append([where, f"`{original}` -> `{mutated}`", reason])
    count["competent"] = count["killed"] + count["survived"] - count["equivalent"]
    return count, closed_rows, survivor_rows


def rate(killed, competent):
    value = killed / competent if competent else float("nan")
    return f"{value:.1%}", f"{wilson_lower(killed, competent):.1%}"


def judge_text(target):
    judges = target_judges(target)
    if target in PORT_DIRS:
        return "`pytest -x parity_tests` (every parity file)"
    if target == "converter":
        return "`pytest -x " + " ".join(CONVERTER_JUDGE) + "` (the parity files in full)"
    return "per module: " + "; ".join(f"`{m}`: " + ", ".join(f"`{t}`" for t in tests)
                                      for m, tests in judges.items())


GROUP_HEAD = ["group", "targets", "drawn", "run", "killed", "survived", "of which equivalent",
              "incompetent", "killed / non-equivalent", "Wilson 95 % lower bound"]


def group_rows(results, reasons, fingerprints):
    """{group: its row of the per-group table}."""
    rows = {}
    for group in dict.fromkeys(r["group"] for r in results):
        members = [r for r in results if r["group"] == group]
        totals = {}
        for r in members:
            for key, value in tally(r, reasons, fingerprints)[0].items():
                totals[key] = totals.get(key, 0) + value
        drawn = sum(r["drawn"] for r in members)
        run = sum(r["run"] for r in members)
        shown, lower = rate(totals["killed"], totals["competent"])
        rows[group] = [group, ", ".join(r["target"] for r in members), str(drawn), str(run),
                       str(totals["killed"]), str(totals["survived"]),
                       str(totals["equivalent"]), str(totals["incompetent"]), shown, lower]
    return rows


def target_section(result, reasons, fingerprints):
    count, closed_rows, survivor_rows = tally(result, reasons, fingerprints)
    shown, lower = rate(count["killed"], count["competent"])
    out = [f"## Target `{result['target']}` (group {result['group']})", "",
           f"- modules: {', '.join(f'`{m}`' for m in target_modules(result['target']))}",
           f"- judge: {judge_text(result['target'])}",
           f"- catalogue: {result['generated']} mutants; after the operator filter: "
           f"{result['after_filter']}; drawn at random: {result['drawn']}; run: "
           f"{result['run']}" + (" (stopped at the time budget: the rest pending)"
                                 if result["run"] < result["drawn"] else ""),
           f"- killed {count['killed']} ({count['closed']} of them only after new inputs, on "
           f"a re-run), survived {count['survived']} (of which {count['equivalent']} "
           f"equivalent, {count['unreachable']} not reachable by the judge, {count['stale']} "
           f"last run against other judge inputs), incompetent "
           f"{count['incompetent']}",
           f"- killed / non-equivalent: {shown} (Wilson 95 % lower bound {lower})",
           f"- time: baseline {result['baseline_s']:.0f} s, mutants {result['exec_s']:.0f} s "
           f"({result['exec_s'] / max(1, result['run']):.1f} s per mutant)"]
    if result.get("planted_run") is False:
        out += ["", "Planted mutants: not run yet (the run was stopped before them; "
                "`--resume` runs them)."]
    if result["planted"]:
        out += ["", "Planted mutants:", "",
                markdown_table(["change", "module", "killed", "first failure"],
                               [[p["what"], f"`{p['module']}`",
                                 "yes" if p["killed"] else "**no**",
                                 f"`{p['first_failure'][:120]}`"] for p in result["planted"]])]
    if closed_rows:
        out += ["", "Survivors of the run that new inputs kill (re-run):", "",
                markdown_table(["where", "mutation", "first failure on the re-run"],
                               closed_rows)]
    out += ["", "Survivors:", "",
            markdown_table(["where", "mutation", "why it survives"], survivor_rows)
            if survivor_rows else "none"]
    return "\n".join(out) + "\n"


def write_report(results, path):
    path.write_text(render_report(report_parts(results)))


def report_parts(results):
    """What a report is made of: its commands, commits, dates, CPU count, per-group rows
    and per-target sections."""
    fingerprints = {r["target"]: judge_fingerprint(r["target"]) for r in results}
    reasons = survivor_reasons()
    commits = {r["commit"] for r in results} | {
        res["rerun"]["commit"] for r in results for _, res in r["jobs"]
        if res and "commit" in res.get("rerun", {})}
    return {"commands": list(dict.fromkeys(c for r in results for c in r.get("commands", []))),
            "commits": sorted(commits), "dates": sorted({r["date"] for r in results}),
            "cores": [str(os.cpu_count())],
            "groups": group_rows(results, reasons, fingerprints),
            "sections": {r["target"]: target_section(r, reasons, fingerprints)
                         for r in results}}


def render_report(parts):
    head = ["# Mutation report", "",
            "Produced by these commands, in this order (on commits "
            f"{', '.join(parts['commits'])}; {', '.join(parts['dates'])}; "
            f"{', '.join(parts['cores'])} CPU cores):", ""]
    head += [f"    {c}" for c in parts["commands"]] + [
        "",
        "Each target's mutants are judged by the tests named in its section (pytest with the "
        "project's addopts: tests marked ci or slow are not run); a survivor "
        "counts as equivalent only with a reason recorded for that very mutation "
        "(`parity_tests/mutation/survivors.toml`) and a last run against the judge as it is "
        "now. Operators and why some are excluded: `parity_tests/mutation/cosmic-ray.toml`. "
        "Not mutated: each port's `__init__.py` (its interface and glue) and "
        "`distributed.py` (judged by the multi-process tests of tests/, minutes a run).", "",
        "## Per group", "", markdown_table(GROUP_HEAD, list(parts["groups"].values())), ""]
    return "\n".join(head) + "\n" + "\n".join(parts["sections"].values())


def read_report(path):
    """report_parts of a written report (render_report's layout), for --into; MutantsError
    naming the file where it is not one."""
    text = path.read_text() if path.is_file() else ""
    match = re.search(r"\(on commits (.*?); (.*?); (.*?) CPU cores\):\n\n((?:    .*\n)+)", text)
    table = re.search(r"\n## Per group\n\n((?:\|.*\n)+)", text)
    if not match or not table:
        raise MutantsError(f"--into {path}: not a mutation report (no command list or no "
                           f"per-group table)")
    rows = [re.split(r"(?<!\\)\|", line.strip())[1:-1]
            for line in table.group(1).splitlines()[2:]]
    sections = re.split(r"\n(?=## Target `)", text[table.end():])[1:]
    return {"commands": [c[4:] for c in match.group(4).splitlines()],
            "commits": match.group(1).split(", "), "dates": match.group(2).split(", "),
            "cores": match.group(3).split(", "),
            "groups": {r[0].strip(): [c.strip().replace("\\|", "|") for c in r] for r in rows},
            "sections": {re.match(r"## Target `(.*?)`", t).group(1): t.rstrip("\n") + "\n"
                         for t in sections}}


def into_report(out, report, command, log):
    """The targets of OUT's run put into the written report `report` (their per-group rows
    and sections replaced or added; the other targets' kept as written), the command
    recorded."""
    path = out / "results.json"
    if not path.is_file():
        raise MutantsError(f"--into: no run in {path}")
    results = json.loads(path.read_text())
    for result in results:
        result.setdefault("commands", []).append(command)
    parts, new = read_report(report), report_parts(results)
    for key in ("commands", "commits", "dates", "cores"):
        parts[key] = list(dict.fromkeys(parts[key] + new[key]))
    parts["commits"].sort()
    parts["dates"].sort()
    for key in ("groups", "sections"):  # replaced in place, new ones after the others
        parts[key].update(new[key])
    report.write_text(render_report(parts))
    log(f"report: {report}")
    return 0


def merge_results(out, others, report, command, log):
    """OUT/results.json with the targets of each other folder's results.json (replacing
    OUT's), written back with the report; the merged targets record the command."""
    by_target = {}
    for folder in [out, *others]:
        path = folder / "results.json"
        if not path.is_file():
            if folder == out:
                continue
            raise MutantsError(f"--merge: no earlier run in {path}")
        for result in json.loads(path.read_text()):
            if folder != out:
                result.setdefault("commands", []).append(command)
            by_target[result["target"]] = result
    out.mkdir(parents=True, exist_ok=True)
    save_results([by_target[t] for t in GROUPS if t in by_target], out, report, log)
    return 0


def save_results(results, out, report, log):
    """OUT/results.json (what --resume, --rerun-survivors and --merge read) and the report."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, report)
    log(f"report: {report}")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"mutants: error: {message}", file=sys.stderr)
        sys.exit(2)


def sample_sizes(text):
    """--sample: "N" (every target) or "TARGET=N,..." -> {target or "*": N}."""
    sizes = {}
    for part in filter(None, text.split(",")):
        name, _, number = part.rpartition("=")
        try:
            sizes[name or "*"] = int(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r} is not N or TARGET=N") from None
        if sizes[name or "*"] < 0:
            raise argparse.ArgumentTypeError(f"{part}: must be >= 0")
    return sizes


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(GROUPS),
                        type=lambda s: [p for p in s.split(",") if p])
    parser.add_argument("--sample", type=sample_sizes, default={},
                        help="mutants per target drawn at random: N for every target, or "
                             "TARGET=N,... (0 or not named: all)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "mutation")
    parser.add_argument("--report", type=Path, default=None,
                        help="markdown report (default OUT/REPORT.md)")
    parser.add_argument("--parallel", action="store_true",
                        help="the targets at once (one thread each)")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the pending mutants of the run in OUT")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop running mutants after this long per target (then report)")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="re-run the survivors of OUT/results.json whose judge inputs "
                             "changed, on this checkout, then rewrite the report")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report of what ran in OUT so far, running nothing")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="run nothing: add the results of another OUT folder (its "
                             "targets replace OUT's) to OUT/results.json and the report")
    parser.add_argument("--into", type=Path, default=None,
                        help="run nothing: put OUT's targets into this written report (their "
                             "sections and per-group rows replaced or added)")
    parser.add_argument("--judge", default=None, help=argparse.SUPPRESS)  # cosmic-ray's call
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # cosmic-ray runs in the tree copies: a relative --out breaks
    command = "bash scripts/mutants.sh " + " ".join(shlex.quote(a) for a in argv)
    try:
        if args.judge:
            return judge(args.judge, args.out)
        unknown = [t for t in args.targets if t not in GROUPS]
        if unknown or not args.targets:
            raise MutantsError(f"--targets {','.join(args.targets)}: each must be one of "
                               f"{', '.join(GROUPS)}")
        bad = [t for t in args.sample if t not in GROUPS and t != "*"]
        if bad:
            raise MutantsError(f"--sample: unknown target {bad[0]}")
        if args.budget_minutes is not None and args.budget_minutes < 0:
            raise MutantsError(f"--budget-minutes {args.budget_minutes:g}: must be >= 0")
        report = args.report or args.out / "REPORT.md"

        def log(message):
            print(f"[mutants] {message}", flush=True)

        if args.into:
            return into_report(args.out, args.into, command, log)
        if args.merge:
            return merge_results(args.out, [m.resolve() for m in args.merge], report, command,
                                 log)
        earlier_results = []
        if (args.rerun_survivors or args.resume) and (args.out / "results.json").is_file():
            earlier_results = json.loads((args.out / "results.json").read_text())
        if args.rerun_survivors:
            if not earlier_results:
                raise MutantsError(f"--rerun-survivors: no earlier run in "
                                   f"{args.out / 'results.json'}")
            results = [r for r in earlier_results if r["target"] in args.targets]
            work = [lambda r=r: rerun_survivors(r, args.out, log, command) for r in results]
        else:
            budget = None if args.budget_minutes is None else 60 * args.budget_minutes
            sizes = {t: args.sample.get(t, args.sample.get("*", 0)) for t in args.targets}
            work = [lambda t=t: run_target(t, args.out, sizes[t], args.seed, log, command,
                                           args.resume, budget, args.report_only)
                    for t in args.targets]
        args.out.mkdir(parents=True, exist_ok=True)
        if args.parallel and len(work) > 1:
            os.environ["OMP_NUM_THREADS"] = "1"
            with concurrent.futures.ThreadPoolExecutor(len(work)) as pool:
                results = list(pool.map(lambda run: run(), work))
        else:
            results = [run() for run in work]
        # the targets not run this time too, in their earlier order
        by_target = {r["target"]: r for r in earlier_results}
        by_target.update((r["target"], r) for r in results)
        results = list(by_target.values())
        save_results(results, args.out, report, log)
    except MutantsError as exc:
        print(f"mutants: error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"mutants: error: {' '.join(map(str, exc.cmd))} exited {exc.returncode}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
