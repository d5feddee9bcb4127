"""COCO detection data set: pycocotools index, contiguous labels, crowd and degenerate boxes.

Box rules follow mmdetection's CocoDataset (docs/MODEL.md section 9): [x, y, w, h] ->
[x1, y1, x1 + w, y1 + h]; boxes with w < 1 or h < 1, no overlap with the image or an
unknown category are dropped; `iscrowd` boxes become `gt_bboxes_ignore`.
"""
import contextlib
import io
import json
import math
import os

import cv2
import numpy as np
from pycocotools.coco import COCO


class DatasetError(ValueError):
    """A data set that cannot be used; the message names the path and the problem."""


def _is_integer(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


INTEGER = ("an integer", _is_integer)
NUMBER = ("a finite number", _is_number)
SIZE = ("a positive number", lambda v: _is_number(v) and v > 0)
TEXT = ("a string", lambda v: isinstance(v, str))
FLAG = ("0 or 1", lambda v: v in (0, 1))
BOX = ("4 finite numbers [x, y, w, h]",
       lambda v: isinstance(v, list) and len(v) == 4 and all(_is_number(c) for c in v))

# Per entry of each list: (required fields, optional fields), each field -> (what it must
# be, test). What pycocotools and CocoDataset read, so a wrong entry is one line here
# instead of a traceback from deep inside them.
SCHEMA = {
    "images": ({"id": INTEGER, "file_name": TEXT}, {"width": SIZE, "height": SIZE}),
    "annotations": ({"id": INTEGER, "image_id": INTEGER, "category_id": INTEGER, "bbox": BOX},
                    {"area": NUMBER, "iscrowd": FLAG, "ignore": FLAG}),
    "categories": ({"id": INTEGER}, {}),
}


def _entry_problem(entry, required, optional):
    """What is wrong with one entry of an annotation file, or None."""
    if not isinstance(entry, dict):
        return "not an object"
    missing = [name for name in required if name not in entry]
    if missing:
        return "without " + ", ".join(f"'{name}'" for name in missing)
    for name, (what, test) in {**required, **optional}.items():
        if name in entry and not test(entry[name]):
            return f"'{name}' = {entry[name]!r} is not {what}"
    return None


def _short(entry, limit=120):
    text = repr(entry)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_annotation_json(ann_file):
    if not os.path.isfile(ann_file):
        raise DatasetError(f"{ann_file}: annotation file not found")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{ann_file}: malformed JSON (line {exc.lineno}, column "
                           f"{exc.colno}: {exc.msg})") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{ann_file}: cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise DatasetError(f"{ann_file}: not a COCO annotation file (top level is "
                           f"{type(data).__name__}, expected an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{ann_file}: not a COCO annotation file ('{key}' list missing)")
    for key, (required, optional) in SCHEMA.items():
        for index, entry in enumerate(data[key]):
            problem = _entry_problem(entry, required, optional)
            if problem:
                raise DatasetError(f"{ann_file}: {key}[{index}] {_short(entry)}: {problem}")
    return data


def read_image(path):
    """HxWx3 uint8 BGR image; DatasetError naming the path when missing or undecodable."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: image file not found")
    buf = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise DatasetError(f"{path}: cannot be decoded as an image (corrupt or unsupported)")
    return img


class CocoDataset:
    """COCO-format detection set; `load(idx)` gives the raw image and its boxes.

    Training mode (`test_mode=False`) keeps only images with at least one usable box (as
    mmdetection does); test mode keeps every image.
    """

    def __init__(self, ann_file, img_dir, test_mode=False):
        self.ann_file = os.fspath(ann_file)
        self.img_dir = os.fspath(img_dir)
        self.test_mode = test_mode
        data = read_annotation_json(self.ann_file)
        for ann in data["annotations"]:  # optional in a file, but COCOeval reads both
            ann.setdefault("iscrowd", 0)
            ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
        if not os.path.isdir(self.img_dir):
            raise DatasetError(f"{self.img_dir}: image folder not found")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self.coco.createIndex()
        self.cat_ids = sorted(self.coco.getCatIds())
        self.label_to_cat_id = list(self.cat_ids)
        self.cat_id_to_label = {cat_id: label for label, cat_id in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        # by label: what an mmdetection checkpoint's meta CLASSES holds
        self.class_names = [str(self.coco.cats[c].get("name", c)) for c in self.cat_ids]
        self._ann_info = {}
        img_ids = []
        for img in data["images"]:  # file order, like mmdetection
            info = self._parse(img)
            if test_mode or len(info[1]):
                img_ids.append(img["id"])
                self._ann_info[img["id"]] = info
        if not img_ids:
            what = "images" if test_mode else "images with a usable (non-crowd, w, h >= 1) box"
            raise DatasetError(f"{self.ann_file}: no {what}")
        self.img_ids = img_ids

    def _parse(self, img):
        width, height = img.get("width"), img.get("height")
        bboxes, labels, ignore = [], [], []
        for ann in self.coco.imgToAnns.get(img["id"], []):
            if ann.get("ignore", False):
                continue
            x, y, w, h = (float(c) for c in ann["bbox"])
            if w < 1 or h < 1 or ann.get("area", w * h) <= 0:
                continue
            if width is not None and height is not None:
                overlap_w = max(0.0, min(x + w, width) - max(x, 0.0))
                overlap_h = max(0.0, min(y + h, height) - max(y, 0.0))
                if overlap_w * overlap_h == 0:
                    continue
            if ann["category_id"] not in self.cat_id_to_label:
                continue
            box = [x, y, x + w, y + h]
            if ann.get("iscrowd", 0):
                ignore.append(box)
            else:
                bboxes.append(box)
                labels.append(self.cat_id_to_label[ann["category_id"]])
        return (np.array(bboxes, dtype=np.float32).reshape(-1, 4),
                np.array(labels, dtype=np.int64),
                np.array(ignore, dtype=np.float32).reshape(-1, 4))

    def __len__(self):
        return len(self.img_ids)

    def get_ann_info(self, idx):
        """The boxes of image `idx` without reading the image (copies)."""
        bboxes, labels, ignore = self._ann_info[self.img_ids[idx]]
        return {"gt_bboxes": bboxes.copy(), "gt_labels": labels.copy(),
                "gt_bboxes_ignore": ignore.copy()}

    def load(self, idx):
        img_id = self.img_ids[idx]
        info = self.coco.imgs[img_id]
        img = read_image(os.path.join(self.img_dir, info["file_name"]))
        return {"img": img, **self.get_ann_info(idx), "img_id": img_id,
                "file_name": info["file_name"], "ori_shape": tuple(img.shape[:2])}
