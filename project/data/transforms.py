"""The one way images become model inputs: tensor, optional resize, float in [0, 1], normalized."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def image_transform(stats: Stats | None, size: tuple[int, int] | None = None) -> v2.Compose:
    """PIL image -> (C, H, W) float tensor, resized to ``size`` and normalized with ``stats`` when given."""
    steps = [v2.ToImage()]
    if size is not None:
        steps.append(v2.Resize(size, antialias=True))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if stats is not None:
        steps.append(v2.Normalize(*stats))
    return v2.Compose(steps)
