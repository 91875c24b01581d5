"""MNIST and Fashion-MNIST read from their four IDX files, gzipped or not, wherever they are under the root.

The files are checked by what they hold (header, shape, counts, labels) rather than by checksum,
so a distribution's recompressed copy (Debian's ``dataset-fashion-mnist``) reads as well as
torchvision's download.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from project.errors import DataUnavailableError

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one these files use


def read_idx(path: Path) -> Tensor:
    """The uint8 array an IDX file holds, gzipped or not (told by its first bytes, not its name),
    checked against its header: two zero bytes, the unsigned-byte type and the number of dimensions,
    one big-endian size per dimension, then exactly as many bytes as the sizes say."""
    try:
        data = path.read_bytes()
        if data[:2] == GZIP_MAGIC:
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, or a damaged or cut-off gzip stream
        raise DataUnavailableError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != UBYTE or data[3] == 0:
        raise DataUnavailableError(f"{path}: not an IDX file of unsigned bytes (magic 0x{data[:4].hex()})")
    start = 4 + 4 * data[3]
    if len(data) < start:
        raise DataUnavailableError(f"{path}: the header of {data[3]} dimensions is cut short at {len(data)} bytes")
    shape = struct.unpack(f">{data[3]}I", data[4:start])
    size = math.prod(shape)
    if len(data) - start != size:
        dims = " x ".join(map(str, shape))
        raise DataUnavailableError(f"{path}: holds {len(data) - start} bytes of data, its header says {size} ({dims})")
    if size == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=start).reshape(shape)


def find_idx_files(root: Path, folder: str) -> dict[str, Path]:
    """The four files of a data set by name (``IDX_NAMES``), each looked for in torchvision's
    ``root/<folder>/raw/`` (``folder``: ``MNIST``, ``FashionMNIST``) then flat in ``root``, unpacked
    then gzipped; a missing one raises an error naming every place it was looked for."""
    found: dict[str, Path] = {}
    missing = []
    for name in IDX_NAMES:
        places = [where / f"{name}{ext}" for where in (root / folder / "raw", root) for ext in ("", ".gz")]
        path = next((p for p in places if p.is_file()), None)
        if path is None:
            missing.append(f"no {name}: looked for {', '.join(str(p.absolute()) for p in places)}")
        else:
            found[name] = path
    if missing:
        raise DataUnavailableError(f"{folder} is not complete in {root.absolute()}: " + "; ".join(missing))
    return found


def read_idx_split(
    root: Path, folder: str, train: bool, hw: tuple[int, int] | None = None, num_classes: int = 10
) -> tuple[Tensor, Tensor]:
    """(images (N, H, W) uint8, labels (N,) int64) of the training (``train``) or test split,
    checked: images 3-d (and ``hw`` when given), labels 1-d, as many of each, labels below ``num_classes``."""
    files = find_idx_files(root, folder)
    prefix = "train" if train else "t10k"
    image_file, label_file = files[f"{prefix}-images-idx3-ubyte"], files[f"{prefix}-labels-idx1-ubyte"]
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or (hw is not None and tuple(images.shape[1:]) != hw):
        shape = " x ".join(map(str, images.shape))
        want = f"N x {hw[0]} x {hw[1]}" if hw is not None else "3 dimensions (count, height, width)"
        raise DataUnavailableError(f"{image_file}: holds an array of {shape}, images need {want}")
    if labels.ndim != 1:
        raise DataUnavailableError(f"{label_file}: holds {labels.ndim}-d data, labels need 1 dimension")
    if len(images) != len(labels):
        raise DataUnavailableError(
            f"{image_file} holds {len(images)} images but {label_file} holds {len(labels)} labels"
        )
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataUnavailableError(f"{label_file}: label {int(labels.max())} is not one of 0..{num_classes - 1}")
    return images, labels.long()


class IdxDataset(Dataset):
    """(``transform(image)``, label) pairs of one split, the image a (1, H, W) uint8 tensor: the
    same bits torchvision's ``MNIST`` gives ``image_transform`` through a grayscale PIL image.
    ``data`` and ``targets`` are named as torchvision names them."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        self.data, self.targets, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image = self.data[index].unsqueeze(0).clone()  # its own bytes, not a view of the whole split
        return (self.transform(image) if self.transform is not None else image), int(self.targets[index])
