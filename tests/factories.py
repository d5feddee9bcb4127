"""Inputs the three suites (tests/, parity_tests/, perf_tests/) share: the tiny model's config
and batches in the pipeline format (gfocal/data/loader.py; docs/ARCHITECTURE.md, "The batch").

numpy and gfocal.config only: a child process without PyTorch can import it.
"""
import numpy as np

from gfocal.config import from_dict

# The smallest detector that still runs every part: ResNet-18, 32 channels, one stacked
# conv, GN 8 (the default model's other settings).
TINY_MODEL = dict(depth=18, num_classes=6, feat_channels=32, fpn_channels=32, stacked_convs=1,
                  gn_groups=8)


def tiny_model_cfg(**changes):
    """The tiny model's whole model section: TINY_MODEL and `changes` over the defaults."""
    return from_dict({"model": {**TINY_MODEL, **changes}}, source="tiny model")["model"]


def tiny_sections(root):
    """The config sections of the tiny training on the data at `root`: 96 px, batches of 2,
    one short epoch, no evaluation during it."""
    return {"model": dict(TINY_MODEL),
            "data": dict(root=root, img_scale=[96, 96], batch_size=2),
            "optim": dict(warmup_iters=5, epochs=1),
            "train": dict(eval_interval=0)}


def config_text(sections):
    """`sections` as the text of a config file, one `name = {...}` line each."""
    return "".join(f"{name} = {value!r}\n" for name, value in sections.items())


def img_meta(img_shape, img_id=0, pad_shape=None, ori_shape=None, scale=1.0,
             file_name="img_{}.png"):
    """One image's meta as the loader writes it, unflipped: the image fills `img_shape` of its
    `pad_shape` (default: no padding) and is `scale` times its `ori_shape` (default: the
    image as read). `file_name` is formatted with the img_id."""
    return {"img_id": img_id, "file_name": file_name.format(img_id),
            "ori_shape": tuple(ori_shape or img_shape), "img_shape": tuple(img_shape),
            "pad_shape": tuple(pad_shape or img_shape),
            "scale_factor": np.full(4, scale, np.float32), "flip": False}


def pipeline_batch(imgs, gt_bboxes, gt_labels, img_shapes=None, pad_shapes=None,
                   file_name="img_{}.png"):
    """A batch as the loader collates it: `imgs` (B, 3, H, W) float32, per image its boxes
    (n, 4) x1y1x2y2 and labels (n,), no ignored boxes, unscaled. Image i fills
    img_shapes[i] of the tensor (default all of it), padded to pad_shapes[i] (default: not
    padded)."""
    n_img = len(imgs)
    img_shapes = img_shapes or [imgs.shape[-2:]] * n_img
    pad_shapes = pad_shapes or [None] * n_img
    return {"imgs": imgs,
            "gt_bboxes": [np.asarray(boxes, np.float32).reshape(-1, 4) for boxes in gt_bboxes],
            "gt_labels": [np.asarray(labels, np.int64) for labels in gt_labels],
            "gt_bboxes_ignore": [np.zeros((0, 4), np.float32) for _ in range(n_img)],
            "img_metas": [img_meta(shape, i, pad, file_name=file_name)
                          for i, (shape, pad) in enumerate(zip(img_shapes, pad_shapes))]}
