"""The typed groups of ``ImageClassifier``'s arguments, as the CLI parses them (``--model.network.*``,
``--model.pictures.*``): what network to build and how its backbone trains, and which pictures
validation draws. Both loops build from them, so neither reads a flat argument of its own."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal

from torch import nn

from project.finetuning import optimizer_parameters
from project.models import build_network


@dataclass(frozen=True)
class NetworkSpec:
    """What network, and how its backbone trains.

    Args:
        backbone: ``simple_cnn``, a torchvision classification model name (resnet18, ...), or
            ``timm/<name>`` with the optional ``timm`` extra.
        weights: pretrained weights: null (none), ``DEFAULT``, a torchvision weights name
            (``IMAGENET1K_V1``), a timm pretrained tag, or a .pth/.ckpt/.safetensors file. The head
            is made anew for the data's classes; the rest must load strictly.
        small_input_stem: 3x3 stride-1 stem and no max-pool, for 32 px inputs.
        dropout: dropout rate of the classifier head.
        channels_last: keep the network's weights (and so its activations) in channels-last
            memory format, what tensor cores want under bf16/fp16.
        compile: ``torch.compile`` the network with this mode (``default``, ``reduce-overhead``,
            ``max-autotune``); null runs it eagerly. Both loops then train the compiled network.
        freeze_backbone_epochs: train only the classifier head for this many first epochs, with the
            backbone frozen (its BatchNorm statistics too); then all of it.
        backbone_lr_scale: the backbone's learning rate as a fraction of the optimizer's (the head's).
    """

    backbone: str = "simple_cnn"
    weights: str | None = None
    small_input_stem: bool = False
    dropout: float = 0.25
    channels_last: bool = False
    compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    freeze_backbone_epochs: int = 0
    backbone_lr_scale: float = 1.0

    def build(self, num_classes: int, in_channels: int) -> nn.Module:
        return build_network(
            self.backbone,
            num_classes,
            in_channels,
            self.small_input_stem,
            self.dropout,
            self.channels_last,
            self.compile,
            self.weights,
        )

    def optimizer_parameters(self, net: nn.Module) -> list:
        """The parameters (or, when fine-tuning, the head and backbone groups) the optimizer gets."""
        return optimizer_parameters(net, self.freeze_backbone_epochs, self.backbone_lr_scale)


@dataclass(frozen=True)
class PictureSpec:
    """The pictures of validation in TensorBoard.

    Args:
        every_n_epochs: the confusion matrix and the misclassified grid every N validation epochs
            (0 turns pictures off).
        num_misclassified: how many misclassified validation images the grid shows.
    """

    every_n_epochs: int = 1
    num_misclassified: int = 16


def as_spec(kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` spec: a spec stays, a dict (hyperparameters read back from a
    checkpoint) is turned into one."""
    return value if isinstance(value, kind) else kind(**value)


def plain(value: Any) -> Any:
    """A spec as a plain dict, what a checkpoint's hyperparameters may hold (``weights_only`` loading)."""
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


# Checkpoints written before the arguments were grouped name them flat: where each went.
FLAT_ARGUMENTS = {
    **{f.name: ("network", f.name) for f in fields(NetworkSpec)},
    "log_images_every_n_epochs": ("pictures", "every_n_epochs"),
    "num_misclassified_images": ("pictures", "num_misclassified"),
}


def grouped(hparams: dict) -> dict:
    """A module's hyperparameters with flat arguments of the earlier layout moved into their groups."""
    out = {k: v for k, v in hparams.items() if k not in FLAT_ARGUMENTS}
    for key, (group, name) in FLAT_ARGUMENTS.items():
        if key in hparams:
            out[group] = {**(out.get(group) or {}), name: hparams[key]}
    return out
