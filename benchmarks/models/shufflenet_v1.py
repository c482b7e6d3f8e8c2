"""ShuffleNet V1 with 1, 2, 3, 4 or 8 groups and a width multiplier, ImageNet-size and CIFAR-size.

Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional Neural Network for
Mobile Devices" (CVPR 2018). Sec. 3.2 / Fig. 2: a unit is a grouped 1x1 conv to a quarter of
its output channels, BN, ReLU, a *channel shuffle* (reshape the channels to (g, n),
transpose, flatten: each group of the next grouped conv sees every group of this one), a
3x3 depthwise conv carrying the stride, BN, a grouped 1x1 conv, BN; the unit adds its input
(stride 1) or concatenates a 3x3 average pool of it (stride 2), then ReLU. Sec. 3.3 /
Table 1: a 3x3 stride-2 conv with 24 filters and a 3x3 max-pool, stages of 4, 8 and 4 units
(the first of each has stride 2), output channels per ``groups`` in ``STAGE_CHANNELS``,
global average pooling and a fully connected classifier; the first 1x1 conv of stage 2 is
not grouped (its input has only 24 channels). "ShuffleNet s x" scales every stage's channels
by s (``width_mult``); 1x, g = 3 is the paper's headline model (140 MFLOPs).

The shuffle is torchvision's ``channel_shuffle`` (view, transpose, view: exports to ONNX,
unlike ``nn.ChannelShuffle``), in a module so that models print it.

CIFAR-size (``shufflenet_v1_cifar``, 32x32 inputs): the stem conv has stride 1 and the
max-pool is dropped, so the stages downsample 32 -> 16 -> 8 -> 4 (total stride 8, as in
``mobilenetv2_cifar`` and the CIFAR ShuffleNet of kuangliu/pytorch-cifar, which also drops
the pool). Departures: with ``width_mult`` != 1 the stage channels are rounded to
multiples of 4 x groups (the paper gives no rule; the quarter-width bottleneck must divide
into the groups); ``num_classes`` (1000 ImageNet-size, 10 CIFAR-size) and ``in_chans`` are free.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

from benchmarks.models._entrypoint import input_size_args, input_size_config
from methods.nn_init import init_conv_linear

STEM_CHANNELS = 24
STAGE_REPEATS = (4, 8, 4)
#: output channels of stages 2, 3, 4 per number of groups (Table 1, 1x)
STAGE_CHANNELS: dict[int, tuple[int, int, int]] = {
    1: (144, 288, 576),
    2: (200, 400, 800),
    3: (240, 480, 960),
    4: (272, 544, 1088),
    8: (384, 768, 1536),
}
BOTTLENECK_RATIO = 4


class ChannelShuffle(nn.Module):
    """Interleave ``groups`` groups of channels (Sec. 3.1)."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(x, self.groups)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ShuffleUnit(nn.Module):
    """Fig. 2 (b) at stride 1 (residual add), (c) at stride 2 (concatenated average-pooled input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        self.stride = stride
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = out_channels // BOTTLENECK_RATIO
        self.branch = nn.Sequential(
            *_conv_bn(in_channels, mid_channels, 1, groups=first_groups),
            nn.ReLU(inplace=True),
            ChannelShuffle(groups),
            *_conv_bn(mid_channels, mid_channels, 3, stride=stride, groups=mid_channels),
            *_conv_bn(mid_channels, branch_channels, 1, groups=groups),
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        if self.stride == 2:
            return self.relu(torch.cat([self.shortcut(x), out], dim=1))
        return self.relu(x + out)


def stage_channels(groups: int, width_mult: float) -> tuple[int, ...]:
    """Table 1's stage channels for ``groups``, scaled by ``width_mult`` to multiples of 4 x groups."""
    if groups not in STAGE_CHANNELS:
        raise ValueError(
            f"shufflenet_v1 groups={groups!r}: Table 1 defines {sorted(STAGE_CHANNELS)}; set model.kwargs.groups to one"
        )
    if width_mult <= 0:
        raise ValueError(f"shufflenet_v1 width_mult must be > 0, got {width_mult}")
    step = BOTTLENECK_RATIO * groups
    return tuple(max(step, round(width_mult * channels / step) * step) for channels in STAGE_CHANNELS[groups])


class ShuffleNetV1(nn.Module):
    """Stem, three stages of shuffle units, global average pool, linear (Table 1)."""

    def __init__(
        self,
        groups: int = 3,
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        cifar: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.groups = groups
        self.stage_channels = stage_channels(groups, width_mult)
        self.stem = nn.Sequential(*_conv_bn(in_chans, STEM_CHANNELS, 3, stride=1 if cifar else 2), nn.ReLU(inplace=True))
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        in_channels = STEM_CHANNELS
        for stage_index, (repeats, out_channels) in enumerate(zip(STAGE_REPEATS, self.stage_channels, strict=True)):
            units = []
            for unit_index in range(repeats):
                first_groups = 1 if stage_index == 0 and unit_index == 0 else groups
                units.append(ShuffleUnit(in_channels, out_channels, 2 if unit_index == 0 else 1, groups, first_groups))
                in_channels = out_channels
            stages.append(nn.Sequential(*units))
        self.stage2, self.stage3, self.stage4 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(in_channels, num_classes)
        self.pretrained_cfg = input_size_config(in_chans, cifar, num_classes, first_conv="stem.0", classifier="classifier")
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.stem(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.classifier(self.dropout(self.flatten(self.global_pool(x))))


@register_model
def shufflenet_v1(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet V1 1x for 224x224 inputs; ``groups=`` 1/2/3/4/8 (default 3), ``width_mult=`` scales it."""
    return ShuffleNetV1(**input_size_args("shufflenet_v1", pretrained, kwargs, cifar=False))


@register_model
def shufflenet_v1_cifar(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV1:
    """ShuffleNet V1 for 32x32 inputs (stride-1 stem, no max-pool), 10 classes by default."""
    return ShuffleNetV1(**input_size_args("shufflenet_v1_cifar", pretrained, kwargs, cifar=True))
