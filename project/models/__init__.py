"""Networks by name: ``simple_cnn``, any torchvision classification model, or ``timm/<name>``
(with the optional ``timm`` extra); from scratch or from pretrained weights."""

from typing import cast

import torch
import torchvision
from torch import nn

from project.errors import ConfigError
from project.models.pretrained import fetch_torchvision_state
from project.models.simple_cnn import SimpleCNN
from project.models.timm_backbones import build_timm_network
from project.models.weights import is_weights_file, load_pretrained, read_weights_file

__all__ = ["SimpleCNN", "build_network", "available_backbones"]

TIMM_PREFIX = "timm/"


def available_backbones() -> list[str]:
    return ["simple_cnn", *torchvision.models.list_models(module=torchvision.models)]


def build_network(
    backbone: str,
    num_classes: int,
    in_channels: int = 3,
    small_input_stem: bool = False,
    dropout: float = 0.0,
    channels_last: bool = False,
    compile_mode: str | None = None,
    weights: str | None = None,
    feature_size: int = 7,
    conv_layers: tuple[int, ...] = (1, 1),
    hidden: int = 128,
    feature_dropout: float | None = None,
) -> nn.Module:
    """Build a classifier network, freshly initialised or from pretrained ``weights`` (``DEFAULT``, a
    torchvision weights name, or a .pth/.ckpt/.safetensors file) with a new head for ``num_classes``;
    in channels-last memory format and compiled (in place, so its state_dict keys stay) if asked."""
    if backbone.startswith(TIMM_PREFIX):
        net = build_timm_network(backbone.removeprefix(TIMM_PREFIX), num_classes, in_channels, dropout, weights)
    else:
        shape = {"feature_size": feature_size, "conv_layers": conv_layers, "hidden": hidden}
        shape |= {"feature_dropout": feature_dropout}
        net = _architecture(backbone, num_classes, in_channels, small_input_stem, dropout, shape)
        if weights is not None:
            _load_weights(net, backbone, weights, small_input_stem)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        net.compile(mode=compile_mode)
    return net


def _load_weights(net: nn.Module, backbone: str, weights: str, small_input_stem: bool) -> None:
    if is_weights_file(weights):
        state, source = read_weights_file(weights), weights
    elif backbone == "simple_cnn":
        raise ConfigError(
            "model.network.weights: simple_cnn has no pretrained weights; "
            "give a .pth/.ckpt file or a torchvision backbone"
        )
    else:
        state, source = fetch_torchvision_state(backbone, weights)
    # the 3x3 stem of small inputs has no pretrained counterpart: it starts afresh
    fresh = (_stem_name(net),) if small_input_stem else ()
    load_pretrained(net, state, source, fresh)


def _stem_name(net: nn.Module) -> str:
    return next(n for n, m in net.named_modules() if isinstance(m, nn.Conv2d))


def _architecture(
    backbone: str, num_classes: int, in_channels: int, small_input_stem: bool, dropout: float, shape: dict
):
    if backbone == "simple_cnn":
        return SimpleCNN(num_classes, in_channels, dropout=dropout, **shape)
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"Unknown backbone {backbone!r}: use 'simple_cnn', timm/<name> or a torchvision classification model "
            f"such as resnet18, resnet50, mobilenet_v3_small."
        )
    try:  # models with a classifier dropout (MobileNet, EfficientNet, VGG...) take the rate
        net = torchvision.models.get_model(backbone, weights=None, num_classes=num_classes, dropout=dropout)
    except TypeError:  # the others (ResNet...) have none
        net = torchvision.models.get_model(backbone, weights=None, num_classes=num_classes)
    adapt_stem(net, in_channels=in_channels, small_input=small_input_stem)
    return net


def adapt_stem(net: nn.Module, in_channels: int, small_input: bool) -> None:
    """Swap the first convolution for ``in_channels`` inputs and, for 32 px images, a 3x3 stride-1
    stem without max-pool (the usual CIFAR variant of ResNet)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if small_input:
        new = nn.Conv2d(in_channels, conv.out_channels, 3, stride=1, padding=1, bias=conv.bias is not None)
        if hasattr(net, "maxpool"):
            net.maxpool = nn.Identity()
    elif in_channels != conv.in_channels:
        new = nn.Conv2d(
            in_channels,
            conv.out_channels,
            cast(tuple[int, int], conv.kernel_size),  # a 2-d convolution's: two of each
            cast(tuple[int, int], conv.stride),
            cast(tuple[int, int] | str, conv.padding),
            bias=conv.bias is not None,
        )
    else:
        return
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], new)
    torch.nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
