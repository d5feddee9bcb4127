"""The report's figures, drawn on matplotlib's Agg canvas (no pyplot, no display needed).

Each plot function takes the runs (framework -> RunData) and returns (Figure, caption), or
(None, reason) when no port has the data it needs; a port lacking data is left out.
"""
import os

import numpy as np
from matplotlib.figure import Figure

from gfocal.atomic import atomic_path
from gfocal.report.rundata import COCO_STAT_NAMES, FRAMEWORKS, per_epoch, values
from gfocal.runlog import LOSS_KEYS, paired, relative_difference

COLORS = {"torch": "#ee4c2c", "jittor": "#1f6fb4"}
LABELS = {"torch": "PyTorch", "jittor": "Jittor"}
STYLES = {"torch": "-", "jittor": "--"}  # dashed on top, so agreeing curves stay visible
DPI = 100


def _ports(runs, has):
    return [(name, runs[name]) for name in FRAMEWORKS if name in runs and has(runs[name])]


def smoothing_window(n):
    """Moving-average width: a tenth of the curve, between 1 and 50 points."""
    return int(max(1, min(50, n // 10)))


def moving_average(x, window):
    """Trailing mean over `window` points; len(x) - window + 1 values."""
    x = np.asarray(x, dtype=np.float64)
    if window <= 1 or x.size < window:
        return x
    c = np.cumsum(np.concatenate([[0.0], x]))
    return (c[window:] - c[:-window]) / window


def _curve(log, key):
    rs = [r for r in log if key in r]
    return np.array([r["iter"] for r in rs]), values(rs, key)


def loss_curves(runs):
    ports = _ports(runs, lambda r: r.log)
    if not ports:
        return None, "no port has an iteration log"
    fig = Figure(figsize=(10, 7))
    for k, key in enumerate(LOSS_KEYS):
        ax = fig.add_subplot(2, 2, k + 1)
        for name, run in ports:
            ax.plot(*_curve(run.log, key), STYLES[name], color=COLORS[name], label=LABELS[name],
                    lw=1)
        ax.set(title=key, xlabel="iteration")
        ax.legend()
    fig.tight_layout()
    return fig, "Training losses per iteration, both ports on the same axes."


def smoothed_loss_curves(runs):
    ports = _ports(runs, lambda r: r.log)
    if not ports:
        return None, "no port has an iteration log"
    window = smoothing_window(max(len(run.log) for _, run in ports))
    fig = Figure(figsize=(10, 7))
    for k, key in enumerate(LOSS_KEYS):
        ax = fig.add_subplot(2, 2, k + 1)
        for name, run in ports:
            iters, v = _curve(run.log, key)
            smooth = moving_average(v, window)
            ax.plot(iters[iters.size - smooth.size:], smooth, STYLES[name], color=COLORS[name],
                    label=LABELS[name], lw=1.2)
        ax.set(title=f"{key} (moving average, {window} it)", xlabel="iteration")
        ax.legend()
    fig.tight_layout()
    return fig, f"Losses smoothed by a trailing moving average over {window} iterations."


def loss_difference(runs):
    if len(_ports(runs, lambda r: r.log)) < 2:
        return None, "needs the iteration logs of both ports"
    iters, t, j = paired(runs["torch"].log, runs["jittor"].log, "loss")
    if not iters.size:
        return None, "the two logs share no iteration"
    fig = Figure(figsize=(10, 6))
    ax = fig.add_subplot(2, 1, 1)
    ax.plot(iters, j - t, color="#444", lw=1)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set(title="loss difference, Jittor - PyTorch", ylabel="absolute")
    ax = fig.add_subplot(2, 1, 2)
    rel = relative_difference(t, j)
    if np.any(rel > 0):
        ax.semilogy(iters, np.maximum(rel, 1e-16), color="#444", lw=1)
    else:
        ax.plot(iters, rel, color="#444", lw=1)
    ax.set(ylabel="|J - T| / |T|", xlabel="iteration")
    fig.tight_layout()
    return fig, (f"Per-iteration total-loss difference over {iters.size} common iterations: "
                 "signed (top) and relative, log scale (bottom).")


def _stat(stats, name):
    value = stats.get(name)
    return np.nan if value is None else float(value)


def ap_ar_bars(runs):
    ports = _ports(runs, lambda r: r.stats())
    if not ports:
        return None, "no port has COCO statistics"
    fig = Figure(figsize=(11, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(COCO_STAT_NAMES))
    width = 0.8 / len(ports)
    for k, (name, run) in enumerate(ports):
        ax.bar(x + (k - (len(ports) - 1) / 2) * width,
               [_stat(run.stats(), s) for s in COCO_STAT_NAMES], width,
               color=COLORS[name], label=LABELS[name])
    ax.set_xticks(x, COCO_STAT_NAMES)
    ax.set(title="final COCO statistics", ylabel="value")
    ax.legend()
    fig.tight_layout()
    return fig, "Final COCO AP and AR statistics (-1: no object of that size in the data)."


def training_speed(runs):
    ports = _ports(runs, lambda r: values(r.log, "time").size)
    if not ports:
        return None, "no port logged iteration times"
    window = smoothing_window(max(len(run.log) for _, run in ports))
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for name, run in ports:
        iters, t = _curve(run.log, "time")
        ax.plot(iters, t, color=COLORS[name], alpha=0.3, lw=0.8)
        smooth = moving_average(t, window)
        ax.plot(iters[iters.size - smooth.size:], smooth, color=COLORS[name],
                label=f"{LABELS[name]} (moving average, {window} it)", lw=1.5)
    ax.set(title="training step time", xlabel="iteration", ylabel="seconds / iteration")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig, "Seconds per training step (faint: raw; solid: moving average), log scale."


def epoch_time(runs):
    ports = _ports(runs, lambda r: values(r.log, "time").size)
    if not ports:
        return None, "no port logged iteration times"
    epochs = sorted({e for _, run in ports for e in per_epoch(run.log)})
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(epochs))
    width = 0.8 / len(ports)
    for k, (name, run) in enumerate(ports):
        table = per_epoch(run.log)
        seconds = [(table.get(e) or {}).get("seconds") for e in epochs]
        ax.bar(x + (k - (len(ports) - 1) / 2) * width,
               [np.nan if s is None else s for s in seconds], width,
               color=COLORS[name], label=LABELS[name])
    ax.set_xticks(x, [str(e) for e in epochs])
    ax.set(title="training time per epoch", xlabel="epoch", ylabel="seconds (step + data)")
    ax.legend()
    fig.tight_layout()
    return fig, "Training seconds per epoch (step and data-loading time summed; no evaluation)."


def latency_box(runs):
    ports = _ports(runs, lambda r: len(r.latencies))
    if not ports:
        return None, "no port has inference latencies"
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    parts = ax.boxplot([np.asarray(run.latencies) * 1000 for _, run in ports],
                       patch_artist=True, showmeans=True)
    for box, (name, _) in zip(parts["boxes"], ports):
        box.set_facecolor(COLORS[name])
        box.set_alpha(0.5)
    ax.set_xticks(np.arange(1, len(ports) + 1), [LABELS[name] for name, _ in ports])
    ax.set(title="inference latency per image", ylabel="milliseconds")
    fig.tight_layout()
    return fig, "Per-image inference latency (box: quartiles; triangle: mean)."


def normalised_stats(ports):
    """Each statistic divided by the best port's value (undefined -1 or missing counts 0)."""
    table = np.array([[max(_stat(run.stats(), s), 0.0) for s in COCO_STAT_NAMES]
                      for _, run in ports])
    table = np.nan_to_num(table, nan=0.0)
    best = table.max(axis=0)
    return np.divide(table, best, out=np.zeros_like(table), where=best > 0)


def radar(runs):
    ports = _ports(runs, lambda r: r.stats())
    if not ports:
        return None, "no port has COCO statistics"
    norm = normalised_stats(ports)
    angles = np.linspace(0, 2 * np.pi, len(COCO_STAT_NAMES), endpoint=False)
    closed = np.concatenate([angles, angles[:1]])
    fig = Figure(figsize=(6, 6))
    ax = fig.add_subplot(1, 1, 1, projection="polar")
    for (name, _), row in zip(ports, norm):
        ring = np.concatenate([row, row[:1]])
        ax.plot(closed, ring, color=COLORS[name], label=LABELS[name])
        ax.fill(closed, ring, color=COLORS[name], alpha=0.15)
    ax.set_xticks(angles, COCO_STAT_NAMES)
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right", bbox_to_anchor=(1.15, -0.05))
    fig.tight_layout()
    return fig, ("The 12 COCO statistics, each divided by the better port's value "
                 "(1 = best of the two; undefined values count as 0).")


# file name, title, function: the report shows them in this order
PLOTS = (
    ("loss_curves.png", "Loss curves", loss_curves),
    ("loss_smoothed.png", "Smoothed loss curves", smoothed_loss_curves),
    ("loss_difference.png", "Per-iteration loss difference", loss_difference),
    ("ap_ar_bars.png", "AP and AR", ap_ar_bars),
    ("train_speed.png", "Training speed", training_speed),
    ("epoch_time.png", "Epoch time", epoch_time),
    ("latency_box.png", "Inference latency distribution", latency_box),
    ("radar.png", "Normalised COCO statistics", radar),
)


def noise_band_loss(runs, noise_result):
    """Jittor-vs-PyTorch loss difference over the control-vs-PyTorch one."""
    from gfocal.control_arm import FIRST_N
    control = noise_result.get("control")
    if not (control and control.log and runs.get("torch") and runs["torch"].log):
        return None, "needs the iteration logs of PyTorch and of the control arm"
    fig = Figure(figsize=(10, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for label, run, color, style in (("Jittor vs PyTorch", runs.get("jittor"), COLORS["jittor"],
                                      "-"),
                                     ("control vs PyTorch", control, "#555", "--")):
        if run is None or not run.log:
            continue
        iters, t, other = paired(runs["torch"].log, run.log, "loss")
        rel = np.maximum(relative_difference(t, other), 1e-16)
        ax.semilogy(iters, rel, style, color=color, alpha=0.35, lw=0.8)
        window = smoothing_window(rel.size)
        smooth = moving_average(rel, window)
        ax.semilogy(iters[iters.size - smooth.size:], smooth, style, color=color, lw=1.6,
                    label=f"{label} (moving average, {window} it)")
    ax.axvline(FIRST_N, color="#999", lw=0.8)
    ax.set(title="relative loss difference against the same-framework noise band",
           xlabel="iteration", ylabel="|run - torch| / |torch|")
    ax.legend()
    fig.tight_layout()
    return fig, (f"Per-iteration |loss - loss_torch| / |loss_torch| of the Jittor run (solid) and "
                 f"of the control arm, PyTorch from weights one ulp away (dashed); faint: raw, "
                 f"bold: moving average. The verdict compares medians after iteration {FIRST_N} "
                 "(grey line).")


def weight_divergence(runs, noise_result):
    """||theta - theta_torch|| / ||theta_torch||, total and per group, both arms."""
    from gfocal.control_arm import GROUP_NAMES
    traces = noise_result.get("traces") or {}
    if not traces.get("jittor") or not traces.get("control"):
        return None, "needs the weight traces of the Jittor run and of the control arm"
    fig = Figure(figsize=(11, 8))
    groups = GROUP_NAMES[1:]
    cmap = [f"C{i}" for i in range(len(groups))]
    for k, title in enumerate(("total", "per parameter group")):
        ax = fig.add_subplot(2, 1, k + 1)
        for arm, style in (("jittor", "-"), ("control", "--")):
            records = traces[arm]
            iters = [r["iter"] for r in records]
            names = ("total",) if k == 0 else groups
            for name, color in zip(names, ("#222",) if k == 0 else cmap):
                d = np.maximum([r[name] for r in records], 1e-12)
                ax.semilogy(iters, d, style, color=color, lw=1.2,
                            label=f"{name}" if arm == "jittor" and k == 1 else
                            (f"{arm}" if k == 0 else None))
        exit_point = noise_result.get("exit")
        if exit_point:
            ax.axvline(exit_point[0], color="#b00", lw=1)
            if k == 1:
                ax.annotate(f"leaves the band: {exit_point[1]}, it {exit_point[0]}",
                            (exit_point[0], ax.get_ylim()[1]), color="#b00", fontsize=8,
                            ha="left", va="top")
        ax.set(title=f"weight distance to the PyTorch run, {title} (solid: Jittor, dashed: "
                     "control)", xlabel="iteration", ylabel="relative distance")
        ax.legend(fontsize=7, ncol=2 if k == 1 else 1)
    fig.tight_layout()
    return fig, ("||theta - theta_torch|| / ||theta_torch|| every few iterations, in total (top) "
                 "and per parameter group (bottom); the red line marks the first iteration where "
                 "the Jittor run is more than twice as far as the control in some group.")


NOISE_PLOTS = (
    ("noise_band_loss.png", "Loss difference against the noise band", noise_band_loss),
    ("weight_divergence.png", "Weight divergence", weight_divergence),
)


def _write(plots_dir, items, *args):
    os.makedirs(plots_dir, exist_ok=True)
    results = []
    for file_name, title, draw in items:
        path = os.path.join(plots_dir, file_name)
        fig, text = draw(*args)
        if fig is None:
            if os.path.exists(path):
                os.unlink(path)
            results.append((file_name, title, False, text))
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=DPI, metadata={"Software": None})
        results.append((file_name, title, True, text))
    return results


def write_plots(plots_dir, runs):
    """Draw every plot into `plots_dir`; returns [(file, title, written, caption or reason)].

    A plot of this writer that is skipped this time is removed, so no stale figure remains.
    """
    return _write(plots_dir, PLOTS, runs)


def write_noise_plots(plots_dir, runs, noise_result):
    """The control arm's two plots (same contract as write_plots)."""
    return _write(plots_dir, NOISE_PLOTS, runs, noise_result)
