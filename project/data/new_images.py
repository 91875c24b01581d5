"""New images for ``predict``: any files under a folder, made to look like the training images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from project.data.files import IMAGE_EXTENSIONS, image_files, load_rgb
from project.data.scan import OnBadFile, bad_files_report, scan_files
from project.data.source import DataSource
from project.data.transforms import image_transform
from project.errors import ConfigError, UserPathError

log = logging.getLogger(__name__)


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


def new_images(folder: Path | None, source: DataSource, on_bad_file: OnBadFile = "error") -> FileListDataset:
    """Every image under ``folder``, resized, converted and normalized as ``source``'s training images are.

    Each file is checked first (``scan_files``): a broken one stops here with the list, or with
    ``on_bad_file="skip"`` is left out and counted in the log.
    """
    if folder is None:
        raise ConfigError("predict needs a folder of images: pass --data.predict_root DIR")
    if not folder.is_dir():
        raise UserPathError(f"data.predict_root: no such directory: {folder}")
    paths = image_files(folder)
    if not paths:
        raise UserPathError(f"data.predict_root: no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    sizes, bad = scan_files(paths)
    if bad and on_bad_file == "error":
        raise UserPathError(bad_files_report([str(b) for b in bad], folder, "data.predict_root"))
    if bad:
        log.warning("data.on_bad_file=skip: left out %d bad image file(s) under %s, e.g. %s", len(bad), folder, bad[0])
        paths = [p for p in paths if p in sizes]
    if not paths:
        raise UserPathError(f"data.predict_root: no usable images in {folder}")
    # The model's input size, not resize_hw: an image folder of one native size has no resize_hw,
    # but new files of other sizes must still come out at that size.
    size, crop = source.new_image_geometry()
    transform = image_transform(source.normalization(), size, crop=crop)
    return FileListDataset(paths, transform, gray=source.channels == 1)
