"""Per-iteration JSON-lines log and console line, the same schema for both ports."""
import json
import math
import os

import numpy as np

from gfocal.finite import NonFiniteError

LOSS_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_dfl")
REL_EPS = 1e-12  # the floor of |reference| in a relative difference


class NonFiniteLoss(NonFiniteError):
    """Training stopped because a loss became NaN or infinite."""


def check_finite(losses, iteration, framework):
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise NonFiniteLoss(f"[{framework}] non-finite loss at iteration {iteration}: "
                            + ", ".join(f"{k}={v}" for k, v in bad.items()))


class RunLog:
    """Appends one JSON object per iteration to `path` (flushed, so a crash keeps the log)."""

    def __init__(self, path, resume=False):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self._file = open(path, "a" if resume else "w", encoding="utf-8")

    def write(self, record):
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()


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
