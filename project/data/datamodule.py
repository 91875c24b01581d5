"""The LightningDataModule: splits, batches and seeds whatever data set its source describes.

Downloads happen only in ``prepare_data``; splits happen in ``setup`` with a seeded generator.
Every DataLoader gets its own seeded generator, so shuffling never touches the global RNG and
both loops see the same order.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from project.augment import RandomCropFlip
from project.data.device_cache import CachedSplit, DeviceBatches
from project.data.new_images import FileListDataset, new_images
from project.data.order import EpochOrder, ShuffledSampler
from project.data.registry import DatasetName, build_source
from project.data.scan import OnBadFile
from project.data.source import SourceOptions
from project.data.split import seeded_split
from project.data.transforms import Stats
from project.errors import ConfigError, out_of_memory_hint


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
        augment: random crop with padding + horizontal flip, on train batches only.
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
    ):
        super().__init__()
        if (mean is None) != (std is None):
            raise ConfigError("data.mean and data.std go together: set both or neither")
        if crop_size is not None and dataset != "imagefolder":
            raise ConfigError(f"data.crop_size is for image folders; data.dataset={dataset} keeps its own size")
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
        self.device_cache = device_cache
        self.device = torch.device("cpu")  # where device_cache puts the splits: the trainer sets it
        # (rank, world size) under DDP, set by the trainer: each rank then reads its own share
        self.shard: tuple[int, int] | None = None
        self.seed = seed
        self.predict_root = Path(predict_root) if predict_root is not None else None
        self.fake_size = fake_size
        self.fake_image_shape = tuple(fake_image_shape)
        self.fake_num_classes = fake_num_classes
        self.on_bad_file = on_bad_file
        self.crop_size = crop_size
        stats = (tuple(mean), tuple(std)) if mean is not None else None
        options = SourceOptions(
            self.root,
            image_size,
            val_fraction,
            seed,
            fake_size,
            self.fake_image_shape,
            fake_num_classes,
            on_bad_file,
            crop_size,
            stats,
        )
        self.source = build_source(dataset, options)  # stores arguments only: no file is read yet
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: FileListDataset | None = None
        # One generator per loader: iterator creation and shuffling then never draw from the
        # global RNG, which dropout uses. Their states belong in a checkpoint.
        self.generators = {
            s: torch.Generator().manual_seed(seed + i) for i, s in enumerate(("train", "val", "test", "predict"))
        }
        # The seeds DataLoaders draw for their worker processes come from a generator of their own:
        # a resumed run creates its loader afresh where the uninterrupted one reused its persistent
        # workers, and that extra draw must not move the shuffling.
        self.worker_seeds = torch.Generator().manual_seed(seed + 20)
        # The training order, resumable inside an epoch (see ``continue_epoch``).
        self.train_order = EpochOrder(self.generators["train"])
        self._loaded_epoch_start: Tensor | None = None
        self.augmenter = RandomCropFlip(padding=self._padding(), seed=seed + 10) if augment else None

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

    @property
    def input_hw(self) -> tuple[int, int]:
        """(H, W) of the images the model sees. Without ``image_size``, an image folder's images
        must share one size (checked over every file under root; the error says what to set)."""
        return self.source.input_hw

    def preprocessing(self) -> dict:
        """What an image goes through before the model, for whoever feeds it outside this project
        (checkpoints and the export's sidecar keep it): resize (shorter side when there is a crop,
        else to a square; null: none), crop, the input size and channels, and the mean and std."""
        resize, crop = self.source.new_image_geometry()
        mean, std = self.normalization()
        return {
            "input_size": list(self.input_hw),
            "channels": self.in_channels,
            "resize": list(resize) if isinstance(resize, tuple) else resize,
            "crop": crop,
            "mean": list(mean),
            "std": list(std),
        }

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
        full, own_val = self.source.full_train(raw), self.source.own_val(raw)
        if own_val is not None:
            self.train_set, self.val_set = full, own_val
        else:
            self.train_set, self.val_set = seeded_split(full, self.val_fraction, self.seed)
        own_test = self.source.own_test(raw)
        self.test_set = own_test if own_test is not None else self.val_set
        if self.device_cache:
            cached = {id(s): CachedSplit(s, self.device, self.num_workers) for s in (self.train_set, self.val_set)}
            cached.setdefault(id(self.test_set), CachedSplit(self.test_set, self.device, self.num_workers))
            self.train_set, self.val_set, self.test_set = (
                cached[id(s)] for s in (self.train_set, self.val_set, self.test_set)
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
            exception.hint = out_of_memory_hint(self.batch_size, str(self.trainer.precision))

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        # Train batches only: Lightning's trainer says which stage runs this batch. The model
        # summary's example input (one tensor, no labels) is no training batch.
        training = self.trainer is not None and self.trainer.training and not isinstance(batch, Tensor)
        if self.augmenter is not None and training:
            x, y = batch
            return self.augment_batch(x), y
        return batch

    def augment_batch(self, x: Tensor) -> Tensor:
        return self.augmenter(x) if self.augmenter is not None else x

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.val_set, "val")

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._loader(self.test_set, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, "predict")

    def _loader(self, dataset: Dataset | None, stage: str, shuffle: bool = False) -> DataLoader | DeviceBatches:
        if dataset is None:
            raise RuntimeError(f"{stage} data is not set up: call setup() first")
        sampler = self._sampler(dataset, stage, shuffle)
        if isinstance(dataset, CachedSplit):  # on the device of the latest setup, whoever called it first
            # one process: the resumable order itself (the sampler is for DataLoaders); DDP: the rank's share
            order = self.train_order if shuffle and self.shard is None else None
            share = sampler if self.shard is not None else None
            return DeviceBatches(dataset.to(self.device), self.batch_size, self.source.to_model_input, order, share)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=self.worker_seeds,
        )

    def _sampler(self, dataset: Dataset, stage: str, shuffle: bool) -> Sampler[int] | None:
        """One process: a ``RandomSampler``'s draws from the training order (``ShuffledSampler``, which
        a resume inside an epoch starts at its next batch), or none (in order). Under DDP, each
        rank's share: for training, Lightning's own choice, a ``DistributedSampler`` seeded with the run's
        seed (one permutation per epoch from seed + epoch, dealt out rank by rank and padded with repeats
        so that every rank takes as many steps); for evaluation and prediction, every sample exactly once
        (``UnrepeatedDistributedSampler``: ranks may differ by one sample, and nothing is counted twice;
        a padded ``DistributedSampler`` would count some twice, pytorch#25162)."""
        if self.shard is None:
            return ShuffledSampler(len(dataset), self.train_order, self.batch_size) if shuffle else None
        rank, world = self.shard
        if shuffle:
            return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed)
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def state_dict(self) -> dict:
        state = {f"generator.{k}": g.get_state() for k, g in self.generators.items()}
        state["worker_seeds"] = self.worker_seeds.get_state()
        state["train_epoch_start"] = self.train_order.epoch_start  # for a resume inside the epoch
        if self.augmenter is not None:
            state["augmenter"] = self.augmenter.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        for k, g in self.generators.items():
            if f"generator.{k}" in state:
                g.set_state(state[f"generator.{k}"])
        if "worker_seeds" in state:
            self.worker_seeds.set_state(state["worker_seeds"])
        self._loaded_epoch_start = state.get("train_epoch_start")
        if self.augmenter is not None and "augmenter" in state:
            self.augmenter.load_state_dict(state["augmenter"])

    def continue_epoch(self, batches_done: int) -> None:
        """After ``load_state_dict`` of a checkpoint written inside an epoch, after ``batches_done`` of
        its training batches: the next training pass is the rest of that epoch, in its order. Call
        it before the training loader's first pass (with workers, before its iterator exists)."""
        if self._loaded_epoch_start is None:
            raise RuntimeError("continue_epoch: the loaded data state has no train_epoch_start")
        self.train_order.resume(self._loaded_epoch_start, batches_done)

    def _padding(self) -> int:
        # 4 px on 32 px images, as in the usual CIFAR recipe; an image folder without image_size
        # gets 4 px too, rather than reading its files here
        hw = self.source.declared_hw
        return 4 if hw is None else max(1, min(hw) // 8)
