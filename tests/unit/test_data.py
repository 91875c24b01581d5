import socket

import pytest
import torch
from PIL import Image

from project.data import DataUnavailableError, ImageDataModule, load_rgb
from project.errors import ConfigError, UserPathError
from tests.helpers import write_image


def test_digits_split_is_seeded_and_complete():
    """The digits split is reproducible for a seed, different for another, and loses no image."""

    def split(seed):
        dm = ImageDataModule(seed=seed)
        dm.setup("fit")
        return dm.train_set.indices, dm.val_set.indices

    a, b, c = split(1), split(1), split(2)
    assert a == b
    assert a != c
    assert len(a[0]) + len(a[1]) == 1797
    assert len(a[1]) == round(1797 * 0.2)
    assert not set(a[0]) & set(a[1])


def test_digits_are_normalized_with_their_own_statistics():
    """Digits carry their own mean/std, so the normalized training pixels have mean ~0, std ~1."""
    dm = ImageDataModule()
    dm.setup("fit")
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    assert x.shape[1:] == (1, 8, 8)
    assert abs(x.mean().item()) < 0.05
    assert abs(x.std().item() - 1) < 0.05
    assert dm.mean != ImageDataModule(dataset="mnist").mean


def test_shuffling_uses_its_own_generator():
    """Iterating the training loader leaves the global RNG untouched (dropout's stream)."""
    dm = ImageDataModule()
    dm.setup("fit")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    for _ in dm.train_dataloader():
        pass
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_any_image_mode_loads_as_rgb(tmp_path, mode):
    """Grayscale, RGB, RGBA and palette files all load as RGB."""
    path = tmp_path / f"x_{mode}.png"
    write_image(path, 1, (20, 12), mode)
    img = load_rgb(str(path))
    assert img.mode == "RGB" and img.size == (20, 12)


def test_imagefolder_with_one_folder_and_mixed_files(image_folder):
    """root/<class>/* of mixed sizes and modes: a seeded val split, 3-channel tensors of image_size."""
    dm = ImageDataModule(dataset="imagefolder", root=str(image_folder), image_size=24, val_fraction=0.25)
    assert dm.class_names == ["circles", "squares", "stripes"]
    assert dm.num_classes == 3 and dm.in_channels == 3
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 36
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 24, 24) and x.dtype == torch.float32


def test_imagefolder_with_train_and_val_folders(tmp_path):
    """root/train/<class> + root/val/<class> are used as given."""
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            for i in range(n):
                write_image(tmp_path / split / c / f"{i}.png", ord(c), (16, 16), "RGB")
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path))
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (8, 4)


def test_imagefolder_mixed_sizes_without_image_size_is_a_clear_error(image_folder):
    """Without image_size, files of different sizes can't be batched: the error names them and the fix."""
    dm = ImageDataModule(dataset="imagefolder", root=str(image_folder))
    with pytest.raises(ConfigError, match="--data.image_size"):
        dm.prepare_data()


def test_imagefolder_missing_root_names_the_directory(tmp_path):
    """A wrong root is named in the error."""
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path / "nope"))
    with pytest.raises(UserPathError, match="nope"):
        dm.prepare_data()


def test_offline_download_fails_fast_and_clearly(tmp_path, monkeypatch):
    """With no network and no local copy, prepare_data names the directory and --data.root after one 3 s probe."""

    timeouts = []

    def offline(address, timeout=None, **kwargs):
        timeouts.append(timeout)
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    dm = ImageDataModule(dataset="cifar10", root=str(tmp_path / "data"))
    with pytest.raises(DataUnavailableError) as info:
        dm.prepare_data()
    assert timeouts == [3]  # a single short probe decides
    assert str(tmp_path / "data") in str(info.value) and "--data.root" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_fake_data_has_the_configured_shape():
    """The fake data set gives the configured shape and classes."""
    dm = ImageDataModule(dataset="fake", fake_size=40, fake_image_shape=(3, 16, 16), fake_num_classes=4)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (3, 16, 16) and dm.num_classes == 4 and int(y.max()) < 4


def test_augmentation_is_seeded():
    """Crop+flip draws from the data module's own generator: same seed, same batch; other seed, another;
    augment=false, the batch itself."""
    x = torch.randn(8, 3, 32, 32)
    a = ImageDataModule(dataset="fake", augment=True, seed=3).augment_batch(x)
    b = ImageDataModule(dataset="fake", augment=True, seed=3).augment_batch(x)
    c = ImageDataModule(dataset="fake", augment=True, seed=4).augment_batch(x)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(ImageDataModule(dataset="fake").augment_batch(x), x)


def test_bad_predict_root_names_the_option(tmp_path):
    """predict without a folder of images says which option to set."""
    with pytest.raises(ConfigError, match="--data.predict_root"):
        ImageDataModule().setup("predict")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    dm = ImageDataModule(predict_root=str(tmp_path))
    dm.setup("predict")
    assert len(dm.predict_set) == 1


def test_uniform_folder_without_image_size_keeps_its_size_and_resizes_new_files(tmp_path):
    """Training images of one size need no image_size; new files of other sizes are resized to it."""
    for c in ("a", "b"):
        for i in range(4):
            write_image(tmp_path / "train" / c / f"{i}.png", ord(c), (20, 12), "RGB")
    write_image(tmp_path / "new" / "big.png", 0, (50, 40), "L")
    write_image(tmp_path / "new" / "small.jpg", 1, (9, 7), "RGB")
    dm = ImageDataModule(dataset="imagefolder", root=str(tmp_path / "train"), predict_root=str(tmp_path / "new"))
    dm.prepare_data()
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))[0].shape[1:] == (3, 12, 20)
    dm.setup("predict")
    assert next(iter(dm.predict_dataloader()))[0].shape == (2, 3, 12, 20)


def test_mixed_sizes_in_the_val_folder_are_caught_before_training(tmp_path):
    """The size check covers root/val (and root/test), not only root/train."""
    for split, size in (("train", (16, 16)), ("val", (16, 16)), ("val", (24, 24))):
        write_image(tmp_path / split / "a" / f"{size[0]}.png", 0, size, "RGB")
    with pytest.raises(ConfigError, match="--data.image_size"):
        ImageDataModule(dataset="imagefolder", root=str(tmp_path)).prepare_data()


def test_imagefolder_statistics_come_from_the_training_split_only(image_folder):
    """Normalization statistics are computed from the training split's files, not the held-out ones."""
    from pathlib import Path

    from project.data import image_transform, imagefolder_stats

    dm = ImageDataModule(dataset="imagefolder", root=str(image_folder), image_size=16, val_fraction=0.5)
    dm.setup("fit")
    train_files = [Path(dm.train_set.dataset.samples[i][0]) for i in dm.train_set.indices]
    val_files = [Path(dm.val_set.dataset.samples[i][0]) for i in dm.val_set.indices]
    plain = image_transform(None, (16, 16))
    assert dm.normalization() == imagefolder_stats(train_files, plain)
    assert dm.normalization() != imagefolder_stats(val_files, plain)


@pytest.mark.parametrize("training", [True, False])
def test_augmentation_applies_to_training_batches_only(training):
    """on_after_batch_transfer augments a batch while the trainer trains, and leaves it alone otherwise."""
    from types import SimpleNamespace

    dm = ImageDataModule(dataset="fake", augment=True)
    dm.trainer = SimpleNamespace(training=training)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16)
    out, labels = dm.on_after_batch_transfer((x, y), 0)
    assert torch.equal(labels, y)
    assert torch.equal(out, x) is not training
