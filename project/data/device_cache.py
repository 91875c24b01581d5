"""The device-resident data path (``data.device_cache``): a whole split held in device memory as
uint8 and served in batches by slicing, with shuffling, normalisation and augmentation on the
device and no per-sample Python. For data sets that fit: digits, MNIST, CIFAR, small folders."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized
from typing import cast

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from project.data.order import EpochOrder


class CachedSplit:
    """Every (image, label) of one split, decoded once: (N, C, H, W) uint8 and (N,) int64 on ``device``."""

    def __init__(self, dataset: Dataset, device: torch.device, num_workers: int = 0):
        # The split's own order; a private generator keeps the global RNG (Dropout's) untouched.
        loader = DataLoader(dataset, batch_size=512, num_workers=num_workers, generator=torch.Generator())
        images, labels = zip(*loader)
        self.images = torch.cat(images).to(device)
        self.labels = torch.cat(labels).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> CachedSplit:
        """Move the split to ``device`` (once; a no-op where it is already)."""
        self.images, self.labels = self.images.to(device), self.labels.to(device)
        return self


def cached_splits(splits: tuple[Dataset, ...], device: torch.device, num_workers: int = 0) -> tuple[CachedSplit, ...]:
    """Each of ``splits`` decoded once into ``device`` memory; a split given twice (the validation
    split as the test split) is cached once."""
    cached: dict[int, CachedSplit] = {}
    for split in splits:
        if id(split) not in cached:
            cached[id(split)] = CachedSplit(split, device, num_workers)
    return tuple(cached[id(split)] for split in splits)


class DeviceBatches:
    """Batches of a ``CachedSplit``, like a ``DataLoader`` over it with a ``RandomSampler`` whose
    generator is ``order``'s (``order=None``: in the split's order), or with ``sampler`` (a rank's
    ``DistributedSampler`` under DDP) when one is given.

    Without a sampler, each pass draws from the generator what that sampler draws, at the same
    points: the permutation and, once the sampler runs dry (forming a smaller last batch, or asked
    for one past the last whole batch), a second permutation it throws away. So both paths visit the
    samples in the same order, epoch after epoch, and leave the generator in the same state. A pass
    that resumes an interrupted epoch starts at the batch ``order`` says. With a sampler, the
    batches are its indices in its order; Lightning finds it as ``.sampler`` and calls its
    ``set_epoch`` as it does a DataLoader's.
    """

    batch_sampler = None  # with .sampler, what Lightning reads of a DataLoader: batches come by slicing

    def __init__(
        self,
        split: CachedSplit,
        batch_size: int,
        to_model_input: Callable[[Tensor], Tensor],
        order: EpochOrder | None = None,
        sampler: Sampler[int] | None = None,
    ):
        self.split, self.batch_size, self.to_model_input = split, batch_size, to_model_input
        self.order, self.sampler = order, sampler

    def __len__(self) -> int:
        # a rank's DistributedSampler: torch's Sampler type leaves __len__ out
        n = len(self.split) if self.sampler is None else len(cast(Sized, self.sampler))
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.sampler is not None:
            yield from self._slices(torch.tensor(list(self.sampler), dtype=torch.long))
            return
        n, order = len(self.split), self.order
        indices = order.permutation(n) if order is not None else torch.arange(n)
        first = order.take_skip() * self.batch_size if order is not None else 0
        for start, batch in zip(range(first, n, self.batch_size), self._slices(indices[first:])):
            if order is not None and start + self.batch_size > n:
                order.run_dry(n)  # the sampler running dry
            yield batch
        if order is not None and n % self.batch_size == 0:
            order.run_dry(n)  # asked past the last whole batch: the sampler runs dry

    def _slices(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        order = order.to(self.split.labels.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.to_model_input(self.split.images[index]), self.split.labels[index]
