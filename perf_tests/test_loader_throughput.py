"""Data loader throughput: images per second that the shared numpy loader delivers at the
paper's scale (1333x800, batch 2) on the bundled mini COCO, in this process and with 2 and 4
worker processes (`data.workers`).

A round takes the next BATCHES_PER_ROUND batches of one endless stream over epochs; the
warm-up round starts the pool and fills its prefetch window, so neither is timed.
`extra_info`: images_per_s (median round), workers, img_scale. With --benchmark-disable one
batch is drawn, a smoke test.
"""
import itertools

import pytest

from gfocal.config import from_dict
from gfocal.data.loader import build_dataloader
from gfocal.data.synthetic import CATEGORIES, ensure_mini_coco

IMG_SCALE = [1333, 800]
BATCH = 2
BATCHES_PER_ROUND = 8
ROUNDS = 5


def endless(loader):
    """The loader's batches, epoch after epoch (as training consumes them)."""
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


@pytest.mark.parametrize("workers", [0, 2, 4])
def test_loader_throughput(benchmark, workers):
    cfg = from_dict({"model": {"num_classes": len(CATEGORIES)},
                     "data": {"root": ensure_mini_coco(), "img_scale": IMG_SCALE,
                              "batch_size": BATCH, "workers": workers}})
    per_round = BATCHES_PER_ROUND if benchmark.enabled else 1
    benchmark.group = f"loader train {IMG_SCALE[0]}x{IMG_SCALE[1]} b{BATCH}"
    with build_dataloader(cfg, "train") as loader:
        assert loader.workers == workers
        stream = endless(loader)

        def take():
            for batch in itertools.islice(stream, per_round):
                assert batch["imgs"].shape[0] == BATCH
        benchmark.pedantic(take, rounds=ROUNDS, warmup_rounds=1, iterations=1)
        stream.close()
    stats = benchmark.stats
    images_per_s = BATCH * per_round / stats.stats.median if stats else None
    benchmark.extra_info.update(images_per_s=images_per_s, workers=workers,
                                img_scale=f"{IMG_SCALE[0]}x{IMG_SCALE[1]}")
