"""A training work dir: owned by one run at a time, and never taken over by a new run.

The owner holds `.gfocal.lock` in the dir: an flock (released by the kernel whatever ends the
process) on a file naming the holder's pid, host and start time. A second run finds the flock
held, or the file naming a live process of this host, and stops with one line naming them; a
file left by a run that has ended (its pid gone, same host) is taken over with a note. A host
cannot see another host's processes: a lock naming another host is stale only when a person
says so, by removing it.
"""
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import sys
import time

from gfocal.atomic import OutputError, check_output_dir, output_error

LOCK_NAME = ".gfocal.lock"
# What a run of ours leaves in its work dir: its log and checkpoints (either port's format)
RUN_FILE = re.compile(r"^(log_\w+\.jsonl|(latest|epoch_\d+)\.(pth|pkl))$")
PREVIOUS = "previous"  # where --overwrite keeps an earlier run's files


class WorkDirError(OutputError):
    """A work dir that this run may not use (another run owns it, or holds a run)."""


def _process_alive(pid):
    """True if process `pid` of this host runs (a zombie, ended but not yet reaped, does
    not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holder(fd):
    """The holder recorded in the lock file open as `fd`: {'pid', 'host', 'started'}, or
    None when the file is empty or unreadable (a holder that has not written it yet)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode("utf-8"))
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) \
            else None
    except (ValueError, UnicodeDecodeError):
        return None


def _describe(holder):
    if holder is None:
        return "a run that has not recorded itself yet"
    return (f"pid {holder['pid']} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _busy(work_dir, holder):
    return WorkDirError(errno.EBUSY, f"{work_dir} is in use by another run ({_describe(holder)}): "
                        "wait for it to end or choose another --work-dir")


def _open_lock(work_dir):
    """The lock file's descriptor, flocked by this process, or WorkDirError if another
    process holds it."""
    path = os.path.join(work_dir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _busy(work_dir, holder) from None
        try:  # the holder we waited on may have removed the file before we locked it
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _take(work_dir, fd):
    """Record this process in the flocked lock file `fd`, after checking that an earlier
    holder named there has ended (noted), or raise WorkDirError."""
    previous, host = _holder(fd), socket.gethostname()
    if previous is not None:
        if previous.get("host") != host or _process_alive(previous["pid"]):
            raise _busy(work_dir, previous)
        print(f"gfocal: note: {work_dir}: the run that held it ({_describe(previous)}) has "
              "ended; its lock is taken over", file=sys.stderr)
    record = {"pid": os.getpid(), "host": host,
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        os.fsync(fd)
    except OSError as exc:  # a full disk, before any work
        raise output_error(os.path.join(work_dir, LOCK_NAME), exc) from None


def remove_orphans(work_dir):
    """Remove the temporary files of atomic writes (`.<name>.<random>.tmp`, atomic.py) that a
    killed writer left; call it holding the lock, so that no live writer owns them.
    Returns their names."""
    orphans = [name for name in os.listdir(work_dir)
               if name.startswith(".") and name.endswith(".tmp")
               and os.path.isfile(os.path.join(work_dir, name))]
    for name in orphans:
        os.unlink(os.path.join(work_dir, name))
    return orphans


@contextlib.contextmanager
def own_work_dir(work_dir):
    """Hold `work_dir` (created if missing) for this run: WorkDirError (one line naming the
    holder) if another run holds it. Orphaned temporary files are removed once it is held.
    On leaving, however that happens, the lock is released and a dir this call created is
    removed again if nothing was written in it."""
    work_dir = check_output_dir(work_dir)
    created = not os.path.isdir(work_dir)
    try:
        os.makedirs(work_dir, exist_ok=True)
    except OSError as exc:
        raise output_error(work_dir, exc, "cannot create") from None
    lock = os.path.join(work_dir, LOCK_NAME)
    try:
        fd = _open_lock(work_dir)
        try:
            _take(work_dir, fd)
        except BaseException:
            os.close(fd)  # the file is the other run's: left as it is
            raise
        try:
            orphans = remove_orphans(work_dir)
            if orphans:
                print(f"gfocal: note: removed {len(orphans)} temporary file(s) that an "
                      f"interrupted write left in {work_dir}", file=sys.stderr)
            yield work_dir
        finally:
            os.unlink(lock)  # before unlocking: a waiter then sees a new file (_open_lock)
            os.close(fd)
    finally:
        if created and not os.listdir(work_dir):
            os.rmdir(work_dir)


def run_files(work_dir):
    """The names of the files of a run of ours in `work_dir` (logs, checkpoints)."""
    if not os.path.isdir(work_dir):
        return []
    return sorted(name for name in os.listdir(work_dir) if RUN_FILE.match(name))


def move_aside(directory, names):
    """Move `names` of `directory` into directory/previous/<time>/ (a new folder: nothing
    is overwritten or deleted); returns that folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = os.path.join(directory, PREVIOUS, stamp)
    n = 1
    while os.path.exists(target):
        n += 1
        target = os.path.join(directory, PREVIOUS, f"{stamp}-{n}")
    os.makedirs(target)
    for name in names:
        os.rename(os.path.join(directory, name), os.path.join(target, name))
    return target


def claim_for_new_run(work_dir, resume=False, overwrite=False):
    """Make `work_dir` ready for a run: a dir holding an earlier run is refused (WorkDirError)
    unless the run resumes, or `overwrite` asks to start again, which moves the earlier
    run's files to work_dir/previous/<time>/ (said on stderr)."""
    found = run_files(work_dir)
    if not found or resume:
        return None
    if not overwrite:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise WorkDirError(errno.EEXIST, f"{work_dir} holds a run ({shown}): pass --resume "
                           "<checkpoint> to continue it, or --overwrite to start a new one "
                           f"(the old files are then kept in {os.path.join(work_dir, PREVIOUS)})")
    target = move_aside(work_dir, found)
    print(f"gfocal: the earlier run's {len(found)} file(s) in {work_dir} were moved to {target}",
          file=sys.stderr)
    return target
