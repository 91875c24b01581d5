"""The classic tutorial convolutional network, as a pure ``nn.Module``."""

from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SimpleCNN(nn.Module):
    """Conv-BN-ReLU-MaxPool blocks, then Dropout, Linear, ReLU, Dropout, Linear.

    It has both BatchNorm and Dropout on purpose: they are the layers whose behaviour depends on
    ``model.train()`` / ``model.eval()``, which is what the equivalence suite checks.

    The head sees the last feature map whole, as a tutorial's flatten does: it is pooled to
    ``feature_size`` x ``feature_size`` (7: a 28 px image's 7 x 7 map as it is), so the position of
    what the filters found is kept. Pooling it to 2 x 2 cost Fashion-MNIST 5 points of accuracy.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 3, width: int = 32, dropout: float = 0.25, feature_size: int = 7
    ):
        super().__init__()
        self.features = nn.Sequential(conv_block(in_channels, width), conv_block(width, 2 * width))
        self.pool = nn.AdaptiveAvgPool2d(feature_size)  # 28 px -> 7 x 7 unchanged; 32 px -> 8 x 8 -> 7 x 7
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * feature_size**2, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        # (B, C, H, W) float -> (B, num_classes) logits
        return self.classifier(self.pool(self.features(x)))
