"""Your own images: ``root/<class>/*``, or ``root/train/<class>/*`` beside ``root/val`` and ``root/test``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from project.data.files import IMAGE_EXTENSIONS, class_folders, image_files, read_rgb, uniform_size
from project.data.source import DataSource, SourceOptions
from project.data.split import seeded_split
from project.data.transforms import Stats, image_transform
from project.errors import ConfigError, UserPathError


def image_folder(folder: Path, transform: Callable | None = None) -> tvd.ImageFolder:
    """``folder/<class>/<image>`` with every image loaded as RGB; other files are skipped."""
    try:
        return tvd.ImageFolder(
            str(folder),
            transform=transform,
            loader=read_rgb,
            is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS),
        )
    except FileNotFoundError as exc:  # a class folder without images: the user's folder, not a bug
        raise UserPathError(f"data.root: {folder}: {exc}") from None


def imagefolder_stats(files: list[Path], transform: Callable, max_images: int = 256) -> Stats:
    """Per-channel mean and std of (up to ``max_images`` evenly spaced) training images."""
    step = max(1, len(files) // max_images)
    pixels = torch.cat([transform(read_rgb(str(p))).flatten(1) for p in files[::step]], dim=1)  # (3, N)
    std = pixels.std(dim=1).clamp_min(1e-3)
    return tuple(pixels.mean(dim=1).tolist()), tuple(std.tolist())


class ImageFolderData(DataSource):
    """Class folders of image files, as RGB, of one size or resized; normalized with the training split's statistics."""

    channels = 3

    def __init__(self, root: Path | None, image_size: int | None = None, val_fraction: float = 0.2, seed: int = 42):
        self.root = root
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self._class_names: list[str] | None = None
        self._hw: tuple[int, int] | None = None
        self._stats: Stats | None = None

    @classmethod
    def from_options(cls, options: SourceOptions) -> ImageFolderData:
        return cls(options.root, options.image_size, options.val_fraction, options.seed)

    def train_dir(self) -> Path:
        """``root/train`` when there is one, else ``root``; a clear error when it holds no class folders."""
        if self.root is None:
            raise ConfigError(
                "data.dataset=imagefolder needs --data.root DIR (with DIR/<class>/* or DIR/train/<class>/*)"
            )
        if not self.root.is_dir():
            raise UserPathError(f"data.root: no such directory: {self.root}")
        train = self.root / "train"
        folder = train if train.is_dir() else self.root
        if not class_folders(folder):
            raise UserPathError(
                f"data.root: no class folders with images in {folder}; expected {folder}/<class>/<image files>"
            )
        return folder

    def prepare(self) -> None:
        # Every check of the folders runs here: Lightning creates the run directory before setup.
        _ = self.input_hw
        for folder in (self.train_dir(), self._val_dir(), self._test_dir()):
            if folder is not None:
                image_folder(folder)  # lists the files only; fails on a class folder without images

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = class_folders(self.train_dir())
        return self._class_names

    @property
    def input_hw(self) -> tuple[int, int]:
        """``image_size`` square, or else the one size of every file under root (train, val and test)."""
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        if self._hw is None:
            self.train_dir()  # a clear error for a missing or empty root first
            self._hw = uniform_size(image_files(self.root))
        return self._hw

    @property
    def declared_hw(self) -> tuple[int, int] | None:
        return self.resize_hw

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        return (self.image_size, self.image_size) if self.image_size else None

    def normalization(self) -> Stats:
        if self._stats is None:
            train = self._train_part(image_folder(self.train_dir()))
            samples = [train.dataset.samples[i] for i in train.indices] if isinstance(train, Subset) else train.samples
            files = [Path(path) for path, _ in samples]
            self._stats = imagefolder_stats(files, image_transform(None, self.resize_hw))
        return self._stats

    def full_train(self, raw: bool = False) -> tvd.ImageFolder:
        return image_folder(self.train_dir(), self._transform(raw))

    def own_val(self, raw: bool = False) -> tvd.ImageFolder | None:
        val_dir = self._val_dir()
        return image_folder(val_dir, self._transform(raw)) if val_dir is not None else None

    def own_test(self, raw: bool = False) -> tvd.ImageFolder | None:
        test_dir = self._test_dir()
        return image_folder(test_dir, self._transform(raw)) if test_dir is not None else None

    def _test_dir(self) -> Path | None:
        self.train_dir()  # a missing root is named first
        return self.root / "test" if (self.root / "test").is_dir() else None

    def _val_dir(self) -> Path | None:
        """``root/val`` beside ``root/train``, with the same class folders; None for the one-folder layout."""
        train_dir, val_dir = self.train_dir(), self.root / "val"
        if train_dir != self.root / "train" or not val_dir.is_dir():
            return None
        if class_folders(val_dir) != class_folders(train_dir):
            raise ConfigError(
                f"Class folders differ: {val_dir} has {class_folders(val_dir)} "
                f"but {train_dir} has {class_folders(train_dir)}"
            )
        return val_dir

    def _train_part(self, full: tvd.ImageFolder) -> Dataset:
        """What the statistics come from: all of ``full`` beside a val folder, else the split's training side."""
        return full if self._val_dir() is not None else seeded_split(full, self.val_fraction, self.seed)[0]

    def _transform(self, raw: bool) -> Callable:
        return image_transform(self.normalization(), self.resize_hw, raw=raw)
