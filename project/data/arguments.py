"""The data module's arguments that no data source checks: each error names its ``data.*`` key."""

from __future__ import annotations

from project.errors import ConfigError


def check_arguments(
    dataset: str,
    batch_size: int,
    val_fraction: float,
    crop_size: int | None,
    mean: list[float] | None,
    std: list[float] | None,
) -> None:
    """A ``ConfigError`` for a value or a combination of values that the data module cannot take."""
    if (mean is None) != (std is None):
        raise ConfigError("data.mean and data.std go together: set both or neither")
    if crop_size is not None and dataset != "imagefolder":
        raise ConfigError(f"data.crop_size is for image folders; data.dataset={dataset} keeps its own size")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be between 0 and 1, got {val_fraction}")
    if batch_size < 1:
        raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")


def check_crop_padding(crop_padding: int | None, augment: bool) -> None:
    """``data.crop_padding`` is a number of pixels, and it pads ``data.augment``'s crop."""
    if crop_padding is None:
        return
    if crop_padding < 0:
        raise ConfigError(f"data.crop_padding must be 0 or more pixels, got {crop_padding}")
    if not augment:
        raise ConfigError(f"data.crop_padding={crop_padding} pads data.augment's random crop: set data.augment: true")
