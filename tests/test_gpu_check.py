"""scripts/gpu_check.sh tried on the CPU as on the GPU machine (no Jittor there: blocked
here), its Jittor check (--jittor) as far as a CPU allows, its bad inputs,
scripts/gpu_wheels.sh's pins and scripts/gpu_summary.py's tables."""
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from gfocal.device import cuda_available

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "scripts", "gpu_check.sh")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_summary  # noqa: E402
import jittor_cuda  # noqa: E402


@pytest.fixture(scope="module")
def no_jittor(tmp_path_factory):
    """A PYTHONPATH entry whose `jittor` fails to import, as on the GPU machine."""
    folder = tmp_path_factory.mktemp("no_jittor")
    (folder / "jittor").mkdir()
    (folder / "jittor" / "__init__.py").write_text(
        "raise ImportError('no Jittor on the GPU machine (blocked by the test)')\n")
    return str(folder)


def run_check(args, tmp_path, no_jittor, timeout=600, wheels=None, **env):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=no_jittor,
               GFOCAL_WHEELS=str(wheels or tmp_path / "no_wheels"), **env)
    return subprocess.run(["bash", CHECK, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def cuda_stack_here():
    """Why the Jittor check's set-up cannot be tried here (None: it can): it needs an nvcc
    and the nvidia packages (PyTorch's CUDA build brings them) next to Jittor."""
    if not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        return "no nvcc on this machine"
    for name in ("jittor", "nvidia"):
        if importlib.util.find_spec(name) is None:
            return f"no {name} package in {sys.executable}'s environment"
    return None


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


@pytest.mark.skipif(cuda_stack_here() is not None, reason=str(cuda_stack_here()))
def test_jittor_check_dry_run_sets_up_jittor_on_copies_and_prints_its_environment(tmp_path):
    """The Jittor check's first step, as the dry run does it: the CUDA home links built, the
    patch applied to copies of this environment's Jittor (the real 1.3.11 files), Jittor's
    environment printed; no build (no driver here), the other steps left out."""
    out = tmp_path / "out"
    result = run_check([str(out), "--device", "cpu", "--dry-run", "--jittor"], tmp_path, "",
                       timeout=120, GFOCAL_CHECK_STEPS="jittor_setup")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = (out / "check.log").read_text()
    assert "=== jittor_setup: passed" in log
    assert f"{len(jittor_cuda.HUNKS)} hunks applied, 0 already there" in log
    for line in ("export use_cutt='0'", "export use_cutlass='0'", "export use_nccl='0'"):
        assert line in log.splitlines()
    assert "export nvcc_path='" in log and "/jtcuda/cuda/bin/nvcc'" in log
    text = (out / "summary.md").read_text()
    assert text.startswith("# GPU check (Jittor)")
    assert "| jittor_setup | passed |" in text
    assert "| jittor_build | skipped (dry run: no GPU driver) | 0 |" in text
    for step in ("perf", "parity"):
        assert f"| {step} | skipped (not in GFOCAL_CHECK_STEPS) | 0 |" in text
    installed = importlib.util.find_spec("jittor").submodule_search_locations[0]
    assert "gfocal-parity" not in open(os.path.join(installed, "compiler.py")).read()


def test_jittors_packages_stay_out_of_the_pytorch_check(tmp_path, no_jittor):
    """numpy 1.26 (Jittor's) must not shadow the GPU machine's numpy 2 in the PyTorch steps."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl", "jittor-1.3.11.0.tar.gz"):
        (wheels / name).write_bytes(b"")
    result = run_check([str(tmp_path / "out"), "--device", "cpu"], tmp_path, no_jittor,
                       timeout=120, wheels=wheels, GFOCAL_CHECK_STEPS="none")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Jittor's packages in" in result.stdout and "are left out here" in result.stdout
    assert "installing" not in result.stdout
    for step in ("perf", "parity", "train"):
        assert f"| {step} | skipped (not in GFOCAL_CHECK_STEPS) | 0 |" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(cuda_stack_here() is not None, reason=str(cuda_stack_here()))
def test_jittor_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """The whole Jittor dry run (about a minute here: two pytest sessions with both
    frameworks): set-up on copies, the paired inference case, a Jittor parity case."""
    out = tmp_path / "out"
    result = run_check([str(out), "--device", "cpu", "--dry-run", "--jittor"], tmp_path, "")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    for step in ("jittor_setup", "perf", "parity"):
        assert f"| {step} | passed |" in text
    assert "jittor against the PyTorch port on the CPU" in text
    records = json.loads((out / "parity_verdict.json").read_text())
    assert {r["subject"] for r in records} == {"jittor"} and all(r["ok"] for r in records)


def test_wheel_pins_are_the_versions_tested_here():
    """The wheels carried to the GPU machine are the versions this suite runs with."""
    listed = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_wheels.sh"), "--list"],
                            capture_output=True, text=True, check=True).stdout.split()
    pins = dict(line.split("==") for line in listed)
    assert {"pycocotools", "pytest-html", "pytest-metadata"} <= set(pins)
    for name in ("pycocotools", "pytest-html", "pytest-metadata"):
        assert pins[name] == importlib.metadata.version(name), name
    listed = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_wheels.sh"),
                             "--with-jittor", "--list"], capture_output=True, text=True,
                            check=True).stdout.split()
    pins = dict(line.split("==") for line in listed)
    for name in ("numpy", "jittor"):  # Jittor's check runs these (jittor's 1.3.11 = 1.3.11.0)
        installed = importlib.metadata.version(name)
        assert installed == pins[name] or installed.startswith(pins[name] + "."), name


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


def test_summary_of_the_jittor_check_tables_jittors_flags_and_the_paired_cases(tmp_path):
    flags = dict(use_cuda=True, use_tensorcore=0, cudnn=True, cuda_archs=[90],
                 nvidia_tf32_override="0", tf32=False, version="1.3.11.0")
    bench = {"benchmarks": [
        benchmark("inference", 1, 0.080, **{k: v for k, v in flags.items() if k != "version"}),
        {"group": "paired inference gpu 800x1344 b1", "name": "test_paired", "stats": {},
         "extra_info": dict(framework="paired", case="inference", batch=1,
                            torch_times=[0.05, 0.06], jittor_times=[0.08, 0.09],
                            pair_ratios=[1.6, 1.5], ratio_median=1.55, ratio_of_mins=1.6,
                            jittor_info=dict(framework="jittor", **flags))},
    ]}
    bench["benchmarks"][0]["extra_info"]["framework"] = "jittor"
    (tmp_path / "perf.json").write_text(json.dumps(bench))
    text = gpu_summary.summary(str(tmp_path), "cuda", [("jittor_build", "passed", "80")],
                               jittor=True)
    assert text.startswith("# GPU check (Jittor)")
    assert "| inference | fp32 | 1 | 72.0 | 80.0 | 80.0 | 12.5 | - | - |" in text
    assert "| inference | 1 | 2 | 55.0 | 85.0 | 1.55 | 1.60 |" in text
    for fact in ("- use_tensorcore: 0", "- cuDNN: on", "- TF32: off", "- NVIDIA_TF32_OVERRIDE: 0"):
        assert fact in text
    assert "## Short training" not in text and "## PyTorch port" not in text
