"""scikit-learn's bundled 8x8 handwritten digits: the default data set, no download."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from project.data.source import DataSource, SourceOptions
from project.data.split import seeded_split
from project.data.transforms import Stats


def digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits: (1797, 1, 8, 8) floats in [0, 1] and labels."""
    from sklearn.datasets import load_digits  # scikit-learn takes a second to import; only digits needs it

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


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

    def normalization(self) -> Stats:
        if self._stats is None:
            images, labels = digits_tensors()
            train, _ = seeded_split(TensorDataset(images, labels), self.val_fraction, self.seed)
            pixels = images[train.indices]  # (N_train, 1, 8, 8)
            self._stats = ((pixels.mean().item(),), (pixels.std().item(),))
        return self._stats

    def full_train(self) -> TensorDataset:
        images, labels = digits_tensors()
        (mean,), (std,) = self.normalization()
        return TensorDataset((images - mean) / std, labels)
