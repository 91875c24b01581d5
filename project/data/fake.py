"""torchvision's FakeData: random images of any shape, for smoke tests and benchmarks."""

from __future__ import annotations

from typing import cast

from torchvision import datasets as tvd

from project.data.source import DataSource, SourceOptions
from project.data.transforms import Stats, image_transform


class FakeData(DataSource):
    """``size`` random images of ``image_shape`` (C, H, W) in ``num_classes`` classes, the same for a seed."""

    def __init__(
        self, size: int = 1000, image_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10, seed: int = 42
    ):
        self.size = size
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.seed = seed
        self.channels = self.image_shape[0]

    @classmethod
    def from_options(cls, options: SourceOptions) -> FakeData:
        return cls(options.fake_size, options.fake_image_shape, options.fake_num_classes, options.seed)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(self.num_classes)]

    @property
    def input_hw(self) -> tuple[int, int]:
        return cast("tuple[int, int]", tuple(self.image_shape[1:]))  # (C, H, W) -> (H, W)

    def own_normalization(self) -> Stats:
        return ((0.5,) * self.channels, (0.2887,) * self.channels)  # uniform on [0, 1]: std 1/sqrt(12)

    def full_train(self, raw: bool = False) -> tvd.FakeData:
        return tvd.FakeData(
            size=self.size,
            image_size=self.image_shape,
            num_classes=self.num_classes,
            transform=image_transform(self.normalization(), raw=raw),
            random_offset=self.seed,
        )
