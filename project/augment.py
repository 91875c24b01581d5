"""Batch augmentation on the device, driven by a seeded generator.

Augmenting whole batches after they reach the device (instead of per sample in the DataLoader)
keeps every random draw in one ``torch.Generator`` that both loops advance in the same order, and
whose state can be saved. It also runs on the GPU when there is one.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torchvision.transforms import v2

from project.errors import ConfigError


def default_crop_padding(hw: tuple[int, int] | None) -> int:
    """The padding of the random crop for (H, W) images: an eighth of the shorter side, at least 1 (4 px
    on 32 px images, as in the usual CIFAR recipe); 4 px when the size is not known without reading
    files (an image folder without image_size), rather than reading them."""
    return 4 if hw is None else max(1, min(hw) // 8)


class SeededPart:
    """A part that draws from its own ``generator``, whose state a checkpoint keeps."""

    generator: torch.Generator

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class RandomCropFlip(SeededPart):
    """Random crop with padding plus a random horizontal flip, per image. The padding holds
    ``fill[c]`` in channel c: on a normalized batch, the normalized value of a black pixel, so that
    it crops as torchvision's ``RandomCrop(padding=p)`` (fill 0) does on the image before
    normalization (a fill of 0 there would be the data set's mean grey)."""

    def __init__(self, padding: int, flip: bool = True, seed: int = 0):
        self.padding = padding
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor, fill: Sequence[float] | None = None) -> Tensor:
        # x: (B, C, H, W) on any device; draws happen on the CPU generator, indexing on x's device.
        # The draws are copied without waiting: a blocking copy to a GPU would sync with it every step.
        b, c, h, w = x.shape
        p = self.padding
        shifts = torch.randint(0, 2 * p + 1, (b, 2), generator=self.generator).to(x.device, non_blocking=True)
        flips = (torch.rand(b, generator=self.generator) < 0.5).to(x.device, non_blocking=True)
        padded = x.new_empty(b, c, h + 2 * p, w + 2 * p)
        for channel_fill, value in zip(padded.unbind(1), fill or [0.0] * c, strict=True):
            channel_fill.fill_(value)  # a Python number: no copy to the device
        padded[:, :, p : p + h, p : p + w] = x
        rows = torch.arange(h, device=x.device) + shifts[:, :1]  # (B, H)
        cols = torch.arange(w, device=x.device) + shifts[:, 1:]  # (B, W)
        if self.flip:
            cols = torch.where(flips[:, None], cols.flip(1), cols)
        batch = torch.arange(b, device=x.device)[:, None, None, None]
        channel = torch.arange(c, device=x.device)[None, :, None, None]
        return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


@contextmanager
def seeded(generator: torch.Generator) -> Iterator[None]:
    """Inside: torch's global CPU generator seeded from ``generator`` (one draw), so that torchvision's
    transforms, which draw from it, draw from ``generator``'s stream; outside, its state is as before
    (Dropout's draws do not move). CUDA generators are left alone."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


POLICIES = {
    "trivial_augment_wide": v2.TrivialAugmentWide,
    "rand_augment": v2.RandAugment,
    "auto_augment": v2.AutoAugment,
}


@dataclass(frozen=True)
class AugmentSpec:
    """Today's augmentation recipe, on top of ``data.augment``'s crop and flip: per-image policies from
    ``torchvision.transforms.v2`` and batch mixing, all on training batches only.

    Args:
        policy: ``trivial_augment_wide``, ``rand_augment`` or ``auto_augment`` (ImageNet policy), per image.
        random_erasing: probability of ``RandomErasing`` per image (erased to the mean; 0: off).
        resized_crop_scale: ``RandomResizedCrop``'s scale range (e.g. [0.08, 1.0]), cropping each image
            and resizing it back to its size; null: off.
        resized_crop_ratio: ``RandomResizedCrop``'s aspect-ratio range.
        mixup_alpha: ``MixUp``'s alpha (0: off); with ``cutmix_alpha`` too, each batch takes one of the two.
        cutmix_alpha: ``CutMix``'s alpha (0: off).
    """

    policy: Literal["trivial_augment_wide", "rand_augment", "auto_augment"] | None = None
    random_erasing: float = 0.0
    resized_crop_scale: tuple[float, float] | None = None
    resized_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ConfigError(f"data.augmentation.random_erasing: {self.random_erasing} is not a probability")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError(
                f"data.augmentation: mixup_alpha ({self.mixup_alpha}) and cutmix_alpha ({self.cutmix_alpha}) "
                "must be >= 0"
            )
        scale = self.resized_crop_scale
        if scale is not None and not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ConfigError(f"data.augmentation.resized_crop_scale: {list(scale)} is not 0 < min <= max <= 1")

    @property
    def per_image(self) -> bool:
        return self.policy is not None or self.random_erasing > 0 or self.resized_crop_scale is not None

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class ImagePolicy(SeededPart):
    """The per-image part of an ``AugmentSpec`` on a normalized batch: ``RandomResizedCrop`` and the
    policy on each image brought back to [0, 1], then ``RandomErasing`` on the normalized image (as
    torchvision's recipe erases after normalizing). Each image draws its own operations, from
    ``generator`` alone: a v2 transform called on a whole batch would draw once for all of it."""

    def __init__(self, spec: AugmentSpec, seed: int):
        self.spec = spec
        self.policy = POLICIES[spec.policy]() if spec.policy is not None else None
        self.erasing = v2.RandomErasing(spec.random_erasing) if spec.random_erasing > 0 else None
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: Tensor, stats: tuple[tuple[float, ...], tuple[float, ...]]) -> Tensor:
        steps = []
        if self.spec.resized_crop_scale is not None:
            scale, ratio = self.spec.resized_crop_scale, self.spec.resized_crop_ratio
            steps.append(v2.RandomResizedCrop(tuple(x.shape[-2:]), scale, ratio, antialias=True))
        if self.policy is not None:
            steps.append(self.policy)
        with seeded(self.generator):
            if steps:
                mean, std = (torch.tensor(v, device=x.device)[:, None, None] for v in stats)
                images = (x * std + mean).clamp_(0.0, 1.0)
                x = (torch.stack([v2.Compose(steps)(image) for image in images]) - mean) / std
            if self.erasing is not None:
                x = torch.stack([self.erasing(image) for image in x])
        return x


class Mixer(SeededPart):
    """MixUp and CutMix of a training batch (``torchvision.transforms.v2``; one of the two per batch
    when both are on), drawn from ``generator``: (images, labels) -> (mixed images, the mixed class
    probabilities, which the cross-entropy takes as its target)."""

    def __init__(self, spec: AugmentSpec, seed: int):
        self.spec = spec
        self.generator = torch.Generator().manual_seed(seed)
        self._transform: Callable | None = None

    def __call__(self, x: Tensor, y: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
        if self._transform is None:
            both = [
                kind(alpha=alpha, num_classes=num_classes)
                for kind, alpha in ((v2.MixUp, self.spec.mixup_alpha), (v2.CutMix, self.spec.cutmix_alpha))
                if alpha > 0
            ]
            self._transform = both[0] if len(both) == 1 else v2.RandomChoice(both)
        with seeded(self.generator):
            return self._transform(x, y)
