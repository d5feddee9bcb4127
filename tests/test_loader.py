"""Seeded batching: batch layout, determinism per seed/epoch, flips, build_dataloader."""
import os

import numpy as np
import pytest

from gfocal.config import from_dict
from gfocal.data import synthetic
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.loader import DataLoader, build_dataloader

SCALE = (160, 128)
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("loader"))
    synthetic.generate_split(out, "train2017", num_images=8)
    synthetic.generate_split(out, "val2017", num_images=3)
    return out


@pytest.fixture(scope="module")
def dataset(root):
    return CocoDataset(os.path.join(root, "annotations", "instances_train2017.json"),
                       os.path.join(root, "train2017"))


def batches(loader):
    return list(iter(loader))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["imgs"], y["imgs"])
        for key in ("gt_bboxes", "gt_labels", "gt_bboxes_ignore"):
            for u, v in zip(x[key], y[key]):
                np.testing.assert_array_equal(u, v)
        assert [m["img_id"] for m in x["img_metas"]] == [m["img_id"] for m in y["img_metas"]]
        assert [m["flip"] for m in x["img_metas"]] == [m["flip"] for m in y["img_metas"]]


def test_batch_layout(dataset):
    loader = DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=1)
    batch = next(iter(loader))
    assert set(batch) == {"imgs", "gt_bboxes", "gt_labels", "gt_bboxes_ignore", "img_metas"}
    imgs = batch["imgs"]
    assert imgs.dtype == np.float32 and imgs.ndim == 4 and imgs.shape[:2] == (3, 3)
    metas = batch["img_metas"]
    assert imgs.shape[2:] == (max(m["pad_shape"][0] for m in metas),
                              max(m["pad_shape"][1] for m in metas))
    for i, meta in enumerate(metas):
        assert set(meta) == {"img_id", "file_name", "ori_shape", "img_shape", "pad_shape",
                             "scale_factor", "flip"}
        (h, w), (ph, pw) = meta["img_shape"], meta["pad_shape"]
        assert ph % 32 == 0 and pw % 32 == 0 and 0 <= ph - h < 32 and 0 <= pw - w < 32
        assert max(h, w) <= max(SCALE) and min(h, w) <= min(SCALE)
        oh, ow = meta["ori_shape"]
        np.testing.assert_allclose(meta["scale_factor"], [w / ow, h / oh, w / ow, h / oh],
                                   rtol=1e-6)
        assert meta["scale_factor"].dtype == np.float32
        assert (imgs[i, :, h:, :] == 0).all() and (imgs[i, :, :, w:] == 0).all()
        assert imgs[i, :, :h, :w].std() > 0.05
        boxes = batch["gt_bboxes"][i]
        assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and len(boxes) >= 1
        assert (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all() and (boxes >= 0).all()
        assert batch["gt_labels"][i].dtype == np.int64
        assert len(batch["gt_labels"][i]) == len(boxes)


def test_image_values_are_the_normalised_resized_image(dataset):
    import cv2
    loader = DataLoader(dataset, batch_size=1, img_scale=SCALE, shuffle=False, flip_prob=0)
    batch = next(iter(loader))
    meta = batch["img_metas"][0]
    raw = dataset.load(0)["img"]
    h, w = meta["img_shape"]
    rgb = cv2.resize(raw, (w, h), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].astype(np.float64)
    expected = ((rgb - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(batch["imgs"][0, :, :h, :w], expected, rtol=1e-5, atol=1e-5)


def test_same_seed_gives_identical_batches(dataset):
    a = batches(DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=7))
    b = batches(DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=7))
    assert_same_batches(a, b)


def test_order_and_flips_follow_the_documented_generator(dataset):
    loader = DataLoader(dataset, batch_size=4, img_scale=SCALE, seed=3, flip_prob=0.5)
    loader.set_epoch(2)
    rng = np.random.default_rng([3, 2])
    order = rng.permutation(len(dataset))
    flips = rng.random(len(dataset)) < 0.5
    metas = [m for batch in loader for m in batch["img_metas"]]
    assert [m["img_id"] for m in metas] == [dataset.img_ids[i] for i in order]
    assert [m["flip"] for m in metas] == flips.tolist()


def test_epoch_and_seed_change_the_plan(dataset):
    loader = DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=0)
    plans = []
    for seed, epoch in [(0, 0), (0, 1), (1, 0), (0, 0)]:
        loader.seed = seed
        loader.set_epoch(epoch)
        order, flips = loader.plan()
        plans.append((tuple(order), tuple(flips)))
    assert plans[0] == plans[3]
    assert plans[0] != plans[1] and plans[0] != plans[2]


def test_flip_mirrors_image_and_boxes(dataset):
    plain = next(iter(DataLoader(dataset, 2, SCALE, flip_prob=0.0, shuffle=False)))
    flipped = next(iter(DataLoader(dataset, 2, SCALE, flip_prob=1.0, shuffle=False)))
    for i in range(2):
        assert not plain["img_metas"][i]["flip"] and flipped["img_metas"][i]["flip"]
        h, w = plain["img_metas"][i]["img_shape"]
        np.testing.assert_array_equal(flipped["imgs"][i, :, :h, :w],
                                      plain["imgs"][i, :, :h, ::-1][:, :, -w:])
        b, f = plain["gt_bboxes"][i], flipped["gt_bboxes"][i]
        np.testing.assert_allclose(f[:, 0], w - b[:, 2])
        np.testing.assert_allclose(f[:, 2], w - b[:, 0])
        np.testing.assert_array_equal(f[:, 1::2], b[:, 1::2])


def test_length_and_drop_last(dataset):
    n = len(dataset)
    loader = DataLoader(dataset, batch_size=3, img_scale=SCALE)
    assert len(loader) == -(-n // 3)
    sizes = [len(b["img_metas"]) for b in loader]
    assert sum(sizes) == n and len(sizes) == len(loader)
    dropping = DataLoader(dataset, batch_size=3, img_scale=SCALE, drop_last=True)
    assert len(dropping) == n // 3
    assert [len(b["img_metas"]) for b in dropping] == [3] * (n // 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader([], batch_size=0, img_scale=SCALE)
    with pytest.raises(ValueError, match="flip_prob"):
        DataLoader([], batch_size=1, img_scale=SCALE, flip_prob=1.5)


def config(root, **data):
    return from_dict({"model": {"num_classes": 6}, "train": {"seed": 5},
                      "data": {"root": root, "img_scale": list(SCALE), "batch_size": 2,
                               "val_batch_size": 2, **data}})


def test_build_dataloader_train_and_val(root, dataset):
    train = build_dataloader(config(root), "train")
    assert train.shuffle and train.flip_prob == 0.5 and train.seed == 5
    assert train.batch_size == 2 and not train.dataset.test_mode
    assert train.dataset.img_ids == dataset.img_ids
    val = build_dataloader(config(root, flip_prob=0.5), "val")
    assert val.dataset.test_mode and len(val.dataset) == 3
    metas = [m for b in val for m in b["img_metas"]]
    assert [m["img_id"] for m in metas] == val.dataset.img_ids  # file order, no shuffle
    assert not any(m["flip"] for m in metas)
    with pytest.raises(ValueError, match="split"):
        build_dataloader(config(root), "test")


def test_build_dataloader_checks_num_classes(root):
    cfg = config(root)
    cfg["model"]["num_classes"] = 80
    with pytest.raises(DatasetError, match="6 categories but 'model.num_classes' = 80"):
        build_dataloader(cfg, "val")


def test_empty_root_means_bundled_mini_coco(monkeypatch, tmp_path):
    monkeypatch.setattr(synthetic, "SPLITS", {"train2017": (0, 4, 1), "val2017": (1, 2, 100001)})
    monkeypatch.setenv("GFOCAL_MINI_COCO", str(tmp_path / "bundled"))
    loader = build_dataloader(config(""), "val")
    assert loader.dataset.ann_file == str(tmp_path / "bundled" / "annotations" /
                                          "instances_val2017.json")
    assert len(loader.dataset) == 2
