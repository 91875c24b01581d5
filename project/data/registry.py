"""Every data set by its ``data.dataset`` name: a new one is its own source file plus one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from project.data.digits import DigitsData
from project.data.fake import FakeData
from project.data.image_folders import ImageFolderData
from project.data.source import DataSource, SourceOptions
from project.data.torchvision_sets import CIFAR10Data, CIFAR100Data, FashionMNISTData, MNISTData
from project.errors import ConfigError

SOURCES: dict[str, type[DataSource]] = {
    "digits": DigitsData,
    "mnist": MNISTData,
    "fashion_mnist": FashionMNISTData,
    "cifar10": CIFAR10Data,
    "cifar100": CIFAR100Data,
    "imagefolder": ImageFolderData,
    "fake": FakeData,
}
# The choices of ``data.dataset`` in the CLI's schema (and its --help), made from the registry.
if TYPE_CHECKING:  # a Literal made at run time is no type to a type checker: there, any name
    DatasetName = str
else:
    DatasetName = Literal[tuple(SOURCES)]


def build_source(name: str, options: SourceOptions) -> DataSource:
    """The source for a ``data.dataset`` name."""
    if name not in SOURCES:
        raise ConfigError(f"data.dataset: unknown data set {name!r}; choose one of {', '.join(SOURCES)}")
    source = SOURCES[name].from_options(options)
    if options.stats is not None:
        mean, std = options.stats
        if len(mean) != source.channels or len(std) != source.channels:
            raise ConfigError(
                f"data.mean and data.std need {source.channels} values for {name} images, "
                f"got {list(mean)} and {list(std)}"
            )
        source.fixed_stats = (tuple(mean), tuple(std))
    return source
