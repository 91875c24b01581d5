"""What Lightning's DDP strategy does around the loop, done by hand for the reference under torchrun:
the process group, SyncBatchNorm, ``DistributedDataParallel``, and the sampler told each epoch.

The textbook loop in ``loop.py`` does not change: it gets a DDP-wrapped network (whose ``backward``
averages the gradients over the ranks) and loaders that hold this rank's share of the data. The
metrics are torchmetrics objects, which sum their states over the process group when computed.
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from project.reference.settings import Processes


def init_process_group(processes: Processes, device: torch.device) -> None:
    """Join the run's process group (torchrun's ``env://`` rendezvous), unless this process is in one
    already (``twinloop-compare`` runs Lightning first, whose group stays until exit); one process
    without torchrun gets a group of its own, as Lightning's DDP gives it."""
    if not processes.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"  # Lightning's choice
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if processes.world_size == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        dist.init_process_group(backend, rank=processes.rank, world_size=processes.world_size)
    # Torn down before the interpreter's own exit, as Lightning does: a gloo group left to it can
    # abort the process ("terminate called without an active exception").
    atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def reseed() -> None:
    """Seed every rank again with the run's seed, as Lightning's DDP strategy does once its process
    group is up (``reset_seed``: after the model was built, before the first batch), so that Dropout
    draws the same masks in both loops. ``seed_everything`` left the seed in ``PL_GLOBAL_SEED``."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is None:
        return
    random.seed(int(seed))
    np.random.seed(int(seed))
    torch.manual_seed(int(seed))


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank: every rank gets the same answer at the same step."""
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_rank_zero(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag``, on every rank."""
    value = torch.tensor(float(flag), device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def data_parallel(net: nn.Module, processes: Processes, device: torch.device, sync_batchnorm: bool):
    """``(network for the loop, network with its layers)``: under DDP the network wrapped as
    Lightning's DDP strategy wraps it, after its BatchNorm layers were made SyncBatchNorm if asked
    (those share their parameters and buffers with ``net``'s); one process: ``net`` twice."""
    if not processes.distributed:
        return net, net
    layers = nn.SyncBatchNorm.convert_sync_batchnorm(net) if sync_batchnorm else net
    return DistributedDataParallel(layers, device_ids=[device] if device.type == "cuda" else None), layers


class Batches(Protocol):
    """A loader that knows how many batches a pass holds: a DataLoader, or DeviceBatches."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator: ...


class EpochShuffled:
    """A training loader whose sampler is told the epoch before each pass, as Lightning's fit loop
    tells it: a ``DistributedSampler`` shuffles by seed + epoch, and would repeat one order without."""

    def __init__(self, loader: Batches, first_epoch: int):
        self.loader, self.epoch = loader, first_epoch

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        self.epoch += 1
        yield from self.loader
