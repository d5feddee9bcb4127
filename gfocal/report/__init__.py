"""The PyTorch-vs-Jittor comparison report (Markdown + self-contained HTML + PNG plots).

Framework-neutral: it only reads run data (logs, COCO stats, latencies), never a model.
"""
from gfocal.report.rundata import (COCO_STAT_NAMES, FRAMEWORKS, LogFormatError, RunData,
                                   agreement_summary, read_log)
from gfocal.report.writer import write_report

__all__ = ["COCO_STAT_NAMES", "FRAMEWORKS", "LogFormatError", "RunData", "agreement_summary",
           "read_log", "write_report"]
