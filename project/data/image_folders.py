"""Your own images: ``root/<class>/*``, or ``root/train/<class>/*`` beside ``root/val`` and ``root/test``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from project.data.files import class_folders, read_rgb, uniform_size
from project.data.scan import FolderScan, OnBadFile, bad_files_report, scan_class_folders
from project.data.source import DataSource, SourceOptions
from project.data.split import seeded_split
from project.data.transforms import Stats, image_transform
from project.errors import ConfigError, UserPathError

log = logging.getLogger(__name__)


class ScannedImageFolder(tvd.ImageFolder):
    """torchvision's ImageFolder over the classes and files a scan found usable: hidden folders are
    no classes, and bad files no samples."""

    def __init__(self, scan: FolderScan, transform: Callable | None = None):
        self.scan = scan
        usable = {str(p) for files in scan.files.values() for p in files}
        super().__init__(str(scan.folder), transform=transform, loader=read_rgb, is_valid_file=usable.__contains__)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        names = self.scan.class_names
        return names, {name: i for i, name in enumerate(names)}


def image_folder(folder: Path, transform: Callable | None = None, scan: FolderScan | None = None) -> ScannedImageFolder:
    """``folder/<class>/<image>`` with every image loaded as RGB; other files are skipped. Without a
    ``scan`` of it, the folder is scanned now, and any problem is an error."""
    if scan is None:
        scan = scan_class_folders(folder)
        if scan.problems:
            raise UserPathError(bad_files_report(scan.problems, folder))
    return ScannedImageFolder(scan, transform)


def imagefolder_stats(files: list[Path], transform: Callable, max_images: int = 256) -> Stats:
    """Per-channel mean and std of (up to ``max_images`` evenly spaced) training images."""
    step = max(1, len(files) // max_images)
    sample = files[::step][:max_images]
    pixels = torch.cat([transform(read_rgb(str(p))).flatten(1) for p in sample], dim=1)  # (3, N)
    std = pixels.std(dim=1).clamp_min(1e-3)
    return tuple(pixels.mean(dim=1).tolist()), tuple(std.tolist())


class ImageFolderData(DataSource):
    """Class folders of image files, as RGB, of one size or resized; normalized with the training split's statistics.

    Every file is checked once before anything else reads it (``project.data.scan``): with
    ``on_bad_file="error"`` any broken file or empty class folder stops the run with the list, with
    ``"skip"`` they are left out of every split and of the statistics, and counted in the log.
    """

    channels = 3

    def __init__(
        self,
        root: Path | None,
        image_size: int | None = None,
        val_fraction: float = 0.2,
        seed: int = 42,
        on_bad_file: OnBadFile = "error",
        crop_size: int | None = None,
    ):
        self.root = root
        self.image_size = image_size
        self.crop_size = crop_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.on_bad_file = on_bad_file
        self._scans: dict[Path, FolderScan] | None = None
        self._hw: tuple[int, int] | None = None
        self._stats: Stats | None = None

    @classmethod
    def from_options(cls, options: SourceOptions) -> ImageFolderData:
        return cls(
            options.root, options.image_size, options.val_fraction, options.seed, options.on_bad_file, options.crop_size
        )

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
        self.scans()
        self._val_dir()
        _ = self.input_hw

    def scans(self) -> dict[Path, FolderScan]:
        """The scan of the train, val and test folders, done once. ``on_bad_file="error"`` stops here
        with every problem of all of them; ``"skip"`` logs how many files and class folders it leaves out."""
        if self._scans is None:
            folders = [self.train_dir(), *(d for d in (self._split_val_dir(), self._test_dir()) if d is not None)]
            scans = {folder: scan_class_folders(folder) for folder in folders}
            problems = [p for scan in scans.values() for p in scan.problems]
            assert self.root is not None  # train_dir() raised otherwise
            if problems and self.on_bad_file == "error":
                raise UserPathError(bad_files_report(problems, self.root))
            if problems:
                files = sum(len(scan.bad_files) for scan in scans.values())
                empty = sum(len(scan.empty_classes) for scan in scans.values())
                log.warning(
                    "data.on_bad_file=skip: left out %d bad image file(s) and %d class folder(s) without usable "
                    "images under %s, e.g. %s",
                    files,
                    empty,
                    self.root,
                    problems[0],
                )
            self._scans = scans
        return self._scans

    @property
    def class_names(self) -> list[str]:
        return self.scans()[self.train_dir()].class_names

    @property
    def input_hw(self) -> tuple[int, int]:
        """``crop_size`` or ``image_size`` square, or else the one size of every usable file under root
        (train, val and test)."""
        if self.crop_size is not None:
            return (self.crop_size, self.crop_size)
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        if self._hw is None:
            self._hw = uniform_size({p: hw for scan in self.scans().values() for p, hw in scan.sizes.items()})
        return self._hw

    @property
    def declared_hw(self) -> tuple[int, int] | None:
        return (self.crop_size, self.crop_size) if self.crop_size else self.resize_hw

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        return (self.image_size, self.image_size) if self.image_size and not self.crop_size else None

    def _geometry(self) -> tuple[tuple[int, int] | int | None, int | None]:
        """(resize, crop): with ``crop_size``, the shorter side to ``image_size`` and a centre crop (as
        pretrained weights expect); else ``image_size`` square."""
        if self.crop_size is not None:
            return self.image_size, self.crop_size
        return self.resize_hw, None

    def new_image_geometry(self) -> tuple[tuple[int, int] | int | None, int | None]:
        return (self.image_size, self.crop_size) if self.crop_size else (self.input_hw, None)

    def own_normalization(self) -> Stats:
        if self._stats is None:
            full = self._folder(self.train_dir())
            train = self._train_part(full)  # all of full, or a Subset of it
            samples = [full.samples[i] for i in train.indices] if isinstance(train, Subset) else full.samples
            files = [Path(path) for path, _ in samples]
            size, crop = self._geometry()
            self._stats = imagefolder_stats(files, image_transform(None, size, crop=crop))
        return self._stats

    def full_train(self, raw: bool = False) -> ScannedImageFolder:
        return self._folder(self.train_dir(), self._transform(raw))

    def own_val(self, raw: bool = False) -> ScannedImageFolder | None:
        val_dir = self._val_dir()
        return self._folder(val_dir, self._transform(raw)) if val_dir is not None else None

    def own_test(self, raw: bool = False) -> ScannedImageFolder | None:
        test_dir = self._test_dir()
        return self._folder(test_dir, self._transform(raw)) if test_dir is not None else None

    def _folder(self, folder: Path, transform: Callable | None = None) -> ScannedImageFolder:
        return image_folder(folder, transform, self.scans()[folder])

    def _split_val_dir(self) -> Path | None:
        """``root/val`` beside ``root/train``; None for the one-folder layout."""
        train_dir = self.train_dir()
        assert self.root is not None  # train_dir() raised otherwise
        val_dir = self.root / "val"
        return val_dir if train_dir == self.root / "train" and val_dir.is_dir() else None

    def _test_dir(self) -> Path | None:
        self.train_dir()  # a missing root is named first
        assert self.root is not None
        return self.root / "test" if (self.root / "test").is_dir() else None

    def _val_dir(self) -> Path | None:
        """``root/val`` beside ``root/train``, with the same classes; None for the one-folder layout."""
        train_dir, val_dir = self.train_dir(), self._split_val_dir()
        if val_dir is None:
            return None
        train_classes, val_classes = (self.scans()[d].class_names for d in (train_dir, val_dir))
        if val_classes != train_classes:
            raise ConfigError(f"Class folders differ: {val_dir} has {val_classes} but {train_dir} has {train_classes}")
        return val_dir

    def _train_part(self, full: tvd.ImageFolder) -> Dataset:
        """What the statistics come from: all of ``full`` beside a val folder, else the split's training side."""
        return full if self._val_dir() is not None else seeded_split(full, self.val_fraction, self.seed)[0]

    def _transform(self, raw: bool) -> Callable:
        size, crop = self._geometry()
        return image_transform(self.normalization(), size, raw=raw, crop=crop)
