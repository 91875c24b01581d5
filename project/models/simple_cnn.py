"""The classic tutorial convolutional network, as a pure ``nn.Module``."""

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair


def conv_block(in_channels: int, out_channels: int, layers: int = 1, pool: bool = True) -> nn.Sequential:
    """``layers`` x (Conv 3x3, BatchNorm, ReLU), then MaxPool 2x2 if ``pool``."""
    steps: list[nn.Module] = []
    for i in range(layers):
        steps += [
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*steps, *([nn.MaxPool2d(2)] if pool else []))


def pooling_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """(size_out, size_in): row i averages the inputs of adaptive pooling's window i, which runs
    from floor(i * size_in / size_out) to ceil((i + 1) * size_in / size_out)."""
    matrix = torch.zeros(size_out, size_in, dtype=like.dtype, device=like.device)
    for i in range(size_out):
        start, end = i * size_in // size_out, -(-(i + 1) * size_in // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def adaptive_avg_pool_by_matrices(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Adaptive average pooling of (..., H, W) to ``size`` as two matrix products."""
    rows, cols = (pooling_matrix(n, m, x) for n, m in zip(x.shape[-2:], size))
    return rows @ x @ cols.T


class AdaptiveAvgPool(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d``, but on CUDA under ``torch.use_deterministic_algorithms`` the same
    averages as two matrix products: CUDA's adaptive pooling adds its gradient with atomics, and
    deterministic mode refuses it (digits' 2 x 2 map pooled to 7 x 7 has overlapping windows)."""

    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda and torch.are_deterministic_algorithms_enabled():
            return adaptive_avg_pool_by_matrices(x, _pair(self.output_size))
        return super().forward(x)


class SimpleCNN(nn.Module):
    """Blocks of Conv-BN-ReLU (``conv_layers[i]`` of them in block i, with ``width`` x 2**i
    channels), the first two each ending in a MaxPool and any further ones working on the map at a
    quarter of the input's side; then Dropout (``feature_dropout``, by default ``dropout``), Linear
    (``hidden`` units), ReLU, Dropout, Linear.

    It has both BatchNorm and Dropout on purpose: they are the layers whose behaviour depends on
    ``model.train()`` / ``model.eval()``, which is what the equivalence suite checks.

    The head sees the last feature map whole, as a tutorial's flatten does: it is pooled to
    ``feature_size`` x ``feature_size`` (7: a 28 px image's 7 x 7 map as it is), so the position of
    what the filters found is kept. Pooling it to 2 x 2 cost Fashion-MNIST 5 points of accuracy.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 32,
        dropout: float = 0.25,
        feature_size: int = 7,
        conv_layers: tuple[int, ...] = (1, 1),
        hidden: int = 128,
        feature_dropout: float | None = None,
    ):
        super().__init__()
        feature_dropout = dropout if feature_dropout is None else feature_dropout
        channels = [in_channels] + [width * 2**i for i in range(len(conv_layers))]
        self.features = nn.Sequential(
            *(conv_block(channels[i], channels[i + 1], n, pool=i < 2) for i, n in enumerate(conv_layers))
        )
        self.pool = AdaptiveAvgPool(feature_size)  # 28 px -> 7 x 7 unchanged; 32 px -> 8 x 8 -> 7 x 7
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(feature_dropout) if feature_dropout > 0 else nn.Identity(),  # no draw at 0
            nn.Linear(channels[-1] * feature_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) float -> (B, num_classes) logits
        return self.classifier(self.pool(self.features(x)))
