"""Networks by name: ``simple_cnn`` or any torchvision classification model."""

import torch
import torchvision
from torch import nn

from project.errors import ConfigError
from project.models.simple_cnn import SimpleCNN

__all__ = ["SimpleCNN", "build_network", "available_backbones"]


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
) -> nn.Module:
    """Build a freshly initialised classifier network (no pretrained weights: nothing is downloaded),
    in channels-last memory format and compiled (in place, so its state_dict keys stay) if asked."""
    net = _architecture(backbone, num_classes, in_channels, small_input_stem, dropout)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_mode is not None:
        net.compile(mode=compile_mode)
    return net


def _architecture(backbone: str, num_classes: int, in_channels: int, small_input_stem: bool, dropout: float):
    if backbone == "simple_cnn":
        return SimpleCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(
            f"Unknown backbone {backbone!r}: use 'simple_cnn' or a torchvision classification model "
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
            conv.kernel_size,
            conv.stride,
            conv.padding,
            bias=conv.bias is not None,
        )
    else:
        return
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], new)
    torch.nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
