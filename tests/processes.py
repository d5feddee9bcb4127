"""The child processes of this process (for the tests that no worker is left behind), and a
child pytest of the parity suite."""
import multiprocessing
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_processes():
    """Pids of this process's children, ended ones not yet reaped included (a /proc scan),
    except multiprocessing's resource tracker: one per interpreter, meant to outlive pools."""
    multiprocessing.active_children()  # reaps multiprocessing children that have ended
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read()
        except OSError:  # ended while we looked
            continue
        if parent == os.getpid() and b"resource_tracker" not in command:
            found.add(int(pid))
    return found


def parity_run(*args, timeout=600, pythonpath=()):
    """pytest in a child process at the checkout's root, without the default marker filter,
    with `pythonpath` after the checkout on its path: (exit code, its output: stdout then
    stderr)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, *map(str, pythonpath)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "-o", "addopts=", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr
