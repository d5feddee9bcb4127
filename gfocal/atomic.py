"""Atomic file writes, and output paths checked before the work that fills them.

A crash while writing never leaves a broken file in place; a write that the file system
refuses (no space, no permission, a directory in the way) is an OutputError naming the path,
one line, never a traceback.
"""
import contextlib
import errno
import os
import tempfile


class OutputError(OSError):
    """An output that cannot be written; the message names the path and the reason."""

    def __str__(self):  # the one line a user reads: no "[Errno N]" before it
        return self.strerror or super().__str__()


def _reason(exc):
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def output_error(path, exc, what="cannot write"):
    """The OutputError for `exc` (an OSError) raised while writing `path`."""
    code = getattr(exc, "errno", None)
    return OutputError(code, f"{path}: {what} ({_reason(exc)})")


def _nearest_existing(directory):
    while directory and not os.path.exists(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory or "."


def check_output_dir(path, output=None):
    """Raise OutputError unless `path` is, or can be made, a writable directory (nothing is
    created: the check runs before any work). The message names `output` (the file to be
    written there) when given."""
    path = os.path.abspath(os.fspath(path))
    name = output or path
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(errno.ENOTDIR, f"{name}: {path} is not a directory"
                          if output else f"{path}: not a directory")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise OutputError(errno.ENOTDIR, f"{name}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(errno.EACCES, f"{name}: {existing} is not writable")
    return path


def check_output_file(path):
    """Raise OutputError unless a file can be written at `path` (its directory writable or
    creatable, and `path` itself not a directory). Creates nothing."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise OutputError(errno.EISDIR, f"{path}: is a directory (give a file name)")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise OutputError(errno.EACCES, f"{path}: not writable")
    check_output_dir(os.path.dirname(os.path.abspath(path)), output=path)
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.
    Any failure to create, fill or rename it (a full disk, a read-only place) removes the
    temporary file, leaves `path` as it was and raises OutputError naming `path`."""
    path = os.fspath(path)
    check_output_file(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                                   dir=directory)
        os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint or report is not a secret
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise output_error(path, exc) from None
    except RuntimeError as exc:
        # torch's zip writer, closing after its file's write failed (a full disk), raises
        # its own "unexpected pos" error over that OSError: report the OSError
        if not isinstance(exc.__context__, OSError):
            raise
        raise output_error(path, exc.__context__) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
