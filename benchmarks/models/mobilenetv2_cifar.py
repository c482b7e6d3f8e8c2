"""MobileNetV2 sized for CIFAR (32x32 inputs), with a width multiplier.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018),
Table 2: a 3x3 conv with 32 filters, 17 inverted-residual bottlenecks (1x1 expansion by
``t``, 3x3 depthwise, linear 1x1 projection; residual when stride 1 and widths match) in
seven stages (t, c, n, s), a 1x1 conv to 1280 channels, global average pooling and a
classifier. ReLU6 after every conv except the projections. Sec. 6.1: the width multiplier
scales every layer but the last conv (kept at 1280 for multipliers below 1); channels are
rounded to multiples of 8 as in the authors' reference code.

Departures from the ImageNet network, both common for 32x32 inputs (total stride 8
instead of 32, so the last maps are 4x4 instead of 1x1):
- the stem conv has stride 1 instead of 2;
- the second stage (t=6, c=24, n=2) has stride 1 instead of 2.
Also: dropout before the classifier is a ``drop_rate`` argument (default 0, the paper
states none); ``num_classes`` (default 10) and ``in_chans`` are free.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

from benchmarks.models._entrypoint import architecture_args, input_size_config

# (expansion t, output channels c, repeats n, first stride s); ImageNet Table 2 with the
# second stage's stride changed from 2 to 1 for CIFAR.
CIFAR_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM_CHANNELS = 32
LAST_CHANNELS = 1280


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never dropping more than 10% below ``channels``."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return rounded


class ConvBnReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU6(inplace=True)


class InvertedResidual(nn.Module):
    """Expand (1x1, skipped when t=1) -> depthwise 3x3 -> linear project (1x1), plus identity if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden_channels = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvBnReLU6(in_channels, hidden_channels, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBnReLU6(hidden_channels, hidden_channels, 3, stride=stride, groups=hidden_channels)
        self.project_conv = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project_bn(self.project_conv(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out


class MobileNetV2Cifar(nn.Module):
    """MobileNetV2 with the CIFAR strides described in the module docstring."""

    def __init__(
        self,
        width_mult: float = 1.0,
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"mobilenetv2_cifar width_mult must be > 0, got {width_mult}")
        self.num_classes = num_classes
        in_channels = make_divisible(STEM_CHANNELS * width_mult)
        self.stem = ConvBnReLU6(in_chans, in_channels, 3, stride=1)
        blocks = []
        for expansion, channels, repeats, first_stride in CIFAR_STAGES:
            out_channels = make_divisible(channels * width_mult)
            for index in range(repeats):
                blocks.append(InvertedResidual(in_channels, out_channels, first_stride if index == 0 else 1, expansion))
                in_channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        last_channels = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
        self.head = ConvBnReLU6(in_channels, last_channels, 1)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(last_channels, num_classes)
        self.pretrained_cfg = input_size_config(in_chans, True, num_classes, "stem.conv", "classifier")
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.global_pool(x))))


@register_model
def mobilenetv2_cifar(pretrained: bool = False, **kwargs: Any) -> MobileNetV2Cifar:
    """MobileNetV2 1.0 for 32x32 inputs (2.2M parameters at 10 classes); ``width_mult=`` scales it."""
    return MobileNetV2Cifar(**architecture_args("mobilenetv2_cifar", pretrained, kwargs))
