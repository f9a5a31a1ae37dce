"""Datasets as in-memory tensors: ``load_dataset(name)`` returns an :class:`ImageDataset`."""

from robustlab.data.base import ImageDataset
from robustlab.data.registry import available_datasets, load_dataset, register_dataset

__all__ = ["ImageDataset", "available_datasets", "load_dataset", "register_dataset"]
