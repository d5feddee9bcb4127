"""scripts/setup.sh: one shared frameworks environment, each checkout running its own code."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "setup.sh")
# what setup.sh and the launchers need of a checkout (the rest is not read by this test)
CHECKOUT_PARTS = ("pyproject.toml", "scripts", "gfocal", "weights_converter")
PROBE = ("import gfocal, gfocal.cli, jittor, sys; "
         "print(gfocal.__file__); print(sys.executable); print(jittor.compiler.cache_path); "
         "print(getattr(gfocal, 'CHECKOUT_MARK', None))")


def clean_env():
    """This process's environment without PYTHONPATH: a launcher must set it itself."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def env_path(checkout):
    return subprocess.run(["bash", os.path.join(checkout, "scripts", "setup.sh"), "--env-path"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def shared_env():
    env = env_path(ROOT)
    if os.path.realpath(os.path.dirname(os.path.dirname(sys.executable))) != \
            os.path.realpath(env):
        pytest.skip(f"these tests run in set-up's environment {env} (make test), "
                    f"not {sys.executable}")
    return env


@pytest.fixture(scope="module")
def other_checkout(shared_env, tmp_path_factory):
    """A second checkout of this tree, set up by its own setup.sh, with a marker in its code."""
    other = tmp_path_factory.mktemp("checkouts") / "other"
    other.mkdir()
    for part in CHECKOUT_PARTS:
        src = os.path.join(ROOT, part)
        if os.path.isdir(src):
            shutil.copytree(src, other / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, other / part)
    with open(other / "gfocal" / "__init__.py", "a") as f:
        f.write("\nCHECKOUT_MARK = 'other'\n")
    with open(other / "gfocal" / "cli.py", "a") as f:
        f.write("\n\ndef main(argv=None):\n    print('the other checkout')\n    return 0\n")
    env = clean_env()
    setup = subprocess.run(["bash", str(other / "scripts" / "setup.sh")], capture_output=True,
                           text=True, env=env, timeout=900)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    return other, setup.stdout


def probe(checkout):
    env = clean_env()
    run = subprocess.run([os.path.join(checkout, ".venv", "bin", "python"), "-c", PROBE],
                         capture_output=True, text=True, env=env, timeout=600, cwd="/")
    assert run.returncode == 0, run.stderr
    return run.stdout.split("\n")[:4]


@pytest.mark.ci  # a second checkout's set-up (the fixture: about 5 s)
def test_second_checkout_reuses_the_environment(shared_env, other_checkout):
    other, setup_log = other_checkout
    assert env_path(str(other)) == shared_env
    assert "installing the frameworks" not in setup_log, setup_log
    assert "frameworks already installed" in setup_log


@pytest.mark.ci
def test_each_checkout_runs_its_own_code_on_the_same_kernels(shared_env, other_checkout):
    other, _ = other_checkout
    mine, theirs = probe(ROOT), probe(str(other))
    assert mine[0] == os.path.join(ROOT, "gfocal", "__init__.py") and mine[3] == "None"
    assert theirs[0] == os.path.join(str(other), "gfocal", "__init__.py")
    assert theirs[3] == "other"
    # one interpreter path and one Jittor cache folder: compiled kernels are shared
    assert mine[1] == theirs[1] == os.path.join(shared_env, "bin", "python")
    assert mine[2] == theirs[2]


def test_console_launchers_run_their_checkouts_code(other_checkout):
    other, _ = other_checkout
    env = clean_env()
    theirs = subprocess.run([str(other / ".venv" / "bin" / "gfocal"), "--help"],
                            capture_output=True, text=True, env=env, timeout=300, cwd="/")
    mine = subprocess.run([os.path.join(ROOT, ".venv", "bin", "gfocal"), "--help"],
                          capture_output=True, text=True, env=env, timeout=300, cwd="/")
    assert theirs.returncode == 0 and theirs.stdout.strip() == "the other checkout"
    assert mine.returncode == 0 and mine.stdout.startswith("usage: gfocal")


def test_env_path_follows_gfocal_venv(tmp_path):
    env = dict(os.environ, GFOCAL_VENV=str(tmp_path / "mine"))
    out = subprocess.run(["bash", SETUP, "--env-path"], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    assert out == str(tmp_path / "mine") and not (tmp_path / "mine").exists()


def test_unknown_option_is_one_line():
    run = subprocess.run(["bash", SETUP, "--frobnicate"], capture_output=True, text=True)
    assert run.returncode != 0 and run.stderr.strip().count("\n") == 0
    assert "--frobnicate" in run.stderr


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="OpenMPI is not installed")
def test_mpirun_and_torchrun_launchers_start_this_checkouts_processes(other_checkout):
    """.venv/bin/mpirun runs (as root too: OpenMPI refuses root unless told) and torchrun
    starts the shared interpreter on this checkout's code."""
    other, _ = other_checkout
    bin_dir = other / ".venv" / "bin"
    code = "import gfocal; print(gfocal.CHECKOUT_MARK)"
    for command in ([str(bin_dir / "mpirun"), "-np", "2", str(bin_dir / "python"), "-c", code],
                    [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", "2",
                     "--no-python", str(bin_dir / "python"), "-c", code]):
        # elsewhere than in a checkout: `python -c` puts the working directory first
        result = subprocess.run(command, capture_output=True, text=True, env=clean_env(),
                                timeout=300, cwd=other.parent, start_new_session=True)
        assert result.returncode == 0, result.stdout + result.stderr
        # two processes share the pipe: their writes may interleave ("otherother\n\n")
        assert result.stdout.count("other") == 2, result.stdout


def test_remove_deletes_the_environment_and_the_launchers(other_checkout, tmp_path):
    """Last in this module: it takes the other checkout's launchers away."""
    other, _ = other_checkout
    fake = tmp_path / "env"
    (fake / "bin").mkdir(parents=True)
    (tmp_path / "keep.txt").write_text("user data")
    env = dict(os.environ, GFOCAL_VENV=str(fake))
    run = subprocess.run(["bash", str(other / "scripts" / "setup.sh"), "--remove"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert not fake.exists() and not (other / ".venv").exists()
    assert (tmp_path / "keep.txt").read_text() == "user data"
    assert f"removed {fake}" in run.stdout
