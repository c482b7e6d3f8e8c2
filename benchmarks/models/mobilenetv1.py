"""MobileNetV1 with a width multiplier and explicit per-layer channel plans (incl. AMC's).

Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications" (2017), Table 1: a full 3x3 conv (stride 2), then 13 depthwise-separable
blocks (3x3 depthwise conv + 1x1 pointwise conv, each followed by BN and ReLU), then
global average pooling and a fully connected classifier. Sec. 3.3: the width multiplier
alpha scales every layer's channels.

A *channel plan* lists the output channels of the first conv and of the 13 pointwise
convs; the strides are the architecture's (2 at the first conv and at blocks 2, 4, 6 and
12). ``CHANNEL_PLANS`` holds the plans published with the AMC models (He et al., "AMC:
AutoML for Model Compression and Acceleration on Mobile Devices", ECCV 2018, Sec. 4.3;
mit-han-lab/amc-models), the same plans whose Pixel-1 latencies are in
``reference/pixel1-amc-tflite``. The width multiplier scales whichever plan is used
(``round(alpha * c)``, at least 1 channel).

Departures: ``cifar_stem=True`` makes the first conv stride 1 so the net trains on 32x32
inputs (not in the paper); the classifier is ``nn.Linear`` (equivalent to the 1x1 conv of
the TF-Lite models); ``num_classes``/``in_chans`` are free. Any input size works (global
average pooling); ``pretrained_cfg['input_size']`` records the intended one.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from benchmarks.models._entrypoint import architecture_args, input_size_config
from methods.nn_init import init_conv_linear

# Stride of each of the 13 depthwise-separable blocks (Howard et al. 2017, Table 1).
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)

# First conv output, then the 13 pointwise outputs (see the module docstring for sources).
CHANNEL_PLANS: dict[str, tuple[int, ...]] = {
    "1.0": (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024),
    "0.75": (24, 48, 96, 96, 192, 192, 384, 384, 384, 384, 384, 384, 768, 768),
    "amc_0.5flops": (24, 48, 96, 80, 192, 200, 328, 352, 368, 360, 328, 400, 736, 752),
    "amc_0.5time": (16, 48, 88, 80, 192, 168, 336, 360, 360, 352, 352, 368, 768, 680),
}



class ConvBnReLU(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU; ``groups=in_channels`` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class DepthwiseSeparableBlock(nn.Module):
    """3x3 depthwise conv (carries the stride) then 1x1 pointwise conv, each with BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.depthwise = ConvBnReLU(in_channels, in_channels, 3, stride=stride, groups=in_channels)
        self.pointwise = ConvBnReLU(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def scale_channel_plan(channel_plan: Sequence[int], width_mult: float) -> tuple[int, ...]:
    """Apply the width multiplier to a plan: ``max(1, round(width_mult * c))`` per layer."""
    return tuple(max(1, int(round(width_mult * channels))) for channels in channel_plan)


class MobileNetV1(nn.Module):
    """MobileNetV1 built from a 14-entry channel plan (first conv + 13 blocks)."""

    def __init__(
        self,
        channel_plan: Sequence[int] = CHANNEL_PLANS["1.0"],
        width_mult: float = 1.0,
        num_classes: int = 1000,
        in_chans: int = 3,
        cifar_stem: bool = False,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(channel_plan) != 1 + len(BLOCK_STRIDES):
            raise ValueError(
                f"mobilenetv1 channel_plan needs {1 + len(BLOCK_STRIDES)} entries (first conv output, then "
                f"the 13 pointwise outputs), got {len(channel_plan)}: {list(channel_plan)}"
            )
        if any(int(channels) < 1 for channels in channel_plan):
            raise ValueError(f"mobilenetv1 channel_plan entries must be >= 1, got {list(channel_plan)}")
        if width_mult <= 0:
            raise ValueError(f"mobilenetv1 width_mult must be > 0, got {width_mult}")
        self.num_classes = num_classes
        self.channel_plan = scale_channel_plan(channel_plan, width_mult)
        stem_stride = 1 if cifar_stem else 2
        self.stem = ConvBnReLU(in_chans, self.channel_plan[0], 3, stride=stem_stride)
        blocks = []
        for in_channels, out_channels, stride in zip(self.channel_plan[:-1], self.channel_plan[1:], BLOCK_STRIDES, strict=True):
            blocks.append(DepthwiseSeparableBlock(in_channels, out_channels, stride))
        self.blocks = nn.Sequential(*blocks)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(self.channel_plan[-1], num_classes)
        self.pretrained_cfg = input_size_config(in_chans, cifar_stem, num_classes, "stem.conv", "classifier")
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(self.flatten(self.global_pool(x))))


def _create_mobilenetv1(model_name: str, plan_name: str, pretrained: bool, kwargs: dict[str, Any]) -> MobileNetV1:
    model_args: dict[str, Any] = {"channel_plan": CHANNEL_PLANS[plan_name]}
    model_args.update(architecture_args(model_name, pretrained, kwargs))
    return MobileNetV1(**model_args)


@register_model
def mobilenetv1(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 1.0 (4.2M parameters); ``width_mult=`` and ``channel_plan=`` change it."""
    return _create_mobilenetv1("mobilenetv1", "1.0", pretrained, kwargs)


@register_model
def mobilenetv1_075(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 0.75 (the uniformly thinned baseline of AMC's Pixel-1 comparison)."""
    return _create_mobilenetv1("mobilenetv1_075", "0.75", pretrained, kwargs)


@register_model
def mobilenetv1_amc_0_5flops(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 pruned by AMC to 50% FLOPs (published channel plan)."""
    return _create_mobilenetv1("mobilenetv1_amc_0_5flops", "amc_0.5flops", pretrained, kwargs)


@register_model
def mobilenetv1_amc_0_5time(pretrained: bool = False, **kwargs: Any) -> MobileNetV1:
    """MobileNetV1 pruned by AMC to 50% Pixel-1 latency (published channel plan)."""
    return _create_mobilenetv1("mobilenetv1_amc_0_5time", "amc_0.5time", pretrained, kwargs)
