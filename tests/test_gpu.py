"""scripts/gpu.py, the GPU tooling's one driver: its check tried on the CPU as on the GPU
machine (no Jittor there: blocked here), the Jittor check as far as a CPU allows, the caps,
bad input of every command, the wheels' pins, the summary's tables and the image command's
environment."""
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
DRIVER = os.path.join(ROOT, "scripts", "gpu.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu  # noqa: E402
import jittor_cuda  # noqa: E402


@pytest.fixture(scope="module")
def no_jittor(tmp_path_factory):
    """A PYTHONPATH entry whose `jittor` fails to import, as on the GPU machine."""
    folder = tmp_path_factory.mktemp("no_jittor")
    (folder / "jittor").mkdir()
    (folder / "jittor" / "__init__.py").write_text(
        "raise ImportError('no Jittor on the GPU machine (blocked by the test)')\n")
    return str(folder)


def run_driver(args, tmp_path, pythonpath="", timeout=600, wheels=None, **env):
    """scripts/gpu.py with its wheels, image environment and cache kept under tmp_path."""
    env = {**os.environ, "PYTHONPATH": pythonpath,
           "GFOCAL_WHEELS": str(wheels or tmp_path / "no_wheels"),
           "GFOCAL_GPU_IMAGE_ENV": str(tmp_path / "image-env"),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), **env}
    return subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


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
    return out, run_driver(["check", str(out), "--device", "cpu", "--dry-run"], tmp, no_jittor)


@pytest.mark.ci  # the whole GPU check on a CPU
def test_dry_run_passes_every_step_and_prints_the_summary_last(dry_run):
    out, result = dry_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    for step in ("perf", "tuned", "parity", "train"):
        assert f"| {step} | passed | " in text
    assert "| parity | passed | 1" in text  # pytest's count line beside the step
    assert result.stdout.rstrip().endswith(f"summary: {out / 'summary.md'}")
    assert "installing" not in result.stdout and "no wheels in" in result.stdout
    assert (out / "check.log").read_text().count("=== train: passed") == 1
    assert [row[0] for row in json.loads((out / "steps.json").read_text())] == [
        "perf", "tuned", "parity", "train"]


@pytest.mark.ci  # the whole GPU check on a CPU
def test_dry_run_compares_on_the_device_trains_and_keeps_its_files(dry_run):
    """The GPU machine's parity step: subject torch@<device>, no Jittor; on the CPU both
    runs do the same arithmetic, so every tensor agrees exactly."""
    out, _ = dry_run
    records = json.loads((out / "parity_verdict.json").read_text())
    assert {r["subject"] for r in records} == {"torch@cpu"}
    assert {"forward probes", "targets and assignment", "losses", "gradients"} <= {
        r["check"] for r in records}
    assert all(r["ok"] for r in records) and max(r["rel"] or 0.0 for r in records) == 0.0
    text = (out / "summary.md").read_text()
    assert "torch@cpu against the PyTorch port on the CPU" in text
    for name in ("latest.pth", "log_torch.jsonl", "results.json", "test.txt"):
        assert (out / "train" / name).is_file(), name
    assert len((out / "train" / "log_torch.jsonl").read_text().splitlines()) == 2
    assert "- iterations: 2, final loss" in text
    assert (out / "parity.html").is_file() and (out / "perf.html").is_file()


@pytest.mark.ci  # the whole GPU check on a CPU
def test_a_second_check_into_the_same_folder_is_refused(dry_run, tmp_path, no_jittor):
    out, _ = dry_run
    before = (out / "summary.md").read_text()
    result = run_driver(["check", str(out), "--device", "cpu", "--dry-run"], tmp_path,
                        no_jittor)
    assert result.returncode == 2 and "already holds a check" in result.stderr
    assert (out / "summary.md").read_text() == before


@pytest.mark.parametrize("args, env, words", [
    ([], {}, "required: command"),
    (["check"], {}, "required: out_dir"),
    (["check", "OUT", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    (["check", "OUT", "--device"], {}, "--device: expected one argument"),
    (["check", "OUT", "--device", "gpu0"], {}, "'gpu0' is not one of auto, cpu, cuda, cuda:N"),
    (["check", "OUT", "--steps", "perf,nope"], {}, "unknown step 'nope' (known: perf,tuned,"),
    (["check", "OUT", "--jittor", "--cap", "train=9"], {},
     "--cap: unknown step 'train' (known: jittor_setup,"),
    (["image", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
    (["image", "--out"], {}, "--out: expected one argument"),
    (["image", "--steps", "dry_run,nope"], {}, "unknown step 'nope' (known: dry_run,parity,"),
    (["image", "--out", "FULL"], {}, "is not empty: give a new or empty folder"),
    (["image", "--cap", "dry_run=1h"], {}, "a cap must be a whole number of seconds, got '1h'"),
    (["image"], {"PYTHON312": sys.executable + "-missing"}, "is not a CPython 3.12 with venv"),
    (["wheels", "--frobnicate"], {}, "unrecognized arguments: --frobnicate"),
])
def test_bad_input_is_one_line_before_any_work(args, env, words, tmp_path, no_jittor):
    full = tmp_path / "full"
    full.mkdir()
    (full / "kept.txt").write_text("x")
    args = [{"FULL": str(full), "OUT": str(tmp_path / "out")}.get(a, a) for a in args]
    result = run_driver(args, tmp_path, no_jittor, timeout=60, **env)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["full"] and os.listdir(full) == ["kept.txt"]


def test_a_check_into_a_folder_with_files_is_refused_and_the_files_kept(tmp_path, no_jittor):
    out = tmp_path / "out"
    out.mkdir()
    (out / "perf.json").write_text("a killed check's")
    result = run_driver(["check", str(out), "--device", "cpu", "--dry-run"], tmp_path,
                        no_jittor, timeout=60)
    assert result.returncode == 2 and "is not empty: give a new or empty folder" in result.stderr
    assert os.listdir(out) == ["perf.json"]
    assert (out / "perf.json").read_text() == "a killed check's"


def test_a_check_missing_its_wheels_stops_in_one_line_and_leaves_no_folder(tmp_path):
    """Nothing ran, so nothing is kept: the rerun after carrying the wheels may use the
    same folder."""
    blocked = tmp_path / "blocked"
    (blocked / "pycocotools").mkdir(parents=True)
    (blocked / "pycocotools" / "__init__.py").write_text("raise ImportError('not carried')\n")
    out = tmp_path / "out"
    result = run_driver(["check", str(out), "--device", "cpu"], tmp_path, str(blocked),
                        timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pycocotools, pytest-html is missing" in result.stderr and "wheels" in result.stderr
    assert not out.exists()


def test_wheels_never_replace_a_folder_holding_other_files(tmp_path):
    """The wheels' folder is replaced whole: one with other files (a git-ignored reports
    folder, say) is refused before any download."""
    folder = os.path.join(ROOT, "reports", f"wheels-test-{os.getpid()}")
    os.makedirs(folder)
    try:
        with open(os.path.join(folder, "report.md"), "w") as f:
            f.write("keep")
        result = run_driver(["wheels"], tmp_path, wheels=folder, timeout=60)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "holds more than wheels (report.md)" in result.stderr
        assert os.listdir(folder) == ["report.md"]
    finally:
        shutil.rmtree(folder)


@pytest.mark.skipif(cuda_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_on_a_machine_without_a_gpu_stops_before_any_step(tmp_path, no_jittor):
    result = run_driver(["check", str(tmp_path / "out"), "--device", "cuda"], tmp_path,
                        no_jittor, timeout=60)
    assert result.returncode == 2 and "no CUDA GPU" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


# In a process of its own: Jittor (imported by the tests' conftest) ends a process whose
# child dies of a signal other than SIGTERM (its SIGCHLD handler).
CAPPED = """
import json, sys
sys.path.insert(0, sys.argv[1])
import gpu
gpu.GRACE = 1
lines = []
print(json.dumps([gpu.run_capped([sys.executable, "-c", sys.argv[2]], 2, lines.append), lines]))
"""


@pytest.mark.parametrize("ignores_sigint", [False, True])
def test_a_step_past_its_cap_gets_sigint_then_sigkill(ignores_sigint):
    """SIGINT at the cap lets pytest write its reports; a step that ignores it is killed
    GRACE seconds later."""
    handler = ("signal.SIG_IGN" if ignores_sigint else
               "lambda *a: (print('reports written'), sys.exit(3))")
    child = (f"import signal, sys, time; signal.signal(signal.SIGINT, {handler}); "
             "print('started', flush=True); time.sleep(120)")
    # a step left running would hold run_capped past this timeout: the test then fails
    result = subprocess.run([sys.executable, "-c", CAPPED, os.path.dirname(DRIVER), child],
                            capture_output=True, text=True, timeout=60)
    (status, _), lines = json.loads(result.stdout)
    assert status == "stopped at its 2 s cap"
    assert lines[0] == "started\n"
    assert ("reports written\n" in lines) is not ignores_sigint


def test_a_failing_step_is_reported_and_the_next_still_runs():
    said = []
    steps = gpu.Steps({"a": 30, "b": 30}, None, said.append)
    steps.run("a", [sys.executable, "-c", "print('== 3 passed, 1 failed in 0.5s =='); exit(4)"])
    steps.run("b", [sys.executable, "-c", "pass"])
    assert steps.rows()[0][:3] == ["a", "failed (exit 4)", "3 passed, 1 failed"]
    assert steps.rows()[1][:3] == ["b", "passed", "-"] and not steps.ok()
    assert "[gpu] === a: failed (exit 4) after 0 s" in said


@pytest.mark.skipif(cuda_stack_here() is not None, reason=str(cuda_stack_here()))
@pytest.mark.ci  # the whole GPU check on a CPU
def test_jittor_check_dry_run_sets_up_jittor_on_copies_and_prints_its_environment(tmp_path):
    """The Jittor check's first step, as the dry run does it: the CUDA home links built, the
    patch applied to copies of this environment's Jittor (the real 1.3.11 files), Jittor's
    environment printed; no build (no driver here), the other steps left out."""
    out = tmp_path / "out"
    result = run_driver(["check", str(out), "--device", "cpu", "--dry-run", "--jittor",
                         "--steps", "jittor_setup"], tmp_path, timeout=120)
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
    assert "| jittor_build | skipped (dry run: no GPU driver) | - | 0 |" in text
    for step in ("perf", "parity"):
        assert f"| {step} | skipped (not in --steps) | - | 0 |" in text
    installed = importlib.util.find_spec("jittor").submodule_search_locations[0]
    assert "gfocal-parity" not in open(os.path.join(installed, "compiler.py")).read()


def test_jittors_packages_stay_out_of_the_pytorch_check(tmp_path, no_jittor):
    """numpy 1.26 (Jittor's) must not shadow the GPU machine's numpy 2 in the PyTorch steps."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl", "jittor-1.3.11.0.tar.gz"):
        (wheels / name).write_bytes(b"")
    result = run_driver(["check", str(tmp_path / "out"), "--device", "cpu", "--steps", ""],
                        tmp_path, no_jittor, timeout=120, wheels=wheels)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Jittor's packages in" in result.stdout and "are left out here" in result.stdout
    assert "installing" not in result.stdout
    for step in ("perf", "parity", "train"):
        assert f"| {step} | skipped (not in --steps) | - | 0 |" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(cuda_stack_here() is not None, reason=str(cuda_stack_here()))
def test_jittor_check_dry_run_runs_every_step_on_the_cpu(tmp_path):
    """The whole Jittor dry run (about a minute here: two pytest sessions with both
    frameworks): set-up on copies, the paired inference case, a Jittor parity case."""
    out = tmp_path / "out"
    result = run_driver(["check", str(out), "--device", "cpu", "--dry-run", "--jittor"],
                        tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = (out / "summary.md").read_text()
    for step in ("jittor_setup", "perf", "parity"):
        assert f"| {step} | passed |" in text
    assert "jittor against the PyTorch port on the CPU" in text
    records = json.loads((out / "parity_verdict.json").read_text())
    assert {r["subject"] for r in records} == {"jittor"} and all(r["ok"] for r in records)


def test_wheel_pins_are_the_versions_tested_here():
    """The wheels carried to the GPU machine are the versions this suite runs with."""
    pins = dict(line.split("==") for line in gpu.pins(with_jittor=True))
    assert set(pins) == {"pycocotools", "pytest-html", "pytest-metadata", "numpy", "jittor"}
    for name, pinned in pins.items():  # Jittor's check runs numpy 1.26 (jittor's 1.3.11.0)
        installed = importlib.metadata.version(name)
        assert installed == pinned or installed.startswith(pinned + "."), name


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
    text = gpu.check_summary(str(tmp_path), "cuda", [["perf", "passed", "4 passed", 95]])
    assert "| inference | fp32 | 2 | 45.0 | 50.0 | 25.0 | 40.0 | - | - |" in text
    assert "| train_step | TF32 | 8 | 360.0 | 400.0 | 50.0 | - | 20480 | 24000 |" in text
    assert "jittor" not in text.split("## PyTorch port")[1].split("## Parity")[0]
    assert "- gpu: NVIDIA H200" in text and "| perf | passed | 4 passed | 95 |" in text
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
    text = gpu.check_summary(str(tmp_path), "cuda", [["jittor_build", "passed", "-", 80]],
                             jittor=True)
    assert text.startswith("# GPU check (Jittor)")
    assert "| inference | fp32 | 1 | 72.0 | 80.0 | 80.0 | 12.5 | - | - |" in text
    assert "| inference | 1 | 2 | 55.0 | 85.0 | 1.55 | 1.60 |" in text
    for fact in ("- use_tensorcore: 0", "- cuDNN: on", "- TF32: off", "- NVIDIA_TF32_OVERRIDE: 0"):
        assert fact in text
    assert "## Short training" not in text and "## PyTorch port" not in text


# ------------------------------------------------ the GPU machine's software on this CPU
def skip_without_python_312(result):
    if result.returncode == 2 and "CPython 3.12" in result.stderr:
        pytest.skip("no Python 3.12 on this machine: " + result.stderr.strip())


def test_image_env_path_is_under_the_shared_cache_and_builds_nothing(tmp_path):
    result = run_driver(["image", "--env-path"], tmp_path, GFOCAL_GPU_IMAGE_ENV="")
    skip_without_python_312(result)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    assert os.path.dirname(path) == str(tmp_path / "cache" / "gfocal-parity")
    name = os.path.basename(path)
    assert name.startswith("gpu-image-env-") and len(name) == len("gpu-image-env-") + 12
    assert not (tmp_path / "cache").exists()


def test_image_never_deletes_a_folder_it_did_not_build(tmp_path):
    foreign = tmp_path / "somebodys-env"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep")
    result = run_driver(["image", "--out", str(tmp_path / "out"), "--rebuild"], tmp_path,
                        GFOCAL_GPU_IMAGE_ENV=str(foreign))
    skip_without_python_312(result)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "is not this driver's environment" in result.stderr
    assert os.listdir(foreign) == ["data.txt"] and not (tmp_path / "out").exists()
