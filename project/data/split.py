"""The seeded train/val split, shared by the data module and the sources that measure their training split."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset, random_split


def seeded_split(full: Dataset, val_fraction: float, seed: int) -> list[Subset]:
    """[train, val] subsets of ``full``: ``val_fraction`` of it (at least one item) held out, fixed by ``seed``."""
    n_val = max(1, round(len(full) * val_fraction))
    # A fresh generator per call: statistics and the loaders then always see the same split.
    return random_split(full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(seed))
