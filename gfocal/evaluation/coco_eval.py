"""Detections -> COCO results JSON -> pycocotools COCOeval (bbox): 12 named statistics."""
import contextlib
import io
import json
import sys

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gfocal.atomic import atomic_path

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def results_to_coco(predictions, img_ids, label_to_cat_id):
    """COCO result dicts from per-image predictions (boxes x1y1x2y2 in original pixels).

    predictions[i] belongs to img_ids[i]; boxes become [x, y, w, h], labels category ids.
    """
    if len(predictions) != len(img_ids):
        raise ValueError(f"{len(predictions)} predictions for {len(img_ids)} image ids")
    results = []
    for img_id, pred in zip(img_ids, predictions):
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(pred["labels"]).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {img_id}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels")
        bad = (labels < 0) | (labels >= len(label_to_cat_id))
        if bad.any():
            raise ValueError(f"image {img_id}: label {int(labels[bad][0])} outside "
                             f"0..{len(label_to_cat_id) - 1}")
        for box, score, label in zip(boxes, scores, labels):
            x1, y1, x2, y2 = (float(c) for c in box)
            results.append({"image_id": int(img_id),
                            "category_id": int(label_to_cat_id[int(label)]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": float(score)})
    return results


def _as_coco(coco_gt):
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(coco_gt)  # a path to an annotation file


def _scored_boxes(coco_gt, img_ids):
    """How many ground-truth boxes COCOeval scores against (a crowd box is only a region
    where detections are ignored)."""
    ids = coco_gt.getImgIds() if img_ids is None else img_ids
    return sum(not ann.get("iscrowd", 0) for i in ids for ann in coco_gt.imgToAnns.get(i, []))


def _warn_no_ground_truth(source, img_ids):
    print(f"gfocal: warning: {source}: no ground-truth box in the {len(img_ids)} evaluated "
          "images: the statistics measure nothing (COCOeval gives 0 or -1 without ground "
          "truth)", file=sys.stderr)


def evaluate(coco_gt, coco_results, img_ids=None, verbose=False, source=None):
    """COCOeval bbox statistics by name; all zeros when there are no detections.

    As in pycocotools, a statistic is -1 when the ground truth has no box in its area range.
    Without any ground-truth box the statistics mean nothing: a warning line (stderr) names
    the annotation file.

    coco_gt: a pycocotools COCO or an annotation file; coco_results: a list of result
    dicts or a results JSON file; img_ids: evaluate on these images only (default all);
    source: the annotation file `coco_gt` was read from (for the warning).
    """
    if source is None:
        source = coco_gt if not isinstance(coco_gt, COCO) else "the ground truth"
    coco_gt = _as_coco(coco_gt)
    if not _scored_boxes(coco_gt, img_ids):
        _warn_no_ground_truth(source, coco_gt.getImgIds() if img_ids is None else img_ids)
    if isinstance(coco_results, (str, bytes)) or hasattr(coco_results, "__fspath__"):
        with open(coco_results, encoding="utf-8") as f:
            coco_results = json.load(f)
    if not coco_results:
        return {name: 0.0 for name in STAT_NAMES}
    unknown = {r["image_id"] for r in coco_results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results name image ids not in the ground truth: {sorted(unknown)[:5]}")
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        # loadRes adds keys to each dict: give it copies
        coco_dt = coco_gt.loadRes([dict(r) for r in coco_results])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if img_ids is not None:
            evaluator.params.imgIds = [int(i) for i in img_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats)}


def save_results(path, coco_results):
    """Write the results JSON atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(coco_results, f)
