"""A tmpfs mounted for one test: a full disk or a read-only file system that refuses a
write for real (we run as root, which ignores permission bits)."""
import contextlib
import subprocess

import pytest


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """Mount a tmpfs with `options` (e.g. "ro,size=64k") on the directory `path` (made if
    missing) for the duration; skips the test, saying why, where mounting is refused."""
    path.mkdir(exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a tmpfs ({options}): {mount.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)
