"""`write_report`: the comparison as Markdown and as one self-contained HTML file.

Both documents are rendered from the same list of blocks, so they always carry the same
numbers; every number is computed here from the run data, none is typed in.
"""
import base64
import collections
import html
import json
import os
import time

import numpy as np

from gfocal.atomic import write_text
from gfocal.report import plots
from gfocal.control_arm import BAND_FACTOR, detection_limit_text
from gfocal.report.rundata import (COCO_STAT_NAMES, FRAMEWORKS, RunData, agreement_summary,
                                   latency_stats, loss_stats, per_epoch, speed_stats)
from gfocal.runlog import LOSS_KEYS
from gfocal.tables import html_table, markdown_table

Heading = collections.namedtuple("Heading", "level text")
Para = collections.namedtuple("Para", "text warn", defaults=(False,))
Table = collections.namedtuple("Table", "headers rows")
Code = collections.namedtuple("Code", "text")
Plot = collections.namedtuple("Plot", "file title written caption")

MD_NAME, HTML_NAME, PLOTS_DIR = "report.md", "report.html", "plots"
AGREEMENT_FIRST_N = 20
DIFF = "diff (jittor-torch)"
RATIO = "ratio (jittor/torch)"


# ---- cells --------------------------------------------------------------------------------
def num(x, signed=False):
    if x is None:
        return "n/a"
    if isinstance(x, int):
        return f"{x:+d}" if signed else str(x)
    return f"{x:+.6g}" if signed else f"{x:.6g}"


def missing(run):
    """What a port's cell says when the value is absent."""
    if run is None:
        return "not run"
    return "n/a (failed)" if run.failure else "n/a"


def port_cells(runs, value_of):
    """One cell per port: value_of(run) formatted, or why it is missing."""
    cells, raw = [], []
    for name in FRAMEWORKS:
        run = runs.get(name)
        value = value_of(run) if run is not None else None
        raw.append(value)
        cells.append(missing(run) if value is None else num(value))
    return cells, raw


def diff_cell(t, j):
    return num(j - t, signed=True) if t is not None and j is not None else "n/a"


def ratio_cell(t, j):
    return num(j / t) if t is not None and j is not None and t > 0 else "n/a"


def compare_row(label, runs, value_of, last="diff"):
    cells, (t, j) = port_cells(runs, value_of)
    return [label, *cells, diff_cell(t, j) if last == "diff" else ratio_cell(t, j)]


def text_value(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


# ---- sections -----------------------------------------------------------------------------
def status_section(runs):
    blocks = [Heading(2, "Status")]
    rows = []
    for name in FRAMEWORKS:
        run = runs.get(name)
        if run is None:
            rows.append([name, "not run", "0", "0", "0", "n/a"])
            continue
        rows.append([name, "FAILED" if run.failure else "ok", str(len(run.log)),
                     str(len(run.evals)), str(len(run.latencies)), num(run.wall_time)])
    blocks.append(Table(["port", "status", "iterations logged", "evaluations",
                         "latencies", "wall time (s)"], rows))
    failed = [name for name in FRAMEWORKS if name in runs and runs[name].failure]
    not_run = [name for name in FRAMEWORKS if name not in runs]
    for name in failed:
        blocks.append(Para(f"FAILED: {name} port: {runs[name].failure}", warn=True))
    for name in not_run:
        blocks.append(Para(f"NOT RUN: the {name} port has no run data.", warn=True))
    if not failed and not not_run:
        blocks.append(Para("Both ports completed."))
    scaled = [(name, runs[name].log[-1]) for name in FRAMEWORKS
              if name in runs and runs[name].log and "skipped_steps" in runs[name].log[-1]]
    if scaled:  # fp16: steps skipped for an inf / NaN gradient (gfocal/precision.py)
        blocks.append(Para("fp16 loss scale: " + "; ".join(
            f"{name} skipped {int(last['skipped_steps'])} of {int(last['iter'])} steps "
            f"(scale at the end {last['loss_scale']:g})" for name, last in scaled) + "."))
    return blocks


def failure_details(runs):
    blocks = []
    for name in FRAMEWORKS:
        run = runs.get(name)
        if run is not None and run.failure:
            blocks += [Heading(3, f"{name} failure"), Para(run.failure),
                       Code(run.traceback or "(no traceback recorded)")]
    return [Heading(2, "Failures"), *blocks] if blocks else []


def environment_section(env):
    blocks = [Heading(2, "Environment"),
              Table(["setting", "value"], [[str(k), text_value(v)] for k, v in env.items()])]
    if "jittor_onednn" in env and not env["jittor_onednn"]:
        blocks.append(Para("WARNING: Jittor ran WITHOUT oneDNN; its CPU convolutions use a "
                           "fallback about 60x slower, so its timings are not representative.",
                           warn=True))
    return blocks


def config_section(config_summary):
    return [Heading(2, "Configuration"),
            Table(["setting", "value"],
                  [[str(k), text_value(v)] for k, v in config_summary.items()])]


def loss_section(runs):
    rows = []
    for key in LOSS_KEYS:
        mean_cells, (tm, jm) = port_cells(runs, lambda r: loss_stats(r.log, key)[0])
        final_cells, (tf, jf) = port_cells(runs, lambda r: loss_stats(r.log, key)[1])
        rows.append([key, *mean_cells, diff_cell(tm, jm), *final_cells, diff_cell(tf, jf)])
    blocks = [Heading(2, "Losses"),
              Table(["component", "torch mean", "jittor mean", f"mean {DIFF}",
                     "torch final", "jittor final", f"final {DIFF}"], rows)]
    counts = {name: len(runs[name].log) for name in FRAMEWORKS if name in runs}
    if len(set(counts.values())) > 1:
        blocks.append(Para("Note: the means cover different numbers of iterations ("
                           + ", ".join(f"{k} {v}" for k, v in counts.items()) + ").",
                           warn=True))
    if all(name in runs and runs[name].log for name in FRAMEWORKS):
        s = agreement_summary(runs["torch"].log, runs["jittor"].log, AGREEMENT_FIRST_N)
        blocks += [
            Para("Per-iteration relative difference of the total loss, "
                 "|jittor - torch| / max(|torch|, 1e-12), on the iterations both ports logged:"),
            Table(["quantity", "value"], [
                ["iterations compared", num(s["n_compared"])],
                [f"max over the first {s['first_n']}", num(s["max_rel_first_n"])],
                [f"max after the first {s['first_n']}", num(s["max_rel_after"])],
                [f"median after the first {s['first_n']}", num(s["median_rel_after"])],
                ["iteration of the largest difference", num(s["worst_iter"])]])]
    return blocks


def epoch_section(runs):
    tables = {name: per_epoch(run.log) for name, run in runs.items()}
    evals = {name: run.stats_by_epoch() for name, run in runs.items()}
    epochs = sorted({e for t in [*tables.values(), *evals.values()] for e in t})
    if not epochs:
        return [Heading(2, "Per epoch"), Para("No port logged an epoch.")]
    rows = []
    for e in epochs:
        iters, _ = port_cells(runs, lambda r: (tables[r.framework].get(e) or {}).get("iters"))
        loss_row = compare_row("", runs, lambda r: (tables[r.framework].get(e) or {}).get("loss"))
        ap_row = compare_row("", runs, lambda r: (evals[r.framework].get(e) or {}).get("AP"))
        rows.append([str(e), *iters, *loss_row[1:], *ap_row[1:]])
    return [Heading(2, "Per epoch"),
            Table(["epoch", "torch iters", "jittor iters", "torch mean loss", "jittor mean loss",
                   f"loss {DIFF}", "torch AP", "jittor AP", f"AP {DIFF}"], rows)]


def coco_section(runs):
    rows = [compare_row(s, runs, lambda r: (r.stats() or {}).get(s)) for s in COCO_STAT_NAMES]
    return [Heading(2, "COCO statistics (final)"),
            Table(["statistic", "torch", "jittor", DIFF], rows)]


def speed_section(runs):
    speeds = {name: speed_stats(run.log) for name, run in runs.items()}
    labels = [("iter_first", "s/iter, first iteration (compilation, warm-up)"),
              ("iter_mean", "s/iter mean (step)"), ("iter_median", "s/iter median (step)"),
              ("data_mean", "s/iter mean (data loading)"), ("epoch_mean", "s/epoch mean"),
              ("train_total", "training seconds, total")]
    rows = [compare_row(label, runs, lambda r: speeds[r.framework].get(key), last="ratio")
            for key, label in labels]
    rows.append(compare_row("wall time, whole run (s)", runs, lambda r: r.wall_time,
                            last="ratio"))
    tables = {name: per_epoch(run.log) for name, run in runs.items()}
    epochs = sorted({e for t in tables.values() for e in t})
    epoch_rows = [compare_row(str(e), runs,
                              lambda r: (tables[r.framework].get(e) or {}).get("seconds"),
                              last="ratio") for e in epochs]
    return [Heading(2, "Training speed"),
            Para("Step time covers forward, backward and optimiser update; the first "
                 "iterations include one-time compilation (Jittor's kernels, and in the tuned "
                 "setting whatever it compiles), so the median is the steadier figure."),
            Table(["quantity", "torch", "jittor", RATIO], rows),
            Heading(3, "Epoch time"),
            Table(["epoch", "torch s", "jittor s", RATIO], epoch_rows)]


def latency_section(runs):
    lat = {name: latency_stats(run.latencies) for name, run in runs.items()}
    labels = [("images", "images timed"), ("mean", "mean latency (s)"),
              ("median", "median latency (s)"), ("p95", "p95 latency (s)"),
              ("fps", "FPS (1 / mean)")]
    rows = [compare_row(label, runs, lambda r: lat[r.framework].get(key), last="ratio")
            for key, label in labels]
    rows.insert(0, compare_row("first image, untimed warm-up (s)", runs,
                               lambda r: r.warmup_latencies[0] if r.warmup_latencies else None,
                               last="ratio"))
    return [Heading(2, "Inference latency"),
            Para("Batch size 1, seconds per image, after the warm-up images (compilation: "
                 "Jittor's kernels, torch.compile's in the tuned setting), whose first is "
                 "shown apart."),
            Table(["quantity", "torch", "jittor", RATIO], rows)]


ARMS = ("torch", "jittor", "control")


def noise_section(runs, noise_result, plot_results):
    """The control arm: the verdict, its rule, the three-way statistics and the traces."""
    blocks = [Heading(2, "Noise or bug? The same-framework control arm")]
    verdict = noise_result.get("verdict")
    if verdict:
        blocks.append(Para(verdict["line"], warn=verdict["within"] is False))
        blocks.append(Para(verdict["rule"]))
        blocks.append(Para(detection_limit_text()))
    else:
        blocks.append(Para("No verdict: an arm failed or did not run (see below).", warn=True))
    if noise_result.get("check"):
        blocks.append(Para(noise_result["check"]["text"], warn=not noise_result["check"]["ok"]))
    if noise_result.get("note"):
        blocks.append(Para(f"Note: {noise_result['note']}.", warn=True))
    control = noise_result["control"]
    if control.failure:
        blocks.append(Para(f"control arm: {control.failure}", warn=True))
    arms = {"torch": runs.get("torch"), "jittor": runs.get("jittor"), "control": control}

    def stat(arm, name):
        run = arms[arm]
        return None if run is None or run.failure else (run.stats() or {}).get(name)
    rows = []
    for name in COCO_STAT_NAMES:
        t, j, c = (stat(arm, name) for arm in ARMS)
        rows.append([name, *[num(v) if v is not None else missing(arms[a])
                             for a, v in zip(ARMS, (t, j, c))], diff_cell(t, j), diff_cell(t, c)])
    blocks += [Heading(3, "Final COCO statistics of the three runs"),
               Table(["statistic", "torch", "jittor", "control", DIFF,
                      "diff (control-torch)"], rows)]
    exit_point = noise_result.get("exit")
    traces = noise_result.get("traces") or {}
    if traces.get("jittor") and traces.get("control"):
        text = (f"The Jittor run's weights first leave the control's band (more than "
                f"{BAND_FACTOR:g}x the control's distance to the PyTorch run) at iteration "
                f"{exit_point[0]}, in group {exit_point[1]}." if exit_point else
                f"The Jittor run's weights stay within {BAND_FACTOR:g}x the control's distance "
                "to the PyTorch run in every group at every traced iteration.")
        last = {arm: traces[arm][-1] for arm in ("jittor", "control")}
        blocks += [Heading(3, "Weight distance to the PyTorch run"), Para(text),
                   Table(["group", f"jittor at it {last['jittor']['iter']}",
                          f"control at it {last['control']['iter']}"],
                         [[g, num(last["jittor"][g]), num(last["control"][g])]
                          for g in last["jittor"] if g != "iter"])]
    seeds = noise_result.get("seeds") or {}
    if len(seeds) > 1:
        rows = []
        for arm in ARMS:
            aps = [v[arm] for v in seeds.values() if v.get(arm) is not None]
            rows.append([arm, *[num(v[arm]) if v.get(arm) is not None else "n/a"
                                for v in seeds.values()],
                         num(float(np.mean(aps))) if aps else "n/a",
                         num(float(np.std(aps))) if aps else "n/a"])
        blocks += [Heading(3, "Final AP across seeds"),
                   Table(["arm", *[f"seed {k}" for k in seeds], "mean", "std"], rows)]
    return blocks + [Plot(*p) for p in plot_results]


def plot_section(plot_results):
    return [Heading(2, "Plots"), *[Plot(*p) for p in plot_results]]


def build_blocks(runs, env, config_summary, plot_results, noise_blocks=()):
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return [Heading(1, "GFocalV2 port comparison: PyTorch vs Jittor"),
            Para(f"Generated {stamp}."),
            *status_section(runs), *noise_blocks, *environment_section(env),
            *config_section(config_summary),
            *loss_section(runs), *epoch_section(runs), *coco_section(runs),
            *speed_section(runs), *latency_section(runs), *plot_section(plot_results),
            *failure_details(runs)]


# ---- rendering ----------------------------------------------------------------------------
def render_markdown(blocks):
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Para):
            out.append(f"**{b.text}**" if b.warn else b.text)
        elif isinstance(b, Table):
            out.append(markdown_table(b.headers, b.rows))
        elif isinstance(b, Code):
            out.append("```\n" + b.text.rstrip("\n") + "\n```")
        elif isinstance(b, Plot):
            if b.written:
                out.append(f"### {b.title}\n\n![{b.title}]({PLOTS_DIR}/{b.file})\n\n*{b.caption}*")
            else:
                out.append(f"### {b.title}\n\n*Skipped: {b.caption}.*")
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
.warn { color: #b00; font-weight: bold; }
.muted { color: #777; font-style: italic; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; }
figure { margin: 1em 0; } img { max-width: 100%; }
"""


def data_uri(path):
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def render_html(blocks, plots_dir):
    esc = html.escape
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            css = " class=\"warn\"" if b.warn else ""
            out.append(f"<p{css}>{esc(b.text)}</p>")
        elif isinstance(b, Table):
            out.append(html_table(b.headers, b.rows, sections=True))
        elif isinstance(b, Code):
            out.append(f"<pre>{esc(b.text)}</pre>")
        elif isinstance(b, Plot):
            if b.written:
                uri = data_uri(os.path.join(plots_dir, b.file))
                out.append(f"<h3>{esc(b.title)}</h3><figure><img alt=\"{esc(b.title)}\" "
                           f"src=\"{uri}\"><figcaption>{esc(b.caption)}</figcaption></figure>")
            else:
                out.append(f"<h3>{esc(b.title)}</h3><p class=\"muted\">Skipped: "
                           f"{esc(b.caption)}.</p>")
    title = esc(blocks[0].text) if blocks and isinstance(blocks[0], Heading) else "report"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(out) + "\n</body></html>\n")


def check_runs(runs):
    unknown = sorted(set(runs) - set(FRAMEWORKS))
    if unknown:
        raise ValueError(f"write_report: unknown port name(s) {unknown}; expected {FRAMEWORKS}")
    for name, run in runs.items():
        if not isinstance(run, RunData):
            raise TypeError(f"write_report: runs[{name!r}] is {type(run).__name__}, not RunData")
        if run.framework != name:
            raise ValueError(f"write_report: runs[{name!r}] holds a run of {run.framework!r}")


def write_report(out_dir, runs, env, config_summary, noise=None):
    """Write report.md, report.html and plots/*.png into `out_dir`; returns (md, html) paths.

    `noise`: the control arm's result (gfocal.compare.run_arms), shown right after the status.
    Only these files are (atomically) replaced; anything else in `out_dir` is left alone.
    """
    check_runs(runs)
    out_dir = os.path.abspath(os.fspath(out_dir))
    plots_dir = os.path.join(out_dir, PLOTS_DIR)
    plot_results = plots.write_plots(plots_dir, runs)
    noise_blocks = ()
    if noise is not None:
        noise_blocks = noise_section(runs, noise, plots.write_noise_plots(plots_dir, runs, noise))
    blocks = build_blocks(runs, env, config_summary, plot_results, noise_blocks)
    md_path, html_path = os.path.join(out_dir, MD_NAME), os.path.join(out_dir, HTML_NAME)
    write_text(md_path, render_markdown(blocks))
    write_text(html_path, render_html(blocks, plots_dir))
    return md_path, html_path
