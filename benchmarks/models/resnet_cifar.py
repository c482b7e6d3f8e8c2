"""CIFAR ResNets (ResNet-20/32/44/56/110) with option-A identity shortcuts.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition" (CVPR 2016), Sec. 4.2:
a 3x3 conv with 16 filters, then three stages of ``n`` basic blocks (two 3x3 convs each)
with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, then global average pooling and a
fully connected classifier; depth = 6n + 2. Shortcuts are identities everywhere; where a
stage halves the map and doubles the width the shortcut is option A: subsample the input
with stride 2 and pad the new channels with zeros (no parameters).

Module names (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.conv{1,2}``/``bn{1,2}``, ``linear``) match
the widely used akamaster/pytorch_resnet_cifar10 checkpoints, so those load strictly once
their ``module.`` prefix is stripped. The zero channels of the option-A shortcut are split
evenly before and after the input channels, as in those checkpoints' training code, so
the pretrained weights see the feature layout they were trained with.

Departures: ``num_classes`` and ``in_chans`` are free (the paper fixes 10 and 3); the
shortcut is an ``nn.Module`` (not a lambda) so models deep-copy, pickle, trace with
``torch.fx`` and export to ONNX.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import nn

from benchmarks.models._entrypoint import architecture_args, data_config

STAGE_CHANNELS = (16, 32, 64)


class PaddedSubsampleShortcut(nn.Module):
    """Option-A shortcut: spatial subsampling by ``stride`` plus zero-padding to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot shrink channels ({in_channels} -> {out_channels}); "
                "use a projection shortcut for that"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad pads the last dimensions first: (W left, W right, H top, H bottom, C before, C after).
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU, added to the (option-A) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PaddedSubsampleShortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of ``blocks_per_stage`` basic blocks, global average pool, linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        stage_channels: tuple[int, int, int] = STAGE_CHANNELS,
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, stage_channels[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stage_channels[0])
        self.relu = nn.ReLU(inplace=True)
        in_channels = stage_channels[0]
        stages = []
        for stage_index, out_channels in enumerate(stage_channels):
            first_stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, out_channels, first_stride if block_index == 0 else 1))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(in_channels, num_classes)
        self.pretrained_cfg = data_config(
            (in_chans, 32, 32), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, num_classes, first_conv="conv1", classifier="linear"
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def residual_stream_convs(self) -> list[nn.Conv2d]:
        """Convs whose outputs form the residual stream: the stem conv and every block's ``conv2``.

        Option-A shortcuts add zero-padded, subsampled copies of the stream, so its channels
        are tied across a whole stage and across the padding; dependency-graph pruners
        (e.g. Torch-Pruning) do not see through the padding. Structured pruning should keep
        these convs' output channels and prune the blocks' inner ``conv1`` channels, as Li et
        al., "Pruning Filters for Efficient ConvNets" (ICLR 2017, Sec. 4.2) do for these nets.
        """
        blocks = [module for module in self.modules() if isinstance(module, BasicBlock)]
        return [self.conv1, *(block.conv2 for block in blocks)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.global_pool(x)))


def _create_resnet_cifar(model_name: str, depth: int, pretrained: bool, kwargs: dict[str, Any]) -> CifarResNet:
    if (depth - 2) % 6:
        raise ValueError(f"{model_name}: CIFAR ResNet depth must be 6n+2, got {depth}")
    return CifarResNet(blocks_per_stage=(depth - 2) // 6, **architecture_args(model_name, pretrained, kwargs))


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR (n=3, 0.27M parameters at 10 classes)."""
    return _create_resnet_cifar("resnet20_cifar", 20, pretrained, kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (n=5, 0.46M parameters)."""
    return _create_resnet_cifar("resnet32_cifar", 32, pretrained, kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 for CIFAR (n=7, 0.66M parameters)."""
    return _create_resnet_cifar("resnet44_cifar", 44, pretrained, kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 for CIFAR (n=9, 0.85M parameters)."""
    return _create_resnet_cifar("resnet56_cifar", 56, pretrained, kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 for CIFAR (n=18, 1.7M parameters)."""
    return _create_resnet_cifar("resnet110_cifar", 110, pretrained, kwargs)
