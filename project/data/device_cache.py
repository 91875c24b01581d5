"""The device-resident data path (``data.device_cache``): a whole split held in device memory as
uint8 and served in batches by slicing, with shuffling, normalisation and augmentation on the
device and no per-sample Python. For data sets that fit: digits, MNIST, CIFAR, small folders."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


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


class DeviceBatches:
    """Batches of a ``CachedSplit``, like a ``DataLoader`` over it with a ``RandomSampler`` on ``generator``,
    or with ``sampler`` (a rank's ``DistributedSampler`` under DDP) when one is given.

    Without a sampler, each pass draws from the generator what a ``RandomSampler`` draws, at the
    same points: the permutation and, once the sampler runs dry (forming a smaller last batch, or
    asked for one past the last whole batch), a second permutation it throws away. So both paths
    visit the samples in the same order, epoch after epoch, and leave the generator in the same state.
    With a sampler, the batches are its indices in its order; Lightning finds it as ``.sampler`` and
    calls its ``set_epoch`` as it does a DataLoader's.
    """

    batch_sampler = None  # with .sampler, what Lightning reads of a DataLoader: batches come by slicing

    def __init__(
        self,
        split: CachedSplit,
        batch_size: int,
        to_model_input: Callable[[Tensor], Tensor],
        generator: torch.Generator,
        shuffle: bool = False,
        sampler: Sampler[int] | None = None,
    ):
        self.split, self.batch_size, self.to_model_input = split, batch_size, to_model_input
        self.generator, self.shuffle, self.sampler = generator, shuffle, sampler

    def __len__(self) -> int:
        n = len(self.split) if self.sampler is None else len(self.sampler)
        return math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.sampler is not None:
            yield from self._slices(torch.tensor(list(self.sampler), dtype=torch.long))
            return
        n = len(self.split)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start, batch in zip(range(0, n, self.batch_size), self._slices(order)):
            if self.shuffle and start + self.batch_size > n:
                torch.randperm(n, generator=self.generator)  # the sampler running dry
            yield batch
        if self.shuffle and n % self.batch_size == 0:
            torch.randperm(n, generator=self.generator)  # asked past the last whole batch: the sampler runs dry

    def _slices(self, order: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
        order = order.to(self.split.labels.device)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.to_model_input(self.split.images[index]), self.split.labels[index]
