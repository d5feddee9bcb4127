"""Mutation testing of the numerical modules of each port, with the parity suite alone as the
killing suite. Run through `make mutants` (scripts/mutants.sh sets up cosmic-ray in
its own environment and runs this file with it).

For each port, in a copy of this checkout (cosmic-ray edits the files it mutates; the copy
keeps your tree untouched even when a run is interrupted):
  1. the parity suite once, unmutated (it must pass; its time sets the per-mutant timeout);
  2. cosmic-ray's catalogue of the port's numerical modules, less the operators excluded in
     parity_tests/mutation/cosmic-ray.toml (and, with --sample N, all but N drawn by --seed);
  3. `cosmic-ray exec`: each mutant applied alone, the parity suite run with -x;
  4. the planted mutants of parity_tests/mutation/planted.toml through the same command.
Then one report (markdown) with the counts per port, the planted mutants, and each survivor
with its line, its mutation and the reason recorded in parity_tests/mutation/survivors.toml
(or "no reason recorded yet").

  python scripts/mutants.py [--ports torch,jittor] [--sample N] [--seed S] [--out DIR]
                            [--report FILE] [--parallel] [--budget-minutes M] [--resume]
                            [--rerun-survivors]

--budget-minutes stops each port's mutants after M minutes and reports those that ran (in
cosmic-ray's random order, so still a random sample); --resume goes on with the rest;
--rerun-survivors runs the survivors not recorded as equivalent in survivors.toml again, on
this checkout (after new parity inputs).
"""
import argparse
import concurrent.futures
import json
import math
import os
import random
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
MODULES = ("anchors", "atss", "box_ops", "losses", "gfl_loss", "gfl_head", "postprocess",
           "kernels")
# Parity files that fail fastest on a broken target, loss or decoding come first: with -x a
# killed mutant stops at its first failure. Files not named here follow in name order.
FIRST_FILES = ("test_targets_losses.py", "test_postprocess_regimes.py", "test_forward.py",
               "test_inference_coco.py", "test_backward_optim.py")


class MutantsError(Exception):
    """A problem with the run's inputs or environment: one line, exit 2."""


def port_modules(port):
    present = [f"{PORT_DIRS[port]}/{m}.py" for m in MODULES]
    return [m for m in present if (ROOT / m).exists()]


def parity_files(tree=ROOT):
    files = sorted(p.name for p in (tree / "parity_tests").glob("test_*.py"))
    return [f for f in FIRST_FILES if f in files] + [f for f in files if f not in FIRST_FILES]


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


def kill_command(tree):
    files = " ".join(f"parity_tests/{f}" for f in parity_files(tree))
    return f"{tree}/.venv/bin/python -m pytest -x -q -p no:cacheprovider {files}"


def run_killing_suite(tree, timeout):
    """-> (killed, seconds, first failure line); pytest's usage errors (exit 4, 5: a file
    missing, nothing collected) are the run's problem, not a kill."""
    rc, seconds, output = run_timed(kill_command(tree), tree, timeout)
    if rc in (4, 5):
        raise MutantsError(f"the killing suite cannot run in {tree} (pytest exit {rc}): "
                           f"{output.strip().splitlines()[-1] if output.strip() else ''}")
    failed = [ln for ln in output.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return rc != 0, seconds, failed[0] if failed else output[-200:]


def run_mutated(tree, module, mutate, timeout):
    """run_killing_suite with mutate(path, original text) applied to tree/module, which is
    put back afterwards whatever happens."""
    path = tree / module
    original = path.read_text()
    try:
        mutate(path, original)
        return run_killing_suite(tree, timeout)
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


def write_config(port, tree, timeout, path):
    base = tomllib.loads((MUTATION_DIR / "cosmic-ray.toml").read_text())
    excluded = base["exclude-operators"]
    quoted = ", ".join(json.dumps(m) for m in port_modules(port))
    path.write_text(
        "[cosmic-ray]\n"
        f"module-path = [{quoted}]\n"
        f"timeout = {timeout:.0f}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(kill_command(tree))}\n"
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


def run_planted(port, tree, timeout):
    planted = tomllib.loads((MUTATION_DIR / "planted.toml").read_text())["planted"]
    results = []
    for entry in (p for p in planted if p["port"] == port):
        def plant(path, original, entry=entry):
            if original.count(entry["old"]) != 1:
                raise MutantsError(f"planted.toml: {entry['old']!r} does not occur exactly "
                                   f"once in {entry['module']}")
            path.write_text(original.replace(entry["old"], entry["new"]))
        killed, seconds, failure = run_mutated(tree, entry["module"], plant, timeout)
        results.append({**entry, "killed": killed, "seconds": seconds,
                        "first_failure": failure})
    return results


def fresh_tree(work, port):
    tree = work / f"tree-{port}"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    copy_checkout(tree)
    return tree


def start_session(port, work, sample, seed, log):
    """Copy, baseline, catalogue, operator filter and sample; -> the run's state."""
    tree = fresh_tree(work, port)
    log(f"{port}: baseline (the parity suite, unmutated)")
    rc, baseline, output = run_timed(kill_command(tree), tree)
    if rc != 0:
        (work / f"baseline-{port}.log").write_text(output)
        raise MutantsError(f"the parity suite fails on the unmutated {port} tree: see "
                           f"{work / f'baseline-{port}.log'}")
    config, session = work / f"cosmic-ray-{port}.toml", work / f"session-{port}.sqlite"
    session.unlink(missing_ok=True)
    write_config(port, tree, mutant_timeout(baseline), config)
    subprocess.run([tool("cosmic-ray"), "init", str(config), str(session)], cwd=tree,
                   check=True)
    generated = len(catalogue(session))
    subprocess.run([tool("cr-filter-operators"), str(session), str(config)], cwd=tree,
                   check=True)
    kept, drawn = keep_sample(session, sample, seed)
    return {"port": port, "commit": commit(), "date": time.strftime("%Y-%m-%d"),
            "sample": sample, "seed": seed, "generated": generated, "after_filter": kept,
            "drawn": drawn, "baseline_s": baseline, "exec_s": 0.0}


def restore_modules(tree):
    """The ports' modules of `tree` as in this checkout (after a stopped exec)."""
    for module in (m for port in PORT_DIRS for m in port_modules(port)):
        shutil.copy2(ROOT / module, tree / module)


def exec_session(tree, config, session, budget_s):
    """`cosmic-ray exec` for at most budget_s seconds (None: to the end); a stopped run
    leaves its pending mutants for --resume (and a mutated file: run_port restores it)."""
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


def run_port(port, work, sample, seed, log, resume=False, budget_s=None):
    state_file = work / f"state-{port}.json"
    config, session = work / f"cosmic-ray-{port}.toml", work / f"session-{port}.sqlite"
    tree = work / f"tree-{port}"
    if resume and state_file.is_file() and session.is_file() and tree.is_dir():
        state = json.loads(state_file.read_text())
    else:
        state = start_session(port, work, sample, seed, log)
        state_file.write_text(json.dumps(state))
    timeout = mutant_timeout(state["baseline_s"])
    log(f"{port}: {state['generated']} mutants, {state['after_filter']} after the operator "
        f"filter, {state['drawn']} drawn (baseline {state['baseline_s']:.0f} s, timeout "
        f"{timeout:.0f} s)" + (f", for at most {budget_s:.0f} s" if budget_s else ""))
    start = time.monotonic()
    try:
        if budget_s is None or budget_s > 0:
            exec_session(tree, config, session, budget_s)
    finally:
        restore_modules(tree)
    state["exec_s"] += time.monotonic() - start
    state_file.write_text(json.dumps(state))
    jobs = catalogue(session)
    ran = sum(1 for _, res in jobs if res and res.get("worker_outcome") != "skipped")
    return {**state, "run": ran, "jobs": jobs, "planted": run_planted(port, tree, timeout)}


def commit():
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()


def rerun_survivors(result, work, log):
    """Each survivor of an earlier run that survivors.toml does not call equivalent (and no
    re-run killed yet) again, on a fresh copy of this checkout (after new parity inputs):
    its result gets `rerun` = killed / survived and the first failure."""
    port, reasons = result["port"], survivor_reasons()

    def equivalent(job):
        entry = reason_for(job, reasons)
        return entry is not None and entry["kind"] == "equivalent"
    survivors = [(job, res) for job, res in result["jobs"]
                 if res and res.get("test_outcome") == "survived" and not equivalent(job)
                 and not res.get("rerun", {}).get("killed")]
    tree = fresh_tree(work, port)
    log(f"{port}: re-running {len(survivors)} survivors")
    timeout = mutant_timeout(result["baseline_s"])
    for job, res in survivors:
        mutation = job["mutations"][0]

        def apply(path, original, mutation=mutation):
            subprocess.run([tool("cosmic-ray"), "apply", mutation["module_path"],
                            mutation["operator_name"], str(mutation["occurrence"])],
                           cwd=tree, check=True, capture_output=True)
        killed, _, failure = run_mutated(tree, mutation["module_path"], apply, timeout)
        res["rerun"] = {"killed": killed, "first_failure": failure}
    result["rerun_commit"] = commit()
    return result


# ---------------------------------------------------------------- report

def survivor_reasons():
    path = MUTATION_DIR / "survivors.toml"
    entries = tomllib.loads(path.read_text()).get("survivor", []) if path.exists() else []
    return {(e["module"], e["line"].strip(), e["operator"]): e for e in entries}


def reason_for(job, reasons):
    """survivors.toml's entry for a mutant (by module, stripped line, operator), or None."""
    mutation, _, text = mutated_line(job)
    return reasons.get((mutation["module_path"], text.strip(), mutation["operator_name"]))


def wilson_lower(killed, n, z=1.96):
    if n == 0:
        return float("nan")
    p = killed / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def mutated_line(job):
    mutation = job["mutations"][0]
    line = mutation["start_pos"][0]
    text = (ROOT / mutation["module_path"]).read_text().splitlines()[line - 1]
    return mutation, line, text


def port_section(result, reasons):
    ran = [(job, res) for job, res in result["jobs"]
           if res and res.get("worker_outcome") != "skipped"]
    outcome = {"killed": 0, "survived": 0, "incompetent": 0}
    for _, res in ran:
        outcome[res.get("test_outcome") or "incompetent"] += 1
    survivors = [(job, res) for job, res in ran if res.get("test_outcome") == "survived"]
    closed = [(job, res) for job, res in survivors if res.get("rerun", {}).get("killed")]
    survivors = [pair for pair in survivors if pair not in closed]
    outcome["killed"] += len(closed)
    outcome["survived"] -= len(closed)
    rows, equivalent, by_design = [], 0, 0
    closed_rows = []
    for job, res in closed:
        mutation, line, text = mutated_line(job)
        closed_rows.append([f"`{mutation['module_path']}:{line}`", mutation["operator_name"],
                            f"`{text.strip()}`", f"`{res['rerun']['first_failure'][:100]}`"])
    for job, res in survivors:
        mutation, line, text = mutated_line(job)
        entry = reason_for(job, reasons)
        if entry and entry["kind"] == "equivalent":
            equivalent += 1
        if entry and entry["kind"] == "not reachable by parity inputs":
            by_design += 1
        reason = f"{entry['kind']}: {entry['reason']}" if entry else "no reason recorded yet"
        change = next((d[1:].strip() for d in (res.get("diff") or "").splitlines()
                       if d.startswith("+") and not d.startswith("+++")), "?")
        rows.append([f"`{mutation['module_path']}:{line}`", mutation["operator_name"],
                     f"`{text.strip()}` -> `{change}`", reason])
    competent = outcome["killed"] + outcome["survived"] - equivalent
    rate = outcome["killed"] / competent if competent else float("nan")
    out = [f"## Port `{result['port']}`", "",
           f"- catalogue: {result['generated']} mutants of "
           f"{', '.join(port_modules(result['port']))}",
           f"- after the operator filter: {result['after_filter']}; drawn at random: "
           f"{result['drawn']}; run: {result['run']}"
           + (" (stopped at the time budget: the rest pending)"
              if result["run"] < result["drawn"] else ""),
           f"- killed {outcome['killed']} ({len(closed)} of them only after new parity "
           f"inputs, on a re-run), survived {outcome['survived']} (of which "
           f"{equivalent} equivalent), incompetent {outcome['incompetent']}",
           f"- killed / non-equivalent: {rate:.1%} (Wilson 95 % lower bound "
           f"{wilson_lower(outcome['killed'], competent):.1%})",
           f"- the same without the {by_design} survivors in argument checks that no valid "
           f"input reaches (kind \"not reachable by parity inputs\"): "
           f"{outcome['killed'] / max(1, competent - by_design):.1%} (lower bound "
           f"{wilson_lower(outcome['killed'], competent - by_design):.1%})",
           f"- time: baseline {result['baseline_s']:.0f} s, mutants {result['exec_s']:.0f} s "
           f"({result['exec_s'] / max(1, result['run']):.1f} s per mutant)", "",
           "Planted mutants:", "",
           markdown_table(["change", "module", "killed", "first failure"],
                          [[p["what"], f"`{p['module']}`", "yes" if p["killed"] else "**no**",
                            f"`{p['first_failure'][:120]}`"] for p in result["planted"]])]
    if closed_rows:
        out += ["", "Survivors of the run that new parity inputs kill (re-run):", "",
                markdown_table(["where", "operator", "line", "first failure on the re-run"],
                               closed_rows)]
    out += ["", "Survivors:", "",
            markdown_table(["where", "operator", "mutation", "why it survives"], rows)
            if rows else "none"]
    return "\n".join(out) + "\n"


def write_report(results, path):
    first = results[0]
    ports = ",".join(r["port"] for r in results)
    reruns = sorted({r["rerun_commit"] for r in results if "rerun_commit" in r})
    head = ["# Mutation report of the parity suite", "",
            f"Generated by `make mutants MUTANTS_ARGS='--ports {ports} --sample "
            f"{first['sample']} --seed {first['seed']} --parallel'` on commit "
            f"{first['commit']}, {first['date']}, "
            f"{os.cpu_count()} CPU cores"
            + (f"; survivors re-run on commit {', '.join(reruns)}" if reruns else "")
            + ". The killing suite is `pytest -x parity_tests` alone: every parity file of "
            "the checkout run, those that fail fastest on a broken target, loss or decoding "
            f"first ({', '.join(FIRST_FILES)}).",
            "Operators and why some are excluded: `parity_tests/mutation/cosmic-ray.toml`; "
            "reasons for survivors: `parity_tests/mutation/survivors.toml`.", ""]
    reasons = survivor_reasons()
    path.write_text("\n".join(head) + "\n".join(port_section(r, reasons) for r in results))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", default="torch,jittor",
                        type=lambda s: [p for p in s.split(",") if p])
    parser.add_argument("--sample", type=int, default=0,
                        help="mutants per port, drawn at random (0: all)")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "mutation")
    parser.add_argument("--report", type=Path, default=None,
                        help="markdown report (default OUT/REPORT.md)")
    parser.add_argument("--parallel", action="store_true",
                        help="both ports at once (one thread each)")
    parser.add_argument("--resume", action="store_true",
                        help="go on with the pending mutants of the run in OUT")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="stop running mutants after this long per port (then report)")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="re-run the survivors of OUT/results.json on this checkout, "
                             "then rewrite the report")
    args = parser.parse_args(argv)
    try:
        unknown = [p for p in args.ports if p not in PORT_DIRS]
        if unknown or not args.ports:
            raise MutantsError(f"--ports {','.join(args.ports)}: each must be torch or jittor")
        if args.sample < 0:
            raise MutantsError(f"--sample {args.sample}: must be >= 0")
        if args.budget_minutes is not None and args.budget_minutes < 0:
            raise MutantsError(f"--budget-minutes {args.budget_minutes:g}: must be >= 0")
        report = args.report or args.out / "REPORT.md"

        def log(message):
            print(f"[mutants] {message}", flush=True)

        if args.rerun_survivors:
            earlier = args.out / "results.json"
            if not earlier.is_file():
                raise MutantsError(f"--rerun-survivors: no earlier run in {earlier}")
            earlier_results = json.loads(earlier.read_text())
            results = [r for r in earlier_results if r["port"] in args.ports]
            work = [lambda r=r: rerun_survivors(r, args.out, log) for r in results]
        else:
            budget = None if args.budget_minutes is None else 60 * args.budget_minutes
            work = [lambda p=p: run_port(p, args.out, args.sample, args.seed, log,
                                         args.resume, budget) for p in args.ports]
        args.out.mkdir(parents=True, exist_ok=True)
        if args.parallel and len(work) > 1:
            os.environ["OMP_NUM_THREADS"] = "1"
            with concurrent.futures.ThreadPoolExecutor(len(work)) as pool:
                results = list(pool.map(lambda run: run(), work))
        else:
            results = [run() for run in work]
        if args.rerun_survivors:  # the ports not re-run too, in their earlier order
            by_port = {r["port"]: r for r in earlier_results}
            by_port.update((r["port"], r) for r in results)
            results = list(by_port.values())
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        write_report(results, report)
        log(f"report: {report}")
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
