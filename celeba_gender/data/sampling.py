"""Training order that a resumed run can reproduce exactly.

``EpochSampler`` draws each epoch's order from ``(seed, epoch)`` alone, not from a generator
that has run for a while, so a run resumed at epoch ``e`` sees the order the uninterrupted run
saw. ``ResumableDataLoader`` tells Lightning how many batches of the current epoch were
delivered (its ``state_dict`` goes into the checkpoint), and a run resumed mid-epoch starts at
the next batch of that same order instead of replaying the epoch from its start.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

# Random streams of a training run, each derived from (seed, epoch, stream[, rank]).
ORDER_STREAM = 0  # the epoch's order: one for all ranks (each takes its shard)
WORKER_STREAM = 1  # the base seed of the epoch's DataLoader workers, per rank
AUGMENTATION_STREAM = 2  # the global streams, per batch: augmentation, mixup, dropout


def stream_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys through numpy's SeedSequence, so nearby seeds, epochs
    and ranks give unrelated streams."""
    entropy = np.random.SeedSequence(list(keys)).generate_state(2, dtype=np.uint32)
    return (int(entropy[0]) << 32 | int(entropy[1])) >> 1


def epoch_generator(seed: int, epoch: int, stream: int = ORDER_STREAM) -> torch.Generator:
    """A generator seeded from (seed, epoch, stream)."""
    entropy = np.random.SeedSequence([seed, epoch, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))


def seed_batch_streams(seed: int, epoch: int, rank: int, batch: int) -> None:
    """Seed the global streams (torch on every device, numpy, python) from (seed, epoch, rank,
    batch): ranks augment, mix and drop out differently, and a run is the same run to run and
    when resumed at any step. Training calls it before each batch's augmentation."""
    value = stream_seed(seed, epoch, AUGMENTATION_STREAM, rank, batch)
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


class EpochSampler(DistributedSampler):
    """Shuffled (or, with ``weights``, drawn with replacement) order of ``size`` items per epoch.

    A ``DistributedSampler`` subclass so that Lightning keeps it under DDP instead of wrapping
    it: each of ``num_replicas`` ranks takes its own shard of one shared order, padded like
    ``DistributedSampler`` pads. ``skip_to(epoch, items)`` makes the next pass start after the
    first ``items`` of this rank's shard (mid-epoch resumption).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size = size
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self._start = 0

    def order(self, epoch: int) -> torch.Tensor:
        """The whole epoch's order over all ranks (before padding and sharding)."""
        generator = epoch_generator(self.seed, epoch)
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        order = self.order(self.epoch)
        total = self.num_samples * self.num_replicas
        if total > len(order):  # pad with the order's own start, as DistributedSampler does
            order = order.repeat(math.ceil(total / len(order)))[:total]
        shard = order[self.rank : total : self.num_replicas]
        start, self._start = self._start, 0
        return iter(shard[start:].tolist())

    def skip_to(self, epoch: int, items: int) -> None:
        self.set_epoch(epoch)
        self._start = items


class ResumableDataLoader(DataLoader):
    """A DataLoader over an ``EpochSampler`` whose position Lightning saves in checkpoints.

    Lightning calls ``state_dict`` when it writes a checkpoint and ``load_state_dict`` before
    the first batch of a run resumed mid-epoch. ``before_epoch`` (optional) is called as each
    epoch's pass starts, before its workers copy the dataset.
    """

    def __init__(
        self, *args: Any, before_epoch: Callable[[], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.before_epoch = before_epoch
        self._delivered = 0

    def __iter__(self) -> Iterator[Any]:
        self._delivered = 0
        if self.before_epoch is not None:
            self.before_epoch()
        # The workers' seeds come from this generator: derive it from (seed, epoch, rank), so
        # each rank's workers have their own streams, the same in every run (the workers are
        # started for each epoch: not persistent).
        sampler = self.sampler
        if isinstance(sampler, EpochSampler):  # (Lightning's overfit_batches replaces it)
            self.generator = torch.Generator().manual_seed(
                stream_seed(sampler.seed, sampler.epoch, WORKER_STREAM, sampler.rank)
            )
        for batch in super().__iter__():
            self._delivered += 1  # counted when handed over, so worker prefetching is not counted
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": self._delivered}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if isinstance(self.sampler, EpochSampler):
            self.sampler.skip_to(state["epoch"], state["batches"] * self.batch_size)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a cluster's stop signal (or Ctrl-C) goes to every process;
    the main process saves a checkpoint and stops, and its workers must live until then."""
    from celeba_gender.stop_signals import ignore_stop_signals as ignore

    ignore()
    from lightning.fabric.utilities.seed import pl_worker_init_function

    pl_worker_init_function(worker_id)  # what Lightning would have set: per-worker seeds
