"""`gfocal compare`: train both ports from identical weights, evaluate, benchmark, report.

Both ports read the same batches (same seed, same shared pipeline) and start from one set of
weights: initialised once by the PyTorch port and converted, never re-initialised.
"""
import os
import time
import traceback

from gfocal import engine
from gfocal.config import load_config
from gfocal.runtime import describe_environment

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "gfl_r18_mini.py")
FRAMEWORKS = ("torch", "jittor")


def comparison_config(config_path=None, data_root=None, epochs=None):
    overrides = {}
    if data_root:
        overrides["data"] = {"root": os.path.abspath(data_root)}
    if epochs:
        overrides["optim"] = {"epochs": epochs}
    return load_config(config_path or DEFAULT_CONFIG, overrides)


RUN_OUTPUTS = ("torch", "jittor", "init_weights.pth", "init_weights.pkl", "report.md",
               "report.html", "plots")


def archive_previous_run(out_dir):
    """Move an earlier comparison's outputs to out_dir/previous/<time>/ (never overwrite)."""
    found = [name for name in RUN_OUTPUTS if os.path.exists(os.path.join(out_dir, name))]
    if not found:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(out_dir, "previous", stamp)
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(out_dir, "previous", f"{stamp}-{n}")
    os.makedirs(target)
    for name in found:
        os.rename(os.path.join(out_dir, name), os.path.join(target, name))
    return target


def write_initial_weights(cfg, out_dir):
    """One random initialisation (PyTorch port, seeded), written for both ports."""
    import torch

    from gfocal.pytorch.checkpoint import state_dict_numpy
    from weights_converter.convert import write
    torch.manual_seed(cfg["train"]["seed"])
    port, model = engine.build_model(cfg, "torch", init_weights="")
    state = state_dict_numpy(model)
    paths = {"torch": os.path.join(out_dir, "init_weights.pth"),
             "jittor": os.path.join(out_dir, "init_weights.pkl")}
    for framework, path in paths.items():
        write(path, state, framework, meta={"source": "gfocal compare initialisation"})
    return paths


def benchmark_inference(cfg, model, warmup=3):
    """Per-image latency (s) on the val split, batch 1, after `warmup` untimed images."""
    from gfocal.data.loader import build_dataloader
    loader = build_dataloader(cfg, "val")
    model.eval()
    latencies = []
    for i, batch in enumerate(loader):
        t0 = time.perf_counter()
        model.predict(batch)
        if i >= warmup:
            latencies.append((time.perf_counter() - t0) / len(batch["img_metas"]))
    return latencies


def run_port(cfg, framework, out_dir, init_weights, max_iters=None, progress=True):
    """Train, evaluate and benchmark one port; a failure is caught and reported."""
    from gfocal.report import RunData, read_log
    work_dir = os.path.join(out_dir, framework)
    data = RunData(framework=framework)
    t0 = time.perf_counter()
    try:
        out = engine.train(cfg, framework, work_dir, init_weights=init_weights,
                           max_iters=max_iters, progress=progress)
        data.log = read_log(out["log"])
        data.evals = out["evals"]
        if not data.evals:
            data.evals = [{"epoch": data.log[-1]["epoch"],
                           "stats": engine.evaluate(cfg, out["model"])}]
        data.final_stats = data.evals[-1]["stats"]
        data.latencies = benchmark_inference(cfg, out["model"])
    except Exception as exc:  # the report is still written, with the failure in it
        data.failure = f"{type(exc).__name__}: {exc}"
        data.traceback = traceback.format_exc()
        log_path = os.path.join(work_dir, f"log_{framework}.jsonl")
        if os.path.exists(log_path) and not data.log:
            data.log = read_log(log_path, allow_partial_last_line=True)
    data.wall_time = time.perf_counter() - t0
    return data


def check_inputs(cfg):
    """Stop before any work (DatasetError / CheckpointError, one line) on a data root, split
    or init_weights file that cannot be used."""
    from gfocal.checkpoint_io import load_any
    from gfocal.data.loader import build_dataloader
    for split in ("train", "val"):
        build_dataloader(cfg, split)
    if cfg["train"]["init_weights"]:
        load_any(cfg["train"]["init_weights"], cfg["model"]["num_classes"])


def run_comparison(args):
    from gfocal.report import write_report
    cfg = comparison_config(args.config, args.data_root, args.epochs)
    check_inputs(cfg)
    out_dir = os.path.abspath(args.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    archived = archive_previous_run(out_dir)
    if archived:
        print(f"== the previous comparison in {out_dir} was moved to {archived}")
    init = write_initial_weights(cfg, out_dir)
    runs = {}
    for framework in FRAMEWORKS:
        print(f"== {framework}: training {cfg['optim']['epochs']} epochs from {init[framework]}")
        runs[framework] = run_port(cfg, framework, out_dir, init[framework], args.max_iters)
        if runs[framework].failure:
            print(f"== {framework} FAILED: {runs[framework].failure}")
    summary = {"config": cfg["source"], "data_root": cfg["data"]["root"] or "bundled mini COCO",
               "model": cfg["model"], "optim": cfg["optim"],
               "batch_size": cfg["data"]["batch_size"], "img_scale": cfg["data"]["img_scale"]}
    md, html = write_report(out_dir, runs, describe_environment(), summary)
    print(f"report: {md}\n        {html}")
    return runs
