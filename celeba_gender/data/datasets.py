"""The two torch Datasets: per-sample decoding, and rows of the decoded-image tensor cache.

Both yield ``(image, label, row)``: ``row`` is the image's position in the index table, so
predictions can be traced back to files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from celeba_gender.data.cache import ImageTensorCache, PooledTensorCache
from celeba_gender.data.errors import DataError
from celeba_gender.data.images import ImageDecodeError, decode_image


class PerSampleImageDataset(Dataset):
    """Decode one file per item with PIL and transform it (the reference study's loader)."""

    def __init__(
        self, paths: Sequence[Path], labels: np.ndarray, rows: np.ndarray, transform: Callable
    ) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int, int]:
        path = self.paths[item]
        try:
            image = decode_image(path, name=Path(path).name)
        except ImageDecodeError as error:
            raise DataError(
                f"{path} changed since the data scan checked it and can no longer be used "
                f"({error.reason}). Run again: the scan checks changed files anew and leaves "
                "broken ones out."
            ) from None
        return self.transform(image), int(self.labels[item]), int(self.rows[item])


class CachedImageDataset(Dataset):
    """Rows of an ``ImageTensorCache``, fetched a whole batch at a time.

    The DataLoader calls ``__getitems__`` with a batch of indices, so one sorted gather from
    the cache file replaces per-image work; use ``collate=prebatched``. Images stay uint8
    until ``BatchTransform`` runs on the batch's device. With ``pooled`` (the cache's 2x2
    block sums) and ``read_pooled`` set (before an epoch's workers start), batches are int16
    block sums instead: the same images for the sizes ``BatchTransform.reads_pooled`` allows.
    """

    def __init__(
        self,
        cache: ImageTensorCache,
        cache_rows: np.ndarray,
        labels: np.ndarray,
        rows: np.ndarray,
        pooled: PooledTensorCache | None = None,
    ) -> None:
        self.cache = cache
        self.pooled = pooled
        self.read_pooled = False
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.rows = torch.as_tensor(np.asarray(rows, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels, rows = self.__getitems__([item])
        return images[0], labels[0], rows[0]

    def __getitems__(self, items: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        items = torch.as_tensor(items, dtype=torch.long)
        cache = self.pooled if self.read_pooled and self.pooled is not None else self.cache
        images = torch.from_numpy(cache.gather(self.cache_rows[items.numpy()]))
        return images, self.labels[items], self.rows[items]


def prebatched(batch: tuple) -> tuple:
    """collate_fn for ``CachedImageDataset``: its ``__getitems__`` already built the batch."""
    return batch
