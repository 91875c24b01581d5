"""The downloadable torchvision data sets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100.

MNIST and Fashion-MNIST are read from their IDX files by ``project.data.idx`` (gzipped or not, in
torchvision's layout or flat in the root), so a copy that is not byte for byte torchvision's, such
as a distribution's, needs no download; CIFAR is read by torchvision.
"""

from __future__ import annotations

import os
import pickle
import socket
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlparse

from torch.utils.data import Dataset
from torchvision import datasets as tvd

from project.data.idx import IdxDataset, find_idx_files, read_idx_split
from project.data.source import DataSource, SourceOptions
from project.data.transforms import Stats, image_transform
from project.errors import DataUnavailableError


class TorchvisionData(DataSource):
    """A torchvision data set under ``root`` (default ``data/``), with its own test split and known statistics."""

    name: ClassVar[str]  # the data.dataset value, for messages
    dataset_class: ClassVar[type[tvd.VisionDataset]]
    side: ClassVar[int]
    mean: ClassVar[tuple[float, ...]]
    std: ClassVar[tuple[float, ...]]

    def __init__(self, root: Path | None = None):
        self.root = root if root is not None else Path("data")

    @classmethod
    def from_options(cls, options: SourceOptions) -> TorchvisionData:
        return cls(options.root)

    @property
    def input_hw(self) -> tuple[int, int]:
        return (self.side, self.side)

    def prepare(self) -> None:
        for train in (True, False):
            download_torchvision(self.dataset_class, self.root, train=train, name=self.name)

    def own_normalization(self) -> Stats:
        return (self.mean, self.std)

    def full_train(self, raw: bool = False) -> Dataset:
        return self._read(train=True, raw=raw)

    def own_test(self, raw: bool = False) -> Dataset:
        return self._read(train=False, raw=raw)

    def _read(self, train: bool, raw: bool) -> Dataset:
        transform = image_transform(self.normalization(), raw=raw)
        return self.dataset_class(str(self.root), train=train, download=False, transform=transform)


class IdxData(TorchvisionData):
    """MNIST and Fashion-MNIST: their four IDX files, gzipped or not, in torchvision's
    ``root/<MNIST|FashionMNIST>/raw/`` or flat in ``root``, checked by header, shape and counts
    (``project.data.idx``); torchvision downloads them only when they are not there."""

    def prepare(self) -> None:
        try:
            find_idx_files(self.root, self.dataset_class.__name__)
        except DataUnavailableError:  # not all there: torchvision's download (which leaves them in .../raw/)
            super().prepare()

    def _read(self, train: bool, raw: bool) -> IdxDataset:
        images, labels = read_idx_split(self.root, self.dataset_class.__name__, train, hw=(self.side, self.side))
        return IdxDataset(images, labels, image_transform(self.normalization(), raw=raw))


class MNISTData(IdxData):
    """70,000 handwritten digits, 28 x 28 grayscale."""

    name = "mnist"
    dataset_class = tvd.MNIST
    side = 28
    channels = 1
    mean = (0.1307,)
    std = (0.3081,)

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]


class FashionMNISTData(IdxData):
    """70,000 Zalando clothing images in 10 classes, 28 x 28 grayscale."""

    name = "fashion_mnist"
    dataset_class = tvd.FashionMNIST
    side = 28
    channels = 1
    mean = (0.2860,)
    std = (0.3530,)

    @property
    def class_names(self) -> list[str]:
        return list(tvd.FashionMNIST.classes)


class CIFAR10Data(TorchvisionData):
    """60,000 colour photos in 10 classes, 32 x 32."""

    name = "cifar10"
    dataset_class = tvd.CIFAR10
    side = 32
    channels = 3
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    @property
    def class_names(self) -> list[str]:
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class CIFAR100Data(TorchvisionData):
    """60,000 colour photos in 100 classes, 32 x 32."""

    name = "cifar100"
    dataset_class = tvd.CIFAR100
    side = 32
    channels = 3
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

    @property
    def class_names(self) -> list[str]:
        """The 100 fine label names from the downloaded meta file; ``class_i`` until it is on disk."""
        meta = self.root / tvd.CIFAR100.base_folder / tvd.CIFAR100.meta["filename"]
        if not meta.is_file():
            return [f"class_{i}" for i in range(100)]
        with meta.open("rb") as f:  # read as torchvision reads it: a pickled dict of byte strings
            return list(pickle.load(f, encoding="latin1")[tvd.CIFAR100.meta["key"]])


def download_torchvision(cls, root: Path, train: bool, name: str) -> None:
    """Download a torchvision data set into ``root`` unless it is there, failing fast and clearly offline."""
    try:
        cls(str(root), train=train, download=False)
        return  # already on disk
    except RuntimeError:
        pass
    hint = (
        f"The {name} data set is not in {root.resolve()} and could not be downloaded ({{why}}). "
        f"Copy it there, or point --data.root at a directory that holds it."
    )
    url = urlparse(cls.mirrors[0] if hasattr(cls, "mirrors") else cls.url)
    host = url.hostname
    try:  # a quick reachability probe so an offline machine fails in seconds, not minutes
        socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)), timeout=3).close()
    except OSError as exc:
        raise DataUnavailableError(hint.format(why=f"cannot reach {host}: {exc}")) from None
    try:
        os.makedirs(root, exist_ok=True)
        cls(str(root), train=train, download=True)
    except Exception as exc:  # urllib, HTTP and checksum errors all mean the same to the user
        raise DataUnavailableError(hint.format(why=f"{type(exc).__name__}: {exc}")) from None
