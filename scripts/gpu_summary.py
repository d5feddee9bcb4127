"""The tables of a scripts/gpu_check.sh run, from the files it wrote into OUT_DIR:
steps, GPU benchmarks (perf.json), parity on the GPU (parity_verdict.json) and the short
training (train/); with --jittor (the Jittor check) the Jittor port's GPU benchmarks, its
numerics flags and the paired cases instead of the PyTorch port's and the training. Writes
OUT_DIR/summary.md and prints it.

    python scripts/gpu_summary.py OUT_DIR --device cuda --step perf=passed=95 ... [--jittor]
"""
import argparse
import json
import os
import statistics
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gfocal.tables import markdown_table  # noqa: E402
from parity_tests.judge import verdict_tables  # noqa: E402
from parity_tests.rendering import subject_title, verdict_text  # noqa: E402
from perf_tests import measure  # noqa: E402

PERF_COLUMNS = ["case", "numerics", "batch", "min ms", "median ms", "per image ms", "FPS",
                "peak alloc MB", "peak reserved MB"]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _ms(seconds):
    return f"{seconds * 1e3:.1f}"


PAIRED_COLUMNS = ["case", "batch", "pairs", "torch median ms", "jittor median ms",
                  "median pair J/T", "J/T of minima"]


def perf_rows(bench, framework="torch"):
    """One row per timed GPU case of `framework`, in the suite's order."""
    rows = []
    for b in bench.get("benchmarks", []):
        info, stats = b.get("extra_info", {}), b.get("stats") or {}
        if info.get("framework") != framework or "median" not in stats:
            continue
        batch = int(info.get("batch", 1))
        numerics = "TF32" if info.get("tf32") else "fp32"
        if info.get("precision", "off") != "off":
            numerics = info["precision"]  # convolutions in bf16 / fp16 (gfocal/precision.py)
        if info.get("setting", "default") != "default":  # gfocal/tuning.py
            numerics += f" {info['setting']} (first call {info.get('first_call_s', 0):.1f} s)"
        per_image = stats["median"] / batch
        fps = f"{batch / stats['median']:.1f}" if info.get("case") == "inference" else "-"
        alloc, reserved = info.get("gpu_peak_allocated_mb"), info.get("gpu_peak_reserved_mb")
        rows.append([info.get("case", b.get("name")), numerics, batch, _ms(stats["min"]),
                     _ms(stats["median"]), _ms(per_image), fps,
                     "-" if alloc is None else f"{alloc:.0f}",
                     "-" if reserved is None else f"{reserved:.0f}"])
    return rows


def paired_rows(bench):
    """One row per timed paired case: both ports' medians and the Jittor/PyTorch ratios."""
    rows = []
    for b in bench.get("benchmarks", []):
        info = b.get("extra_info", {})
        # the perf suite's own rule, on one JSON record at a time: its rows lack case and batch
        for r in measure.paired_rows([SimpleNamespace(group=b.get("group"), extra_info=info)]):
            rows.append([info.get("case", b.get("name")), info.get("batch", "-"), r["pairs"],
                         _ms(r["torch_median"]), _ms(r["jittor_median"]),
                         f"{r['ratio_median']:.2f}", f"{r['ratio_of_mins']:.2f}"])
    return rows


def jittor_lines(bench):
    """Jittor's numerics on the GPU, as its first GPU benchmark recorded them."""
    infos = [b.get("extra_info", {}) for b in (bench or {}).get("benchmarks", [])]
    infos += [i.get("jittor_info", {}) for i in infos]
    info = next((i for i in infos if i.get("framework") == "jittor" and "use_tensorcore" in i),
                None)
    if info is None:
        return ["- jittor: no GPU benchmark recorded its flags"]
    facts = {"jittor": info.get("version"), "use_cuda": info.get("use_cuda"),
             "use_tensorcore": info.get("use_tensorcore"),
             "cuDNN": "on" if info.get("cudnn") else "off (Jittor's own convolution kernels)",
             "cuda_archs": info.get("cuda_archs"), "TF32": "on" if info.get("tf32") else "off",
             "NVIDIA_TF32_OVERRIDE": info.get("nvidia_tf32_override")}
    return [f"- {k}: {v}" for k, v in facts.items()]


def environment_lines(bench, device):
    infos = [b.get("extra_info", {}) for b in (bench or {}).get("benchmarks", [])]
    infos += [i.get("torch_info", {}) for i in infos]  # the paired cases' (Jittor check)
    info = next((i for i in infos if i.get("gpu")), {})
    facts = {"device": device, "gpu": info.get("gpu", "-"), "torch": info.get("version", "-"),
             "cuda": info.get("cuda", "-"), "cudnn": info.get("cudnn", "-"),
             "cudnn.benchmark": info.get("cudnn_benchmark", "-")}
    return [f"- {k}: {v}" for k, v in facts.items()]


def training_lines(train_dir):
    log_path = os.path.join(train_dir, "log_torch.jsonl")
    try:
        with open(log_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return ["no training log (the step failed before its first iteration)"]
    if not records:
        return ["the training log is empty"]
    times = [r["time"] for r in records[1:]] or [records[0]["time"]]  # first: warm-up
    data = [r["data_time"] for r in records[1:]] or [records[0]["data_time"]]
    last = records[-1]
    lines = [f"- iterations: {last['iter']}, final loss {last['loss']:.4f} "
             f"(cls {last['loss_cls']:.4f}, bbox {last['loss_bbox']:.4f}, "
             f"dfl {last['loss_dfl']:.4f})",
             f"- median time per iteration {_ms(statistics.median(times))} ms, data wait "
             f"{_ms(statistics.median(data))} ms"]
    try:
        with open(os.path.join(train_dir, "test.txt")) as f:
            stats = dict(line.split()[:2] for line in f if line[:2] in ("AP", "AR"))
        lines.append(f"- evaluation: AP {stats.get('AP', '-')}, AP50 {stats.get('AP50', '-')}")
    except (OSError, ValueError):
        lines.append("- evaluation: no statistics (test.txt missing)")
    return lines


def parse_step(text):
    name, status, seconds = text.split("=", 2)
    return name, status, seconds


def perf_table(rows, columns):
    return (markdown_table(columns, rows) if rows else
            "no timings (benchmarks disabled, or the perf step failed: see check.log)")


def summary(out_dir, device, steps, jittor=False):
    bench = read_json(os.path.join(out_dir, "perf.json"))
    verdict = read_json(os.path.join(out_dir, "parity_verdict.json"))
    parts = ["# GPU check" + (" (Jittor)" if jittor else ""), "", "## Steps", "",
             markdown_table(["step", "status", "seconds"], [list(s) for s in steps]),
             "", "## Environment", "", *environment_lines(bench, device)]
    if jittor:
        parts += [*jittor_lines(bench), "",
                  "## Jittor port on the GPU (pytest-benchmark, synchronised)", "",
                  perf_table(perf_rows(bench, "jittor") if bench else [], PERF_COLUMNS), "",
                  "## Both ports interleaved on the GPU (paired, fp32)", "",
                  perf_table(paired_rows(bench) if bench else [], PAIRED_COLUMNS)]
    else:
        tuned = read_json(os.path.join(out_dir, "perf_tuned.json"))
        parts += ["", "## PyTorch port on the GPU (pytest-benchmark, synchronised)", "",
                  perf_table(perf_rows(bench) if bench else [], PERF_COLUMNS), "",
                  "## PyTorch port on the GPU, tuned setting (gfocal/tuning.py)", "",
                  perf_table(perf_rows(tuned) if tuned else [], PERF_COLUMNS)]
    parts += ["", "## Parity on the GPU", ""]
    if verdict:
        for subject, lines in verdict_tables(verdict).items():
            parts += [f"{subject_title(subject)}:", "", "```", verdict_text({subject: lines}),
                      "```", ""]
    else:
        parts.append("no parity verdict (the parity step failed: see check.log and parity.html)")
    if not jittor:
        parts += ["", "## Short training on the GPU", "",
                  *training_lines(os.path.join(out_dir, "train"))]
    return "\n".join(parts) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--device", required=True)
    parser.add_argument("--step", action="append", default=[], type=parse_step,
                        help="NAME=STATUS=SECONDS of one step of the check")
    parser.add_argument("--jittor", action="store_true", help="the Jittor check's tables")
    args = parser.parse_args(argv)
    text = summary(args.out_dir, args.device, args.step, args.jittor)
    path = os.path.join(args.out_dir, "summary.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"summary: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
