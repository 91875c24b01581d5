"""The one way images become model inputs: tensor, optional resize, float in [0, 1], normalized.

The same steps run per image in a dataset or per batch on the device (``device_cache``): each is
elementwise, so both give the same bits.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def image_transform(
    stats: Stats | None, size: tuple[int, int] | int | None = None, raw: bool = False, crop: int | None = None
) -> v2.Compose:
    """PIL image -> (C, H, W) tensor, resized to ``size`` ((H, W), or an int for the shorter side)
    and centre-cropped to ``crop`` x ``crop`` when given; then, unless ``raw`` (uint8 as decoded),
    float in [0, 1] normalized with ``stats`` when given."""
    steps = [v2.ToImage()]
    if size is not None:
        steps.append(v2.Resize(size, antialias=True))
    if crop is not None:
        steps.append(v2.CenterCrop(crop))
    if raw:
        return v2.Compose(steps)
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if stats is not None:
        steps.append(v2.Normalize(*stats))
    return v2.Compose(steps)


def normalize_batch(x: Tensor, stats: Stats) -> Tensor:
    """(B, C, H, W) uint8 -> what ``image_transform(stats)`` makes of each image, on ``x``'s device."""
    return F.normalize(F.to_dtype(x, torch.float32, scale=True), *stats)
