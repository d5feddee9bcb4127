"""The bundled mini COCO: byte determinism, content requirements, cached atomic generation."""
import json
import os

import cv2
import numpy as np
import pytest

from gfocal.data import synthetic
from gfocal.data.coco import CocoDataset, DatasetError

# Cross-machine determinism guard: the generator uses only seeded PCG64 draws and IEEE
# arithmetic, so this hash of the annotations and the DECODED pixels, recorded on the
# development machine (x86-64, numpy 1.26, opencv-python-headless 4.11; the same machine
# gave the earlier byte hash c979025c...), must come out on every machine. Pixels, not PNG
# bytes: the PNG encoder may compress differently within the allowed opencv range. A
# mismatch means the data differs between machines (or the generator changed: then bump
# GENERATOR_VERSION and record the new value printed by `python fixtures/generate.py`).
CONTENT_SHA256 = "9f1bb101cdeda1ffd1ea765f4a893c1fe4532c10929faf2e9da18d33b5df8254"

TINY_SPLITS = {"train2017": (0, 3, 1), "val2017": (1, 2, 100001)}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return synthetic.ensure_mini_coco(tmp_path_factory.mktemp("gen") / "mini_coco")


@pytest.fixture(scope="module")
def splits(generated):
    out = {}
    for split in synthetic.SPLITS:
        with open(os.path.join(generated, "annotations", f"instances_{split}.json")) as f:
            out[split] = json.load(f)
    return out


# Images regenerated per split by the byte-identity check: every image draws from its own
# seeded generator, so a second generation of the first images of each split (a tenth of the
# set, in the same process after the whole first one) shows whether generating again gives
# the same bytes; the recorded hash covers the whole set.
AGAIN = {"train2017": 24, "val2017": 8}


def test_generation_is_byte_identical_and_matches_recorded_hash(generated, tmp_path):
    assert synthetic.manifest_sha256(generated, decode_images=True) == CONTENT_SHA256
    again = tmp_path / "again"
    for split, count in AGAIN.items():
        synthetic.generate_split(again, split, num_images=count)
        names = sorted(os.listdir(again / split))
        assert len(names) == count
        for name in names:  # PNG bytes, not only pixels
            with open(os.path.join(generated, split, name), "rb") as f:
                assert (again / split / name).read_bytes() == f.read(), (split, name)
        with open(again / "annotations" / f"instances_{split}.json", encoding="utf-8") as f:
            part = json.load(f)
        with open(os.path.join(generated, "annotations", f"instances_{split}.json"),
                  encoding="utf-8") as f:
            whole = json.load(f)
        k = len(part["annotations"])
        assert part["images"] == whole["images"][:count]
        assert part["annotations"] == whole["annotations"][:k]
        assert whole["annotations"][k]["image_id"] not in {i["id"] for i in part["images"]}
        assert {key: v for key, v in part.items() if key not in ("images", "annotations")} == \
            {key: v for key, v in whole.items() if key not in ("images", "annotations")}


def test_split_sizes_and_layout(generated, splits):
    assert len(splits["train2017"]["images"]) >= 256
    assert len(splits["val2017"]["images"]) >= 64
    for split, data in splits.items():
        files = sorted(os.listdir(os.path.join(generated, split)))
        assert files == sorted(img["file_name"] for img in data["images"])
    train_ids = {img["id"] for img in splits["train2017"]["images"]}
    assert not train_ids & {img["id"] for img in splits["val2017"]["images"]}


def test_categories_distinct_and_at_least_six(splits):
    cats = splits["train2017"]["categories"]
    assert len(cats) >= 6
    assert len({c["name"] for c in cats}) == len(cats)
    used = {a["category_id"] for a in splits["train2017"]["annotations"]}
    assert used == {c["id"] for c in cats}


def test_images_decode_to_the_sizes_in_the_json(generated, splits):
    for img in splits["val2017"]["images"][:16]:
        pixels = cv2.imread(os.path.join(generated, "val2017", img["file_name"]))
        assert pixels.shape == (img["height"], img["width"], 3)
        assert pixels.std() > 3  # noisy / textured, not a flat fill


def test_scene_statistics_cover_the_requirements(splits):
    images = splits["train2017"]["images"] + splits["val2017"]["images"]
    anns = splits["train2017"]["annotations"] + splits["val2017"]["annotations"]
    sides = [s for img in images for s in (img["width"], img["height"])]
    assert 150 <= min(sides) and max(sides) <= 650
    assert min(sides) < 200 and max(sides) > 600

    by_image = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    assert sum(1 for img in images if img["id"] not in by_image) >= 3        # empty images
    assert sum(a["iscrowd"] for a in anns) >= 3                             # crowd boxes
    degenerate = [a for a in anns if min(a["bbox"][2:]) < 1]
    assert len(degenerate) >= 3

    objects = [a for a in anns if not a["iscrowd"] and min(a["bbox"][2:]) >= 1]
    size = np.array([np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in objects])
    assert size.min() <= 10 and size.max() >= 250
    assert np.mean((size >= 16) & (size <= 200)) > 0.8
    aspect = np.array([a["bbox"][2] / a["bbox"][3] for a in objects])
    assert aspect.min() < 0.5 and aspect.max() > 2
    per_image = [sum(1 for a in v if not a["iscrowd"] and min(a["bbox"][2:]) >= 1)
                 for v in by_image.values()]
    assert max(per_image) <= synthetic.MAX_OBJECTS

    overlapping = 0
    for group in by_image.values():
        boxes = [a["bbox"] for a in group if not a["iscrowd"]]
        for i, (x, y, w, h) in enumerate(boxes):
            for bx, by, bw, bh in boxes[i + 1:]:
                if min(x + w, bx + bw) > max(x, bx) and min(y + h, by + bh) > max(y, by):
                    overlapping += 1
    assert overlapping >= 20                                                # occlusion


def test_training_set_drops_degenerate_and_empty(generated, splits):
    ds = CocoDataset(os.path.join(generated, "annotations", "instances_train2017.json"),
                     os.path.join(generated, "train2017"))
    all_ids = [img["id"] for img in splits["train2017"]["images"]]
    assert len(ds) < len(all_ids)
    usable = {a["image_id"] for a in splits["train2017"]["annotations"]
              if not a["iscrowd"] and min(a["bbox"][2:]) >= 1}
    assert ds.img_ids == [i for i in all_ids if i in usable]
    total = sum(len(ds.get_ann_info(i)["gt_bboxes"]) for i in range(len(ds)))
    assert total == sum(1 for a in splits["train2017"]["annotations"]
                        if not a["iscrowd"] and min(a["bbox"][2:]) >= 1)


def test_existing_complete_copy_is_reused(generated):
    ann = os.path.join(generated, "annotations", "instances_val2017.json")
    before = os.stat(ann).st_mtime_ns
    assert synthetic.ensure_mini_coco(generated) == os.path.abspath(generated)
    assert os.stat(ann).st_mtime_ns == before


def test_env_var_overrides_default_root(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "SPLITS", TINY_SPLITS)
    monkeypatch.setenv("GFOCAL_MINI_COCO", str(tmp_path / "here"))
    root = synthetic.ensure_mini_coco()
    assert root == str(tmp_path / "here")
    assert len(os.listdir(tmp_path / "here" / "val2017")) == 2


def test_interrupted_generation_leaves_nothing(monkeypatch, tmp_path):
    def crash(out_dir):
        synthetic.generate_split(out_dir, "train2017", num_images=1)
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", crash)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_mini_coco(tmp_path / "mini")
    assert os.listdir(tmp_path) == []


def test_partial_or_outdated_copy_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "SPLITS", TINY_SPLITS)
    root = synthetic.ensure_mini_coco(tmp_path / "mini")
    os.remove(os.path.join(root, "val2017", sorted(os.listdir(os.path.join(root, "val2017")))[0]))
    synthetic.ensure_mini_coco(root)
    assert len(os.listdir(os.path.join(root, "val2017"))) == 2
    assert sorted(os.listdir(tmp_path)) == ["mini"]  # no temp folders left behind


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not a generated mini COCO"):
        synthetic.ensure_mini_coco(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_generate_cli(monkeypatch, tmp_path, capsys):
    import importlib.util
    monkeypatch.setattr(synthetic, "SPLITS", TINY_SPLITS)
    path = os.path.join(os.path.dirname(synthetic.DEFAULT_ROOT), "generate.py")
    spec = importlib.util.spec_from_file_location("fixtures_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path / "cli")]) == 0
    assert "mini COCO ready" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "cli" / "annotations" / "instances_train2017.json")
