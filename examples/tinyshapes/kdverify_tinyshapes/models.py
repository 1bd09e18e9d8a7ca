"""A small residual CNN teacher and a depthwise-separable student: not kdverify built-ins.

Both follow kdverify's TappedModel contract: `features` (a feature map) then `classifier`, so the KD,
cosine and hint objectives and the exporter work with them unchanged. Both take the data's shape
(`num_classes`, `in_channels`, `image_size`) from kdverify, which fills them from the dataset.
"""

from __future__ import annotations

from torch import nn

from kdverify.train.models import TappedModel


class _Residual(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.act = nn.ReLU()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.act(x + self.body(x))


class ResidualCNN(TappedModel):
    """Stem, two residual stages (the second at half resolution), global average pool: the teacher."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int | tuple = 16,
                 width: int = 48) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            _Residual(width), nn.MaxPool2d(2), _Residual(width), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(width, num_classes)


def _separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (one filter per channel) then pointwise 1x1: ~1/9 of a full 3x3 convolution's weights."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in, bias=False),
                         nn.BatchNorm2d(c_in), nn.ReLU(),
                         nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DepthwiseCNN(TappedModel):
    """Stem and three depthwise-separable blocks, global average pool: the student."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int | tuple = 16,
                 width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            _separable(width, width, 1), _separable(width, 2 * width, 2), _separable(2 * width, 2 * width, 1),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(2 * width, num_classes)
