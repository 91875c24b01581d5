import pytest
import torch
from torch import nn

from project.errors import ConfigError
from project.models import SimpleCNN, build_network


def test_simple_cnn_has_batchnorm_and_dropout():
    """The tutorial network holds the two layer kinds whose behaviour depends on train/eval mode."""
    net = SimpleCNN(num_classes=10, in_channels=1)
    kinds = {type(m) for m in net.modules()}
    assert nn.BatchNorm2d in kinds
    assert nn.Dropout in kinds


def test_feature_dropout_zero_drops_nothing_and_draws_nothing():
    """``feature_dropout: 0`` leaves the flattened features as they are, draws no random number for
    them, and keeps the state_dict keys (a checkpoint of either loads into the other); the head's
    second Dropout still drops at ``dropout``. Checked by hand against the layers run one by one."""
    default = SimpleCNN(num_classes=10, in_channels=1, dropout=0.5)
    without = SimpleCNN(num_classes=10, in_channels=1, dropout=0.5, feature_dropout=0.0)
    assert default.state_dict().keys() == without.state_dict().keys()
    without.load_state_dict(default.state_dict())
    x = torch.randn(4, 1, 28, 28)
    torch.manual_seed(0)
    out = without.train()(x)
    flat, (linear, relu, drop, last) = without.pool(without.features(x)).flatten(1), without.classifier[2:]
    torch.manual_seed(0)  # the only draw is the second Dropout's mask
    assert torch.equal(out, last(drop(relu(linear(flat)))))
    assert drop.p == 0.5 and isinstance(without.classifier[1], nn.Identity)


@pytest.mark.parametrize("size", [8, 28, 32])
def test_simple_cnn_fits_every_input_size(size):
    """8 px digits, 28 px MNIST and 32 px CIFAR all give (B, num_classes) logits."""
    assert SimpleCNN(num_classes=7, in_channels=3)(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_torchvision_backbone_with_small_stem_and_one_channel():
    """resnet18 by name, adapted to 1-channel 32 px input with the 3x3 stride-1 stem and no max-pool."""
    net = build_network("resnet18", num_classes=5, in_channels=1, small_input_stem=True)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1) and net.conv1.in_channels == 1
    assert isinstance(net.maxpool, nn.Identity)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_unknown_backbone_names_the_value():
    """A typo in the backbone name gets an error that names it."""
    with pytest.raises(ConfigError, match="resnet19"):
        build_network("resnet19", num_classes=10)
