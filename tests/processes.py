"""The child processes of this process (for the tests that no worker is left behind)."""
import multiprocessing
import os


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
