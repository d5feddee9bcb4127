"""Shared, framework-neutral data pipeline: COCO loading, transforms, seeded batches."""
from gfocal.data.coco import CocoDataset, DatasetError
from gfocal.data.loader import DataLoader, build_dataloader
from gfocal.data.synthetic import ensure_mini_coco

__all__ = ["CocoDataset", "DatasetError", "DataLoader", "build_dataloader", "ensure_mini_coco"]
