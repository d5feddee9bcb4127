"""COCO bbox evaluation shared by both ports."""
from gfocal.evaluation.coco_eval import STAT_NAMES, evaluate, results_to_coco, save_results

__all__ = ["STAT_NAMES", "evaluate", "results_to_coco", "save_results"]
