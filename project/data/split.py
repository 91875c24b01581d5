"""The seeded train/val split, shared by the data module and the sources that measure their training split;
and the data module's three splits of a source."""

from __future__ import annotations

from collections.abc import Sized
from typing import TYPE_CHECKING, cast

import torch
from torch.utils.data import Dataset, Subset, random_split

if TYPE_CHECKING:
    from project.data.source import DataSource


def seeded_split(full: Dataset, val_fraction: float, seed: int) -> list[Subset]:
    """[train, val] subsets of ``full``: ``val_fraction`` of it (at least one item) held out, fixed by ``seed``."""
    total = len(cast(Sized, full))  # torch's Dataset type leaves __len__ out; the data sets split here have it
    n_val = max(1, round(total * val_fraction))
    # A fresh generator per call: statistics and the loaders then always see the same split.
    return random_split(full, [total - n_val, n_val], generator=torch.Generator().manual_seed(seed))


def stage_splits(source: DataSource, val_fraction: float, seed: int, raw: bool) -> tuple[Dataset, Dataset, Dataset]:
    """(train, val, test) of ``source`` (``raw``: images as stored, see ``DataSource``): its own
    validation split, or ``val_fraction`` of its training images held out with ``seed``; its own test
    split, or the validation split again."""
    full, own_val = source.full_train(raw), source.own_val(raw)
    train, val = (full, own_val) if own_val is not None else seeded_split(full, val_fraction, seed)
    own_test = source.own_test(raw)
    return train, val, own_test if own_test is not None else val
