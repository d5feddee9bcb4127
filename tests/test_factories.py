"""The shared test inputs (tests/factories.py): batches in the loader's very format, and the
GPU check's stand-alone tiny config equal to the factory's."""
import os
import runpy

import numpy as np

from gfocal.config import from_dict
from gfocal.data.loader import build_dataloader, collate
from tests.factories import pipeline_batch, tiny_sections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A config file of its own: `scripts/gpu.py check --dry-run` trains it where the tests may not import.
GPU_CHECK_TINY_CONFIG = os.path.join(ROOT, "tests", "gpu_check_tiny_config.py")


def layout(value):
    """What a consumer of a batch relies on: keys, types, dtypes and ranks, not the numbers."""
    if isinstance(value, dict):
        return {key: layout(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value), sorted({repr(layout(item)) for item in value})
    if isinstance(value, np.ndarray):
        return value.dtype, value.ndim
    return type(value)


def test_a_factory_batch_is_laid_out_as_the_loaders(tiny_coco):
    loader = build_dataloader(from_dict(tiny_sections(tiny_coco)), "val")
    loaded = collate([loader.prepare(0, False), loader.prepare(1, False)])
    made = pipeline_batch(loaded["imgs"], loaded["gt_bboxes"], loaded["gt_labels"],
                          [meta["img_shape"] for meta in loaded["img_metas"]],
                          [meta["pad_shape"] for meta in loaded["img_metas"]])
    assert layout(made) == layout(loaded)
    for got, want in zip(made["img_metas"], loaded["img_metas"]):
        assert got["img_shape"] == want["img_shape"] and got["pad_shape"] == want["pad_shape"]


def test_a_factory_batch_fills_every_meta_from_the_shapes():
    imgs = np.zeros((2, 3, 40, 64), np.float32)
    batch = pipeline_batch(imgs, [[[1, 2, 30, 20]], []], [[5], []], [(40, 64), (33, 50)])
    assert [b.shape for b in batch["gt_bboxes"]] == [(1, 4), (0, 4)]
    assert [m["img_id"] for m in batch["img_metas"]] == [0, 1]
    assert [m["ori_shape"] for m in batch["img_metas"]] == [(40, 64), (33, 50)]
    assert [m["pad_shape"] for m in batch["img_metas"]] == [(40, 64), (33, 50)]
    assert pipeline_batch(imgs, [[], []], [[], []])["img_metas"][1]["img_shape"] == (40, 64)


def test_the_gpu_checks_tiny_config_is_the_factorys():
    namespace = runpy.run_path(GPU_CHECK_TINY_CONFIG)
    sections = {name: value for name, value in namespace.items() if not name.startswith("_")}
    assert sections == tiny_sections(root="")
