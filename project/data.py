"""Data: one LightningDataModule for every named data set.

Downloads happen only in ``prepare_data``; splits happen in ``setup`` with a seeded generator.
Every DataLoader gets its own seeded generator, so shuffling never touches the global RNG and
both loops see the same order.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

import lightning as L
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, random_split
from torchvision import datasets as tvd
from torchvision.transforms import v2

from project.augment import RandomCropFlip
from project.errors import ConfigError, DataUnavailableError

DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "fake"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# (torchvision class, channels, classes, mean, std) for the downloadable data sets.
TORCHVISION_SETS = {
    "mnist": (tvd.MNIST, 1, 10, (0.1307,), (0.3081,)),
    "fashion_mnist": (tvd.FashionMNIST, 1, 10, (0.2860,), (0.3530,)),
    "cifar10": (tvd.CIFAR10, 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": (tvd.CIFAR100, 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def load_rgb(path: str) -> Image.Image:
    """Open any PNG/JPEG (grayscale, RGB, RGBA, palette) as RGB; transparency goes through RGBA."""
    with Image.open(path) as img:
        if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


class FileListDataset(Dataset):
    """Unlabelled images for prediction; yields ``(image, index)`` so rows map back to paths."""

    def __init__(self, paths: list[Path], transform: Callable, gray: bool = False):
        self.paths = paths
        self.transform = transform
        self.gray = gray  # for models trained on 1-channel data sets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = load_rgb(str(self.paths[i]))
        return self.transform(image.convert("L") if self.gray else image), i


class ImageDataModule(L.LightningDataModule):
    """Named image-classification data sets, split and shuffled reproducibly.

    Args:
        dataset: digits | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder | fake.
        root: data directory; downloads go here, and ``imagefolder`` reads
            ``root/train/<class>/*`` + ``root/val/<class>/*`` or ``root/<class>/*``.
        batch_size: images per batch, for every stage.
        val_fraction: held out with a seeded split when the data set has no validation split.
        image_size: resize to this square size (file images); null keeps the native size.
        augment: random crop with padding + horizontal flip, on train batches only.
        num_workers: DataLoader worker processes.
        seed: seeds the split, the shuffling and the augmentation (the CLI links it to
            ``seed_everything``).
        predict_root: folder of new images for ``predict`` (any layout).
        fake_size: number of images for ``fake``.
        fake_image_shape: (C, H, W) of ``fake`` images.
        fake_num_classes: classes of ``fake``.
    """

    def __init__(
        self,
        dataset: DatasetName = "digits",
        root: str | None = None,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        image_size: int | None = None,
        augment: bool = False,
        num_workers: int = 0,
        seed: int = 42,
        predict_root: str | None = None,
        fake_size: int = 1000,
        fake_image_shape: tuple[int, int, int] = (3, 32, 32),
        fake_num_classes: int = 10,
    ):
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        self.dataset = dataset
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.augment = augment
        self.num_workers = num_workers
        self.seed = seed
        self.predict_root = Path(predict_root) if predict_root is not None else None
        self.fake_size = fake_size
        self.fake_image_shape = tuple(fake_image_shape)
        self.fake_num_classes = fake_num_classes
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: FileListDataset | None = None
        self._stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._class_names: list[str] | None = None
        self._folder_hw: tuple[int, int] | None = None
        # One generator per loader: iterator creation and shuffling then never draw from the
        # global RNG, which dropout uses. Their states belong in a checkpoint.
        self.generators = {
            s: torch.Generator().manual_seed(seed + i) for i, s in enumerate(("train", "val", "test", "predict"))
        }
        self.augmenter = RandomCropFlip(padding=self._padding(), seed=seed + 10) if augment else None

    # ---- facts the model is linked to (cheap: no image is read) ----
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        if self.dataset in TORCHVISION_SETS:
            return TORCHVISION_SETS[self.dataset][1]
        return {"digits": 1, "imagefolder": 3, "fake": self.fake_image_shape[0]}[self.dataset]

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self._class_names = self._find_class_names()
        return self._class_names

    def _find_class_names(self) -> list[str]:
        if self.dataset == "digits":
            return [str(i) for i in range(10)]
        if self.dataset == "fake":
            return [str(i) for i in range(self.fake_num_classes)]
        if self.dataset == "imagefolder":
            return class_folders(self._imagefolder_train_dir())
        known = {
            "mnist": [str(i) for i in range(10)],
            "fashion_mnist": list(tvd.FashionMNIST.classes),
            "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        }
        if self.dataset in known:
            return known[self.dataset]
        return [f"class_{i}" for i in range(TORCHVISION_SETS[self.dataset][2])]  # replaced in setup

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalization()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalization()[1]

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self._stats is None:
            if self.dataset in TORCHVISION_SETS:
                _, _, _, m, s = TORCHVISION_SETS[self.dataset]
                self._stats = (m, s)
            elif self.dataset == "digits":
                images, _ = digits_tensors()
                self._stats = ((images.mean().item(),), (images.std().item(),))
            elif self.dataset == "fake":
                c = self.fake_image_shape[0]
                self._stats = ((0.5,) * c, (0.2887,) * c)  # FakeData is uniform on [0, 1]
            else:
                train = self._imagefolder_sets()[0]  # the training split only: validation stays unseen
                samples = (
                    [train.dataset.samples[i] for i in train.indices] if isinstance(train, Subset) else train.samples
                )
                train_files = [Path(path) for path, _ in samples]
                self._stats = imagefolder_stats(train_files, self._file_transform(None, self.resize_hw))
        return self._stats

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        if self.dataset in TORCHVISION_SETS:
            cls = TORCHVISION_SETS[self.dataset][0]
            for train in (True, False):
                download_torchvision(cls, self._download_root(), train=train, name=self.dataset)
        elif self.dataset == "imagefolder":
            # Checked here, before Lightning writes anything, so a bad folder leaves no run behind.
            self._imagefolder_train_dir()
            _ = self.input_hw

    def setup(self, stage: str | None = None) -> None:
        if stage == "predict":
            self.predict_set = self._predict_dataset()
            return
        if self.train_set is not None:
            return
        split = torch.Generator().manual_seed(self.seed)
        if self.dataset == "digits":
            images, labels = digits_tensors()
            mean, std = self.normalization()
            full = TensorDataset((images - mean[0]) / std[0], labels)
            self.train_set, self.val_set = self._split(full, split)
            self.test_set = self.val_set
        elif self.dataset == "fake":
            full = tvd.FakeData(
                size=self.fake_size,
                image_size=self.fake_image_shape,
                num_classes=self.fake_num_classes,
                transform=self._tensor_transform(),
                random_offset=self.seed,
            )
            self.train_set, self.val_set = self._split(full, split)
            self.test_set = self.val_set
        elif self.dataset in TORCHVISION_SETS:
            cls = TORCHVISION_SETS[self.dataset][0]
            root = str(self._download_root())
            transform = self._tensor_transform()
            full = cls(root, train=True, download=False, transform=transform)
            self._class_names = list(full.classes) if self.dataset != "mnist" else self.class_names
            self.train_set, self.val_set = self._split(full, split)
            self.test_set = cls(root, train=False, download=False, transform=transform)
        else:
            self._setup_imagefolder()

    def _split(self, full: Dataset, generator: torch.Generator) -> list[Subset]:
        n_val = max(1, round(len(full) * self.val_fraction))
        return random_split(full, [len(full) - n_val, n_val], generator=generator)

    def _setup_imagefolder(self) -> None:
        transform = self._file_transform(self.normalization(), self.resize_hw)
        self.train_set, self.val_set, self.test_set = self._imagefolder_sets()
        for subset in (self.train_set, self.val_set, self.test_set):
            (subset.dataset if isinstance(subset, Subset) else subset).transform = transform

    def _imagefolder_sets(self) -> tuple[Dataset, Dataset, Dataset]:
        """(train, val, test) image folders without transforms: root/train + root/val as given, or
        one root/<class> folder split with the seeded val_fraction; test is root/test or val."""
        train_dir = self._imagefolder_train_dir()
        full = image_folder(train_dir)
        val_dir, test_dir = self.root / "val", self.root / "test"
        if train_dir == self.root / "train" and val_dir.is_dir():
            if class_folders(val_dir) != full.classes:
                raise ConfigError(
                    f"Class folders differ: {val_dir} has {class_folders(val_dir)} but {train_dir} has {full.classes}"
                )
            train, val = full, image_folder(val_dir)
        else:
            train, val = self._split(full, torch.Generator().manual_seed(self.seed))
        return train, val, image_folder(test_dir) if test_dir.is_dir() else val

    def _predict_dataset(self) -> FileListDataset:
        if self.predict_root is None:
            raise ConfigError("predict needs a folder of images: pass --data.predict_root DIR")
        if not self.predict_root.is_dir():
            raise FileNotFoundError(f"data.predict_root: no such directory: {self.predict_root}")
        paths = image_files(self.predict_root)
        if not paths:
            raise FileNotFoundError(
                f"data.predict_root: no images ({', '.join(IMAGE_EXTENSIONS)}) in {self.predict_root}"
            )
        # New files get what training images got: the same size, channels and normalization.
        transform = self._file_transform(self.normalization(), self.input_hw)
        return FileListDataset(paths, transform, gray=self.in_channels == 1)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Train batches only: Lightning's trainer says which stage runs this batch.
        if self.augmenter is not None and self.trainer is not None and self.trainer.training:
            x, y = batch
            return self.augment_batch(x), y
        return batch

    def augment_batch(self, x: Tensor) -> Tensor:
        return self.augmenter(x) if self.augmenter is not None else x

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, "predict")

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool = False) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{stage} data is not set up: call setup() first")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self.generators[stage],
        )

    def state_dict(self) -> dict:
        state = {f"generator.{k}": g.get_state() for k, g in self.generators.items()}
        if self.augmenter is not None:
            state["augmenter"] = self.augmenter.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, g in self.generators.items():
            if f"generator.{k}" in state:
                g.set_state(state[f"generator.{k}"])
        if self.augmenter is not None and "augmenter" in state:
            self.augmenter.load_state_dict(state["augmenter"])

    # ---- helpers ----
    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees. Without ``image_size``, an image folder's images
        must share one size (checked over every file under root; the error says what to set)."""
        if self.image_size is not None:
            return (self.image_size, self.image_size)
        if self.dataset == "fake":
            return tuple(self.fake_image_shape[1:])
        if self.dataset != "imagefolder":
            side = {"digits": 8, "mnist": 28, "fashion_mnist": 28}.get(self.dataset, 32)
            return (side, side)
        if self._folder_hw is None:
            self._imagefolder_train_dir()  # a clear error for a missing or empty root first
            self._folder_hw = uniform_size(image_files(self.root))
        return self._folder_hw

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        """What training images are resized to: only image folders with ``image_size`` set."""
        return (self.image_size, self.image_size) if self.dataset == "imagefolder" and self.image_size else None

    def _padding(self) -> int:
        # 4 px on 32 px images, as in the usual CIFAR recipe; an image folder without image_size
        # gets 4 px too, rather than reading its files here
        unknown = self.dataset == "imagefolder" and self.image_size is None
        return 4 if unknown else max(1, min(self.input_hw) // 8)

    def _download_root(self) -> Path:
        return self.root if self.root is not None else Path("data")

    def _tensor_transform(self) -> v2.Compose:
        mean, std = self.normalization()
        return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])

    def _file_transform(self, stats, size: tuple[int, int] | None) -> v2.Compose:
        steps = [v2.ToImage()]
        if size is not None:
            steps.append(v2.Resize(size, antialias=True))
        steps.append(v2.ToDtype(torch.float32, scale=True))
        if stats is not None:
            steps.append(v2.Normalize(*stats))
        return v2.Compose(steps)

    def _imagefolder_train_dir(self) -> Path:
        if self.root is None:
            raise ConfigError(
                "data.dataset=imagefolder needs --data.root DIR (with DIR/<class>/* or DIR/train/<class>/*)"
            )
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root: no such directory: {self.root}")
        train = self.root / "train"
        folder = train if train.is_dir() else self.root
        if not class_folders(folder):
            raise FileNotFoundError(
                f"data.root: no class folders with images in {folder}; expected {folder}/<class>/<image files>"
            )
        return folder


def image_folder(folder: Path) -> tvd.ImageFolder:
    """``folder/<class>/<image>`` with every image loaded as RGB; other files are skipped."""
    return tvd.ImageFolder(str(folder), loader=load_rgb, is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS))


def uniform_size(files: list[Path]) -> tuple[int, int]:
    """The one (H, W) of all ``files``; files of other sizes can't be batched without resizing."""
    first = None
    for path in files:
        with Image.open(path) as img:
            if first is None:
                first = (path, img.size)
            elif img.size != first[1]:
                raise ConfigError(
                    f"Images differ in size ({first[0]} is {first[1]}, {path} is {img.size}): "
                    f"set --data.image_size N to resize them all to N x N"
                )
    width, height = first[1]
    return (height, width)


def class_folders(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and any(image_files(d)))


def digits_tensors() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8x8 handwritten digits: (1797, 1, 8, 8) floats in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.long)


def imagefolder_stats(
    files: list[Path], transform: Callable, max_images: int = 256
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of (up to ``max_images`` evenly spaced) training images."""
    step = max(1, len(files) // max_images)
    pixels = torch.cat([transform(load_rgb(str(p))).flatten(1) for p in files[::step]], dim=1)  # (3, N)
    std = pixels.std(dim=1).clamp_min(1e-3)
    return tuple(pixels.mean(dim=1).tolist()), tuple(std.tolist())


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
