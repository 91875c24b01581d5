"""The LightningDataModule: splits, batches and seeds whatever data set its source describes.

Downloads happen only in ``prepare_data``; splits happen in ``setup`` with a seeded generator.
Every DataLoader gets its own seeded generator, so shuffling never touches the global RNG and
both loops see the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from pathlib import Path
from typing import cast

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from project.augment import AugmentSpec, default_crop_padding
from project.data.arguments import check_arguments, check_crop_padding
from project.data.device_cache import CachedSplit, DeviceBatches, cached_splits
from project.data.loaders import data_loader, stage_sampler
from project.data.new_images import FileListDataset, new_images
from project.data.registry import DatasetName, build_source
from project.data.scan import OnBadFile
from project.data.seeds import DataSeeds
from project.data.source import DataSource, SourceOptions
from project.data.split import stage_splits
from project.data.transforms import Stats, normalize_batch
from project.errors import out_of_memory_hint
from project.specs import as_spec


class ImageDataModule(L.LightningDataModule):
    """Named image-classification data sets, split and shuffled reproducibly.

    Args:
        dataset: digits | mnist | fashion_mnist | cifar10 | cifar100 | imagefolder | fake.
        root: data directory; downloads go here, and ``imagefolder`` reads
            ``root/train/<class>/*`` + ``root/val/<class>/*`` or ``root/<class>/*``.
        batch_size: images per batch, for every stage.
        val_fraction: held out with a seeded split when the data set has no validation split.
        image_size: resize to this square size (file images); null keeps the native size. With
            ``crop_size``: the shorter side is resized to it, then the centre crop is taken.
        crop_size: centre crop of this square size after resizing (image folders); null: none.
        mean: per-channel mean to normalize with instead of the data set's own (null: its own).
        std: per-channel std to go with ``mean``.
        augment: random crop with black padding + horizontal flip, on train batches only.
        crop_padding: the crop's padding in pixels (null: an eighth of the shorter side, 4 on 32 px
            images; 0: flips only).
        augmentation: today's recipe on top, on train batches only (``--data.augmentation.*``):
            a per-image policy (TrivialAugmentWide, RandAugment, AutoAugment), RandomResizedCrop,
            RandomErasing, and MixUp / CutMix.
        num_workers: DataLoader worker processes (and for decoding the splits once, with ``device_cache``).
        device_cache: hold every split in device memory as uint8 and batch it by slicing, with
            normalisation and augmentation on the device: for data sets that fit in memory.
        seed: seeds the split, the shuffling and the augmentation (the CLI links it to
            ``seed_everything``).
        predict_root: folder of new images for ``predict`` (any layout).
        fake_size: number of images for ``fake``.
        fake_image_shape: (C, H, W) of ``fake`` images.
        fake_num_classes: classes of ``fake``.
        on_bad_file: what a broken image file or an empty class folder does (image folders and
            ``predict_root``, checked before the run starts): ``error`` stops with the list, ``skip``
            leaves them out of every split and the statistics and logs how many.
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
        device_cache: bool = False,
        seed: int = 42,
        predict_root: str | None = None,
        fake_size: int = 1000,
        fake_image_shape: tuple[int, int, int] = (3, 32, 32),
        fake_num_classes: int = 10,
        on_bad_file: OnBadFile = "error",
        crop_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augmentation: AugmentSpec = AugmentSpec(),  # noqa: B008 (frozen: one shared default is safe)
        crop_padding: int | None = None,
    ):
        super().__init__()
        check_arguments(dataset, batch_size, val_fraction, crop_size, mean, std)
        check_crop_padding(crop_padding, augment)
        self.dataset = dataset
        self.root = Path(root) if root is not None else None
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.image_size = image_size
        self.augment = augment
        self.num_workers = num_workers
        self.device_cache = device_cache
        self.device = torch.device("cpu")  # where device_cache puts the splits: the trainer sets it
        # (rank, world size) under DDP, set by the trainer: each rank then reads its own share
        self.shard: tuple[int, int] | None = None
        # the epoch of a training loader's first pass: 0, or a resumed run's (``start_epoch``)
        self.first_epoch = 0
        self.seed = seed
        self.predict_root = Path(predict_root) if predict_root is not None else None
        self.fake_size = fake_size
        self.fake_image_shape: tuple[int, int, int] = (fake_image_shape[0], fake_image_shape[1], fake_image_shape[2])
        self.fake_num_classes = fake_num_classes
        self.on_bad_file = on_bad_file
        self.crop_size = crop_size
        self.source = self._build_source(mean, std)
        self.train_set: Dataset | CachedSplit | None = None
        self.val_set: Dataset | CachedSplit | None = None
        self.test_set: Dataset | CachedSplit | None = None
        self.predict_set: FileListDataset | None = None
        # the loaders' generators, the training order and the augmenter: all in a checkpoint
        self.augmentation = as_spec(AugmentSpec, augmentation)
        padding = default_crop_padding(self.source.declared_hw) if crop_padding is None else crop_padding
        self.seeds = DataSeeds(seed, padding if augment else None, self.augmentation)

    def _build_source(self, mean: list[float] | None, std: list[float] | None) -> DataSource:
        """The data set's source, from the arguments stored: it stores them in turn, no file is read yet."""
        stats = (tuple(mean), tuple(std)) if mean is not None and std is not None else None  # checked: both or none
        options = SourceOptions(
            self.root,
            self.image_size,
            self.val_fraction,
            self.seed,
            self.fake_size,
            self.fake_image_shape,
            self.fake_num_classes,
            self.on_bad_file,
            self.crop_size,
            stats,
        )
        return build_source(self.dataset, options)

    # ---- facts the model is linked to, all from the source ----
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.source.channels

    @property
    def class_names(self) -> list[str]:
        return self.source.class_names

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalization()[0]

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalization()[1]

    def normalization(self) -> Stats:
        return self.source.normalization()

    def black(self) -> list[float]:
        """Each channel's value of a black pixel once normalized: what the random crop pads with."""
        stats = self.normalization()
        return normalize_batch(torch.zeros(1, len(stats[0]), 1, 1, dtype=torch.uint8), stats).flatten().tolist()

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees. Without ``image_size``, an image folder's images
        must share one size (checked over every file under root; the error says what to set)."""
        return self.source.input_hw

    def preprocessing(self) -> dict:
        """What an image goes through before the model, for whoever feeds it outside this project
        (checkpoints and the export's sidecar keep it): resize (shorter side when there is a crop,
        else to a square; null: none), crop, the input size and channels, and the mean and std."""
        return self.source.preprocessing()

    @property
    def declared_hw(self) -> tuple[int, int] | None:
        """``input_hw`` when it is known without reading a file (what the network is built for)."""
        return self.source.declared_hw

    @property
    def resize_hw(self) -> tuple[int, int] | None:
        """What training images are resized to: only image folders with ``image_size`` set."""
        return self.source.resize_hw

    # ---- Lightning hooks ----
    def prepare_data(self) -> None:
        self.source.prepare()
        if self.trainer is not None and self.trainer.predicting and self.predict_set is None:
            # the new images are checked here, before Lightning creates the run directory
            self.predict_set = new_images(self.predict_root, self.source, self.on_bad_file)

    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None:  # Lightning's; the reference trainer sets .device and .shard itself
            self.device = self.trainer.strategy.root_device
            ranks = self.trainer.distributed_sampler_kwargs  # None unless the strategy is a parallel one
            self.shard = (ranks["rank"], ranks["num_replicas"]) if ranks else None
        if stage == "predict":
            if self.predict_set is None:
                self.predict_set = new_images(self.predict_root, self.source, self.on_bad_file)
            return
        if self.train_set is not None:
            return
        raw = self.device_cache  # cached splits hold images as stored and normalise whole batches
        splits = stage_splits(self.source, self.val_fraction, self.seed, raw)
        self.train_set, self.val_set, self.test_set = (
            cached_splits(splits, self.device, self.num_workers) if self.device_cache else splits
        )

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Every batch is two tensors, (images, labels) or (images, indices): moved as such, rather
        # than by Lightning's walk through a generic collection at every step. (The model summary
        # sends its example input, one tensor, this way too.)
        if isinstance(batch, Tensor):
            return batch.to(device, non_blocking=True)
        x, y = batch
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def on_exception(self, exception: BaseException) -> None:
        # The one-line report of a device out-of-memory error names the batch size and what to
        # change (a hook here, not a callback: Lightning calls every callback at every step).
        if isinstance(exception, torch.OutOfMemoryError):  # only a trainer calls this: it is set
            exception.hint = out_of_memory_hint(self.batch_size, str(self.trainer.precision))  # type: ignore[attr-defined,union-attr]

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Train batches only: Lightning's trainer says which stage runs this batch. The model
        # summary's example input (one tensor, no labels) is no training batch.
        training = self.trainer is not None and self.trainer.training and not isinstance(batch, Tensor)
        if training and (self.augmenter is not None or self.mixer is not None):
            x, y = batch
            x = self.augmenter(x) if self.augmenter is not None else x
            return self.mixer(x, y) if self.mixer is not None else (x, y)
        return batch

    @property
    def augmenter(self) -> Callable[[Tensor], Tensor] | None:
        """What augments a training batch of images on the device (crop and flip, then the per-image
        policy), or None when nothing does."""
        return self._augment if self.seeds.augmenter is not None or self.seeds.policy is not None else None

    def augment_batch(self, x: Tensor) -> Tensor:
        """A training batch of images as the augmentation leaves it (as it is without one)."""
        return self._augment(x)

    def _augment(self, x: Tensor) -> Tensor:
        if self.seeds.augmenter is not None:
            x = self.seeds.augmenter(x, fill=self.black())
        return self.seeds.policy(x, self.normalization()) if self.seeds.policy is not None else x

    @property
    def mixer(self) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
        """What mixes a training batch (MixUp, CutMix) into images and class probabilities, or None."""
        return self._mix if self.seeds.mixer is not None else None

    def _mix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        assert self.seeds.mixer is not None
        return self.seeds.mixer(x, y, self.num_classes)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.predict_set, "predict")

    def _loader(
        self, dataset: Dataset | CachedSplit | None, stage: str, shuffle: bool = False
    ) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError(f"{stage} data is not set up: call setup() first")
        order = self.seeds.train_order
        sized = cast(Sized, dataset)  # every split here has a length; torch's Dataset type leaves it out
        sampler = stage_sampler(sized, shuffle, self.shard, order, self.batch_size, self.seed, self.first_epoch)
        if isinstance(dataset, CachedSplit):  # on the device of the latest setup, whoever called it first
            # one process: the resumable order itself (the sampler is for DataLoaders); DDP: the rank's share
            own = order if shuffle and self.shard is None else None
            share = sampler if self.shard is not None else None
            return DeviceBatches(dataset.to(self.device), self.batch_size, self.source.to_model_input, own, share)
        return data_loader(dataset, self.batch_size, sampler, self.num_workers, self.seeds.worker_seeds)

    def state_dict(self) -> dict:
        return self.seeds.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.seeds.load_state_dict(state)

    def start_epoch(self, epoch: int) -> None:
        """A resumed run goes on with ``epoch``: under DDP the training loaders made from now on shuffle
        their first pass as that epoch (seed + epoch). Call it before the training loader is made."""
        self.first_epoch = epoch

    def continue_epoch(self, batches_done: int) -> None:
        """After ``load_state_dict`` of a checkpoint written inside an epoch, after ``batches_done`` of
        its training batches: the next training pass is the rest of that epoch, in its order. Call
        it before the training loader's first pass (with workers, before its iterator exists)."""
        self.seeds.continue_epoch(batches_done)
