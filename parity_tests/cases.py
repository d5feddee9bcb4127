"""The parity suite's inputs: the small model's sizes and the input cases, as pipeline-format
batches (gfocal/data/loader.py), the same for every subject."""
import numpy as np
import pytest

from gfocal.config import from_dict
from tests.factories import TINY_MODEL, pipeline_batch

# The tiny model with the default run's two stacked convs, so that a conv's output feeds
# another within each tower.
SMALL_MODEL = dict(TINY_MODEL, stacked_convs=2)
MODES = ("eval", "train")
# name -> how the batch is made; at least two image sizes, one not a multiple of 32 (the
# random cases are raw tensors, not padded), batch sizes 1 and 2.
CASES = {
    "coco_b2": dict(kind="coco", img_scale=[128, 96], batch_size=2, first=0),
    "coco_b1": dict(kind="coco", img_scale=[100, 75], batch_size=1, first=8),  # a crowd box
    "random_b1": dict(kind="random", shape=(1, 3, 75, 100), seed=1),
    "random_b2": dict(kind="random", shape=(2, 3, 83, 61), seed=2),
    # a batch whose second image has no boxes (its targets are all background)
    "random_b2_empty": dict(kind="random", shape=(2, 3, 64, 80), seed=3, empty=(1,)),
    # one image without boxes: the loss normaliser num_total_pos is at its floor of 1
    "random_b1_empty": dict(kind="random", shape=(1, 3, 64, 80), seed=4, empty=(0,)),
}


def selected_cases(config):
    """CASES, or the ones --parity-cases names (a comma-separated list)."""
    names = config.getoption("--parity-cases")
    if not names:
        return list(CASES)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in CASES]
    if unknown:
        raise pytest.UsageError(f"--parity-cases: unknown {', '.join(unknown)} "
                                f"(known: {', '.join(CASES)})")
    return chosen


def small_config(img_scale=(128, 96), batch_size=2, **model):
    """The small model's config; in GFL V1 with mmdetection 3.x's warmup (docs/MODEL.md
    section 15), the recipe a V1 implementation is held to."""
    v1 = model.get("head") == "gfl_v1"
    return from_dict({"model": dict(SMALL_MODEL, **model),
                      "data": dict(img_scale=list(img_scale), batch_size=batch_size,
                                   val_batch_size=batch_size),
                      "optim": dict(warmup_iters=500, warmup_style="mmengine" if v1 else "mmcv")},
                     source="parity small model")


# ---------------------------------------------------------------- input cases
def coco_batch(spec):
    """The first `batch_size` val images with boxes from index `first` on, through the
    shared pipeline (resize, normalise, pad to 32, no flip)."""
    from gfocal.data.loader import build_dataloader, collate
    loader = build_dataloader(small_config(spec["img_scale"], spec["batch_size"]), "val")
    samples, idx = [], spec["first"]
    while len(samples) < spec["batch_size"]:
        sample = loader.prepare(idx, False)
        if len(sample["gt_bboxes"]):
            samples.append(sample)
        idx += 1
    return collate(samples)


def random_boxes(rng, img_h, img_w, n):
    """n boxes inside the image, sizes from 2 px up to most of the image."""
    x1 = rng.uniform(0, img_w - 3, n)
    y1 = rng.uniform(0, img_h - 3, n)
    w = rng.uniform(2, img_w - x1)
    h = rng.uniform(2, img_h - y1)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def random_batch(spec, num_classes=SMALL_MODEL["num_classes"]):
    """Raw random images (not padded to 32) with random boxes plus deliberate ties.

    Tie makers: a box centred half-way between anchor centres (equal distances), two
    identical boxes (equal IoUs, the smaller gt index must win) and a box touching the
    image border.
    """
    rng = np.random.default_rng(spec["seed"])
    n_img, _, height, width = spec["shape"]
    imgs = rng.standard_normal(spec["shape"]).astype(np.float32)
    gt_bboxes, gt_labels, img_shapes = [], [], []
    for i in range(n_img):
        # the second image of a batch is smaller than the tensor: its padding is invalid
        img_h, img_w = (height, width) if i == 0 else (height - 19, width - 13)
        imgs[i, :, img_h:, :] = 0
        imgs[i, :, :, img_w:] = 0
        boxes = [random_boxes(rng, img_h, img_w, 4),
                 np.array([[4, 4, 20, 20], [30, 10, 54, 40], [30, 10, 54, 40],
                           [img_w - 25, img_h - 30, img_w, img_h]], dtype=np.float32)]
        boxes = np.concatenate(boxes)
        if i in spec.get("empty", ()):
            boxes = boxes[:0]
        gt_bboxes.append(boxes)
        gt_labels.append(rng.integers(0, num_classes, len(boxes)).astype(np.int64))
        img_shapes.append((img_h, img_w))
    return pipeline_batch(imgs, gt_bboxes, gt_labels, img_shapes, file_name="random_{}.png")


def make_case(name, num_classes=SMALL_MODEL["num_classes"]):
    """The batch of case `name`; random labels drawn from `num_classes` classes."""
    spec = CASES[name]
    return coco_batch(spec) if spec["kind"] == "coco" else random_batch(spec, num_classes)


def as_float64(batch):
    out = dict(batch)
    out["imgs"] = batch["imgs"].astype(np.float64)
    out["gt_bboxes"] = [b.astype(np.float64) for b in batch["gt_bboxes"]]
    return out


def seeded_state(model_cfg, seed=0):
    """The PyTorch port's initial weights after torch.manual_seed(seed) (numpy, canonical)."""
    import torch

    from gfocal.ports import load_port
    port = load_port("torch")
    torch.manual_seed(seed)
    return port.checkpoint.state_dict_numpy(port.build_detector(model_cfg))
