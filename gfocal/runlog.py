"""Per-iteration JSON-lines log and console line, the same schema for both ports."""
import json
import math
import os

import numpy as np

from gfocal.atomic import atomic_path, output_error
from gfocal.finite import NonFiniteError

LOSS_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_dfl")
REL_EPS = 1e-12  # the floor of |reference| in a relative difference


class NonFiniteLoss(NonFiniteError):
    """Training stopped because a loss, an output or the weights became NaN or infinite."""


def check_finite(losses):
    """NonFiniteError naming the losses of {name: value} that are NaN or infinite."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteError("non-finite loss: " + ", ".join(f"{k}={v}" for k, v in bad.items()))


def _record_iter(line):
    """The iteration of one log line, or None for a line that is not a record (a line cut
    short by a crash)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("iter") if isinstance(record, dict) else None


def trim_log(path, last_iter):
    """Drop the records after iteration `last_iter` (done again by a run resumed from a
    checkpoint of that iteration) and a last line cut short; the file is replaced
    atomically, every record up to `last_iter` kept."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    kept = [line for line in lines
            if (_record_iter(line) or 0) <= last_iter and line.endswith("\n")]
    if kept != lines:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)


class RunLog:
    """Appends one JSON object per iteration to `path` (flushed, so a crash keeps the log).

    A new run's log must not exist yet (an earlier run's is never overwritten); a resumed
    run (`resume_from`: the checkpoint's iteration) continues the log there, without the
    records of the iterations it does again. A write the file system refuses is an
    OutputError naming the log."""

    def __init__(self, path, resume_from=None):
        self.path = path
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if resume_from is not None and os.path.exists(path):
                trim_log(path, resume_from)
            self._file = open(path, "x" if resume_from is None else "a", encoding="utf-8")
        except OSError as exc:
            raise output_error(path, exc) from None
        self._failed = False

    def write(self, record):
        try:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
        except OSError as exc:
            self._failed = True
            raise output_error(self.path, exc) from None

    def close(self):
        try:
            self._file.close()
        except OSError as exc:
            if not self._failed:  # a failed write has been reported already
                raise output_error(self.path, exc) from None


def console_line(record):
    losses = " ".join(f"{k}={record[k]:.4f}" for k in LOSS_KEYS if k in record)
    return (f"ep {record['epoch']} it {record['iter']} lr {record['lr']:.2e} {losses} "
            f"{record['time']:.2f}s/it")


# ---------------------------------------------------------------- two logs side by side
def paired(torch_log, jittor_log, key="loss"):
    """(iters, torch values, jittor values) on the iterations both logs have."""
    t = {r["iter"]: r[key] for r in torch_log if key in r}
    j = {r["iter"]: r[key] for r in jittor_log if key in r}
    iters = sorted(t.keys() & j.keys())
    return (np.array(iters, dtype=np.int64), np.array([t[i] for i in iters], np.float64),
            np.array([j[i] for i in iters], np.float64))


def relative_difference(reference, other):
    return np.abs(other - reference) / np.maximum(np.abs(reference), REL_EPS)
