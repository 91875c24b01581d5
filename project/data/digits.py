"""scikit-learn's bundled 8x8 handwritten digits: the default data set, no download."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from project.data.source import DataSource, SourceOptions
from project.data.split import seeded_split
from project.data.transforms import Stats


def digits_counts() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits as stored: (1797, 1, 8, 8) uint8 ink counts 0..16, and labels."""
    from sklearn.datasets import load_digits  # scikit-learn takes a second to import; only digits needs it

    digits = load_digits()
    return torch.tensor(digits.images, dtype=torch.uint8).unsqueeze(1), torch.tensor(digits.target, dtype=torch.long)


def digits_tensors() -> tuple[Tensor, Tensor]:
    """The digits as (1797, 1, 8, 8) floats in [0, 1], and labels."""
    counts, labels = digits_counts()
    return counts.float() / 16.0, labels


class DigitsData(DataSource):
    """1,797 grayscale digits, normalized with the statistics of the training split only."""

    channels = 1
    input_hw = (8, 8)

    def __init__(self, val_fraction: float = 0.2, seed: int = 42):
        # The data module holds out the same split; the statistics must not see its images.
        self.val_fraction = val_fraction
        self.seed = seed
        self._stats: Stats | None = None

    @classmethod
    def from_options(cls, options: SourceOptions) -> DigitsData:
        return cls(options.val_fraction, options.seed)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def own_normalization(self) -> Stats:
        if self._stats is None:
            images, labels = digits_tensors()
            train, _ = seeded_split(TensorDataset(images, labels), self.val_fraction, self.seed)
            pixels = images[train.indices]  # (N_train, 1, 8, 8)
            self._stats = ((pixels.mean().item(),), (pixels.std().item(),))
        return self._stats

    def to_model_input(self, x: Tensor) -> Tensor:
        (mean,), (std,) = self.normalization()
        return (x.float() / 16.0 - mean) / std

    def full_train(self, raw: bool = False) -> TensorDataset:
        counts, labels = digits_counts()
        return TensorDataset(counts if raw else self.to_model_input(counts), labels)
