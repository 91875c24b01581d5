"""The typed groups of ``ImageClassifier``'s arguments, as the CLI parses them (``--model.network.*``,
``--model.pictures.*``): what network to build and how its backbone trains, and which pictures
validation draws. Both loops build from them, so neither reads a flat argument of its own."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal

from torch import nn

from project.errors import ConfigError
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
        feature_size: ``simple_cnn`` pools its last feature map to this side before the head; null:
            from the input size, a quarter of its side up to 7 (a 28 px image's 7 x 7 map whole, an
            8 px digit's 2 x 2; 7 x 7 when the size is known only from the files).
        conv_layers: ``simple_cnn``'s convolutions block by block, each block with twice the
            channels of the one before; the first two end in a max-pool ([1, 2]: one convolution at
            full resolution, two at half; [1, 2, 1]: and one more at a quarter).
        hidden: ``simple_cnn``'s hidden units between the feature map and the classes.
        feature_dropout: ``simple_cnn``'s dropout rate on the flattened feature map, before the
            hidden layer (null: ``dropout``; 0: none, and no random draw for it).
        norm_weight_decay: weight decay of the normalization layers' weights and biases (null: the
            optimizer's), as torchvision's ``--norm-weight-decay``; 0 is today's recipe.
        bias_weight_decay: weight decay of the other layers' biases (null: the optimizer's).
    """

    backbone: str = "simple_cnn"
    weights: str | None = None
    small_input_stem: bool = False
    dropout: float = 0.25
    channels_last: bool = False
    compile: Literal["default", "reduce-overhead", "max-autotune"] | None = None
    freeze_backbone_epochs: int = 0
    backbone_lr_scale: float = 1.0
    feature_size: int | None = None
    conv_layers: tuple[int, ...] = (1, 1)
    hidden: int = 128
    feature_dropout: float | None = None
    norm_weight_decay: float | None = None
    bias_weight_decay: float | None = None

    def build(self, num_classes: int, in_channels: int, input_hw: tuple[int, int] | None = None) -> nn.Module:
        """The network for ``num_classes`` classes of ``in_channels`` x ``input_hw`` images (None: not
        known before the files are read)."""
        feature_size = self.feature_size or (min(7, max(1, min(input_hw) // 4)) if input_hw else 7)
        return build_network(
            self.backbone,
            num_classes,
            in_channels,
            self.small_input_stem,
            self.dropout,
            self.channels_last,
            self.compile,
            self.weights,
            feature_size,
            self.conv_layers,
            self.hidden,
            self.feature_dropout,
        )

    def optimizer_parameters(self, net: nn.Module) -> list:
        """The parameters the optimizer gets: one group, or the head and backbone groups when
        fine-tuning, each split by weight decay when norm or bias layers have their own."""
        return optimizer_parameters(
            net, self.freeze_backbone_epochs, self.backbone_lr_scale, self.norm_weight_decay, self.bias_weight_decay
        )


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


@dataclass(frozen=True)
class EMASpec:
    """An exponential moving average of the weights (and BatchNorm statistics), which validation,
    the best checkpoint and the end of training use: Lightning's ``EMAWeightAveraging``.

    Args:
        decay: the average keeps this share of itself at each update (0.999, 0.9998); null: no EMA.
        every_n_steps: update after every N-th optimizer step.
        start_step: the first update (a copy of the weights) after this optimizer step: the
            warm-up during which the average does not yet follow the weights.
    """

    decay: float | None = None
    every_n_steps: int = 1
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.decay is not None and not 0.0 <= self.decay < 1.0:
            raise ConfigError(f"model.ema.decay: {self.decay} is not in [0, 1)")
        if self.every_n_steps < 1 or self.start_step < 0:
            raise ConfigError(
                f"model.ema: every_n_steps ({self.every_n_steps}) must be >= 1 and start_step ({self.start_step}) >= 0"
            )


@dataclass(frozen=True)
class WarmupSpec:
    """A learning-rate warm-up in front of the scheduler (or of a constant rate without one).

    Args:
        epochs: warm up for this many epochs (counted in steps when the scheduler steps per step).
        steps: or for this many optimizer steps (the scheduler must step per step).
        method: ``linear`` from ``start_factor`` times the rate up to it, or ``constant`` at
            ``start_factor`` times it.
        start_factor: the first rate as a fraction of the configured one.
    """

    epochs: int = 0
    steps: int = 0
    method: Literal["linear", "constant"] = "linear"
    start_factor: float = 0.01

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.steps < 0 or (self.epochs and self.steps):
            raise ConfigError(f"model.warmup: give epochs or steps, not both ({self.epochs}, {self.steps})")
        if not 0.0 < self.start_factor <= 1.0:
            raise ConfigError(f"model.warmup.start_factor: {self.start_factor} is not in (0, 1]")


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
    """A module's hyperparameters with flat arguments of the earlier layout moved into their groups;
    a ``simple_cnn`` saved before its head saw the whole feature map keeps its 2 x 2 pooling."""
    out = {k: v for k, v in hparams.items() if k not in FLAT_ARGUMENTS}
    for key, (group, name) in FLAT_ARGUMENTS.items():
        if key in hparams:
            out[group] = {**(out.get(group) or {}), name: hparams[key]}
    network = out.get("network") or {}
    simple_cnn = network.get("backbone", "simple_cnn") == "simple_cnn"
    if hparams and simple_cnn and "input_hw" not in hparams and "feature_size" not in network:
        out["network"] = {**network, "feature_size": 2}
    return out
