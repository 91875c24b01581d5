"""Each stage's loader: which samples this process takes (all of them, or its rank's share under
DDP) in which order, and the DataLoader that reads them."""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sized
from typing import cast

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from project.data.order import EpochOrder, ShuffledSampler


def stage_sampler(
    dataset: Sized,
    shuffle: bool,
    shard: tuple[int, int] | None,
    order: EpochOrder,
    batch_size: int,
    seed: int,
    epoch: int = 0,
) -> Sampler[int] | None:
    """One process (``shard`` None): a ``RandomSampler``'s draws from the training ``order``
    (``ShuffledSampler``, which a resume inside an epoch starts at its next batch), or none (in order).
    Under DDP, ``shard`` is (rank, world size) and the sampler the rank's share: for training,
    Lightning's own choice, a ``DistributedSampler`` seeded with the run's seed (one permutation per
    epoch from seed + epoch, dealt out rank by rank and padded with repeats so that every rank takes
    as many steps), set to ``epoch``, the epoch of the loader's first pass; for evaluation and
    prediction, every sample exactly once (``UnrepeatedDistributedSampler``: ranks may differ by one
    sample, and nothing is counted twice; a padded ``DistributedSampler`` would count some twice,
    pytorch#25162)."""
    if shard is None:
        return ShuffledSampler(len(dataset), order, batch_size) if shuffle else None
    rank, world = shard
    indexed = cast(Dataset, dataset)  # the samplers read its length only (a device cache has no items)
    if shuffle:
        sampler: DistributedSampler = ResumableDistributedSampler(
            indexed, order, batch_size, num_replicas=world, rank=rank, shuffle=True, seed=seed
        )
        # Lightning tells the sampler each epoch only after it created the loader's iterator, whose
        # workers draw their first indices at once, and a resumed run's iterator is not created again:
        # without this, its first epoch would take epoch 0's order (Lightning#21938).
        sampler.set_epoch(epoch)
        return sampler
    return UnrepeatedDistributedSampler(indexed, num_replicas=world, rank=rank, shuffle=False)


class ResumableDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` whose next pass starts at the batch ``order`` says: a run resumed inside
    an epoch goes on with the rank's share of that epoch from its first batch not yet trained on."""

    def __init__(self, dataset: Dataset, order: EpochOrder, batch_size: int, **kwargs):
        super().__init__(dataset, **kwargs)
        self.order, self.batch_size = order, batch_size

    def __iter__(self) -> Iterator[int]:
        share = list(super().__iter__())
        return iter(share[self.order.take_skip() * self.batch_size :])


def leave_stop_signals_to_the_training_process(worker_id: int) -> None:
    """A data worker ignores the signals that stop or requeue a run. A scheduler sends them to every
    process of a job (Ctrl-C, to the terminal's whole process group), and the training process acts
    on them (``project.preemption``); a worker killed by one would take the run with it. The workers
    still end with the run: the loader shuts them down, and each watches its parent."""
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)


def data_loader(
    dataset: Dataset, batch_size: int, sampler: Sampler[int] | None, num_workers: int, worker_seeds: torch.Generator
) -> DataLoader:
    """``batch_size`` batches of ``dataset`` in ``sampler``'s order, read by ``num_workers`` processes
    that persist from pass to pass, are seeded from ``worker_seeds`` and leave stop signals to the
    training process; pinned memory with CUDA."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=worker_seeds,
        worker_init_fn=leave_stop_signals_to_the_training_process if num_workers > 0 else None,
    )
