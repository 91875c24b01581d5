"""The pre-flight scan of image files: each one opened and decoded once before a run starts, so that
a broken file is named with its reason up front and never met in the middle of an epoch.

What a file must pass is what ``read_rgb`` needs, checked with PIL (which raises where
torchvision.io's libpng crashes the whole process on a corrupt PNG):

- it is not empty, and PIL recognises it as an image;
- it has at most ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (89.5 million by default), read from the
  header before anything is decoded: more is a decompression bomb, or too large to train on;
- a ``.png``/``.jpg``/``.jpeg`` file holds a format torchvision.io decodes (PNG, JPEG, GIF, WebP);
- a PNG's chunks all pass their CRC (``verify``), and every image decodes to the end: JPEGs at
  1/8 scale, which reads the whole entropy-coded stream (so truncation shows) for a fraction of
  the work.

Hidden files and folders (a name starting with '.', e.g. ``.ipynb_checkpoints/``, macOS ``._x.jpg``)
are never classes or samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

from project.data.files import FAST_DECODE, image_files, is_hidden

OnBadFile = Literal["error", "skip"]
# What torchvision.io's decode_image reads, for the extensions read_rgb hands it (MPO: a camera JPEG).
TORCHVISION_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "WEBP"}


@dataclass(frozen=True)
class BadFile:
    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class FolderScan:
    """A class-folder tree: the usable image files of each class, their sizes, and every problem."""

    folder: Path
    files: dict[str, list[Path]] = field(default_factory=dict)  # class -> usable files, sorted
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # (H, W) of each usable file
    bad_files: list[BadFile] = field(default_factory=list)
    empty_classes: list[Path] = field(default_factory=list)  # class folders without a usable image

    @property
    def class_names(self) -> list[str]:
        return [name for name, files in self.files.items() if files]

    @property
    def problems(self) -> list[str]:
        empty = [f"{d}: a class folder without usable image files" for d in self.empty_classes]
        return [*map(str, self.bad_files), *empty]


def check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """``((H, W), None)`` for a file ``read_rgb`` can decode, else ``(None, reason)``."""
    try:
        if path.stat().st_size == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as img:
            fmt, (width, height) = img.format, img.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and width * height > limit:  # PIL only warns up to twice the limit
                raise Image.DecompressionBombError(f"Image size ({width * height} pixels) exceeds limit of {limit}")
            if path.suffix.lower() in FAST_DECODE and fmt not in TORCHVISION_FORMATS:
                return None, f"a {fmt} image named {path.suffix}, which is decoded as PNG or JPEG: rename it"
            if fmt == "PNG":
                img.verify()  # chunk CRCs: a bad one crashes torchvision's decoder, and PIL's load misses it
        with Image.open(path) as img:  # verify() leaves the image unusable: open again to decode
            if fmt in ("JPEG", "MPO"):
                img.draft("RGB", ((width + 7) // 8, (height + 7) // 8))
            img.load()
    except Image.DecompressionBombError as exc:
        return None, (
            f"too many pixels to decode safely (a decompression bomb?): {exc.args[0].split(',')[0]} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS)"
        )
    except UnidentifiedImageError:
        return None, "not an image: PIL does not recognise its content"
    except OSError as exc:
        if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError)):
            return None, f"cannot be read: {exc.strerror}"
        return None, f"truncated or corrupt: {exc}"
    except Exception as exc:  # PIL's SyntaxError, ValueError, struct.error, EOFError ... from a broken file
        return None, f"truncated or corrupt: {type(exc).__name__}: {exc}"
    return (height, width), None


def scan_files(paths: Iterable[Path]) -> tuple[dict[Path, tuple[int, int]], list[BadFile]]:
    """Check every file (``check_image``): the sizes of the usable ones, and the bad ones with their
    reasons, both in path order.

    One file after another: on small images the time goes to PIL's Python-side opening, under the
    GIL, and a thread pool measured no faster (benchmarks/scan_speed.py).
    """
    paths = list(paths)
    with warnings.catch_warnings():  # check_image reports large images itself: no warning for each
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        results = [check_image(p) for p in paths]
    sizes = {p: hw for p, (hw, _) in zip(paths, results) if hw is not None}
    bad = [BadFile(p, reason) for p, (_, reason) in zip(paths, results) if reason is not None]
    return sizes, bad


def scan_class_folders(folder: Path) -> FolderScan:
    """``folder/<class>/...``: every visible class folder and image file in it, checked."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not is_hidden(d.name))
    listed = {name: image_files(folder / name) for name in classes}
    sizes, bad = scan_files([p for files in listed.values() for p in files])
    scan = FolderScan(folder, sizes=sizes, bad_files=bad)
    for name, files in listed.items():
        scan.files[name] = [p for p in files if p in sizes]
        if not scan.files[name]:
            scan.empty_classes.append(folder / name)
    return scan


def bad_files_report(problems: list[str], where: Path, option: str = "data.root", most: int = 50) -> str:
    """The problems found under ``where``, one a line (the first ``most``), and what to do."""
    lines = [f"  {p}" for p in problems[:most]]
    if len(problems) > most:
        lines.append(f"  ... and {len(problems) - most} more")
    return (
        f"{option}: {len(problems)} problem{'s' if len(problems) > 1 else ''} in {where}; fix or remove the files, "
        "or pass --data.on_bad_file skip to leave them out:\n" + "\n".join(lines)
    )
