"""Data: reading CelebA copies, honest splits, rebalancing, transforms, and fast batches."""

from celeba_gender.data.datamodule import IMAGENET_MEAN, IMAGENET_STD, CelebADataModule
from celeba_gender.data.errors import DataError
from celeba_gender.data.index import CelebAIndex, build_index
from celeba_gender.data.splits import SPLIT_METHODS, assign_split

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "SPLIT_METHODS",
    "CelebADataModule",
    "CelebAIndex",
    "DataError",
    "assign_split",
    "build_index",
]
