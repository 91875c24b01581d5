"""MNIST and Fashion-MNIST from their IDX files, gzipped or not, in either layout, checked by content, offline."""

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets as tvd

from project.data import FashionMNISTData, ImageDataModule, image_transform
from project.data.idx import IDX_NAMES, IdxDataset, find_idx_files, read_idx, read_idx_split
from project.errors import DataUnavailableError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray, gz: bool = False, magic: bytes | None = None) -> Path:
    """``array`` as uint8 in an IDX file (gzipped with ``gz``); ``magic`` replaces the header's first 4 bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = magic if magic is not None else struct.pack(">HBB", 0, 0x08, array.ndim)
    data = head + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_set(where: Path, counts=(("train", 12), ("t10k", 5)), hw=(28, 28), gz=False, seed=0) -> dict:
    """The four files of a small data set in ``where``: random images and labels 0..9, by file name."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in counts:
        arrays[f"{prefix}-images-idx3-ubyte"] = rng.integers(0, 256, (n, *hw))
        arrays[f"{prefix}-labels-idx1-ubyte"] = rng.integers(0, 10, (n,))
    for name, array in arrays.items():
        write_idx(where / (name + (".gz" if gz else "")), array, gz)
    return arrays


def refuse_network(monkeypatch) -> None:
    """No connection and no torchvision download: either would fail the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr("project.data.torchvision_sets.download_torchvision", refuse)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("layout", ["torchvision", "flat"])
def test_both_layouts_gzipped_or_not_read_the_same_arrays(tmp_path, layout, gz):
    """root/FashionMNIST/raw/ or root itself, .gz or not: the files are found and read back exactly."""
    arrays = write_set(tmp_path / "FashionMNIST" / "raw" if layout == "torchvision" else tmp_path, gz=gz)
    files = find_idx_files(tmp_path, "FashionMNIST")
    assert set(files) == set(IDX_NAMES) and all(p.name.endswith(".gz") == gz for p in files.values())
    for train, prefix in ((True, "train"), (False, "t10k")):
        images, labels = read_idx_split(tmp_path, "FashionMNIST", train, hw=(28, 28))
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), arrays[f"{prefix}-images-idx3-ubyte"])
        assert np.array_equal(labels.numpy(), arrays[f"{prefix}-labels-idx1-ubyte"])


def test_gzip_is_told_by_its_magic_bytes_not_its_name(tmp_path):
    """A gzipped file without .gz and a plain one named .gz both read."""
    array = np.arange(24).reshape(2, 3, 4)
    assert torch.equal(read_idx(write_idx(tmp_path / "a", array, gz=True)), torch.from_numpy(array).byte())
    assert torch.equal(read_idx(write_idx(tmp_path / "b.gz", array)), torch.from_numpy(array).byte())


@pytest.mark.parametrize(
    ("magic", "shown"),
    [(b"\x00\x00\x0d\x03", "0x00000d03"), (b"PK\x03\x04", "0x504b0304"), (b"\0\0\x08\0", "0x00000800")],
)
def test_a_file_not_of_unsigned_bytes_is_refused_with_its_magic(tmp_path, magic, shown):
    """Float data, a zip archive or zero dimensions: an error naming the file and the magic it has."""
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 2, 2)), gz=True, magic=magic)
    with pytest.raises(DataUnavailableError, match="not an IDX file of unsigned bytes") as info:
        read_idx(path)
    assert str(path) in str(info.value) and f"(magic {shown})" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_a_truncated_file_says_how_much_it_holds(tmp_path, gz):
    """Data cut short (or one byte too many): the bytes there and the bytes the header promises."""
    path = write_idx(tmp_path / "x", np.zeros((10, 28, 28)))
    data = path.read_bytes()
    for body, held in ((data[:-1000], 6840), (data + b"\0", 7841)):
        path.write_bytes(gzip.compress(body) if gz else body)
        with pytest.raises(DataUnavailableError, match=f"holds {held} bytes of data, its header says 7840") as info:
            read_idx(path)
        assert str(path) in str(info.value)
    path.write_bytes(data[:10])  # inside the sizes of the header
    with pytest.raises(DataUnavailableError, match="header of 3 dimensions is cut short at 10 bytes"):
        read_idx(path)


def test_a_cut_off_gzip_stream_names_the_file(tmp_path):
    """A download or copy that stopped halfway through the .gz: the file and gzip's complaint."""
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.ones((3, 28, 28)), gz=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataUnavailableError, match="cannot be read") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_split_checks_counts_shapes_and_labels(tmp_path):
    """Images and labels that disagree in number, the wrong shape or a label past 9: an error naming the files."""
    write_set(tmp_path, counts=(("train", 6), ("t10k", 4)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(DataUnavailableError) as info:
        read_idx_split(tmp_path, "MNIST", train=False)
    images, labels = tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte"
    assert str(info.value) == f"{images} holds 4 images but {labels} holds 3 labels"
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 10, 4, 5]))
    with pytest.raises(DataUnavailableError, match="train-labels-idx1-ubyte: label 10 is not one of 0..9"):
        read_idx_split(tmp_path, "MNIST", train=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((6, 1)))
    with pytest.raises(DataUnavailableError, match="train-labels-idx1-ubyte: holds 2-d data"):
        read_idx_split(tmp_path, "MNIST", train=True)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 784)))
    with pytest.raises(DataUnavailableError, match="train-images-idx3-ubyte: holds an array of 6 x 784"):
        read_idx_split(tmp_path, "MNIST", train=True)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 32, 32)))
    with pytest.raises(DataUnavailableError, match="holds an array of 6 x 32 x 32, images need N x 28 x 28"):
        read_idx_split(tmp_path, "MNIST", train=True, hw=(28, 28))


def test_a_missing_file_names_every_place_looked(tmp_path):
    """Three of the four files: the error lists the four paths the fourth could have had, and only those."""
    write_set(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataUnavailableError) as info:
        find_idx_files(tmp_path, "MNIST")
    message = str(info.value)
    for where in (tmp_path / "MNIST" / "raw", tmp_path):
        for name in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz"):
            assert str(where / name) in message
    assert "train-images" not in message and str(tmp_path) in message


@pytest.mark.parametrize(("raw", "size"), [(True, None), (False, None), (False, (14, 14))])
def test_items_equal_torchvisions_mnist_bit_for_bit(tmp_path, raw, size):
    """On the same uncompressed files in torchvision's layout, every (image, label) equals what
    torchvision's MNIST (through a PIL image) gives with the same transform: uint8, normalized, resized."""
    write_set(tmp_path / "MNIST" / "raw", counts=(("train", 7), ("t10k", 3)), hw=(9, 6))
    transform = image_transform(((0.1307,), (0.3081,)), size=size, raw=raw)
    for train in (True, False):
        theirs = tvd.MNIST(str(tmp_path), train=train, transform=transform)
        ours = IdxDataset(*read_idx_split(tmp_path, "MNIST", train), transform=transform)
        assert len(ours) == len(theirs)
        for (x, y), (tx, ty) in zip(ours, theirs):
            assert type(x) is type(tx) and x.dtype == tx.dtype and torch.equal(x, tx) and (y, type(y)) == (ty, int)


@pytest.mark.parametrize("device_cache", [False, True])
def test_fashion_mnist_on_disk_trains_without_the_network(tmp_path, monkeypatch, device_cache):
    """Debian's layout (four .gz files flat in the root, not torchvision's bytes): prepare_data downloads
    nothing, setup splits it, and the loaders yield normalized 1 x 28 x 28 batches."""
    refuse_network(monkeypatch)
    write_set(tmp_path, counts=(("train", 20), ("t10k", 6)), gz=True)
    dm = ImageDataModule(
        dataset="fashion_mnist", root=str(tmp_path), batch_size=4, val_fraction=0.25, device_cache=device_cache
    )
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (15, 5, 6)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.in_channels == 1 and dm.num_classes == 10
    pixels = x * 0.3530 + 0.2860  # undone: whole bytes
    torch.testing.assert_close((pixels * 255).round(), pixels * 255, atol=1e-3, rtol=0)


def test_incomplete_files_still_go_to_torchvisions_download(tmp_path, monkeypatch):
    """Files missing from both layouts: prepare_data falls back to the download (which fails clearly offline)."""
    write_set(tmp_path, counts=(("train", 4),))  # no t10k files
    calls = []
    monkeypatch.setattr(
        "project.data.torchvision_sets.download_torchvision", lambda cls, root, train, name: calls.append(train)
    )
    ImageDataModule(dataset="mnist", root=str(tmp_path)).prepare_data()
    assert calls == [True, False]


@pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} (apt-get install dataset-fashion-mnist)",
)
def test_the_distributions_fashion_mnist_reads(monkeypatch):
    """The real, recompressed files: 60,000 training and 10,000 test images, 6,000 and 1,000 per class."""
    refuse_network(monkeypatch)
    source = FashionMNISTData(DEBIAN_FASHION_MNIST)
    source.prepare()
    for train, n in ((True, 60000), (False, 10000)):
        images, labels = read_idx_split(DEBIAN_FASHION_MNIST, "FashionMNIST", train, hw=(28, 28))
        assert images.shape == (n, 28, 28) and labels.shape == (n,)
        assert torch.bincount(labels).tolist() == [n // 10] * 10
    x, y = source.own_test(raw=True)[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.uint8 and 0 <= y < 10
