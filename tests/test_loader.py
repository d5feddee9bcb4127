"""Seeded batching: batch layout, determinism per seed/epoch, flips, build_dataloader,
worker processes (same bytes, resume, errors, no process left behind)."""
import gc
import os
import re
import time

import numpy as np
import pytest

from gfocal.config import from_dict
from gfocal.data import synthetic
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.loader import DataLoader, build_dataloader, resolve_workers
from tests.processes import child_processes

SCALE = (160, 128)
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("loader"))
    synthetic.generate_split(out, "train2017", num_images=8)
    synthetic.generate_split(out, "val2017", num_images=3)
    return out


def train_files(root):
    return (os.path.join(root, "annotations", "instances_train2017.json"),
            os.path.join(root, "train2017"))


@pytest.fixture(scope="module")
def dataset(root):
    return CocoDataset(*train_files(root))


# Datasets for worker processes live at module level: spawn unpickles them by name.
class RecordingDataset(CocoDataset):
    """Appends every index it loads to the file `log`, one a line, from any process; with
    `gate`, a load of an index > 0 first waits until that file exists."""

    def __init__(self, ann_file, img_dir, log, gate=None):
        super().__init__(ann_file, img_dir)
        self.log, self.gate = log, gate

    def load(self, idx):
        while self.gate and idx > 0 and not os.path.exists(self.gate):
            time.sleep(0.01)
        with open(self.log, "a") as f:
            f.write(f"{idx}\n")
        return super().load(idx)


class FaultyDataset(CocoDataset):
    """load(`bad`) raises a ValueError or, with `exit`, ends its process on the spot."""

    def __init__(self, ann_file, img_dir, bad, exit=False):
        super().__init__(ann_file, img_dir)
        self.bad, self.exit = bad, exit

    def load(self, idx):
        if idx == self.bad:
            if self.exit:
                os._exit(1)
            raise ValueError(f"planted failure of sample {idx}")
        return super().load(idx)


@pytest.fixture
def new_children():
    """Lists the children started since the test began that are still there (Jittor,
    imported by the root conftest, keeps compiler processes of its own)."""
    before = child_processes()
    return lambda: sorted(child_processes() - before)


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
    with pytest.raises(ValueError, match="workers must be an integer >= 0, got -1"):
        DataLoader([], batch_size=1, img_scale=SCALE, workers=-1)
    with pytest.raises(ValueError, match="prefetch must be an integer >= 1, got 0"):
        DataLoader([], batch_size=1, img_scale=SCALE, workers=1, prefetch=0)
    with pytest.raises(ValueError, match=r"skip must be an integer in \[0, 0\]"):
        DataLoader([], batch_size=1, img_scale=SCALE).batches(1)


def test_a_sub_second_timeout_is_accepted_and_two_batches_per_worker_are_in_flight():
    assert DataLoader([], batch_size=1, img_scale=SCALE, timeout=0.5).timeout == 0.5
    assert DataLoader([], batch_size=1, img_scale=SCALE, workers=3).prefetch == 6
    assert DataLoader([], batch_size=1, img_scale=SCALE, workers=3, prefetch=1).prefetch == 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_the_shards_of_an_evaluation_are_its_batches_dealt_in_turn(dataset, world):
    """shard(rank, world): process `rank` predicts batches rank, rank + world, ...; together
    the shards are exactly the one-process loader's batches, none twice."""
    loader = DataLoader(dataset, batch_size=3, img_scale=SCALE, shuffle=False)
    whole = [samples_of(b) for b in batches(loader)]
    shards = [[samples_of(b) for b in loader.shard(rank, world)] for rank in range(world)]
    assert [len(s) for s in shards] == [len(whole[rank::world]) for rank in range(world)]
    for rank, shard in enumerate(shards):
        assert shard == whole[rank::world]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_give_the_same_bytes_and_keep_their_pool(dataset, workers, new_children):
    in_process = DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=7)
    with DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=7, workers=workers) as pooled:
        pids = []
        for epoch in (0, 1):
            in_process.set_epoch(epoch)
            pooled.set_epoch(epoch)
            assert_same_batches(batches(pooled), batches(in_process))
            pids.append(new_children())
    assert len(pids[0]) == workers and pids[1] == pids[0]  # one pool for both epochs
    assert new_children() == []


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_resumes_mid_epoch_without_preparing_the_skipped(root, dataset, tmp_path,
                                                             workers):
    full = DataLoader(dataset, batch_size=3, img_scale=SCALE, seed=4)
    full.set_epoch(1)
    log = tmp_path / "loaded.txt"
    with DataLoader(RecordingDataset(*train_files(root), log=str(log)), batch_size=3,
                    img_scale=SCALE, seed=4, workers=workers) as resumed:
        resumed.set_epoch(1)
        tail = list(resumed.batches(skip=2))
        assert list(resumed.batches(skip=len(resumed))) == []
    assert_same_batches(tail, batches(full)[2:])
    order, _ = full.plan()
    assert sorted(int(i) for i in log.read_text().split()) == sorted(order[6:].tolist())


class FirstSamples:
    """The first `n` samples of `dataset`."""

    def __init__(self, dataset, n):
        self.dataset, self.n = dataset, n

    def __len__(self):
        return self.n

    def load(self, idx):
        return self.dataset.load(idx)


def samples_of(batch):
    """Per sample: (img_id, flip, boxes, labels, the image without the batch's padding)."""
    out = []
    for i, meta in enumerate(batch["img_metas"]):
        h, w = meta["pad_shape"]
        out.append((meta["img_id"], meta["flip"], batch["gt_bboxes"][i].tobytes(),
                    batch["gt_labels"][i].tobytes(), batch["imgs"][i, :, :h, :w].tobytes()))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_processes_split_each_global_batch_in_rank_order(dataset, workers):
    """2 processes x batch 2: rank r gets samples 2r, 2r+1 of the batch one process with
    batch 4 gets (same order, same flips, same bytes), two epochs."""
    single = DataLoader(dataset, batch_size=4, img_scale=SCALE, seed=3)
    ranks = [DataLoader(dataset, batch_size=2, img_scale=SCALE, seed=3, rank=r, world_size=2,
                        workers=workers) for r in (0, 1)]
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        whole, parts = batches(single), [batches(loader) for loader in ranks]
        assert len(whole) == len(parts[0]) == len(parts[1]) == 2
        for batch, first, second in zip(whole, *parts):
            assert samples_of(first) + samples_of(second) == samples_of(batch)
    for loader in ranks:
        loader.close()


@pytest.mark.parametrize("n, batch, world, steps, last", [
    (7, 1, 2, 3, [1, 1]),   # 1 left over, rank 1 would get none: dropped by both
    (7, 2, 2, 2, [2, 1]),   # 3 left over: rank 0 gets 2, rank 1 gets 1
    (8, 3, 2, 1, [3, 3]),   # 2 left over, rank 1 would get none: dropped by both
])
def test_an_incomplete_last_batch_is_kept_only_when_every_process_gets_a_sample(
        dataset, n, batch, world, steps, last):
    loaders = [DataLoader(FirstSamples(dataset, n), batch_size=batch, img_scale=SCALE,
                          rank=r, world_size=world) for r in range(world)]
    assert [len(loader) for loader in loaders] == [steps] * world
    assert [len(batches(loader)[-1]["img_metas"]) for loader in loaders] == last


def test_global_batch_not_divisible_by_the_processes(root):
    from gfocal.config import ConfigError
    cfg = config(root, batch_size=3)
    with pytest.raises(ConfigError, match=r"'data.batch_size' = 3 is not divisible by the 2 "):
        build_dataloader(cfg, "train", rank=0, world_size=2)
    assert len(build_dataloader(config(root, batch_size=4), "train", rank=1, world_size=2)) \
        == len(build_dataloader(config(root, batch_size=4), "train"))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_that_raises_names_its_image_file(root, workers, new_children):
    faulty = FaultyDataset(*train_files(root), bad=5)
    path = os.path.join(faulty.img_dir, faulty.coco.imgs[faulty.img_ids[5]]["file_name"])
    loader = DataLoader(faulty, batch_size=2, img_scale=SCALE, shuffle=False, workers=workers)
    with pytest.raises(DatasetError) as info:
        list(loader)
    assert str(info.value) == (f"{path}: preparing the sample failed: ValueError: "
                               "planted failure of sample 5")
    assert new_children() == []


def test_a_worker_that_dies_stops_with_a_dataset_error(root, new_children):
    """Mid-epoch, a worker that ends itself preparing sample 5 ends the iteration with one
    line naming the worker and its exit code (one killed by a signal: test_loader_workers)."""
    faulty = FaultyDataset(*train_files(root), bad=5, exit=True)
    loader = DataLoader(faulty, batch_size=1, img_scale=SCALE, shuffle=False, workers=2)
    iterator = iter(loader)
    next(iterator)
    with pytest.raises(DatasetError) as info:
        list(iterator)
    message = str(info.value)
    assert re.match(r"data worker [12] of 2 \(pid \d+\) exited with code 1 while the batch "
                    r"with files \S+\.png in ", message)
    assert faulty.img_dir in message and "\n" not in message
    assert "import the main module" not in message  # a batch had come back: not at start-up
    assert new_children() == []


@pytest.mark.parametrize("ending", ["close", "garbage collection"])
def test_stopping_early_leaves_no_worker(dataset, ending, new_children):
    loader = DataLoader(dataset, batch_size=2, img_scale=SCALE, workers=1)
    iterator = loader.batches()
    next(iterator)
    assert len(new_children()) == 1
    if ending == "close":
        iterator.close()
        loader.close()
        loader.close()  # idempotent
    else:
        del iterator, loader
        gc.collect()
    assert new_children() == []


def test_closing_an_iterator_cancels_its_prefetched_batches(root, tmp_path, new_children):
    log, gate = tmp_path / "loaded.txt", tmp_path / "gate"
    held = RecordingDataset(*train_files(root), log=str(log), gate=str(gate))
    with DataLoader(held, batch_size=1, img_scale=SCALE, shuffle=False, workers=1,
                    prefetch=6) as loader:
        try:
            iterator = loader.batches()
            next(iterator)  # batch 0; 1-6 submitted, at most 1-3 past recall (1 held)
            iterator.close()
        finally:
            gate.touch()
        next(loader.batches(skip=7))  # one worker, first in first out: after 1-3
    loaded = {int(i) for i in log.read_text().split()}
    assert {0, 7} <= loaded and not loaded & {4, 5, 6}
    assert new_children() == []


def test_resolve_workers(monkeypatch):
    for cores, auto in [(6, 3), (64, 8), (1, 1), (None, 1)]:
        monkeypatch.setattr(os, "cpu_count", lambda cores=cores: cores)
        assert resolve_workers("auto", "cuda") == resolve_workers("auto", "cuda:1") == auto
        assert resolve_workers("auto", "cpu") == 0
    assert resolve_workers(0, "cuda") == 0 and resolve_workers(3, "cpu") == 3
    for bad in (-1, "four", 1.5, True):
        with pytest.raises(ValueError, match="workers must be 'auto' or an integer >= 0"):
            resolve_workers(bad, "cpu")


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
    assert train.workers == val.workers == 0  # auto, and the device defaults to the CPU
    assert build_dataloader(config(root), "train", device="cuda").workers == \
        resolve_workers("auto", "cuda")
    assert build_dataloader(config(root, workers=2), "val").workers == 2
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


def test_the_pipeline_gives_the_batches_numpy_2_gave():
    """The batches' bytes that the GPU machine's numpy 2.5 / opencv 5.1 made (in the
    `scripts/gpu.py image` environment): numpy 1 here gives the same bits, so a GPU run reads
    the very batches of a run here. A change of the pipeline that moves this digest changes
    every run's data: recompute it in both environments."""
    import hashlib
    cfg = from_dict({"model": dict(num_classes=6),
                     "data": dict(img_scale=[160, 120], batch_size=2, val_batch_size=2)},
                    source="numpy-2 probe")
    digest = hashlib.sha256()
    for split in ("train", "val"):  # train: seeded flips (the first batch is flipped)
        for _, batch in zip(range(2), build_dataloader(cfg, split)):
            digest.update(batch["imgs"].tobytes())
            for key in ("gt_bboxes", "gt_labels", "gt_bboxes_ignore"):
                for array in batch[key]:
                    digest.update(np.ascontiguousarray(array).tobytes())
            for meta in batch["img_metas"]:
                digest.update(repr((meta["img_id"], meta["img_shape"], meta["pad_shape"],
                                    meta["flip"])).encode())
                digest.update(meta["scale_factor"].tobytes())
    assert digest.hexdigest() == "76bba0c864e354044eb576d8316a55a2da5d6f8f595756ea3ae9e2640a54cac4"
