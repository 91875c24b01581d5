"""The device-resident data path (``data.device_cache``): a whole split held in device memory as
uint8 and served in batches by slicing, with shuffling, normalisation and augmentation on the
device and no per-sample Python. For data sets that fit: digits, MNIST, CIFAR, small folders."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

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


class DeviceBatches:
    """Batches of a ``CachedSplit``, like a ``DataLoader`` over it with a ``RandomSampler`` whose
    generator is ``order``'s (``order=None``: in the split's order).

    Each pass draws from the generator what that sampler draws, at the same points: the
    permutation and, once the sampler runs dry (forming a smaller last batch, or asked for one past
    the last whole batch), a second permutation it throws away. So both paths visit the samples in
    the same order, epoch after epoch, and leave the generator in the same state. A pass that
    resumes an interrupted epoch starts at the batch ``order`` says.
    """

    def __init__(
        self,
        split: CachedSplit,
        batch_size: int,
        to_model_input: Callable[[Tensor], Tensor],
        order: EpochOrder | None = None,
    ):
        self.split, self.batch_size, self.to_model_input, self.order = split, batch_size, to_model_input, order

    def __len__(self) -> int:
        return math.ceil(len(self.split) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n, order = len(self.split), self.order
        indices = order.permutation(n) if order is not None else torch.arange(n)
        indices = indices.to(self.split.labels.device)
        first = order.take_skip() * self.batch_size if order is not None else 0
        for start in range(first, n, self.batch_size):
            if order is not None and start + self.batch_size > n:
                order.run_dry(n)  # the sampler running dry
            index = indices[start : start + self.batch_size]
            yield self.to_model_input(self.split.images[index]), self.split.labels[index]
        if order is not None and n % self.batch_size == 0:
            order.run_dry(n)  # asked past the last whole batch: the sampler runs dry
