"""One source per data set behind one interface: each source's facts and datasets, offline."""

import pickle
import socket
import struct
from pathlib import Path
from typing import get_args, get_type_hints

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.transforms.v2.functional import pil_to_tensor

from project.data import (
    SOURCES,
    CIFAR100Data,
    DataSource,
    DataUnavailableError,
    DigitsData,
    FakeData,
    ImageDataModule,
    ImageFolderData,
    MNISTData,
    image_files,
    image_transform,
    imagefolder_stats,
    load_rgb,
    new_images,
    read_rgb,
)
from project.data.idx import IdxDataset
from project.errors import ConfigError, UserPathError
from tests.helpers import make_image_folder, write_image


def offline(monkeypatch) -> list:
    """No network: every connection attempt fails at once; the list collects each probe's (host, timeout)."""
    probes = []

    def refuse(address, timeout=None, **kwargs):
        probes.append((address[0], timeout))
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return probes


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array in the IDX format of the MNIST files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_split_folders(root: Path, counts: dict[str, int], classes=("a", "b")) -> Path:
    """root/<split>/<class>/<i>.png, 16 x 16, with ``counts[split]`` images per class."""
    for split, n in counts.items():
        for c in classes:
            for i in range(n):
                write_image(root / split / c / f"{i}.png", ord(c), (16, 16), "RGB")
    return root


def test_registry_covers_every_dataset_name():
    """Each name the CLI accepts has a source class, and the data module builds that one without reading files."""
    annotation = get_type_hints(ImageDataModule.__init__)["dataset"]  # what the CLI's schema is built from
    assert (
        set(get_args(annotation))
        == set(SOURCES)
        == {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder", "fake"}
    )
    for name, cls in SOURCES.items():
        assert issubclass(cls, DataSource)
        assert type(ImageDataModule(dataset=name).source) is cls


def test_unknown_dataset_name_is_a_config_error():
    """A name outside the registry names the key and the choices."""
    with pytest.raises(ConfigError, match="data.dataset.*imagefolder"):
        ImageDataModule(dataset="svhn")


def test_digits_statistics_come_from_the_training_split_only():
    """Digits are normalized with the mean and std of the raw training split, as numpy computes them."""
    dm = ImageDataModule()
    dm.setup("fit")
    raw = load_digits().images[dm.train_set.indices] / 16.0  # (N_train, 8, 8)
    assert len(raw) == 1797 - round(1797 * 0.2)
    np.testing.assert_allclose(dm.mean, [raw.mean()], rtol=1e-5)
    np.testing.assert_allclose(dm.std, [raw.std(ddof=1)], rtol=1e-5)
    everything = load_digits().images / 16.0
    assert abs(dm.mean[0] - everything.mean()) > 1e-4  # the validation images really are left out


def test_digits_source_gives_normalized_8x8_grayscale():
    """DigitsData: 1 channel, 10 classes, 8 x 8, all 1,797 images normalized, no own val or test set."""
    source = DigitsData(val_fraction=0.2, seed=42)
    assert (source.channels, source.input_hw, source.class_names) == (1, (8, 8), [str(i) for i in range(10)])
    images, labels = source.full_train().tensors
    assert images.shape == (1797, 1, 8, 8) and labels.shape == (1797,)
    (mean,), (std,) = source.normalization()
    assert torch.equal(images, (torch.tensor(load_digits().images, dtype=torch.float32)[:, None] / 16 - mean) / std)
    assert source.own_val() is None and source.own_test() is None


def test_image_size_only_resizes_file_images():
    """image_size applies to image folders; a digits model still sees (and predicts on) 8 x 8 images."""
    dm = ImageDataModule(image_size=16, augment=True)
    assert dm.input_hw == (8, 8) and dm.resize_hw is None and dm.seeds.augmenter.padding == 1


def test_fake_source_has_the_configured_shape_and_classes():
    """FakeData: the configured channels, size and classes, normalized per channel."""
    source = FakeData(size=12, image_shape=(2, 5, 7), num_classes=3, seed=0)
    assert (source.channels, source.input_hw, source.class_names) == (2, (5, 7), ["0", "1", "2"])
    assert source.normalization() == ((0.5, 0.5), (0.2887, 0.2887))
    full = source.full_train()
    x, y = full[0]
    assert len(full) == 12 and x.shape == (2, 5, 7) and x.dtype == torch.float32 and 0 <= y < 3
    assert source.own_val() is None and source.own_test() is None


@pytest.mark.parametrize(
    ("counts", "sizes"),
    [
        ({"train": 4}, (6, 2, 2)),  # root/train only: val split off, test = val
        ({"train": 4, "val": 2}, (8, 4, 4)),  # own val, test = val
        ({"train": 4, "val": 2, "test": 3}, (8, 4, 6)),  # own val and test
    ],
)
def test_image_folder_layouts(tmp_path, counts, sizes):
    """root/train, + root/val, + root/test: each folder that exists is used as given, the rest split or reused."""
    root = write_split_folders(tmp_path, counts)
    dm = ImageDataModule(dataset="imagefolder", root=str(root), val_fraction=0.25)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == sizes
    assert dm.class_names == ["a", "b"] and dm.input_hw == (16, 16) and dm.resize_hw is None
    assert next(iter(dm.test_dataloader()))[0].shape[1:] == (3, 16, 16)


def test_image_folder_statistics_cover_the_whole_train_folder_beside_a_val_folder(tmp_path):
    """With root/val, the statistics come from every root/train image and from none of root/val."""
    root = write_split_folders(tmp_path, {"train": 3, "val": 3})
    write_image(root / "val" / "a" / "3.png", 2, (16, 16), "RGB")  # another colour, in val only
    train_only = imagefolder_stats(image_files(root / "train"), image_transform(None))
    assert ImageFolderData(root).normalization() == train_only
    assert ImageFolderData(root).normalization() != imagefolder_stats(image_files(root), image_transform(None))


def test_image_folder_with_differing_class_folders_is_a_config_error(tmp_path):
    """root/val must hold the same classes as root/train: prepare_data names both."""
    write_split_folders(tmp_path, {"train": 1})
    write_image(tmp_path / "val" / "c" / "0.png", 0, (16, 16), "RGB")
    with pytest.raises(ConfigError, match="Class folders differ"):
        ImageDataModule(dataset="imagefolder", root=str(tmp_path)).prepare_data()


@pytest.mark.parametrize("problem", ["no root", "missing", "no class folders", "class folder without images"])
def test_image_folder_paths_the_user_named_give_clear_errors(tmp_path, problem):
    """A missing or unusable data.root is a UserPathError (or a ConfigError when unset) naming the key."""
    root = tmp_path / "images"
    if problem == "no class folders":
        write_image(root / "loose.png", 0, (8, 8), "RGB")
    elif problem == "class folder without images":
        write_split_folders(root, {"train": 1})
        (root / "train" / "empty").mkdir()
    dm = ImageDataModule(dataset="imagefolder", root=None if problem == "no root" else str(root))
    error = ConfigError if problem == "no root" else UserPathError
    with pytest.raises(error, match="data.root"):
        dm.prepare_data()  # before Lightning creates a run directory


def test_new_images_look_like_the_training_images(tmp_path):
    """Files of any size and mode come out with the source's channels, size and normalization, in path order."""
    make_image_folder(tmp_path / "new", classes=("x",), per_class=4)
    images = new_images(tmp_path / "new", DigitsData())
    assert len(images) == 4 and images.paths == sorted(images.paths)
    x, i = images[2]
    assert x.shape == (1, 8, 8) and i == 2
    x, _ = new_images(tmp_path / "new", FakeData(image_shape=(3, 10, 12)))[0]
    assert x.shape == (3, 10, 12)


@pytest.mark.parametrize(("folder", "error"), [(None, ConfigError), ("missing", UserPathError), ("", UserPathError)])
def test_new_images_folder_errors_name_the_option(tmp_path, folder, error):
    """No predict_root, a missing one or one without images: an error naming data.predict_root."""
    (tmp_path / "notes.txt").write_text("not an image")
    path = None if folder is None else tmp_path / folder
    with pytest.raises(error, match="data.predict_root"):
        ImageDataModule(predict_root=None if path is None else str(path)).setup("predict")


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_torchvision_sets_offline_fail_fast_naming_the_root(tmp_path, monkeypatch, name):
    """Not on disk and no network: one 3 s probe of the download host, then a DataUnavailableError saying what to do."""
    probes = offline(monkeypatch)
    dm = ImageDataModule(dataset=name, root=str(tmp_path / "data"))
    with pytest.raises(DataUnavailableError, match=f"The {name} data set") as info:
        dm.prepare_data()
    cls = dm.source.dataset_class
    host = (cls.mirrors[0] if hasattr(cls, "mirrors") else cls.url).split("/")[2]
    assert probes == [(host, 3)]
    assert str((tmp_path / "data").resolve()) in str(info.value) and "--data.root" in str(info.value)
    assert not (tmp_path / "data").exists()


def test_mnist_on_disk_is_read_without_the_network(tmp_path, monkeypatch):
    """An MNIST copy under root is used as it is: split train, own test set, 1 x 28 x 28 normalized tensors."""
    probes = offline(monkeypatch)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 6)):
        write_idx(tmp_path / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)))
    dm = ImageDataModule(dataset="mnist", root=str(tmp_path), batch_size=4, val_fraction=0.25)
    dm.prepare_data()
    dm.setup("fit")
    assert probes == []
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 6)
    assert isinstance(dm.test_set, IdxDataset)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and dm.in_channels == 1
    expected = (dm.train_set[0][0] * 0.3081 + 0.1307) * 255
    torch.testing.assert_close(expected.round(), expected, atol=1e-3, rtol=0)  # raw bytes, normalized


def test_cifar100_class_names_come_from_the_downloaded_meta_file(tmp_path):
    """CIFAR-100 is named class_i until downloaded, then by its meta file's fine label names, before setup."""
    assert CIFAR100Data(tmp_path).class_names == [f"class_{i}" for i in range(100)]
    names = [f"fine_{i}" for i in range(100)]
    meta = tmp_path / "cifar-100-python" / "meta"
    meta.parent.mkdir()
    meta.write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": ["c"] * 20}))
    dm = ImageDataModule(dataset="cifar100", root=str(tmp_path))
    assert dm.class_names == names and dm.num_classes == 100


def test_mnist_source_facts_need_no_files(tmp_path):
    """A torchvision source knows its channels, size, classes and statistics before anything is downloaded."""
    source = MNISTData(tmp_path / "nowhere")
    assert (source.channels, source.input_hw, len(source.class_names)) == (1, (28, 28), 10)
    assert source.normalization() == ((0.1307,), (0.3081,))
    assert not (tmp_path / "nowhere").exists()


def test_fast_decoding_gives_the_pixels_pil_gives(tmp_path):
    """read_rgb (torchvision.io for JPEG and PNG) equals PIL's RGB conversion for every mode the tests write,
    CMYK JPEG and palette PNG with transparency included."""
    folder = make_image_folder(tmp_path / "modes", per_class=6)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    palette = Image.fromarray(rng.integers(0, 4, (9, 7), dtype=np.uint8), "P")
    palette.info["transparency"] = 0
    palette.save(tmp_path / "transparent.png", transparency=0)
    files = [*image_files(folder), tmp_path / "cmyk.jpg", tmp_path / "transparent.png"]
    assert len(files) == 20
    for path in files:
        assert torch.equal(read_rgb(str(path)), pil_to_tensor(load_rgb(str(path)))), path
