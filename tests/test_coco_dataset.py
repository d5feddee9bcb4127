"""CocoDataset: label mapping, crowd / degenerate handling, train/test filtering, bad input."""
import json
import os
import re

import cv2
import numpy as np
import pytest

from gfocal.config import from_dict
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.loader import build_dataloader

CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 5, "name": "five"}]


def ann(ann_id, image_id, cat, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": 0, **extra}


def write_coco(root, images, annotations, categories=CATEGORIES, split="train2017"):
    """COCO 2017 layout under root; images are (id, w, h); pixel (y, x) = BGR (x, y, id)."""
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    entries = []
    for img_id, w, h in images:
        ys, xs = np.mgrid[0:h, 0:w]
        pixels = np.stack([xs, ys, np.full_like(xs, img_id)], axis=2).astype(np.uint8)
        name = f"{img_id:06d}.png"
        cv2.imwrite(os.path.join(img_dir, name), pixels)
        entries.append({"id": img_id, "file_name": name, "width": w, "height": h})
    ann_file = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(ann_file, "w") as f:
        json.dump({"images": entries, "annotations": annotations, "categories": categories}, f)
    return ann_file, img_dir


@pytest.fixture
def small(tmp_path):
    images = [(1, 40, 30), (2, 20, 20), (3, 24, 16), (4, 30, 30)]
    annotations = [
        ann(1, 1, 7, [2, 3, 10, 5]),                    # kept -> label 2 (cat ids 3, 5, 7)
        ann(2, 1, 3, [0, 0, 40, 30], iscrowd=1),        # crowd -> ignore
        ann(3, 1, 5, [5, 5, 0.5, 10]),                  # w < 1 -> dropped
        ann(4, 1, 5, [5, 5, 10, 0.5]),                  # h < 1 (area 5) -> dropped
        ann(5, 1, 5, [50, 5, 10, 10]),                  # outside the image -> dropped
        ann(6, 1, 99, [1, 1, 5, 5]),                    # unknown category -> dropped
        ann(7, 1, 3, [1, 1, 5, 5], ignore=1),           # ignore flag -> dropped
        ann(8, 1, 3, [20.5, 10.25, 4, 3]),              # kept -> label 0, float box
        ann(9, 2, 5, [1, 1, 10, 10], iscrowd=1),        # image 2: crowd only
        ann(10, 2, 5, [1, 1, 0.9, 10]),                 # and a degenerate box
        # image 4: one 1x1 box, kept; without "iscrowd" and "area" (optional in COCO
        # files written by hand): not a crowd, area w * h
        {"id": 11, "image_id": 4, "category_id": 5, "bbox": [3, 4, 1, 1]},
    ]                                                   # image 3: no annotations
    return write_coco(str(tmp_path), images, annotations)


def test_label_mapping_follows_sorted_category_ids(small):
    ds = CocoDataset(*small)
    assert ds.cat_ids == [3, 5, 7]
    assert ds.label_to_cat_id == [3, 5, 7]
    assert ds.num_classes == 3
    assert ds.coco.getImgIds() == [1, 2, 3, 4]


def test_training_mode_keeps_only_images_with_usable_boxes(small):
    ds = CocoDataset(*small, test_mode=False)
    assert ds.img_ids == [1, 4]
    assert len(ds) == 2


def test_test_mode_keeps_every_image_with_empty_arrays(small):
    ds = CocoDataset(*small, test_mode=True)
    assert ds.img_ids == [1, 2, 3, 4]
    data = ds.load(2)                                   # image 3: nothing annotated
    assert data["gt_bboxes"].shape == (0, 4) and data["gt_bboxes"].dtype == np.float32
    assert data["gt_labels"].shape == (0,) and data["gt_labels"].dtype == np.int64
    assert data["gt_bboxes_ignore"].shape == (0, 4)
    crowd_only = ds.load(1)
    assert len(crowd_only["gt_bboxes"]) == 0
    np.testing.assert_array_equal(crowd_only["gt_bboxes_ignore"], [[1, 1, 11, 11]])


def test_boxes_converted_and_crowd_and_degenerate_handled(small):
    data = CocoDataset(*small).load(0)
    np.testing.assert_array_equal(data["gt_bboxes"], [[2, 3, 12, 8], [20.5, 10.25, 24.5, 13.25]])
    np.testing.assert_array_equal(data["gt_labels"], [2, 0])
    np.testing.assert_array_equal(data["gt_bboxes_ignore"], [[0, 0, 40, 30]])
    assert data["gt_bboxes"].dtype == np.float32 and data["gt_labels"].dtype == np.int64
    assert data["gt_bboxes_ignore"].dtype == np.float32


def test_load_returns_bgr_uint8_and_metadata(small):
    data = CocoDataset(*small).load(0)
    img = data["img"]
    assert img.shape == (30, 40, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[7, 11], [11, 7, 1])  # BGR as written: (x, y, id)
    assert data["img_id"] == 1 and data["file_name"] == "000001.png"
    assert data["ori_shape"] == (30, 40)


def test_loading_does_not_mutate_the_cache(small):
    ds = CocoDataset(*small)
    ds.load(0)["gt_bboxes"][:] = -1
    ds.get_ann_info(0)["gt_labels"][:] = -1
    assert ds.load(0)["gt_bboxes"][0, 0] == 2
    np.testing.assert_array_equal(ds.get_ann_info(0)["gt_labels"], [2, 0])


def test_real_coco_2017_layout_through_build_dataloader(tmp_path):
    root = str(tmp_path)
    write_coco(root, [(1, 64, 48)], [ann(1, 1, 7, [8, 8, 16, 16])])
    write_coco(root, [(9, 32, 64)], [], split="val2017")
    cfg = from_dict({"model": {"num_classes": 3},
                     "data": {"root": root, "img_scale": [64, 48], "batch_size": 1}})
    train = build_dataloader(cfg, "train")
    assert train.dataset.img_ids == [1]
    batch = next(iter(train))
    assert batch["img_metas"][0]["img_shape"] == (48, 64)
    val = build_dataloader(cfg, "val")
    assert val.dataset.img_ids == [9] and val.dataset.test_mode


# ---- bad input: one clear DatasetError naming the path ----------------------------------
def test_missing_annotation_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with pytest.raises(DatasetError, match=re.escape(f"{path}: annotation file not found")):
        CocoDataset(path, str(tmp_path))


def test_missing_image_folder(small, tmp_path):
    ann_file, _ = small
    missing = str(tmp_path / "no_images")
    with pytest.raises(DatasetError, match=re.escape(f"{missing}: image folder not found")):
        CocoDataset(ann_file, missing)


@pytest.mark.parametrize("text, problem", [
    ('{"images": [', "malformed JSON"),
    ("\xff\xfe garbage", "malformed JSON|cannot be read"),
    ("[1, 2, 3]", "not a COCO annotation file"),
    ('{"images": [], "categories": []}', "'annotations' list missing"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}',
     r"images\[0\] \{'id': 1\}: without 'file_name'"),
    ('{"images": [], "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 2], '
     '"category_id": 1}], "categories": []}', r"'bbox' = \[1, 2\] is not 4 finite numbers"),
    ('{"images": [], "annotations": [{"image_id": 1, "category_id": 1}], "categories": []}',
     "annotations\\[0\\] .*: without 'id', 'bbox'"),  # a dict without its id and bbox
    ('{"images": [], "annotations": [[1, 2, 3, 4]], "categories": []}',
     r"annotations\[0\] \[1, 2, 3, 4\]: not an object"),
])
def test_malformed_annotation_file(tmp_path, text, problem):
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(DatasetError, match=problem) as info:
        CocoDataset(str(path), str(tmp_path))
    assert str(path) in str(info.value)


VALID = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
         "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5]}],
         "categories": [{"id": 3, "name": "three"}]}
GONE = object()  # the field left out


@pytest.mark.parametrize("entries, field, value, problem", [
    ("annotations", "bbox", ["a", 1, 5, 5], "'bbox' = ['a', 1, 5, 5] is not 4 finite numbers"),
    ("annotations", "bbox", None, "'bbox' = None is not 4 finite numbers"),
    ("annotations", "bbox", [1, float("nan"), 5, 5], "is not 4 finite numbers"),
    ("annotations", "bbox", [1, True, 5, 5], "is not 4 finite numbers"),
    ("annotations", "image_id", "1", "'image_id' = '1' is not an integer"),
    ("annotations", "category_id", 3.0, "'category_id' = 3.0 is not an integer"),
    ("annotations", "id", GONE, "without 'id'"),
    ("annotations", "area", None, "'area' = None is not a finite number"),
    ("annotations", "iscrowd", "yes", "'iscrowd' = 'yes' is not 0 or 1"),
    ("categories", "id", GONE, "without 'id'"),
    ("categories", "id", "3", "'id' = '3' is not an integer"),
    ("images", "id", True, "'id' = True is not an integer"),
    ("images", "file_name", 5, "'file_name' = 5 is not a string"),
    ("images", "width", "20", "'width' = '20' is not a positive number"),
    ("images", "height", None, "'height' = None is not a positive number"),
])
def test_an_entry_of_the_wrong_type_is_one_line_naming_file_and_entry(tmp_path, entries, field,
                                                                       value, problem):
    data = json.loads(json.dumps(VALID))
    entry = data[entries][0]
    if value is GONE:
        del entry[field]
    else:
        entry[field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as info:
        CocoDataset(str(path), str(tmp_path), test_mode=True)
    message = str(info.value)
    assert message.startswith(f"{path}: {entries}[0] {{") and problem in message
    assert "\n" not in message


def test_evaluation_on_boxes_without_the_optional_iscrowd_and_area(small):
    """COCOeval reads 'iscrowd' and 'area' of every ground-truth box: a file that leaves
    them out (image 4 of `small`) is evaluated, not a KeyError."""
    from gfocal.evaluation import evaluate
    ds = CocoDataset(*small, test_mode=True)
    found = {"image_id": 4, "category_id": 5, "bbox": [3, 4, 1, 1], "score": 0.9}
    assert evaluate(ds.coco, [found], img_ids=[4])["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("content", [b"", b"not a png at all", "truncated"])
def test_corrupt_image(small, content):
    ann_file, img_dir = small
    path = os.path.join(img_dir, "000001.png")
    if content == "truncated":
        with open(path, "rb") as f:
            content = f.read()[:60]
    with open(path, "wb") as f:
        f.write(content)
    ds = CocoDataset(ann_file, img_dir)
    with pytest.raises(DatasetError, match="cannot be decoded") as info:
        ds.load(0)
    assert path in str(info.value)


def test_missing_image_file(small):
    ann_file, img_dir = small
    path = os.path.join(img_dir, "000004.png")
    os.remove(path)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: image file not found")):
        CocoDataset(ann_file, img_dir).load(1)


def test_no_usable_images(tmp_path):
    ann_file, img_dir = write_coco(str(tmp_path), [(1, 20, 20), (2, 20, 20)], [
        ann(1, 1, 3, [1, 1, 0.5, 5]), ann(2, 2, 3, [1, 1, 5, 5], iscrowd=1)])
    with pytest.raises(DatasetError, match="no images with a usable") as info:
        CocoDataset(ann_file, img_dir)
    assert ann_file in str(info.value)
    assert len(CocoDataset(ann_file, img_dir, test_mode=True)) == 2
    empty_file, _ = write_coco(str(tmp_path), [], [], split="val2017")
    with pytest.raises(DatasetError, match="no images"):
        CocoDataset(empty_file, img_dir, test_mode=True)
