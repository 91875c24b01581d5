"""Batch augmentation on the device, driven by a seeded generator.

Augmenting whole batches after they reach the device (instead of per sample in the DataLoader)
keeps every random draw in one ``torch.Generator`` that both loops advance in the same order, and
whose state can be saved. It also runs on the GPU when there is one.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_padding(hw: tuple[int, int] | None) -> int:
    """The padding of the random crop for (H, W) images: an eighth of the shorter side, at least 1 (4 px
    on 32 px images, as in the usual CIFAR recipe); 4 px when the size is not known without reading
    files (an image folder without image_size), rather than reading them."""
    return 4 if hw is None else max(1, min(hw) // 8)


class RandomCropFlip:
    """Random crop with zero padding plus a random horizontal flip, per image."""

    def __init__(self, padding: int, flip: bool = True, seed: int = 0):
        self.padding = padding
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor) -> Tensor:
        # x: (B, C, H, W) on any device; draws happen on the CPU generator, indexing on x's device.
        # The draws are copied without waiting: a blocking copy to a GPU would sync with it every step.
        b, c, h, w = x.shape
        p = self.padding
        shifts = torch.randint(0, 2 * p + 1, (b, 2), generator=self.generator).to(x.device, non_blocking=True)
        flips = (torch.rand(b, generator=self.generator) < 0.5).to(x.device, non_blocking=True)
        padded = F.pad(x, (p, p, p, p))
        rows = torch.arange(h, device=x.device) + shifts[:, :1]  # (B, H)
        cols = torch.arange(w, device=x.device) + shifts[:, 1:]  # (B, W)
        if self.flip:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
