"""The measurement helpers behind the benchmarks (perf_tests/measure.py): fast, no model."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from perf_tests import measure


def record(group, framework, times):
    return SimpleNamespace(group=group, extra_info={"framework": framework},
                           stats=SimpleNamespace(data=list(times), min=min(times),
                                                 median=float(np.median(times))))


def test_ratio_rows_divides_jittor_by_torch_per_group():
    rows = measure.ratio_rows([
        record("forward b1", "torch", [0.2, 0.4, 0.3]),
        record("forward b1", "jittor", [0.3, 0.9, 0.6]),
        record("train b1", "jittor", [2.0]),
        record("train b1", "torch", [4.0]),
    ])
    assert [r["group"] for r in rows] == ["forward b1", "train b1"]
    assert rows[0]["ratio_min"] == pytest.approx(0.3 / 0.2)
    assert rows[0]["ratio_median"] == pytest.approx(0.6 / 0.3)
    assert rows[1]["ratio_min"] == pytest.approx(0.5)


def test_ratio_rows_skips_untimed_records_and_keeps_half_groups():
    disabled = SimpleNamespace(group="x", extra_info={"framework": "torch"}, stats=None)
    empty = record("y", "jittor", [1.0])
    empty.stats.data = []
    rows = measure.ratio_rows([disabled, empty, record("z", "torch", [1.0]),
                            SimpleNamespace(group="w", extra_info={}, stats=None)])
    assert [r["group"] for r in rows] == ["z"]
    assert rows[0]["torch_min"] == 1.0 and rows[0]["jittor_min"] is None
    assert rows[0]["ratio_min"] is None and rows[0]["ratio_median"] is None


def test_summary_tables_cope_with_no_timings():
    assert "no timings" in measure.ratio_table_text([])
    assert "no timings" in measure.ratio_table_html([])


def test_summary_tables_show_ratio_and_geometric_mean():
    rows = measure.ratio_rows([record("a", "torch", [0.1]), record("a", "jittor", [0.4]),
                            record("b", "torch", [0.4]), record("b", "jittor", [0.1])])
    text = measure.ratio_table_text(rows)
    assert "4.00" in text and "0.25" in text
    assert text.splitlines()[-1].split()[-2:] == ["1.00", "1.00"]  # sqrt(4 * 0.25)
    assert "<table" in measure.ratio_table_html(rows) and "4.00" in measure.ratio_table_html(rows)


@pytest.mark.skipif(not measure.peak_rss_supported(), reason="needs Linux /proc peak-RSS reset")
def test_peak_memory_sees_a_temporary_allocation(port):
    size = 200 * measure.MB

    def allocate():
        block = np.ones(size, np.uint8)  # touched, so resident
        return int(block[::4096].sum())

    small = measure.measure_peak_memory(port, "cpu", lambda: None)
    big = measure.measure_peak_memory(port, "cpu", allocate)
    assert big["cpu_peak_rss_growth_mb"] >= 190
    assert small["cpu_peak_rss_growth_mb"] < 50
    assert big["cpu_peak_rss_mb"] >= big["cpu_peak_rss_growth_mb"]


def test_cuda_peak_memory_is_the_ports_allocator_peak_after_its_caches_are_released():
    calls = []
    port = SimpleNamespace(release_caches=lambda: calls.append("release"),
                           sync=lambda: calls.append("sync"),
                           peak_device_memory=lambda: {"allocated": 2 * measure.MB,
                                                       "reserved": 3 * measure.MB})
    memory = measure.measure_peak_memory(port, "cuda:1", lambda: calls.append("step"))
    assert memory == {"gpu_peak_allocated_mb": 2.0, "gpu_peak_reserved_mb": 3.0}
    assert calls == ["release", "step", "sync"]


def test_make_batch_follows_the_shared_batch_format():
    batch = measure.make_batch(2, (300, 333))
    assert batch["imgs"].shape == (2, 3, 320, 352) and batch["imgs"].dtype == np.float32
    assert not batch["imgs"][:, :, 300:].any() and not batch["imgs"][:, :, :, 333:].any()
    for boxes, labels, meta in zip(batch["gt_bboxes"], batch["gt_labels"],
                                   batch["img_metas"]):
        assert boxes.dtype == np.float32 and labels.dtype == np.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 333).all()
        assert (boxes[:, 3] <= 300).all() and (boxes[:, 2:] > boxes[:, :2]).all()
        assert meta["img_shape"] == (300, 333) and meta["pad_shape"] == (320, 352)
    again = measure.make_batch(2, (300, 333))
    assert np.array_equal(batch["imgs"], again["imgs"])


def test_benchmark_weights_are_deterministic_and_shaped():
    state = {"backbone.conv1.weight": np.zeros((4, 3, 3, 3)),
             "backbone.bn1.running_var": np.zeros(4), "backbone.bn1.weight": np.zeros(4),
             "bbox_head.gfl_cls.bias": np.zeros(80), "bbox_head.integral.project": np.zeros(17)}
    a, b = measure.benchmark_weights(state), measure.benchmark_weights(dict(reversed(state.items())))
    assert all(np.array_equal(a[k], b[k]) and a[k].dtype == np.float32 for k in state)
    assert a["backbone.conv1.weight"].std() > 0 and (a["backbone.bn1.running_var"] == 1).all()
    assert (a["bbox_head.gfl_cls.bias"] == measure.INFERENCE_CLS_BIAS).all()
    assert np.array_equal(a["bbox_head.integral.project"], np.arange(17))
    with pytest.raises(ValueError, match="odd.thing"):
        measure.benchmark_weights({"odd.thing": np.zeros((2, 2))})


def test_paired_ratios_are_per_pair_then_median():
    out = measure.paired_ratios([1.0, 2.0, 4.0], [1.5, 2.0, 2.0])
    assert out["pair_ratios"] == [1.5, 1.0, 0.5]
    assert out["ratio_median"] == 1.0
    assert out["ratio_of_mins"] == pytest.approx(1.5)


def test_paired_rows_and_tables_take_only_interleaved_records():
    paired = SimpleNamespace(group="paired inference b1", stats=None, extra_info=dict(
        framework="paired", torch_times=[0.2, 0.4], jittor_times=[0.3, 0.4],
        **measure.paired_ratios([0.2, 0.4], [0.3, 0.4])))
    rows = measure.paired_rows([record("inference b1", "torch", [0.2]), paired])
    assert len(rows) == 1 and rows[0]["pairs"] == 2
    assert rows[0]["ratio_median"] == pytest.approx(1.25)
    assert measure.ratio_rows([paired]) == []  # not a port: left out of the per-port table
    assert "1.25" in measure.paired_table_text(rows) and "<table" in measure.paired_table_html(rows)
    assert "no interleaved" in measure.paired_table_text([])


def test_jittor_gpu_facts_state_its_numerics_flags(jittor_port, monkeypatch):
    """Jittor's GPU cases say use_cuda, use_tensorcore, whether cuDNN is loaded and whether
    TF32 may run (cuDNN's default math permits it unless NVIDIA_TF32_OVERRIDE=0)."""
    import jittor as jt
    from jittor import compile_extern
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "0")
    info = measure.framework_info(jittor_port, "cuda")
    assert info["framework"] == "jittor" and info["device"] == "cuda"
    assert info["use_cuda"] == bool(jt.flags.use_cuda)
    assert info["use_tensorcore"] == jt.flags.use_tensorcore == 0
    assert info["cudnn"] == (compile_extern.cudnn is not None)
    assert info["nvidia_tf32_override"] == "0" and info["tf32"] is False
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    assert measure.framework_info(jittor_port, "cuda")["tf32"] == info["cudnn"]
    assert "use_tensorcore" not in measure.framework_info(jittor_port, "cpu")


def test_setting_rows_pair_each_case_across_settings():
    def timed(group, framework, setting, median, first):
        rec = record(group, framework, [median])
        rec.extra_info.update(setting=setting, first_call_s=first)
        return rec
    rows = measure.setting_rows([
        timed("inference cpu 320x320 b1", "torch", "default", 0.20, 1.0),
        timed("inference cpu 320x320 b1", "jittor", "default", 0.30, 2.0),
        timed("inference cpu-tuned 320x320 b1", "torch", "tuned", 0.15, 50.0),
        timed("inference cpu-tuned 320x320 b1", "jittor", "tuned", 0.30, 1.5),
        timed("forward cpu 320x320 b1", "torch", "default", 0.1, 0.2),  # no tuned timing
    ])
    assert len(rows) == 1
    row = rows[0]
    assert row["case"] == "inference cpu 320x320 b1"
    assert row["torch_gain"] == pytest.approx(0.75) and row["jittor_gain"] == pytest.approx(1.0)
    assert row["ratio_default"] == pytest.approx(1.5) and row["ratio_tuned"] == pytest.approx(2.0)
    assert row["torch_tuned_first"] == 50.0
    text = measure.setting_table_text(rows)
    assert "0.75" in text and "50.0" in text and "2.00" in text
    assert "T/D" in measure.setting_table_html(rows)


def child_pytest(*args, cwd):
    """pytest with `args` in a child process started in `cwd`, as a user runs it."""
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def run_pytest(storage, *options):
    """pytest on one quick case of this suite with pytest-benchmark's `options` and saved
    runs in `storage` (run from `storage`'s parent: pytest-benchmark cannot name a storage
    outside the working directory)."""
    case = f"{__file__}::test_summary_tables_cope_with_no_timings"
    return child_pytest(case, f"--benchmark-storage={storage}", *options, cwd=storage.parent)


@pytest.mark.ci  # a child pytest session (both frameworks imported): seconds each
def test_compare_without_a_saved_run_stops_before_anything_runs(tmp_path):
    """--benchmark-compare with an empty storage: one line and a usage error at once, not
    the whole timed suite followed by a warning (or, with --benchmark-compare-fail, a
    failure) at the end."""
    storage = tmp_path / "benchmarks"
    storage.mkdir()
    run = run_pytest(storage, "--benchmark-compare-fail=min:5%", "--benchmark-compare")
    errors = [line for line in run.stderr.splitlines() if line.startswith("ERROR:")]
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert errors == [f"ERROR: --benchmark-compare: no saved run in {storage}: nothing to "
                      "compare with (save one first: --benchmark-autosave or "
                      "--benchmark-save=NAME)"]
    assert "passed" not in run.stdout and "collected" not in run.stdout  # nothing ran


@pytest.mark.ci  # a child pytest session (both frameworks imported): seconds each
def test_compare_with_a_saved_run_runs(tmp_path):
    storage = tmp_path / "benchmarks"
    storage.mkdir()
    (storage / "0001_saved.json").write_text(
        '{"machine_info": {}, "commit_info": {}, "benchmarks": []}')
    run = run_pytest(storage, "--benchmark-compare")
    assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr


TWO_PORTS_TIMED = """\
import pytest


@pytest.mark.parametrize("framework", ["torch", "jittor"])
def test_case(benchmark, framework):
    benchmark.group = "tiny case"
    benchmark.extra_info["framework"] = framework
    benchmark.pedantic(sum, args=([1],), rounds=2)
"""


def test_the_ratio_summary_shows_each_timed_record(tmp_path):
    """The summary's records come from each timed test's benchmark fixture: a child pytest
    session (no framework imported: about a second) of one trivial case per port, with this
    suite's conftest as a plugin."""
    (tmp_path / "test_two_ports.py").write_text(TWO_PORTS_TIMED)
    run = child_pytest(str(tmp_path), "-p", "perf_tests.conftest", f"--rootdir={tmp_path}",
                       cwd=Path(__file__).parent.parent)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("tiny case ")]
    assert len(rows) == 1 and len(rows[0]) == 8 and "-" not in rows[0], run.stdout


@pytest.mark.parametrize("framework, kind, precision, name, skipped", [
    ("jittor", "cpu", "native-bf16", "inference", True),   # Jittor's generic half kernels
    ("jittor", "cpu", "native-fp16", "train_step", True),
    ("jittor", "gpu", "native-fp16", "train_step", False),  # cuDNN there
    ("jittor", "cpu", "bf16", "train_step", False),         # the policy: float32 kernels
    ("torch", "cpu", "native-fp16", "train_step", True),    # CPU fp16 convolution backward
    ("torch", "cpu", "native-fp16", "inference", False),
    ("torch", "cpu", "native-bf16", "train_step", False),
])
def test_slow_half_cases_are_skipped_on_the_cpu_only(framework, kind, precision, name,
                                                     skipped):
    from perf_tests.test_benchmarks import skip_reason
    reason = skip_reason(framework, kind, False, precision, name)
    assert (reason is not None) is skipped
    assert reason is None or ("slower than float32" in reason and reason.endswith("not timed"))
