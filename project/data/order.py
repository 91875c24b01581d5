"""The shuffled order of the training split, epoch by epoch, resumable inside an epoch.

It draws from its generator exactly what ``RandomSampler(generator=...)`` draws, at the same points
(a permutation per epoch, and a second one, thrown away, when the sampler runs dry), so runs are
unchanged. It also keeps the generator's state from before the epoch's permutation: a checkpoint
written inside an epoch carries it, and a resumed run draws that permutation again and skips the
batches already trained on, so no sample is repeated or left out.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochOrder:
    """The permutation of each epoch, drawn from ``generator``, and where a resumed epoch goes on."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.epoch_start = generator.get_state()  # before the current epoch's permutation
        self.skip_batches = 0  # of the next epoch drawn: the batches a resumed epoch already trained on

    def permutation(self, n: int) -> torch.Tensor:
        self.epoch_start = self.generator.get_state()
        return torch.randperm(n, generator=self.generator)

    def run_dry(self, n: int) -> None:
        """What ``RandomSampler`` draws when it is asked for one index past its permutation."""
        torch.randperm(n, generator=self.generator)

    def resume(self, epoch_start: torch.Tensor, batches_done: int) -> None:
        """The next epoch drawn is the interrupted one, from its first batch not yet trained on."""
        self.generator.set_state(epoch_start)
        self.skip_batches = batches_done

    def take_skip(self) -> int:
        skip, self.skip_batches = self.skip_batches, 0
        return skip


class ShuffledSampler(Sampler[int]):
    """``RandomSampler`` over ``n`` indices, with its draws, made resumable by an ``EpochOrder``."""

    def __init__(self, n: int, order: EpochOrder, batch_size: int):
        self.n, self.order, self.batch_size = n, order, batch_size

    def __len__(self) -> int:
        return self.n  # the whole epoch: Lightning and the reference count a resumed epoch's batches themselves

    def __iter__(self) -> Iterator[int]:
        # a generator body, so the permutation is drawn at the first index asked for, as RandomSampler's
        permutation = self.order.permutation(self.n)
        yield from permutation[self.order.take_skip() * self.batch_size :].tolist()
        self.order.run_dry(self.n)
