"""The device-resident data path (data.device_cache): uint8 splits in memory, batches by slicing."""

from collections import Counter
from pathlib import Path

import pytest
import torch

from project import compare
from project.data import ImageDataModule
from project.data.device_cache import CachedSplit, DeviceBatches
from tests.helpers import EQUIV, EQUIVALENCE_RESULTS, make_image_folder


def datamodule(**kwargs) -> ImageDataModule:
    dm = ImageDataModule(**kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def epochs(loader, n: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(loader) for _ in range(n)]


@pytest.fixture
def folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "images", per_class=10)


DATA = {
    "digits": dict(dataset="digits", batch_size=64),
    "fake": dict(dataset="fake", fake_size=90, fake_image_shape=(3, 12, 10), batch_size=16),
    "imagefolder": dict(dataset="imagefolder", image_size=16, batch_size=8),
}


@pytest.mark.parametrize("name", list(DATA))
def test_splits_are_held_as_uint8(name, folder):
    """Each split sits in memory once, as the uint8 images it was decoded to, with int64 labels."""
    dm = datamodule(**DATA[name], root=str(folder), device_cache=True)
    for split in (dm.train_set, dm.val_set):
        assert isinstance(split, CachedSplit)
        assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
        assert split.images.shape[1:] == (dm.in_channels, *dm.input_hw)
    assert isinstance(dm.train_dataloader(), DeviceBatches)


@pytest.mark.parametrize("name", list(DATA))
def test_batches_are_the_dataloader_batches(name, folder):
    """Two epochs of shuffled training batches and the validation batches equal the DataLoader
    path's, bit for bit: the same samples, order, normalisation and generator draws."""
    loader = datamodule(**DATA[name], root=str(folder)).train_dataloader()
    cached = datamodule(**DATA[name], root=str(folder), device_cache=True)
    for epoch_a, epoch_b in zip(epochs(loader, 3), epochs(cached.train_dataloader(), 3)):
        assert len(epoch_a) == len(epoch_b)
        for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    plain = datamodule(**DATA[name], root=str(folder))
    for (xa, ya), (xb, yb) in zip(plain.val_dataloader(), cached.val_dataloader()):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_every_training_sample_once_per_epoch():
    """Each epoch yields the whole training split, every image exactly once, in a new order."""
    dm = datamodule(device_cache=True)
    split = dm.train_set
    expected = Counter(tuple(row.tolist()) for row in dm.source.to_model_input(split.images).flatten(1))
    orders = []
    for batches in epochs(dm.train_dataloader(), 3):
        images = torch.cat([x for x, _ in batches])
        assert len(images) == len(split) == 1438
        assert Counter(tuple(row.tolist()) for row in images.flatten(1)) == expected
        orders.append(torch.cat([y for _, y in batches]))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def test_the_same_seed_gives_the_same_order_and_another_seed_another():
    """Per-epoch order follows the data module's seed."""
    labels = [
        [
            torch.cat([y for _, y in batches])
            for batches in epochs(datamodule(device_cache=True, seed=s).train_dataloader())
        ]
        for s in (7, 7, 8)
    ]
    assert all(torch.equal(a, b) for a, b in zip(labels[0], labels[1]))
    assert not torch.equal(labels[0][0], labels[2][0])


def test_augmentation_touches_training_batches_only():
    """With augment on, validation batches are the plain ones and training batches are changed."""
    dm = datamodule(device_cache=True, augment=True)
    plain = datamodule(device_cache=True)
    for (xa, _), (xb, _) in zip(dm.val_dataloader(), plain.val_dataloader()):
        assert torch.equal(xa, xb)
    x, _ = next(iter(dm.train_dataloader()))
    assert not torch.equal(dm.augment_batch(x), x)


def test_a_limited_epoch_keeps_the_dataloader_order():
    """Taking 3 of 7 batches per epoch draws what the DataLoader path draws, so later epochs agree."""
    kwargs = dict(val_fraction=0.88, batch_size=32)
    a, b = datamodule(**kwargs).train_dataloader(), datamodule(**kwargs, device_cache=True).train_dataloader()
    for _ in range(3):
        for (xa, ya), (xb, yb) in zip(list(a)[:3], list(b)[:3]):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augment"])
def test_lightning_on_the_device_path_equals_the_reference_on_the_dataloader_path(augment):
    """The same run, Lightning with device_cache and the reference loop with DataLoaders: per-step
    losses, tensors and validation metrics identical."""
    args = [*EQUIV, f"--data.augment={str(augment).lower()}"]
    lit = compare.run_lightning([*args, "--data.device_cache=true"], Path("runs"), "mixed")
    ref = compare.run_reference(args, Path("runs/mixed/reference"))
    c = compare.compare(lit, ref, atol=0)
    EQUIVALENCE_RESULTS.append((f"device_cache vs DataLoader, augment={augment}", c.max_loss_diff))
    assert c.equivalent, compare.format_table(c)
    assert c.batches == 21 and len(c.val) == 3
