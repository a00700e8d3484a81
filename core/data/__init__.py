"""Datasets as uint8 tensors on the device, batched on-device augmentation, task splits.

Public surface: `prepare_dataset`, `load_images`, `ImageData`, `DATASETS`, `data_root`,
`cache_dir`, `SyntheticSpec`, `make_synthetic`, `Augmentation`, `prepare_batch`, `task_classes`,
`indices_of`, `stratified_indices`, `BatchOrder`. The bit-flip stream is `core.data.bitflip`.
"""

from core.data.augment import Augmentation, prepare_batch
from core.data.cache import cache_dir
from core.data.images import DATASETS, ImageData, data_root, load_images, prepare_dataset
from core.data.synthetic import SyntheticSpec, make_synthetic
from core.data.tasks import BatchOrder, indices_of, stratified_indices, task_classes

__all__ = [
    "DATASETS",
    "Augmentation",
    "BatchOrder",
    "ImageData",
    "SyntheticSpec",
    "cache_dir",
    "data_root",
    "indices_of",
    "load_images",
    "make_synthetic",
    "prepare_batch",
    "prepare_dataset",
    "stratified_indices",
    "task_classes",
]
