"""What one port's run produced, and the numbers the comparison report derives from it."""
import dataclasses
import json
import math
from typing import Optional

import numpy as np

from gfocal.ports import FRAMEWORKS  # noqa: F401  (re-exported to the report modules)
from gfocal.runlog import LOSS_KEYS, paired, relative_difference

COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LOG_REQUIRED_KEYS = ("iter", "epoch", "loss")
LOG_NUMBER_KEYS = ("iter", "epoch", "lr", *LOSS_KEYS, "time", "data_time")


class LogFormatError(ValueError):
    """A line of an iteration log is not a valid record."""


@dataclasses.dataclass
class RunData:
    """One port's training/evaluation/benchmark results; any part may be missing."""
    framework: str
    log: list = dataclasses.field(default_factory=list)        # read_log records
    evals: list = dataclasses.field(default_factory=list)      # [{"epoch", "stats"}]
    final_stats: Optional[dict] = None                         # 12 COCO names -> float
    latencies: list = dataclasses.field(default_factory=list)  # seconds per image
    warmup_latencies: list = dataclasses.field(default_factory=list)  # the untimed first ones
    failure: Optional[str] = None
    traceback: Optional[str] = None
    wall_time: Optional[float] = None

    def stats(self):
        """Final COCO stats: explicit ones, else the last evaluation's, else None."""
        if self.final_stats:
            return self.final_stats
        return self.evals[-1]["stats"] if self.evals else None

    def stats_by_epoch(self):
        return {int(e["epoch"]): e["stats"] for e in self.evals}


def _check_record(record, path, lineno):
    where = f"{path}, line {lineno}"
    if not isinstance(record, dict):
        raise LogFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in LOG_REQUIRED_KEYS if k not in record]
    if missing:
        raise LogFormatError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in LOG_NUMBER_KEYS:
        value = record.get(key)
        if key in record and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise LogFormatError(f"{where}: {key}={value!r} is not a number")
    for key in ("iter", "epoch"):
        if record[key] != int(record[key]) or record[key] < 1:
            raise LogFormatError(f"{where}: {key}={record[key]!r} is not a positive integer")
        record[key] = int(record[key])


def read_log(path, allow_partial_last_line=False):
    """Records of a JSON-lines iteration log, checked line by line.

    `allow_partial_last_line` drops an unparsable last line without newline: what a crash
    in the middle of a write leaves behind.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_partial_last_line and lineno == len(lines):
                break
            raise LogFormatError(f"{path}, line {lineno}: not valid JSON ({exc.msg}): "
                                 f"{line[:80]!r}") from None
        _check_record(record, path, lineno)
        records.append(record)
    return records


def values(log, key):
    return np.array([r[key] for r in log if key in r], dtype=np.float64)


def loss_stats(log, key):
    """(mean, final) of one loss over a log; (None, None) when the log lacks it."""
    v = values(log, key)
    return (float(v.mean()), float(v[-1])) if v.size else (None, None)


def per_epoch(log):
    """epoch -> iters, mean loss, train seconds (step + data time summed)."""
    groups = {}
    for r in log:
        groups.setdefault(r["epoch"], []).append(r)
    out = {}
    for e, rs in sorted(groups.items()):
        step = values(rs, "time")
        seconds = float(step.sum() + values(rs, "data_time").sum()) if step.size else None
        out[e] = {"iters": len(rs), "loss": float(values(rs, "loss").mean()), "seconds": seconds}
    return out


def speed_stats(log):
    """Seconds per iteration (step only, and data loading) and per epoch; {} without timings."""
    step = values(log, "time")
    if not step.size:
        return {}
    epochs = [e["seconds"] for e in per_epoch(log).values() if e["seconds"] is not None]
    data = values(log, "data_time")
    return {"iter_first": float(step[0]) if log[0].get("iter") == 1 else None,
            "iter_mean": float(step.mean()), "iter_median": float(np.median(step)),
            "data_mean": float(data.mean()) if data.size else None,
            "epoch_mean": float(np.mean(epochs)), "train_total": float(np.sum(epochs))}


def latency_stats(latencies):
    """Per-image inference latency summary; {} without latencies."""
    lat = np.asarray(latencies, dtype=np.float64)
    if not lat.size:
        return {}
    mean = float(lat.mean())
    return {"images": int(lat.size), "mean": mean, "median": float(np.median(lat)),
            "p95": float(np.percentile(lat, 95)), "fps": 1.0 / mean if mean > 0 else math.inf}


def agreement_summary(torch_log, jittor_log, first_n=20, key="loss"):
    """Per-iteration relative loss difference |j - t| / max(|t|, 1e-12) on common iterations.

    Early iterations (the first `first_n` compared) should agree closely; later ones drift as
    rounding differences compound, so they are summarised apart. NaN propagates on purpose.
    """
    iters, t, j = paired(torch_log, jittor_log, key)
    rel = relative_difference(t, j)
    head, tail = rel[:first_n], rel[first_n:]
    return {"key": key, "first_n": first_n, "n_compared": int(rel.size),
            "max_rel_first_n": float(np.max(head)) if head.size else None,
            "max_rel_after": float(np.max(tail)) if tail.size else None,
            "median_rel_after": float(np.median(tail)) if tail.size else None,
            "worst_iter": int(iters[np.argmax(rel)]) if rel.size else None}
