#!/usr/bin/env python3
"""The GPU tooling, one driver: the wheels a borrowed GPU machine lacks, the check it runs
there, and that machine's software copied onto this CPU for when none is lent.

    python3 scripts/gpu.py wheels [--with-jittor] [--list]      here: into .whl/ (git-ignored)
    python3 scripts/gpu.py check OUT_DIR [--device cuda|cuda:N|cpu] [--dry-run] [--jittor]
                                         [--steps a,b] [--cap STEP=SECONDS ...]   there
    python3 scripts/gpu.py image [--out DIR] [--steps a,b] [--cap STEP=SECONDS ...]
                                 [--rebuild] [--env-path]                         here

check (run it with the interpreter that holds torch; no network) installs the carried
wheels with no index, runs the steps of CAPS["check"] (perf, tuned, parity, train) or, with
--jittor, of CAPS["jittor"] (Jittor's CUDA set-up and build, then its perf and parity), and
writes OUT_DIR/check.log, the reports, steps.json and summary.md, whose tables it prints.
--dry-run: every step on a tiny case (the default suite runs it with --device cpu; with
--jittor it patches copies of Jittor's files and builds nothing). image builds CPython 3.12
with PINS once into ~/.cache/gfocal-parity/gpu-image-env-<hash>/ (~3 GB from PyPI), then runs
the steps of CAPS["image"] there with no package index. What each step runs: docs/GPU.md.

Each step runs in a process group of its own: SIGINT at its cap (pytest still writes its
reports), SIGKILL GRACE seconds later; a step that fails is reported and the others still
run. Exit status: 0 every step passed, 1 one did not, 2 bad input (one line, before any work).
Environment: GFOCAL_WHEELS (the wheels' folder), GFOCAL_NVCC (Jittor's nvcc),
GFOCAL_JITTOR_CUDNN=off (Jittor's own convolution kernels), PYTHON312 (image's base
interpreter), GFOCAL_GPU_IMAGE_ENV (image's environment).
"""
import argparse
import datetime
import fcntl
import glob
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# The versions this machine's environment uses (pyproject allows ranges); each builds for 3.12.
WHEELS = ["pycocotools==2.0.11", "pytest-html==4.2.0", "pytest-metadata==3.1.1"]
JITTOR_WHEELS = ["numpy==1.26.4"]
JITTOR_SOURCE = ["jittor==1.3.11"]  # published as a source package only
CARRY_LIMIT_MB = 64  # what the device tool carries at most
TARGET = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
          "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
          "--platform", "manylinux2014_x86_64"]
# What the GPU machine holds (the device tool's docs, 2026-11: Python 3.12.3, torch 2.11.0,
# torchvision 0.26.0, numpy 2.5.2; the others' versions there unread: the ones tested here).
PINS = ["torch==2.11.0", "torchvision==0.26.0", "numpy==2.5.2",
        "opencv-python-headless==5.1.0.95", "matplotlib==3.11.2", "tqdm==4.70.1",
        "pytest==9.2.0", "pytest-benchmark==5.3.1", "hypothesis==6.170.17"]
RECIPE = 1  # bump when the way the image environment is built changes

# Each mode's steps and their caps in seconds: the PyTorch check's add up to 11 minutes, one
# more than a device command may run (where each may need its cap, run --steps tuned apart).
CAPS = {"check": {"perf": 240, "tuned": 180, "parity": 150, "train": 120},
        "jittor": {"jittor_setup": 60, "jittor_build": 150, "perf": 180, "parity": 120},
        "image": {"dry_run": 900, "parity": 1200, "perf": 1200, "perf_timed": 900}}
BUILD_CAP = 3600  # the image environment's build, and the wait for another build's lock
GRACE = 20
TRAIN_ITERS = 200
COUNT_LINE = re.compile(r"^=*\s*(\d+ (?:passed|failed|errors?|skipped|deselected)[^=]*?)"
                        r" in [\d.]+s")


class BadInput(Exception):
    """One line on stderr, exit 2."""


class Failure(Exception):
    """The work could not be done: one line on stderr, exit 1."""


# ---- running steps under caps ------------------------------------------------------------
def run_capped(cmd, cap, sink, env=None):
    """cmd in its own process group, each output line to sink; SIGINT to the group at `cap`
    seconds, SIGKILL GRACE seconds later. Returns (status, seconds)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            stderr=subprocess.STDOUT, errors="replace", start_new_session=True)
    reader = threading.Thread(target=lambda: [sink(line) for line in proc.stdout], daemon=True)
    reader.start()
    stopped = False
    try:
        proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        stopped = True
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finally:
        if proc.poll() is None:  # the driver itself interrupted: take the step with it
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=GRACE)
    seconds = round(time.monotonic() - start)
    if stopped:
        return f"stopped at its {cap} s cap", seconds
    return ("passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"), seconds


class Steps:
    """A mode's steps in order: each run under its cap, or recorded as not run, with its
    status, seconds and pytest's count line ("12 passed, 3 skipped")."""

    def __init__(self, caps, only, say):
        self.caps, self.only, self.say = caps, only, say
        self.status, self.seconds, self.tests = {}, {}, {}

    def record(self, name, status):
        self.status[name], self.seconds[name] = status, 0
        self.say(f"[gpu] === {name}: {status}")

    def run(self, name, cmd, env=None, sink=None):
        if self.only is not None and name not in self.only:
            return self.record(name, "skipped (not in --steps)")
        cap = self.caps[name]
        self.say(f"[gpu] === {name} (cap {cap} s): {shlex.join(cmd).replace(chr(10), ' ')}")
        sink = sink or self.say
        count = []

        def watch(line):
            found = COUNT_LINE.match(line.strip())
            if found:
                count[:] = [found.group(1)]
            sink(line.rstrip("\n"))

        self.status[name], self.seconds[name] = run_capped(cmd, cap, watch, env)
        if count:
            self.tests[name] = count[0]
        self.say(f"[gpu] === {name}: {self.status[name]} after {self.seconds[name]} s")

    def passed(self, name):
        return self.status.get(name) == "passed"

    def ok(self):
        return all(s == "passed" or s.startswith("skipped") for s in self.status.values())

    def rows(self):
        return [[n, self.status[n], self.tests.get(n, "-"), self.seconds[n]]
                for n in self.caps if n in self.status]


def parse_caps(mode, items):
    caps = dict(CAPS[mode])
    for item in items:
        name, _, value = item.partition("=")
        if name not in caps:
            raise BadInput(f"--cap: unknown step '{name}' (known: {','.join(caps)})")
        if not re.fullmatch(r"[1-9][0-9]*", value):
            raise BadInput(f"--cap {name}: a cap must be a whole number of seconds, got '{value}'")
        caps[name] = int(value)
    return caps


def parse_steps(mode, text):
    if text is None:
        return None
    only = [s for s in text.split(",") if s]
    for name in only:
        if name not in CAPS[mode]:
            raise BadInput(f"--steps: unknown step '{name}' (known: {','.join(CAPS[mode])})")
    return set(only)


def empty_output_dir(path):
    """path, absolute, when it is new or an empty folder: a run never writes over files an
    earlier one left (a finished check's, or a killed one's)."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"{path} is not a folder")
    if os.path.isdir(path) and os.listdir(path):
        held = " (it already holds a check)" if os.path.exists(path + "/summary.md") else ""
        raise BadInput(f"{path} is not empty{held}: give a new or empty folder")
    return path


def write_text(path, text):
    """One rename: a signal or a full disk never leaves a half-written summary."""
    from gfocal.atomic import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


# ---- wheels --------------------------------------------------------------------------------
def wheels_dir():
    return os.environ.get("GFOCAL_WHEELS") or os.path.join(ROOT, ".whl")


def pins(with_jittor=False):
    return WHEELS + (JITTOR_WHEELS + JITTOR_SOURCE if with_jittor else [])


def download_wheels(dest, with_jittor=False, timeout=300):
    """The pins for Python 3.12 x86-64 into a fresh folder that then replaces dest: two
    versions of one package would stop the install there, and a failed download leaves the
    old folder as it was."""
    probe = os.path.join(dest, "x.whl")
    if subprocess.run(["git", "-C", ROOT, "check-ignore", "-q", probe],
                      stderr=subprocess.DEVNULL).returncode != 0:
        raise BadInput(f"{dest} is not a git-ignored folder of this checkout: the wheels "
                       "must not be committed")
    others = [f for f in (os.listdir(dest) if os.path.isdir(dest) else [])
              if not f.endswith((".whl", ".tar.gz"))]
    if others or (os.path.exists(dest) and not os.path.isdir(dest)):
        raise BadInput(f"{dest} holds more than wheels ({', '.join(others) or 'a file'}): "
                       "name a folder of wheels only, it is replaced")
    parent = os.path.dirname(os.path.abspath(dest))
    fresh = tempfile.mkdtemp(prefix=os.path.basename(dest.rstrip("/")) + ".new.", dir=parent)
    try:
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", fresh]
        downloads = [(TARGET, WHEELS + (JITTOR_WHEELS if with_jittor else []))]
        if with_jittor:
            downloads.append((["--no-binary=:all:"], JITTOR_SOURCE))
        for how, what in downloads:
            if subprocess.run(pip + how + what, timeout=timeout).returncode != 0:
                raise Failure(f"pip could not download {' '.join(what)} for Python 3.12 x86-64")
        size_mb = sum(os.path.getsize(os.path.join(fresh, f)) for f in os.listdir(fresh)) >> 20
        if size_mb > CARRY_LIMIT_MB:
            raise Failure(f"the wheels take {size_mb} MiB, over the {CARRY_LIMIT_MB} MiB "
                          "the device tool carries")
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(fresh, dest)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    print(f"[gpu] {dest} ({size_mb} MiB):")
    print("\n".join(sorted(os.listdir(dest))))


def cmd_wheels(args):
    if args.list:
        print("\n".join(pins(args.with_jittor)))
        return 0
    download_wheels(wheels_dir(), args.with_jittor)
    return 0


# ---- the check on the GPU machine ------------------------------------------------------------
class Tee:
    """What the check prints, also appended to OUT/check.log."""

    def __init__(self, path):
        self.file = open(path, "a")

    def __call__(self, text):
        line = text + "\n"
        sys.stdout.write(line)
        sys.stdout.flush()
        self.file.write(line)
        self.file.flush()


def like_gpu_machine():
    """Is this interpreter the GPU machine's kind (CPython 3.12, x86-64 Linux)? Then a dry run
    installs the wheels as the real check does; elsewhere they would not import."""
    return (sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 12)
            and sys.platform == "linux" and platform.machine() == "x86_64")


def install_wheels(say, dry, jittor, site, jtsite):
    """The wheels into site, Jittor's (its source package, numpy 1.26) into jtsite: numpy 1.26
    must not shadow numpy 2 in the PyTorch steps."""
    folder = wheels_dir()
    found = sorted(glob.glob(os.path.join(folder, "*.whl")))
    jt_wheels = [w for w in found if os.path.basename(w).startswith("numpy-")]
    wheels = [w for w in found if w not in jt_wheels]
    jt_source = sorted(glob.glob(os.path.join(folder, "jittor-*.tar.gz")))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
           "--no-compile", "--no-cache-dir"]

    def pip_or_stop(extra, what, target):
        if subprocess.run(pip + ["--target", target] + extra).returncode != 0:
            raise BadInput(f"pip would not install {what} from {folder}")

    if wheels and dry and not like_gpu_machine():
        say(f"[gpu] dry run: checking {len(wheels)} wheels from {folder} for Python 3.12 x86-64")
        pip_or_stop(["--dry-run"] + TARGET + wheels, "the wheels", site)
    elif wheels:
        say(f"[gpu] installing {len(wheels)} wheels from {folder}")
        pip_or_stop(wheels, "the wheels", site)
    else:
        say(f"[gpu] no wheels in {folder}: using what {sys.executable} already has")
    if jittor and jt_source:
        if dry:
            say(f"[gpu] dry run: building the metadata of {' '.join(jt_source)}")
            pip_or_stop(["--dry-run", "--no-build-isolation"] + jt_source, "Jittor", jtsite)
        else:
            say(f"[gpu] installing {' '.join(map(os.path.basename, jt_wheels + jt_source))}"
                " into a folder of their own")
            pip_or_stop(["--no-build-isolation"] + jt_wheels + jt_source, "Jittor", jtsite)
    elif jittor:
        say(f"[gpu] no Jittor source package in {folder}: using the Jittor "
            f"{sys.executable} already has")
    elif jt_source or jt_wheels:
        say(f"[gpu] Jittor's packages in {folder} are left out here: they are the --jittor check's")


def sourced(env, script):
    """env after `. script` in bash (Jittor's env.sh must be in place before Python starts)."""
    done = subprocess.run(["bash", "-c", '. "$1" && env -0', "_", script], env=env,
                          capture_output=True)
    if done.returncode != 0:
        raise Failure(f"{script} could not be sourced: {done.stderr.decode().strip()[-300:]}")
    out = done.stdout.decode()
    return dict(item.split("=", 1) for item in out.split("\0") if "=" in item)


def jittor_steps(steps, args, out, env, work):
    env["NVIDIA_TF32_OVERRIDE"] = "0"  # full fp32 in cuBLAS and cuDNN, for both ports
    tree = os.path.join(work, "jtcuda")  # "jtcuda" in the name: Jittor then does not warn
    setup = [sys.executable, "scripts/jittor_cuda.py", tree, "--python", sys.executable,
             "--cudnn", os.environ.get("GFOCAL_JITTOR_CUDNN", "on")]
    if os.environ.get("GFOCAL_NVCC"):
        setup += ["--nvcc", os.environ["GFOCAL_NVCC"]]
    if args.dry_run:
        perf = ["-k", "paired and inference and 1", "--benchmark-disable"]  # both ports
        parity = ["-k", "jittor and first_divergence and eval", "--parity-cases", "coco_b1"]
        steps.run("jittor_setup", setup + ["--copy"], env)
        steps.say("[gpu] dry run: Jittor's environment printed, not applied; no CUDA build")
        steps.record("jittor_build", "skipped (dry run: no GPU driver)")
    else:
        perf = ["-k", "jittor or paired", "--benchmark-enable", "--amp", "off,native-fp16"]
        parity = ["-k", "jittor and not eager_jittor"]
        steps.run("jittor_setup", setup, env)
        if steps.passed("jittor_setup"):
            env = sourced(env, os.path.join(tree, "env.sh"))
            steps.run("jittor_build", [sys.executable, "scripts/gpu.py", "jittor-smoke"], env)
        else:
            steps.record("jittor_build", "not run (jittor_setup did not pass)")
    broken = None  # without Jittor's CUDA build, nothing to time or compare
    if not steps.passed("jittor_setup"):
        broken = "not run (jittor_setup did not pass)"
    elif re.match(r"failed|stopped", steps.status["jittor_build"]):
        broken = "not run (jittor_build did not pass)"
    for name, command in (("perf", pytest_perf(args, out, perf)),
                          ("parity", pytest_parity(args, out, parity))):
        if broken:
            steps.record(name, broken)
        else:
            steps.run(name, command, dict(env, GFOCAL_PARITY_VERDICT=verdict_path(out)))


def pytest_cmd(args):
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--device", args.device]


def pytest_perf(args, out, select):
    return pytest_cmd(args) + ["perf_tests/test_benchmarks.py", *select, "--benchmark-json",
                               os.path.join(out, "perf.json"), "--html",
                               os.path.join(out, "perf.html"), "--self-contained-html"]


def pytest_parity(args, out, select):
    return pytest_cmd(args) + ["parity_tests", *select, "--html",
                               os.path.join(out, "parity.html"), "--self-contained-html"]


def verdict_path(out):
    return os.path.join(out, "parity_verdict.json")


def torch_steps(steps, args, out, env):
    if args.dry_run:
        perf = ["-k", "torch and inference and not paired", "--benchmark-disable",
                "--amp", "off,bf16"]
        tuned = ["-k", "torch and inference and not paired and 1", "--benchmark-disable",
                 "--amp", "off"]
        parity = ["-k", "coco_b1 and not r50 and not bottleneck"]
        iters, config = 2, "tests/gpu_check_tiny_config.py"
    else:
        perf = ["-k", "torch and not paired", "--benchmark-enable",
                "--amp", "off,bf16,fp16,native-bf16,native-fp16"]
        tuned = ["-k", "torch and not paired and not tf32 and (train_step or inference)",
                 "--benchmark-enable", "--amp", "off,bf16"]
        parity = []
        iters, config = TRAIN_ITERS, "configs/gfl_r18_mini.py"
    steps.run("perf", pytest_perf(args, out, perf), env)
    steps.run("tuned", pytest_cmd(args) + ["perf_tests/test_benchmarks.py", *tuned, "--tuning",
                                           "tuned", "--benchmark-json",
                                           os.path.join(out, "perf_tuned.json")], env)
    steps.run("parity", pytest_parity(args, out, parity),
              dict(env, GFOCAL_PARITY_VERDICT=verdict_path(out)))
    # train, then test its checkpoint (the 12 COCO statistics also go to train/test.txt)
    train = os.path.join(out, "train")
    steps.run("train", ["bash", "-c", 'set -o pipefail\n'
                        '"$1" -m gfocal train "$2" --framework torch --device "$3" '
                        '--work-dir "$4" --max-iters "$5" &&\n'
                        '"$1" -m gfocal test "$2" "$4/latest.pth" --framework torch '
                        '--device "$3" --out "$4/results.json" | tee "$4/test.txt"',
                        "_", sys.executable, config, args.device, train, str(iters)], env)


def step_environment(args, say, site, jtsite):
    """The steps' environment: the carried wheels installed into site (Jittor's into
    jtsite) and first on PYTHONPATH; BadInput where what the steps import is missing."""
    install_wheels(say, args.dry_run, args.jittor, site, jtsite)
    paths = [site, ROOT] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    if args.jittor:
        paths.insert(0, jtsite)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    need = "import pycocotools, pytest_html" + (
        "\nimport importlib.util as u, sys; sys.exit(u.find_spec('jittor') is None)"
        if args.jittor else "")
    if subprocess.run([sys.executable, "-c", need], env=env,
                      capture_output=True).returncode != 0:
        raise BadInput(f"pycocotools, pytest-html{' or Jittor' if args.jittor else ''} is "
                       f"missing for {sys.executable}: run `scripts/gpu.py wheels"
                       f"{' --with-jittor' if args.jittor else ''}` where PyPI is "
                       f"reachable and carry {wheels_dir()}")
    return env


def cmd_check(args):
    from gfocal.device import DeviceError, resolve_device
    mode = "jittor" if args.jittor else "check"
    caps, only = parse_caps(mode, args.cap), parse_steps(mode, args.steps)
    try:
        resolve_device(args.device)
    except DeviceError as exc:
        raise BadInput(str(exc)) from None
    out = empty_output_dir(args.out_dir)
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {out}: {exc.strerror}") from None
    log = os.path.join(out, "check.log")
    say = Tee(log)
    with tempfile.TemporaryDirectory() as work:
        site = os.path.join(work, "site")
        try:
            env = step_environment(args, say, site, os.path.join(work, "jittor-site"))
        except BadInput:  # nothing ran: the folder is left as it was, for the rerun
            say.file.close()
            os.remove(log)
            if created:
                os.rmdir(out)
            raise
        steps = Steps(caps, only, say)
        if args.jittor:
            jittor_steps(steps, args, out, env, work)
        else:
            torch_steps(steps, args, out, env)
        write_text(os.path.join(out, "steps.json"), json.dumps(steps.rows()))
        sys.path[:0] = [site]  # the summary reads the wheels' packages as the steps did
        text = check_summary(out, args.device, steps.rows(), args.jittor)
    path = os.path.join(out, "summary.md")
    write_text(path, text)
    say(text)
    say(f"summary: {path}")
    return 0 if steps.ok() else 1


# ---- the check's summary ---------------------------------------------------------------------
STEP_COLUMNS = ["step", "status", "tests", "seconds"]
PERF_COLUMNS = ["case", "numerics", "batch", "min ms", "median ms", "per image ms", "FPS",
                "peak alloc MB", "peak reserved MB"]
PAIRED_COLUMNS = ["case", "batch", "pairs", "torch median ms", "jittor median ms",
                  "median pair J/T", "J/T of minima"]


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _ms(seconds):
    return f"{seconds * 1e3:.1f}"


def perf_rows(bench, framework="torch"):
    """One row per timed GPU case of `framework`, in the suite's order."""
    rows = []
    for b in (bench or {}).get("benchmarks", []):
        info, stats = b.get("extra_info", {}), b.get("stats") or {}
        if info.get("framework") != framework or "median" not in stats:
            continue
        batch = int(info.get("batch", 1))
        numerics = "TF32" if info.get("tf32") else "fp32"
        if info.get("precision", "off") != "off":
            numerics = info["precision"]  # convolutions in bf16 / fp16 (gfocal/precision.py)
        if info.get("setting", "default") != "default":  # gfocal/tuning.py
            numerics += f" {info['setting']} (first call {info.get('first_call_s', 0):.1f} s)"
        fps = f"{batch / stats['median']:.1f}" if info.get("case") == "inference" else "-"
        alloc, reserved = info.get("gpu_peak_allocated_mb"), info.get("gpu_peak_reserved_mb")
        rows.append([info.get("case", b.get("name")), numerics, batch, _ms(stats["min"]),
                     _ms(stats["median"]), _ms(stats["median"] / batch), fps,
                     "-" if alloc is None else f"{alloc:.0f}",
                     "-" if reserved is None else f"{reserved:.0f}"])
    return rows


def paired_rows(bench):
    """One row per timed paired case: both ports' medians and the Jittor/PyTorch ratios."""
    from types import SimpleNamespace

    from perf_tests import measure
    rows = []
    for b in (bench or {}).get("benchmarks", []):
        info = b.get("extra_info", {})
        # the perf suite's own rule, on one JSON record at a time: its rows lack case and batch
        for r in measure.paired_rows([SimpleNamespace(group=b.get("group"), extra_info=info)]):
            rows.append([info.get("case", b.get("name")), info.get("batch", "-"), r["pairs"],
                         _ms(r["torch_median"]), _ms(r["jittor_median"]),
                         f"{r['ratio_median']:.2f}", f"{r['ratio_of_mins']:.2f}"])
    return rows


def benchmark_infos(bench, nested):
    infos = [b.get("extra_info", {}) for b in (bench or {}).get("benchmarks", [])]
    return infos + [i.get(nested, {}) for i in infos]


def jittor_lines(bench):
    """Jittor's numerics on the GPU, as its first GPU benchmark recorded them."""
    info = next((i for i in benchmark_infos(bench, "jittor_info")
                 if i.get("framework") == "jittor" and "use_tensorcore" in i), None)
    if info is None:
        return ["- jittor: no GPU benchmark recorded its flags"]
    facts = {"jittor": info.get("version"), "use_cuda": info.get("use_cuda"),
             "use_tensorcore": info.get("use_tensorcore"),
             "cuDNN": "on" if info.get("cudnn") else "off (Jittor's own convolution kernels)",
             "cuda_archs": info.get("cuda_archs"), "TF32": "on" if info.get("tf32") else "off",
             "NVIDIA_TF32_OVERRIDE": info.get("nvidia_tf32_override")}
    return [f"- {k}: {v}" for k, v in facts.items()]


def environment_lines(bench, device):
    info = next((i for i in benchmark_infos(bench, "torch_info") if i.get("gpu")), {})
    facts = {"device": device, "gpu": info.get("gpu", "-"), "torch": info.get("version", "-"),
             "cuda": info.get("cuda", "-"), "cudnn": info.get("cudnn", "-"),
             "cudnn.benchmark": info.get("cudnn_benchmark", "-")}
    return [f"- {k}: {v}" for k, v in facts.items()]


def training_lines(train_dir):
    import statistics
    try:
        with open(os.path.join(train_dir, "log_torch.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return ["no training log (the step failed before its first iteration)"]
    if not records:
        return ["the training log is empty"]
    later = records[1:] or records  # the first iteration is the warm-up
    last = records[-1]
    lines = [f"- iterations: {last['iter']}, final loss {last['loss']:.4f} "
             f"(cls {last['loss_cls']:.4f}, bbox {last['loss_bbox']:.4f}, "
             f"dfl {last['loss_dfl']:.4f})",
             f"- median time per iteration {_ms(statistics.median(r['time'] for r in later))} "
             f"ms, data wait {_ms(statistics.median(r['data_time'] for r in later))} ms"]
    try:
        with open(os.path.join(train_dir, "test.txt")) as f:
            stats = dict(line.split()[:2] for line in f if line[:2] in ("AP", "AR"))
        lines.append(f"- evaluation: AP {stats.get('AP', '-')}, AP50 {stats.get('AP50', '-')}")
    except (OSError, ValueError):
        lines.append("- evaluation: no statistics (test.txt missing)")
    return lines


def check_summary(out_dir, device, step_rows, jittor=False):
    from gfocal.tables import markdown_table
    from parity_tests.judge import verdict_tables
    from parity_tests.rendering import verdict_text

    def perf_table(rows, columns):
        return (markdown_table(columns, rows) if rows else
                "no timings (benchmarks disabled, or the perf step failed: see check.log)")

    bench = read_json(os.path.join(out_dir, "perf.json"))
    verdict = read_json(verdict_path(out_dir))
    parts = ["# GPU check" + (" (Jittor)" if jittor else ""), "", "## Steps", "",
             markdown_table(STEP_COLUMNS, step_rows),
             "", "## Environment", "", *environment_lines(bench, device)]
    if jittor:
        parts += [*jittor_lines(bench), "",
                  "## Jittor port on the GPU (pytest-benchmark, synchronised)", "",
                  perf_table(perf_rows(bench, "jittor"), PERF_COLUMNS), "",
                  "## Both ports interleaved on the GPU (paired, fp32)", "",
                  perf_table(paired_rows(bench), PAIRED_COLUMNS)]
    else:
        tuned = read_json(os.path.join(out_dir, "perf_tuned.json"))
        parts += ["", "## PyTorch port on the GPU (pytest-benchmark, synchronised)", "",
                  perf_table(perf_rows(bench), PERF_COLUMNS), "",
                  "## PyTorch port on the GPU, tuned setting (gfocal/tuning.py)", "",
                  perf_table(perf_rows(tuned), PERF_COLUMNS)]
    parts += ["", "## Parity on the GPU", ""]
    if verdict:
        parts += ["```", verdict_text(verdict_tables(verdict), titled=True), "```"]
    else:
        parts.append("no parity verdict (the parity step failed: see check.log and parity.html)")
    if not jittor:
        parts += ["", "## Short training on the GPU", "",
                  *training_lines(os.path.join(out_dir, "train"))]
    return "\n".join(parts) + "\n"


# ---- Jittor's CUDA build, proved (the Jittor check's jittor_build step) ----------------------
def cmd_jittor_smoke(_args):
    """Importing Jittor (after TREE/env.sh of scripts/jittor_cuda.py) compiles its core and
    its cuBLAS, cuDNN, cuRAND, cuFFT and cuSPARSE ops with nvcc; one convolution (cuDNN where
    loaded) and one matmul (cuBLAS) then run on the GPU against the CPU."""
    start = time.time()
    import numpy as np

    from gfocal.runtime import configure_frameworks
    configure_frameworks()
    import jittor as jt
    from jittor import compile_extern
    built = time.time() - start
    if not jt.has_cuda:
        raise Failure(f"Jittor {jt.__version__} has no CUDA (has_cuda 0) after {built:.0f} s: "
                      "see the log above")
    flags = jt.flags
    std = [f for f in flags.nvcc_flags.split() if f.startswith("-std=")]
    print(f"[smoke] Jittor {jt.__version__}: core and ops built/loaded in {built:.0f} s; "
          f"cuda_archs {list(flags.cuda_archs)}, nvcc {flags.nvcc_path} {' '.join(std)}, "
          f"cuDNN {'loaded' if compile_extern.cudnn else 'off'}, "
          f"cuBLAS {'loaded' if compile_extern.cublas else 'off'}, "
          f"use_tensorcore {flags.use_tensorcore}")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 40, 56)).astype(np.float32)
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1
    a = rng.standard_normal((64, 96)).astype(np.float32)
    b = rng.standard_normal((96, 48)).astype(np.float32)

    def run():
        conv = jt.nn.conv2d(jt.array(x), jt.array(w), padding=1)
        return conv.numpy(), jt.matmul(jt.array(a), jt.array(b)).numpy()

    with jt.flag_scope(use_cuda=0):
        cpu = run()
    start = time.time()
    with jt.flag_scope(use_cuda=1):
        gpu = run()
        jt.sync_all(True)
    for name, c, g in zip(("conv2d", "matmul"), cpu, gpu):
        err = float(np.abs(g - c).max() / max(np.abs(c).max(), 1e-30))
        print(f"[smoke] {name} on the GPU vs the CPU: max relative error {err:.2e}")
        if not err < 1e-4:  # fp32 both ways (NVIDIA_TF32_OVERRIDE=0 in the check)
            raise Failure(f"{name} on the GPU is off by {err:.2e}")
    print(f"[smoke] first GPU run (kernels compiled) in {time.time() - start:.1f} s")
    return 0


# ---- the GPU machine's software on this CPU ----------------------------------------------------
def is_python_312(python):
    try:
        return subprocess.run([python, "-c", "import sys, venv, ensurepip; sys.exit("
                               "sys.implementation.name != 'cpython' or "
                               "sys.version_info[:2] != (3, 12))"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def base_python():
    """A CPython 3.12 that can make virtual environments: PYTHON312, python3.12, pyenv's."""
    if os.environ.get("PYTHON312"):
        if not is_python_312(os.environ["PYTHON312"]):
            raise BadInput(f"PYTHON312='{os.environ['PYTHON312']}' is not a CPython 3.12 "
                           "with venv")
        return os.environ["PYTHON312"]
    home = os.path.expanduser("~")
    candidates = [shutil.which("python3.12") or "python3.12"]
    candidates += sorted(glob.glob(os.path.join(
        os.environ.get("PYENV_ROOT", os.path.join(home, ".pyenv")), "versions", "3.12*", "bin",
        "python3.12")))
    candidates += ["/usr/local/bin/python3.12", "/usr/bin/python3.12"]
    for python in candidates:
        if is_python_312(python):
            return python
    raise BadInput("no CPython 3.12 found (python3.12, pyenv's 3.12): set "
                   "PYTHON312=/path/to/python3.12")


def image_env_path(base):
    base_id = subprocess.run([base, "-c", "import os, sys; print(os.path.realpath("
                              "sys.executable), sys.version.split()[0])"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    key = hashlib.sha256("\n".join(PINS + [base_id, f"recipe {RECIPE}", ""]).encode())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return (os.environ.get("GFOCAL_GPU_IMAGE_ENV")
            or os.path.join(cache, "gfocal-parity", "gpu-image-env-" + key.hexdigest()[:12]))


def build_image_env(env_dir, base, rebuild):
    """The pinned environment, built when missing, half built or of other pins. A lock with a
    bounded wait: two checkouts building at once take turns; a stamp written last marks a
    complete build. A folder this driver did not build is never deleted."""
    stamp, building = env_dir + "/.gfocal-gpu-image", env_dir + "/.gfocal-gpu-image-building"

    def ours():
        return (not os.path.exists(env_dir) or os.path.exists(stamp)
                or os.path.exists(building) or not os.listdir(env_dir))

    if not ours():
        raise BadInput(f"{env_dir} exists and is not this driver's environment: name another "
                       "(GFOCAL_GPU_IMAGE_ENV)")
    os.makedirs(os.path.dirname(env_dir), exist_ok=True)
    with open(env_dir + ".lock", "w") as lock:
        deadline = time.monotonic() + BUILD_CAP
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Failure(f"another build of {env_dir} held its lock for {BUILD_CAP} s")
                time.sleep(5)
        python = os.path.join(env_dir, "bin", "python")
        try:
            with open(stamp) as f:
                current = f.read() == "\n".join(PINS) + "\n"
        except OSError:
            current = False
        if not rebuild and current and os.access(python, os.X_OK):
            print(f"[gpu] reusing {env_dir}", flush=True)
            return python
        shutil.rmtree(env_dir, ignore_errors=True)  # ours: other pins, or half built
        print(f"[gpu] building the GPU machine's software into {env_dir} from {base} "
              f"({' '.join(PINS)}; once: ~3 GB from PyPI)", flush=True)
        if subprocess.run([base, "-m", "venv", env_dir], timeout=120).returncode != 0:
            raise Failure(f"{base} could not create a virtual environment at {env_dir}")
        open(building, "w").close()
        log = os.path.join(env_dir, "build.log")
        with open(log, "w") as f:
            status, _ = run_capped(["nice", python, "-m", "pip", "install", "--quiet",
                                    "--disable-pip-version-check", "--no-cache-dir", *PINS],
                                   BUILD_CAP, f.write)
        if status != "passed":
            raise Failure(f"pip could not install the pins into {env_dir} (PyPI unreachable? "
                          f"log: {log})")
        with open(stamp, "w") as f:
            f.write("\n".join(PINS) + "\n")
        os.remove(building)
        return python


def carried_wheels(folder):
    """(wheel files, pins without one) of the check's wheels (not Jittor's numpy 1.26)."""
    carried, missing = [], []
    for pin in WHEELS:
        name, version = pin.split("==")
        found = glob.glob(os.path.join(folder, f"{name.replace('-', '_')}-{version}-*.whl"))
        (carried.append(found[0]) if found else missing.append(pin))
    return carried, missing


def cmd_image(args):
    caps, only = parse_caps("image", args.cap), parse_steps("image", args.steps)
    out = args.out or os.path.join(
        ROOT, "reports", "gpu-image-check",
        datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    out = empty_output_dir(out)
    base = base_python()
    env_dir = image_env_path(base)
    if args.env_path:
        print(env_dir)
        return 0
    python = build_image_env(env_dir, base, args.rebuild)
    folder = wheels_dir()
    carried, missing = carried_wheels(folder)
    if missing:
        print(f"[gpu] making the wheels ({' '.join(missing)} missing in {folder})", flush=True)
        download_wheels(folder)
        carried, missing = carried_wheels(folder)
        if missing:
            raise Failure(f"no wheel for {' '.join(missing)} in {folder}")
    # As on the GPU machine: no package index, no pip configuration of this machine.
    env = {k: v for k, v in os.environ.items() if k not in (
        "PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PYTHONPATH")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONUNBUFFERED="1")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        site = os.path.join(work, "site")
        with open(os.path.join(out, "wheels.log"), "w") as log:
            if subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index",
                               "--no-deps", "--no-compile", "--no-cache-dir", "--target", site,
                               *carried], env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=300).returncode != 0:
                raise Failure(f"pip could not install the wheels of {folder} without an index "
                              f"(see {out}/wheels.log)")
        frozen = subprocess.run([python, "-m", "pip", "list", "--format=freeze"], env=env,
                                capture_output=True, text=True).stdout.splitlines()
        versions = ["base interpreter: " + base] + [
            line for line in frozen if not line.lower().startswith("nvidia-")] + [
            f"carried (from {folder}, installed with --no-index):"] + [
            os.path.basename(w) for w in carried]
        with open(os.path.join(out, "versions.txt"), "w") as f:
            f.write("\n".join(versions) + "\n")
        steps = Steps(caps, only, lambda text: print(text, flush=True))
        in_image = dict(env, PYTHONPATH=os.pathsep.join([site, ROOT]), nvcc_path="")
        pytest = ["nice", python, "-m", "pytest", "-p", "no:cacheprovider"]
        commands = {
            "dry_run": (["nice", python, "scripts/gpu.py", "check", os.path.join(
                out, "gpu_check"), "--dry-run", "--device", "cpu"], env),
            "parity": (pytest + ["parity_tests", "--device", "cpu"], in_image),
            "perf": (pytest + ["perf_tests", "--benchmark-disable"], in_image),
            "perf_timed": (pytest + ["perf_tests/test_benchmarks.py", "-k", "torch and not "
                                     "paired", "--device", "cpu", "--benchmark-enable",
                                     "--benchmark-json", os.path.join(out, "perf.json")],
                           dict(in_image, GFOCAL_PERF_ROUNDS="1"))}
        for name, (cmd, step_env) in commands.items():
            with open(os.path.join(out, name + ".log"), "w") as log:
                steps.run(name, cmd, step_env, sink=lambda line, log=log: log.write(line + "\n"))
    check_steps = read_json(os.path.join(out, "gpu_check", "steps.json"))
    if check_steps:  # the dry run's own steps, with their test counts
        steps.tests["dry_run"] = "; ".join(f"{n}: {t if t != '-' else s}"
                                           for n, s, t, _ in check_steps)
    from_dir = "\n".join(f"log: {out}/{n}.log" for n in steps.status
                         if os.path.exists(f"{out}/{n}.log"))
    from gfocal.tables import markdown_table
    text = ("# GPU image check (the GPU machine's software on a CPU, no package index)\n\n"
            + markdown_table(STEP_COLUMNS, steps.rows()) + "\n\n## Versions\n\n```\n"
            + "\n".join(versions) + "\n```\n")
    write_text(os.path.join(out, "summary.md"), text)
    print(text + from_dir + f"\nsummary: {out}/summary.md")
    return 0 if steps.ok() else 1


# ---- command line ------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would print its usage too)
        raise BadInput(message)


def parser():
    p = Parser(prog="scripts/gpu.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    w = sub.add_parser("wheels", help="download the wheels the GPU machine lacks into .whl/")
    w.add_argument("--with-jittor", action="store_true")
    w.add_argument("--list", action="store_true", help="print the pins, download nothing")
    c = sub.add_parser("check", help="the check, on the GPU machine")
    c.add_argument("out_dir")
    c.add_argument("--device", default="cuda")
    c.add_argument("--dry-run", action="store_true")
    c.add_argument("--jittor", action="store_true")
    for s in (c, sub.add_parser("image", help="the GPU machine's software on this CPU")):
        s.add_argument("--steps", help="comma-separated: only these steps")
        s.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS")
    image = sub.choices["image"]
    image.add_argument("--out")
    image.add_argument("--rebuild", action="store_true")
    image.add_argument("--env-path", action="store_true",
                       help="print the environment's path, do nothing")
    sub.add_parser("jittor-smoke", help="Jittor's CUDA build, proved (a step of check --jittor)")
    return p


def main(argv=None):
    try:
        args = parser().parse_args(argv)
        handler = {"wheels": cmd_wheels, "check": cmd_check, "image": cmd_image,
                   "jittor-smoke": cmd_jittor_smoke}[args.command]
        return handler(args)
    except BadInput as exc:
        message, status = str(exc), 2
    except Failure as exc:
        message, status = str(exc), 1
    except subprocess.TimeoutExpired as exc:
        message, status = f"{exc.cmd[0]} did not finish in {exc.timeout} s", 1
    except KeyboardInterrupt:
        message, status = "interrupted", 130
    except OSError as exc:  # a file the system refuses (gfocal.atomic's errors name theirs)
        message, status = (f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)), 1
    print(f"scripts/gpu.py: error: {message}", file=sys.stderr)
    return status

if __name__ == "__main__":
    sys.exit(main())
