"""The one interface every data set implements: its facts, and the datasets the data module splits and batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from project.data.scan import OnBadFile
from project.data.transforms import Stats, normalize_batch


@dataclass(frozen=True)
class SourceOptions:
    """The data module's arguments that sources read; each source takes the ones it needs."""

    root: Path | None
    image_size: int | None
    val_fraction: float
    seed: int
    fake_size: int
    fake_image_shape: tuple[int, int, int]
    fake_num_classes: int
    on_bad_file: OnBadFile = "error"  # image folders' (see ImageDataModule)
    crop_size: int | None = None  # image folders'
    stats: Stats | None = None  # (mean, std) that replace the data set's own


class DataSource(ABC):
    """One data set: channels, classes, size and statistics, and its normalized datasets.

    ``__init__`` only stores arguments: files are read when a fact or a dataset is asked for.
    """

    channels: int  # of the tensors the model gets
    fixed_stats: Stats | None = None  # set from the config (pretrained weights' mean and std): used instead

    @classmethod
    @abstractmethod
    def from_options(cls, options: SourceOptions) -> DataSource:
        """This source, built from the data module's arguments."""

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """One name per class, in label order."""

    @property
    @abstractmethod
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees."""

    @property
    def declared_hw(self) -> tuple[int, int] | None:
        """``input_hw`` when it is known without reading a file; None when only the files can tell."""
        return self.input_hw

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        """What training images are resized to; None keeps their own size."""
        return None

    def prepare(self) -> None:  # noqa: B027 - most data sets have nothing to fetch or check
        """Download or check the data; runs before any run directory exists."""

    def normalization(self) -> Stats:
        """Per-channel (mean, std) that the datasets are normalized with: the config's, or the data set's own."""
        return self.fixed_stats if self.fixed_stats is not None else self.own_normalization()

    @abstractmethod
    def own_normalization(self) -> Stats:
        """The data set's own per-channel (mean, std)."""

    def new_image_geometry(self) -> tuple[tuple[int, int] | int | None, int | None]:
        """(resize, crop) for new images given to ``predict``: the model's input size, uncropped."""
        return self.input_hw, None

    def preprocessing(self) -> dict:
        """What an image goes through before the model, for whoever feeds it outside this project
        (checkpoints and the export's sidecar keep it): resize (shorter side when there is a crop,
        else to a square; null: none), crop, the input size and channels, and the mean and std."""
        resize, crop = self.new_image_geometry()
        mean, std = self.normalization()
        return {
            "input_size": list(self.input_hw),
            "channels": self.channels,
            "resize": list(resize) if isinstance(resize, tuple) else resize,
            "crop": crop,
            "mean": list(mean),
            "std": list(std),
        }

    def to_model_input(self, x: Tensor) -> Tensor:
        """A (B, C, H, W) batch from a ``raw`` dataset made into exactly what the normalized datasets
        yield: float32, scaled and normalized, computed on ``x``'s device."""
        return normalize_batch(x, self.normalization())

    # Each dataset method gives (image, label) pairs: normalized float (C, H, W) images, or with
    # ``raw`` the images as stored (uint8), which ``to_model_input`` turns into the former.
    @abstractmethod
    def full_train(self, raw: bool = False) -> Dataset:
        """Every labelled training image; split by the data module when there is no ``own_val``."""

    def own_val(self, raw: bool = False) -> Dataset | None:
        """The data set's own validation images, or None to hold out part of ``full_train``."""
        return None

    def own_test(self, raw: bool = False) -> Dataset | None:
        """The data set's own test images, or None to test on the validation images."""
        return None
