"""Datasets as uint8 tensors on the device, batched on-device augmentation, task splits.

Public surface: `load_images`, `ImageData`, `DATASETS`, `data_root`, `SyntheticSpec`,
`Augmentation`, `prepare_batch`, `task_classes`, `indices_of`, `stratified_indices`, `BatchOrder`.
"""

from core.data.augment import Augmentation, prepare_batch
from core.data.images import DATASETS, ImageData, data_root, load_images
from core.data.synthetic import SyntheticSpec, make_synthetic
from core.data.tasks import BatchOrder, indices_of, stratified_indices, task_classes

__all__ = [
    "DATASETS",
    "Augmentation",
    "BatchOrder",
    "ImageData",
    "SyntheticSpec",
    "data_root",
    "indices_of",
    "load_images",
    "make_synthetic",
    "prepare_batch",
    "stratified_indices",
    "task_classes",
]
