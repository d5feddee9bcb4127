"""`gfocal compare`: train both ports from identical weights, evaluate, benchmark, report.

Both ports read the same batches (same seed, same shared pipeline) and start from one set of
weights: initialised once by the PyTorch port and converted, never re-initialised. A third
run, the control arm, trains the PyTorch port again from those weights moved by one float32
ulp (gfocal/control_arm.py): the band of differences rounding alone produces, against which
the Jittor-vs-PyTorch difference is read. Every TRACE_EVERY iterations the weights of the
Jittor run and the control are compared with the PyTorch run's.
"""
import copy
import os
import time
import traceback

from gfocal import engine
from gfocal.atomic import check_output_dir
from gfocal.workdir import move_aside
from gfocal.config import load_config
from gfocal.device import resolve_device
from gfocal.precision import check_amp
from gfocal.tuning import check_setting, features
from gfocal.runtime import describe_environment
from gfocal.ports import FRAMEWORKS

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "gfl_r18_mini.py")
TRACE_EVERY = 20            # mini preset: 480 iterations, 25 snapshots of ~50 MB


def comparison_config(config_path=None, data_root=None, epochs=None, device=None, seed=None,
                      amp=None, tuning=None):
    overrides = {"train": {}}
    if amp is not None:
        overrides["train"]["amp"] = check_amp(amp)
    if tuning is not None:
        overrides["train"]["tuning"] = check_setting(tuning)
    if data_root:
        overrides["data"] = {"root": os.path.abspath(data_root)}
    if epochs:
        overrides["optim"] = {"epochs": epochs}
    if device:
        overrides["train"]["device"] = device
    if seed is not None:
        overrides["train"]["seed"] = seed
    return load_config(config_path or DEFAULT_CONFIG, overrides)


RUN_OUTPUTS = ("torch", "jittor", "control", "seeds", "init_weights.pth", "init_weights.pkl",
               "init_weights_control.pth", "report.md", "report.html", "plots")


def archive_previous_run(out_dir):
    """Move an earlier comparison's outputs to out_dir/previous/<time>/ (never overwrite)."""
    found = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(out_dir, name))]
    return move_aside(out_dir, found) if found else None


def write_initial_weights(cfg, out_dir):
    """One random initialisation (PyTorch port, seeded by cfg's train.seed), written for both
    ports, and the control arm's copy moved by one ulp; returns ({arm: path}, {arm: initial
    state})."""
    from gfocal.pytorch.checkpoint import state_dict_numpy
    from gfocal.control_arm import perturb_one_ulp
    from gfocal.checkpoint_io import write
    port, model = engine.build_model(cfg, "torch", init_weights="")
    state = state_dict_numpy(model)
    states = {"torch": state, "jittor": state,
              "control": perturb_one_ulp(state, cfg["train"]["seed"])}
    paths = {"torch": os.path.join(out_dir, "init_weights.pth"),
             "jittor": os.path.join(out_dir, "init_weights.pkl"),
             "control": os.path.join(out_dir, "init_weights_control.pth")}
    for arm, path in paths.items():
        fmt = "jittor" if arm == "jittor" else "torch"
        write(path, states[arm], fmt, meta={"source": f"gfocal compare initialisation ({arm})"})
    return paths, states


def benchmark_inference(cfg, port, model, warmup=3):
    """Per-image latencies (s) on the val split, batch 1: of the `warmup` first images
    (compilation, caches) and of the rest (predict returns numpy arrays, so each call has
    waited for the device)."""
    from gfocal.data.loader import build_dataloader
    model.eval()
    warm, latencies = [], []
    with build_dataloader(cfg, "val", device=str(port.current_device())) as loader:
        for i, batch in enumerate(loader):
            t0 = time.perf_counter()
            model.predict(batch)
            (latencies if i >= warmup else warm).append(
                (time.perf_counter() - t0) / len(batch["img_metas"]))
    return warm, latencies


def run_port(cfg, framework, out_dir, init_weights, max_iters=None, progress=True,
             work_name=None, trace=None):
    """Train, evaluate and benchmark one port in out_dir/`work_name` (default: the
    framework's name); a failure is caught and reported. `trace`: a control_arm.WeightTrace."""
    from gfocal.report import RunData, read_log
    work_dir = os.path.join(out_dir, work_name or framework)
    data = RunData(framework=framework)
    t0 = time.perf_counter()
    try:
        out = engine.train(engine.TrainRun(
            cfg, framework, work_dir, init_weights=init_weights, max_iters=max_iters,
            progress=progress, on_iter_end=trace.hook if trace else None, keep_model=True))
        data.log = read_log(out.log)
        data.evals = out.evals
        if not data.evals:
            data.evals = [{"epoch": data.log[-1]["epoch"],
                           "stats": engine.evaluate(cfg, out.port, out.model)}]
        data.final_stats = data.evals[-1]["stats"]
        data.warmup_latencies, data.latencies = benchmark_inference(cfg, out.port, out.model)
    except Exception as exc:  # the report is still written, with the failure in it
        data.failure = f"{type(exc).__name__}: {exc}"
        data.traceback = traceback.format_exc()
        log_path = os.path.join(work_dir, f"log_{framework}.jsonl")
        if os.path.exists(log_path) and not data.log:
            data.log = read_log(log_path, allow_partial_last_line=True)
    data.wall_time = time.perf_counter() - t0
    return data


def check_inputs(cfg):
    """Stop before any work (DatasetError / CheckpointError / DeviceError, one line) on a
    data root, split, init_weights file or device that cannot be used; returns the
    iterations of one epoch."""
    from gfocal.checkpoint_io import load_any
    from gfocal.data.loader import build_dataloader
    for framework in FRAMEWORKS:  # both ports must run on the device asked for
        engine.select_device(cfg, framework)
    iters_per_epoch = len(build_dataloader(cfg, "train"))
    build_dataloader(cfg, "val")
    if cfg["train"]["init_weights"]:
        load_any(cfg["train"]["init_weights"], cfg["model"]["num_classes"])
    return iters_per_epoch


def control_iterations(cfg, iters_per_epoch, reference, budget_left, max_iters=None):
    """(iterations, note): the control arm's length in whole epochs that fit `budget_left`
    seconds at the reference run's pace (its wall time includes evaluations)."""
    total = cfg["optim"]["epochs"] * iters_per_epoch
    if max_iters is not None:
        total = min(total, max_iters)
    done = len(reference.log)
    if reference.failure or not done or budget_left is None:
        return total, None
    pace = reference.wall_time / done
    fit = int(budget_left / pace) // iters_per_epoch * iters_per_epoch
    if fit >= total:
        return total, None
    if fit == 0:
        return 0, (f"the control arm did not run: {budget_left:.0f} s of the time budget were "
                   f"left, one epoch takes about {pace * iters_per_epoch:.0f} s")
    return fit, (f"the control arm ran {fit // iters_per_epoch} of "
                 f"{total // iters_per_epoch} epochs (the rest did not fit the time budget); "
                 "its final AP is not comparable with the other two")


def run_arms(cfg, out_dir, iters_per_epoch, budget_s=None, max_iters=None, progress=True,
             started=None):
    """torch, jittor and the control arm from one initialisation (inputs already checked:
    check_inputs gives `iters_per_epoch`); returns (runs, noise)."""
    from gfocal import control_arm
    started = started or time.perf_counter()
    init, states = write_initial_weights(cfg, out_dir)
    reference = control_arm.WeightTrace(TRACE_EVERY)
    traces = {"jittor": control_arm.WeightTrace(TRACE_EVERY, reference),
              "control": control_arm.WeightTrace(TRACE_EVERY, reference)}
    reference(0, states["torch"])
    for arm, trace in traces.items():
        trace(0, states[arm])
    runs = {}
    for framework in FRAMEWORKS:
        print(f"== {framework}: training {cfg['optim']['epochs']} epochs from {init[framework]}")
        runs[framework] = run_port(cfg, framework, out_dir, init[framework], max_iters,
                                   progress, trace=traces.get(framework, reference))
        if runs[framework].failure:
            print(f"== {framework} FAILED: {runs[framework].failure}")
    budget_left = None if budget_s is None else budget_s - (time.perf_counter() - started)
    iters, note = control_iterations(cfg, iters_per_epoch, runs["torch"], budget_left, max_iters)
    from gfocal.report import RunData
    control = RunData(framework="torch", failure="not run: " + (note or "no iterations"))
    if iters:
        print(f"== control: the PyTorch port again, {iters} iterations from {init['control']} "
              "(one ulp away)")
        control = run_port(cfg, "torch", out_dir, init["control"], iters, progress,
                           work_name="control", trace=traces["control"])
        if control.failure:
            print(f"== control FAILED: {control.failure}")
    reference.snapshots.clear()  # ~50 MB each: free them before the report
    result = {"control": control, "note": note,
              "traces": {arm: t.records for arm, t in traces.items()}}
    if not control.failure and not runs["torch"].failure:
        result["check"] = control_arm.control_check(runs["torch"].log, control.log,
                                                    cfg["train"]["amp"])
    if all(not r.failure for r in (*runs.values(), control)):
        result["verdict"] = control_arm.verdict(runs["torch"], runs["jittor"], control,
                                                amp=cfg["train"]["amp"])
        result["exit"] = control_arm.band_exit(result["traces"]["jittor"], result["traces"]["control"])
    return runs, result


def final_aps(runs, noise_result):
    """{arm: final AP, None for an arm that failed} of torch, jittor and the control."""
    arms = {**runs, "control": noise_result["control"]}
    return {arm: None if r.failure else (r.stats() or {}).get("AP") for arm, r in arms.items()}


def run_comparison(args):
    """Returns (runs of the two ports, the control arm's result: control_arm.py's numbers)."""
    from gfocal.report import write_report
    started = time.perf_counter()
    cfg = comparison_config(args.config, args.data_root, args.epochs,
                            getattr(args, "device", None), getattr(args, "seed", None),
                            getattr(args, "amp", None), getattr(args, "tuning", None))
    out_dir = check_output_dir(args.out_dir)  # a file or a read-only place: one line, now
    iters_per_epoch = check_inputs(cfg)
    os.makedirs(out_dir, exist_ok=True)
    archived = archive_previous_run(out_dir)
    if archived:
        print(f"== the previous comparison in {out_dir} was moved to {archived}")
    budget = getattr(args, "budget_minutes", None)
    runs, noise_result = run_arms(cfg, out_dir, iters_per_epoch,
                                  budget * 60 if budget else None, args.max_iters,
                                  started=started)
    seeds = getattr(args, "seeds", None) or 1
    base_seed = cfg["train"]["seed"]
    spread = {base_seed: final_aps(runs, noise_result)}
    for k in range(1, seeds):
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg["train"]["seed"] = base_seed + k
        seed_dir = os.path.join(out_dir, "seeds", f"seed_{base_seed + k}")
        os.makedirs(seed_dir, exist_ok=True)
        print(f"== seed {base_seed + k} ({k + 1} of {seeds})")
        spread[base_seed + k] = final_aps(*run_arms(seed_cfg, seed_dir, iters_per_epoch,
                                                    max_iters=args.max_iters))
    noise_result["seeds"] = spread
    device = resolve_device(cfg["train"]["device"])
    summary = {"config": cfg["source"], "data_root": cfg["data"]["root"] or "bundled mini COCO",
               "model": cfg["model"], "optim": cfg["optim"],
               "batch_size": cfg["data"]["batch_size"], "img_scale": cfg["data"]["img_scale"],
               "amp": cfg["train"]["amp"], "tuning": cfg["train"]["tuning"],
               "tuned_features": {fw: list(features(fw, cfg["train"]["tuning"], device))
                                  for fw in FRAMEWORKS},
               "seeds": sorted(spread)}
    env = describe_environment(device, base_seed)
    md, html = write_report(out_dir, runs, env, summary, noise=noise_result)
    if "verdict" in noise_result:
        print("== " + noise_result["verdict"]["line"])
    print(f"report: {md}\n        {html}")
    return runs, noise_result


def failed_arms(runs, noise_result):
    """The arms that failed (a control left out by the time budget has not failed)."""
    failed = [name for name, r in runs.items() if r.failure]
    if noise_result["control"].failure and not noise_result["note"]:
        failed.append("control")
    return failed
