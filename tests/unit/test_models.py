import pytest
import torch
from torch import nn

from project.errors import ConfigError
from project.models import SimpleCNN, build_network
from project.models.simple_cnn import AdaptiveAvgPool, adaptive_avg_pool_by_matrices


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


SIZES = [((2, 2), (7, 7)), ((8, 8), (7, 7)), ((7, 7), (7, 7)), ((5, 9), (3, 4))]


@pytest.mark.parametrize(("size_in", "size_out"), SIZES)
def test_pooling_by_matrices_is_adaptive_average_pooling(size_in, size_out):
    """The deterministic CUDA form of the pooling (two matrix products) gives PyTorch's adaptive
    average pooling and its gradient, overlapping windows (2 -> 7) and uneven ones (5 -> 3) too."""
    x = torch.randn(2, 3, *size_in, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 3, *size_out, dtype=torch.float64)
    by_matrices = adaptive_avg_pool_by_matrices(x, size_out)
    (grad_matrices,) = torch.autograd.grad((by_matrices * weights).sum(), x)
    expected = nn.functional.adaptive_avg_pool2d(x, size_out)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(by_matrices, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad_matrices, grad_expected, rtol=0, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pooling_has_a_deterministic_backward_on_cuda(monkeypatch):
    """Under deterministic algorithms on CUDA, the network's pooling runs forward and backward
    (CUDA's own adaptive pooling backward is refused there) and matches the CPU's."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # as Lightning's deterministic=True sets it
    x = torch.randn(4, 8, 2, 2, requires_grad=True)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        on_gpu = AdaptiveAvgPool(7)(x.cuda())
        on_gpu.square().sum().backward()
    finally:
        torch.use_deterministic_algorithms(previous)
    torch.testing.assert_close(on_gpu.cpu(), AdaptiveAvgPool(7)(x), rtol=0, atol=1e-6)


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
