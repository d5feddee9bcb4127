"""Per-iteration JSON-lines log and console line, the same schema for both ports."""
import json
import math
import os

LOSS_KEYS = ("loss", "loss_cls", "loss_bbox", "loss_dfl")


class NonFiniteLoss(RuntimeError):
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
