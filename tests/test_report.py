"""The comparison report writer: numbers, files, failures, log reading, loss agreement.

Synthetic run data is generated here; every expected number is recomputed in the test from
the generated arrays, never read back from the report module.
"""
import base64
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gfocal.report import (COCO_STAT_NAMES, LogFormatError, RunData, agreement_summary,
                           read_log, write_report)
from gfocal.report.plots import PLOTS, moving_average

COMPONENTS = ("loss_cls", "loss_bbox", "loss_dfl")
ITERS_PER_EPOCH, EPOCHS = 6, 2
ENV = {"python": "3.11.2", "torch": "2.14.1", "jittor": "1.3.11", "omp_threads": "2",
       "jittor_onednn": True}
CONFIG = {"config": "configs/gfl_r18_mini.py", "model": {"depth": 18}, "batch_size": 2}


# ---- synthetic runs -----------------------------------------------------------------------
def make_components(seed, n):
    """(n, 3) positive loss components, decaying like a training run."""
    rng = np.random.default_rng(seed)
    decay = 1.0 / np.sqrt(np.arange(1, n + 1))[:, None]
    return (rng.uniform(0.5, 1.5, size=(n, 3)) * decay).round(6)


def make_log(components, times, data_times):
    log = []
    for i, (parts, t, dt) in enumerate(zip(components, times, data_times)):
        record = {"iter": i + 1, "epoch": i // ITERS_PER_EPOCH + 1, "lr": 0.01,
                  "loss": float(parts.sum()), "time": float(t), "data_time": float(dt)}
        record.update({k: float(v) for k, v in zip(COMPONENTS, parts)})
        log.append(record)
    return log


def make_stats(seed):
    return dict(zip(COCO_STAT_NAMES, np.random.default_rng(seed).uniform(0, 1, 12).round(4)))


class Synthetic:
    """The arrays a run is generated from, kept for the expected values."""

    def __init__(self, framework, seed, n=ITERS_PER_EPOCH * EPOCHS):
        rng = np.random.default_rng(seed + 100)
        self.components = make_components(seed, n)
        self.times = rng.uniform(0.1, 0.3, n).round(5)
        self.data_times = rng.uniform(0.0, 0.02, n).round(5)
        self.latencies = rng.uniform(0.01, 0.05, 25).round(5)
        self.warmup = rng.uniform(1.0, 20.0, 3).round(5)  # compilation: first images apart
        self.stats = {e: make_stats(seed * 10 + e) for e in range(1, EPOCHS + 1)}
        self.run = RunData(framework, log=make_log(self.components, self.times, self.data_times),
                           evals=[{"epoch": e, "stats": s} for e, s in self.stats.items()],
                           latencies=list(self.latencies),
                           warmup_latencies=list(self.warmup), wall_time=float(seed + 10))

    def loss(self):
        return self.components.sum(axis=1)


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    """A report of two successful runs, written once for the tests that only read it."""
    out = tmp_path_factory.mktemp("complete")
    data = {"torch": Synthetic("torch", 1), "jittor": Synthetic("jittor", 2)}
    md, html = write_report(out, {k: v.run for k, v in data.items()}, ENV, CONFIG)
    with open(md, encoding="utf-8") as f:
        md_text = f.read()
    with open(html, encoding="utf-8") as f:
        html_text = f.read()
    return {"out": out, "data": data, "md_path": md, "html_path": html, "md": md_text,
            "html": html_text}


def md_table(md, marker):
    """(header, {first cell: other cells}) of the first table after the line `marker` starts."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                rows.append(cells)
        elif seen:
            break
    return rows[0], {row[0]: row[1:] for row in rows[1:]}


def close(cell, expected, rel=1e-5):
    return float(cell) == pytest.approx(expected, rel=rel, abs=1e-12)


# ---- files --------------------------------------------------------------------------------
def test_both_documents_and_every_plot_are_written(complete):
    out = complete["out"]
    assert complete["md_path"] == os.path.join(out, "report.md")
    assert complete["html_path"] == os.path.join(out, "report.html")
    for name, _, _ in PLOTS:
        with open(os.path.join(out, "plots", name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
        assert f"](plots/{name})" in complete["md"]
    assert not [n for n in os.listdir(out) if n.endswith(".tmp") or n.startswith(".")]


def test_html_embeds_every_plot_as_data_uri_and_references_nothing_outside(complete):
    html = complete["html"]
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == len(PLOTS)
    for (name, _, _), src in zip(PLOTS, sources):
        assert src.startswith("data:image/png;base64,")
        with open(os.path.join(complete["out"], "plots", name), "rb") as f:
            assert base64.b64decode(src.split(",", 1)[1]) == f.read()
    rest = re.sub(r'src="data:[^"]*"', "", html).lower()
    for external in ("http://", "https://", "<link", "<script", "url(", "href=", "src="):
        assert external not in rest


def test_existing_files_in_out_dir_survive_and_the_report_is_replaced(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plots" / "my_plot.png").write_bytes(b"not a writer plot")
    (tmp_path / "report.md").write_text("old report")
    write_report(tmp_path, {"torch": Synthetic("torch", 3).run}, ENV, CONFIG)
    md_first = (tmp_path / "report.md").read_text()
    write_report(tmp_path, {"torch": Synthetic("torch", 3).run,
                            "jittor": Synthetic("jittor", 4).run}, ENV, CONFIG)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "plots" / "my_plot.png").read_bytes() == b"not a writer plot"
    assert md_first != "old report" and "| torch | ok |" in md_first
    assert "| jittor | ok |" in (tmp_path / "report.md").read_text()


# ---- numbers ------------------------------------------------------------------------------
def test_loss_table_has_means_finals_and_differences(complete):
    t, j = complete["data"]["torch"], complete["data"]["jittor"]
    _, rows = md_table(complete["md"], "## Losses")
    expected = {"loss": (t.loss(), j.loss())}
    expected.update({k: (t.components[:, c], j.components[:, c])
                     for c, k in enumerate(COMPONENTS)})
    assert set(rows) == set(expected)
    for key, (a, b) in expected.items():
        tm, jm, dm, tf, jf, df = rows[key]
        assert close(tm, a.mean()) and close(jm, b.mean()), key
        assert close(dm, b.mean() - a.mean(), rel=1e-4), key
        assert close(tf, a[-1]) and close(jf, b[-1]) and close(df, b[-1] - a[-1], rel=1e-4), key


def test_agreement_table_in_report(complete):
    t, j = complete["data"]["torch"].loss(), complete["data"]["jittor"].loss()
    rel = np.abs(j - t) / np.abs(t)
    _, rows = md_table(complete["md"], "Per-iteration relative difference of the total loss")
    assert rows["iterations compared"] == [str(len(t))]
    assert close(rows["max over the first 20"][0], rel[:20].max())
    assert rows["max after the first 20"] == ["n/a"]  # only 12 iterations
    assert int(rows["iteration of the largest difference"][0]) == int(np.argmax(rel)) + 1


def test_per_epoch_table_has_mean_loss_and_ap(complete):
    t, j = complete["data"]["torch"], complete["data"]["jittor"]
    header, rows = md_table(complete["md"], "## Per epoch")
    assert header[0] == "epoch" and sorted(rows) == [str(e) for e in range(1, EPOCHS + 1)]
    for e in range(1, EPOCHS + 1):
        span = slice((e - 1) * ITERS_PER_EPOCH, e * ITERS_PER_EPOCH)
        ti, ji, tl, jl, dl, tap, jap, dap = rows[str(e)]
        assert ti == ji == str(ITERS_PER_EPOCH)
        assert close(tl, t.loss()[span].mean()) and close(jl, j.loss()[span].mean())
        assert close(dl, j.loss()[span].mean() - t.loss()[span].mean(), rel=1e-4)
        assert close(tap, t.stats[e]["AP"]) and close(jap, j.stats[e]["AP"])
        assert close(dap, j.stats[e]["AP"] - t.stats[e]["AP"], rel=1e-4)


def test_coco_table_lists_the_12_final_statistics_side_by_side(complete):
    t, j = complete["data"]["torch"].stats[EPOCHS], complete["data"]["jittor"].stats[EPOCHS]
    _, rows = md_table(complete["md"], "## COCO statistics (final)")
    assert list(rows) == list(COCO_STAT_NAMES)
    for name, (tc, jc, dc) in rows.items():
        assert close(tc, t[name]) and close(jc, j[name])
        assert close(dc, j[name] - t[name], rel=1e-4)


def test_speed_tables(complete):
    t, j = complete["data"]["torch"], complete["data"]["jittor"]
    _, rows = md_table(complete["md"], "## Training speed")
    assert close(rows["s/iter mean (step)"][0], t.times.mean())
    assert close(rows["s/iter, first iteration (compilation, warm-up)"][1], j.times[0])
    assert close(rows["s/iter median (step)"][1], np.median(j.times))
    assert close(rows["s/iter mean (step)"][2], j.times.mean() / t.times.mean())
    totals = [(s.times + s.data_times).sum() for s in (t, j)]
    assert close(rows["training seconds, total"][0], totals[0])
    assert close(rows["wall time, whole run (s)"][1], j.run.wall_time)
    _, epochs = md_table(complete["md"], "### Epoch time")
    for e in range(1, EPOCHS + 1):
        span = slice((e - 1) * ITERS_PER_EPOCH, e * ITERS_PER_EPOCH)
        expected = [(s.times[span] + s.data_times[span]).sum() for s in (t, j)]
        assert close(epochs[str(e)][0], expected[0]) and close(epochs[str(e)][1], expected[1])


def percentile_95(x):
    """Linear interpolation between closest ranks, written out."""
    x = np.sort(x)
    pos = 0.95 * (len(x) - 1)
    lo = int(np.floor(pos))
    return x[lo] + (x[min(lo + 1, len(x) - 1)] - x[lo]) * (pos - lo)


def test_latency_table(complete):
    t, j = complete["data"]["torch"], complete["data"]["jittor"]
    _, rows = md_table(complete["md"], "## Inference latency")
    for col, s in enumerate((t, j)):
        assert rows["images timed"][col] == str(len(s.latencies))
        assert close(rows["first image, untimed warm-up (s)"][col], s.warmup[0])
        assert close(rows["mean latency (s)"][col], sum(s.latencies) / len(s.latencies))
        assert close(rows["median latency (s)"][col], sorted(s.latencies)[12])  # 25 values
        assert close(rows["p95 latency (s)"][col], percentile_95(s.latencies))
        assert close(rows["FPS (1 / mean)"][col], len(s.latencies) / sum(s.latencies))


def test_environment_and_config_are_listed(complete, tmp_path):
    _, env = md_table(complete["md"], "## Environment")
    assert env["torch"] == ["2.14.1"] and env["omp_threads"] == ["2"]
    _, cfg = md_table(complete["md"], "## Configuration")
    assert json.loads(cfg["model"][0]) == {"depth": 18}
    assert "WITHOUT oneDNN" not in complete["md"]
    md, _ = write_report(tmp_path, {"torch": Synthetic("torch", 1).run},
                         dict(ENV, jittor_onednn=False), CONFIG)
    assert "WITHOUT oneDNN" in open(md, encoding="utf-8").read()


# ---- failures -----------------------------------------------------------------------------
def test_a_failed_port_is_reported_and_skipped(tmp_path):
    t = Synthetic("torch", 5)
    j = Synthetic("jittor", 6, n=4)  # died in epoch 1, nothing evaluated or timed
    j.run.evals, j.run.latencies, j.run.wall_time = [], [], None
    j.run.failure = "NonFiniteLoss: [jittor] non-finite loss at iteration 5: loss=nan"
    j.run.traceback = "Traceback (most recent call last):\n  File 'train.py' <boom>"
    md_path, html_path = write_report(tmp_path, {"torch": t.run, "jittor": j.run}, ENV, CONFIG)
    md, html = open(md_path).read(), open(html_path).read()
    assert f"FAILED: jittor port: {j.run.failure}" in md
    assert "| jittor | FAILED | 4 |" in md and "| torch | ok | 12 |" in md
    assert "Traceback (most recent call last)" in md
    assert "&lt;boom&gt;" in html and "class=\"warn\">FAILED: jittor" in html
    _, coco = md_table(md, "## COCO statistics (final)")
    assert all(row[1:] == ["n/a (failed)", "n/a"] for row in coco.values())
    _, losses = md_table(md, "## Losses")
    assert close(losses["loss"][1], j.loss().mean())  # the partial log is still summarised
    assert "different numbers of iterations" in md
    _, epochs = md_table(md, "## Per epoch")
    assert epochs["2"][1] == "n/a (failed)"
    # plots of data the failed port lacks show the other port only; none is skipped
    assert "Skipped" not in md and len(re.findall(r'src="data:', html)) == len(PLOTS)


def test_fp16_runs_report_their_skipped_steps(tmp_path):
    t, j = Synthetic("torch", 5), Synthetic("jittor", 6)
    for i, record in enumerate(t.run.log):
        record.update(loss_scale=512.0 if i < 3 else 256.0, skipped_steps=0 if i < 3 else 1)
    for record in j.run.log:
        record.update(loss_scale=512.0, skipped_steps=0)
    md_path, _ = write_report(tmp_path, {"torch": t.run, "jittor": j.run}, ENV,
                              dict(CONFIG, amp="fp16"))
    md = open(md_path).read()
    n = len(t.run.log)
    assert (f"fp16 loss scale: torch skipped 1 of {n} steps (scale at the end 256); jittor "
            f"skipped 0 of {len(j.run.log)} steps (scale at the end 512).") in md
    assert "| amp | fp16 |" in md
    plain, _ = write_report(tmp_path / "plain", {"torch": Synthetic("torch", 5).run,
                                                 "jittor": Synthetic("jittor", 6).run}, ENV,
                            CONFIG)
    assert "loss scale" not in open(plain).read()


def test_plots_needing_both_ports_are_skipped_and_stale_ones_removed(tmp_path):
    both = {"torch": Synthetic("torch", 7).run, "jittor": Synthetic("jittor", 8).run}
    write_report(tmp_path, both, ENV, CONFIG)
    assert (tmp_path / "plots" / "loss_difference.png").exists()
    dead = RunData("jittor", failure="ImportError: no jittor")
    md_path, html_path = write_report(tmp_path, {"torch": both["torch"], "jittor": dead},
                                      ENV, CONFIG)
    md = open(md_path).read()
    assert "*Skipped: needs the iteration logs of both ports.*" in md
    assert not (tmp_path / "plots" / "loss_difference.png").exists()
    assert "| jittor | FAILED | 0 |" in md and "ImportError: no jittor" in md
    assert len(re.findall(r'src="data:', open(html_path).read())) == len(PLOTS) - 1


def test_a_port_without_run_data_is_marked_not_run(tmp_path):
    md_path, _ = write_report(tmp_path, {"jittor": Synthetic("jittor", 9).run}, ENV, CONFIG)
    md = open(md_path).read()
    assert "NOT RUN: the torch port" in md
    _, coco = md_table(md, "## COCO statistics (final)")
    assert coco["AP"][0] == "not run" and coco["AP"][2] == "n/a"


def test_bad_runs_argument_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="tensorflow"):
        write_report(tmp_path, {"tensorflow": RunData("tensorflow")}, ENV, CONFIG)
    with pytest.raises(ValueError, match="holds a run of 'jittor'"):
        write_report(tmp_path, {"torch": RunData("jittor")}, ENV, CONFIG)
    assert not os.listdir(tmp_path)


# ---- read_log -----------------------------------------------------------------------------
GOOD = {"iter": 1, "epoch": 1, "lr": 0.01, "loss": 1.5, "loss_cls": 1.0, "loss_bbox": 0.3,
        "loss_dfl": 0.2, "time": 0.5, "data_time": 0.01}


def test_read_log_returns_the_records(tmp_path):
    log = make_log(make_components(0, 3), [0.1, 0.2, 0.3], [0.0, 0.0, 0.0])
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in log) + "\n")  # trailing blank line
    assert read_log(path) == log


@pytest.mark.parametrize("bad, message", [
    ('{"iter": 2, "epoch": 1, "loss": 1.0', "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object, got list"),
    ('{"iter": 2, "epoch": 1}', "missing key(s) loss"),
    ('{"iter": 2, "epoch": 1, "loss": "1.0"}', "loss='1.0' is not a number"),
    ('{"iter": 2, "epoch": 1, "loss": 1.0, "time": true}', "time=True is not a number"),
    ('{"iter": 0, "epoch": 1, "loss": 1.0}', "iter=0 is not a positive integer"),
    ('{"iter": 2.5, "epoch": 1, "loss": 1.0}', "iter=2.5 is not a positive integer"),
])
def test_malformed_log_line_names_file_and_line(tmp_path, bad, message):
    path = tmp_path / "run.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(LogFormatError) as info:
        read_log(path)
    assert f"{path}, line 3: " in str(info.value) and message in str(info.value)


def test_partial_last_line_is_an_error_unless_allowed(tmp_path):
    path = tmp_path / "crashed.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"iter": 2, "epo')
    with pytest.raises(LogFormatError, match="line 2"):
        read_log(path)
    assert read_log(path, allow_partial_last_line=True) == [GOOD]
    path.write_text('{"iter": 2, "epo\n' + json.dumps(GOOD) + "\n")  # not the last: an error
    with pytest.raises(LogFormatError, match="line 1"):
        read_log(path, allow_partial_last_line=True)


def test_missing_log_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        read_log(tmp_path / "nowhere.jsonl")


# ---- agreement_summary --------------------------------------------------------------------
def losses(values, start=1):
    return [{"iter": start + i, "epoch": 1, "loss": v} for i, v in enumerate(values)]


def test_agreement_summary_on_hand_made_logs():
    torch_log = losses([2.0, 2.0, 1.0, 1.0, 0.5])
    jittor_log = losses([2.0, 2.2, 1.1, 1.5, 0.6])
    # relative differences: 0, 0.1, 0.1, 0.5, 0.2
    s = agreement_summary(torch_log, jittor_log, first_n=2)
    assert s["n_compared"] == 5 and s["first_n"] == 2
    assert s["max_rel_first_n"] == pytest.approx(0.1)
    assert s["max_rel_after"] == pytest.approx(0.5)
    assert s["median_rel_after"] == pytest.approx(0.2)
    assert s["worst_iter"] == 4


def test_agreement_summary_pairs_iterations_and_guards_zero():
    torch_log = losses([0.0, 1.0, 4.0])            # iters 1..3
    jittor_log = losses([1.0, 5.0, 1e-12], start=2)  # iters 2..4: only 2 and 3 in common
    s = agreement_summary(torch_log, jittor_log, first_n=1)
    assert s["n_compared"] == 2
    assert s["max_rel_first_n"] == 0.0                   # iter 2: 1 vs 1
    assert s["max_rel_after"] == pytest.approx(0.25)     # iter 3: |5 - 4| / 4
    zero = agreement_summary(losses([0.0]), losses([1e-12]))
    assert zero["max_rel_first_n"] == pytest.approx(1.0)  # denominator clamped at 1e-12
    assert zero["max_rel_after"] is None and zero["median_rel_after"] is None
    empty = agreement_summary(losses([1.0]), losses([1.0], start=5))
    assert empty["n_compared"] == 0 and empty["max_rel_first_n"] is None


def test_agreement_summary_does_not_hide_nan():
    s = agreement_summary(losses([1.0, 1.0, 1.0]), losses([1.0, float("nan"), 1.0]), first_n=2)
    assert np.isnan(s["max_rel_first_n"]) and s["max_rel_after"] == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_subnormal=False), min_size=1, max_size=40),
       st.integers(1, 10))
def test_moving_average_is_the_mean_of_each_trailing_window(xs, window):
    got = moving_average(xs, window)
    if len(xs) < window:
        assert np.array_equal(got, np.asarray(xs, dtype=float))
        return
    expected = [sum(xs[i - window + 1:i + 1]) / window for i in range(window - 1, len(xs))]
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-6)


def test_html_report_renders_in_a_browser_with_every_plot_decoded(complete, tmp_path):
    from tests.browser import render
    dom, check = render(complete["html_path"], tmp_path / "profile")
    assert check["images"] == len(PLOTS) and check["broken"] == [], check
    assert check["missing"] == [], check
    assert "Per epoch" in dom


def test_noise_section_with_the_verdict_three_way_table_and_both_plots(tmp_path):
    from gfocal import control_arm as noise_math
    from gfocal.report.plots import NOISE_PLOTS
    t, j, c = Synthetic("torch", 11), Synthetic("jittor", 12), Synthetic("torch", 13)
    runs = {"torch": t.run, "jittor": j.run}
    traces = {arm: [dict(dict.fromkeys(noise_math.GROUP_NAMES, scale * (it + 1)), iter=it)
                    for it in (0, 4, 8)] for arm, scale in (("jittor", 1e-6), ("control", 1e-7))}
    result = {"control": c.run, "note": None, "traces": traces,
              "check": noise_math.control_check(t.run.log, c.run.log),
              "verdict": noise_math.verdict(t.run, j.run, c.run, first_n=2),
              "exit": noise_math.band_exit(traces["jittor"], traces["control"]),
              "seeds": {0: {"torch": 0.4, "jittor": 0.41, "control": 0.39},
                        1: {"torch": 0.42, "jittor": 0.40, "control": 0.43}}}
    md_path, html_path = write_report(tmp_path, runs, ENV, CONFIG, noise=result)
    md = open(md_path).read()
    assert result["verdict"]["line"] in md and noise_math.VERDICT_RULE in md
    assert md.index("## Noise or bug?") < md.index("## Environment")
    _, three = md_table(md, "### Final COCO statistics of the three runs")
    want = c.stats[EPOCHS]["AP"] - t.stats[EPOCHS]["AP"]
    assert close(three["AP"][2], c.stats[EPOCHS]["AP"]) and close(three["AP"][4], want)
    assert "at iteration 0, in group stem" in md  # 1e-6 vs 1e-7: out from the start
    _, seeds = md_table(md, "### Final AP across seeds")
    assert close(seeds["jittor"][2], 0.405)
    for name, _, _ in NOISE_PLOTS:
        assert (tmp_path / "plots" / name).is_file()
    assert len(re.findall(r'src="data:', open(html_path).read())) == len(PLOTS) + len(NOISE_PLOTS)
