"""Image files on disk: finding them, opening any of them as RGB, and checking they share one size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_image, read_file
from torchvision.transforms.v2.functional import pil_to_tensor

from project.errors import ConfigError, UserPathError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Decoded by torchvision.io: about 1.5 times PIL's speed (benchmarks/decode_speed.py), same pixels.
FAST_DECODE = (".png", ".jpg", ".jpeg")


def load_rgb(path: str) -> Image.Image:
    """Open any PNG/JPEG (grayscale, RGB, RGBA, palette) as RGB; transparency goes through RGBA."""
    with Image.open(path) as img:
        if img.mode in ("P", "PA", "LA", "RGBA") or "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def read_rgb(path: str) -> Tensor:
    """Any image file as a (3, H, W) uint8 RGB tensor: torchvision.io decodes JPEG and PNG, PIL the rest."""
    if path.lower().endswith(FAST_DECODE):
        return decode_image(read_file(path), mode=ImageReadMode.RGB)
    return pil_to_tensor(load_rgb(path))


def is_hidden(name: str) -> bool:
    """A hidden file or folder (``.ipynb_checkpoints``, macOS ``._x.jpg``): never a class or a sample."""
    return name.startswith(".")


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder``, at any depth, in sorted order; hidden files and folders are
    left out, and symlinks followed, as torchvision's ImageFolder follows them."""
    found = []
    for parent, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        found += [Path(parent, n) for n in names if not is_hidden(n) and n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def class_folders(folder: Path) -> list[str]:
    """Names of the (not hidden) subfolders of ``folder`` that hold at least one image file, sorted."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not is_hidden(d.name) and any(image_files(d)))


def uniform_size(sizes: Mapping[Path, tuple[int, int]]) -> tuple[int, int]:
    """The one (H, W) of all files in ``sizes`` (path -> (H, W)); files of other sizes can't be
    batched without resizing."""
    first: tuple[Path, tuple[int, int]] | None = None
    for path, hw in sizes.items():
        if first is None:
            first = (path, hw)
        elif hw != first[1]:
            raise ConfigError(
                f"Images differ in size ({first[0]} is {first[1][1]}x{first[1][0]}, {path} is {hw[1]}x{hw[0]}): "
                f"set --data.image_size N to resize them all to N x N"
            )
    if first is None:  # every file was bad and skipped
        raise UserPathError("data.root: no usable image files: nothing to train on (see the files named above)")
    return first[1]
