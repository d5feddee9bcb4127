"""scripts/gpu_check.sh tried on the CPU as on the GPU machine (no Jittor there: blocked
here), its bad inputs, scripts/gpu_wheels.sh's pins and scripts/gpu_summary.py's tables."""
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from gfocal.runtime import cuda_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "scripts", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_summary  # noqa: E402


@pytest.fixture(scope="module")
def no_jittor(tmp_path_factory):
    """A PYTHONPATH entry whose `jittor` fails to import, as on the GPU machine."""
    folder = tmp_path_factory.mktemp("no_jittor")
    (folder / "jittor").mkdir()
    (folder / "jittor" / "__init__.py").write_text(
        "raise ImportError('no Jittor on the GPU machine (blocked by the test)')\n")
    return str(folder)


def run_check(args, tmp_path, no_jittor, timeout=600):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=no_jittor,
               GFOCAL_WHEELS=str(tmp_path / "no_wheels"))
    return subprocess.run(["bash", CHECK, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, no_jittor):
    tmp = tmp_path_factory.mktemp("gpu_check")
    out = tmp / "out"
    result = run_check([str(out), "--device", "cpu", "--dry-run"], tmp, no_jittor)
    return out, result


def test_dry_run_passes_every_step_and_prints_the_summary(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    for step in ("perf", "parity", "train"):
        assert f"| {step} | passed |" in text
    assert result.stdout.rstrip().endswith(f"summary: {out / 'summary.md'}")
    assert "installing" not in result.stdout and "no wheels in" in result.stdout
    assert (out / "check.log").read_text().count("=== train: passed") == 1


def test_dry_run_compares_the_pytorch_port_on_the_device_with_its_cpu_run(dry_run):
    """The GPU machine's parity step: subject torch@<device>, no Jittor; on the CPU both
    runs do the same arithmetic, so every tensor agrees exactly."""
    out, _ = dry_run
    records = json.loads((out / "parity_verdict.json").read_text())
    assert {r["subject"] for r in records} == {"torch@cpu"}
    checks = {r["check"] for r in records}
    assert {"forward probes", "targets and assignment", "losses", "gradients"} <= checks
    assert all(r["ok"] for r in records)
    assert max(r["rel"] or 0.0 for r in records) == 0.0
    assert "torch@cpu against the PyTorch port on the CPU" in (out / "summary.md").read_text()


def test_dry_run_trains_evaluates_and_keeps_its_files(dry_run):
    out, _ = dry_run
    for name in ("latest.pth", "log_torch.jsonl", "results.json", "test.txt"):
        assert (out / "train" / name).is_file(), name
    assert len((out / "train" / "log_torch.jsonl").read_text().splitlines()) == 2
    assert "- iterations: 2, final loss" in (out / "summary.md").read_text()
    assert (out / "parity.html").is_file() and (out / "perf.html").is_file()


def test_a_second_check_into_the_same_folder_is_refused(dry_run, tmp_path, no_jittor):
    out, _ = dry_run
    before = (out / "summary.md").read_text()
    result = run_check([str(out), "--device", "cpu", "--dry-run"], tmp_path, no_jittor)
    assert result.returncode == 2 and "already holds a check" in result.stderr
    assert (out / "summary.md").read_text() == before


@pytest.mark.parametrize("args, words", [
    ([], ["usage"]),
    (["OUT", "--frobnicate"], ["unknown option '--frobnicate'"]),
    (["OUT", "--device"], ["--device needs a value"]),
    (["OUT", "--device", "gpu0"], ["'gpu0'", "auto, cpu, cuda, cuda:N"]),
])
def test_bad_arguments_are_one_line(args, words, tmp_path, no_jittor):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    result = run_check(args, tmp_path, no_jittor, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert all(w in result.stderr for w in words), result.stderr


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_on_a_machine_without_a_gpu_stops_before_any_step(tmp_path, no_jittor):
    result = run_check([str(tmp_path / "out"), "--device", "cuda"], tmp_path, no_jittor,
                       timeout=60)
    assert result.returncode == 2 and "no CUDA GPU" in result.stdout + result.stderr
    assert "=== perf" not in result.stdout


def test_wheel_pins_are_the_versions_tested_here():
    """The wheels carried to the GPU machine are the versions this suite runs with."""
    listed = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_wheels.sh"), "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    pins = dict(line.split("==") for line in listed)
    assert {"pycocotools", "pytest-html", "pytest-metadata"} <= set(pins)
    for name in ("pycocotools", "pytest-html", "pytest-metadata"):
        assert pins[name] == importlib.metadata.version(name), name


def benchmark(case, batch, median, tf32=False, **extra):
    return {"group": f"{case} gpu", "name": case, "stats": {"min": median * 0.9, "median": median},
            "extra_info": dict(framework="torch", case=case, batch=batch, tf32=tf32,
                               gpu="NVIDIA H200", version="2.11.0", cuda="13.0", **extra)}


def test_summary_tables_per_image_time_fps_and_memory(tmp_path):
    bench = {"benchmarks": [
        benchmark("inference", 2, 0.050),
        benchmark("train_step", 8, 0.400, tf32=True, gpu_peak_allocated_mb=20480.4,
                  gpu_peak_reserved_mb=24000.0),
        dict(benchmark("inference", 1, 0.1), extra_info={"framework": "jittor"}),
    ]}
    (tmp_path / "perf.json").write_text(json.dumps(bench))
    text = gpu_summary.summary(str(tmp_path), "cuda", [("perf", "passed", "95")])
    assert "| inference | fp32 | 2 | 45.0 | 50.0 | 25.0 | 40.0 | - | - |" in text
    assert "| train_step | TF32 | 8 | 360.0 | 400.0 | 50.0 | - | 20480 | 24000 |" in text
    assert "jittor" not in text.split("## PyTorch port")[1].split("## Parity")[0]
    assert "- gpu: NVIDIA H200" in text and "| perf | passed | 95 |" in text
    assert "no parity verdict" in text and "no training log" in text
