"""Seeded batching: the same seed and epoch give the same numpy batches, whichever
framework consumes them (docs/ARCHITECTURE.md, "The batch")."""
import math
import os

import numpy as np

from gfocal.data import transforms
from gfocal.data.coco import CocoDataset, DatasetError

DEFAULT_MEAN = (123.675, 116.28, 103.53)
DEFAULT_STD = (58.395, 57.12, 57.375)


class DataLoader:
    """Iterates Batch dicts over a CocoDataset-like `dataset` (len() and load(idx)).

    Per epoch, `np.random.default_rng([seed, epoch])` draws first the permutation (when
    shuffling) and then one uniform number per sample in iteration order; a sample is
    flipped when its number is < flip_prob. Nothing else consumes that generator.
    """

    def __init__(self, dataset, batch_size, img_scale, flip_prob=0.5, shuffle=True, seed=0,
                 mean=DEFAULT_MEAN, std=DEFAULT_STD, to_rgb=True, size_divisor=32,
                 drop_last=False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.img_scale = tuple(img_scale)
        self.flip_prob = float(flip_prob)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.mean, self.std, self.to_rgb = mean, std, to_rgb
        self.size_divisor = int(size_divisor)
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def plan(self):
        """(order, flips) of this epoch: dataset indices and per-sample flip decisions."""
        n = len(self.dataset)
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        flips = rng.random(n) < self.flip_prob
        return order, flips

    def __iter__(self):
        order, flips = self.plan()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, len(order))
            samples = [self.prepare(int(order[i]), bool(flips[i])) for i in range(start, stop)]
            yield collate(samples)

    def prepare(self, idx, do_flip):
        """One sample through resize -> flip -> normalise -> pad."""
        data = self.dataset.load(idx)
        img, gt_bboxes, scale_factor = transforms.resize(data["img"], data["gt_bboxes"],
                                                         self.img_scale)
        img_shape = img.shape[:2]
        ignore = transforms.scale_boxes(data["gt_bboxes_ignore"], scale_factor, img_shape)
        if do_flip:
            img, gt_bboxes = transforms.flip(img, gt_bboxes)
            ignore = transforms.flip_boxes(ignore, img_shape[1])
        img = transforms.normalize(img, self.mean, self.std, self.to_rgb)
        img = transforms.pad(img, self.size_divisor)
        meta = {"img_id": int(data["img_id"]), "file_name": data["file_name"],
                "ori_shape": tuple(int(s) for s in data["ori_shape"]),
                "img_shape": tuple(int(s) for s in img_shape),
                "pad_shape": tuple(int(s) for s in img.shape[:2]),
                "scale_factor": scale_factor, "flip": bool(do_flip)}
        return {"img": img, "gt_bboxes": gt_bboxes, "gt_labels": data["gt_labels"],
                "gt_bboxes_ignore": ignore, "img_meta": meta}


def collate(samples):
    """Stack padded HxWx3 images into (B, 3, H_max, W_max), zero filled; lists for the rest."""
    height = max(s["img"].shape[0] for s in samples)
    width = max(s["img"].shape[1] for s in samples)
    imgs = np.zeros((len(samples), 3, height, width), dtype=np.float32)
    for i, s in enumerate(samples):
        h, w = s["img"].shape[:2]
        imgs[i, :, :h, :w] = s["img"].transpose(2, 0, 1)
    return {"imgs": imgs,
            "gt_bboxes": [s["gt_bboxes"] for s in samples],
            "gt_labels": [s["gt_labels"] for s in samples],
            "gt_bboxes_ignore": [s["gt_bboxes_ignore"] for s in samples],
            "img_metas": [s["img_meta"] for s in samples]}


def build_dataloader(cfg, split):
    """DataLoader for split 'train' or 'val' from a config of `gfocal.config`."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    data = cfg["data"]
    root = data["root"]
    if not root:
        from gfocal.data.synthetic import ensure_mini_coco
        root = ensure_mini_coco()
    train = split == "train"
    dataset = CocoDataset(os.path.join(root, data[f"{split}_ann"]),
                          os.path.join(root, data[f"{split}_img"]), test_mode=not train)
    num_classes = cfg.get("model", {}).get("num_classes")
    if num_classes is not None and num_classes != dataset.num_classes:
        raise DatasetError(f"{dataset.ann_file}: has {dataset.num_classes} categories but "
                           f"'model.num_classes' = {num_classes} in {cfg.get('source', 'config')}")
    return DataLoader(dataset,
                      batch_size=data["batch_size"] if train else data["val_batch_size"],
                      img_scale=data["img_scale"],
                      flip_prob=data["flip_prob"] if train else 0.0,
                      shuffle=train, seed=cfg.get("train", {}).get("seed", 0),
                      mean=data["mean"], std=data["std"], to_rgb=data["to_rgb"],
                      size_divisor=data["size_divisor"], drop_last=False)
