"""The seeded train/val split, shared by the data module and the sources that measure their training split."""

from __future__ import annotations

from collections.abc import Sized
from typing import cast

import torch
from torch.utils.data import Dataset, Subset, random_split


def seeded_split(full: Dataset, val_fraction: float, seed: int) -> list[Subset]:
    """[train, val] subsets of ``full``: ``val_fraction`` of it (at least one item) held out, fixed by ``seed``."""
    total = len(cast(Sized, full))  # torch's Dataset type leaves __len__ out; the data sets split here have it
    n_val = max(1, round(total * val_fraction))
    # A fresh generator per call: statistics and the loaders then always see the same split.
    return random_split(full, [total - n_val, n_val], generator=torch.Generator().manual_seed(seed))
