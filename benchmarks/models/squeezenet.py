"""SqueezeNet 1.0 and 1.1 (fire modules), ImageNet-size and CIFAR-size, built by torchvision.

Iandola et al., "SqueezeNet: AlexNet-level accuracy with 50x fewer parameters and <0.5MB
model size" (2016), Sec. 3 and Table 1: a stem conv, eight *fire* modules (a 1x1 *squeeze*
conv feeding a 1x1 and a 3x3 *expand* conv whose outputs are concatenated), max-pools
that downsample late, dropout 0.5, a 1x1 conv to the classes and global average pooling;
no fully connected layer. 1.0 has 1,248,424 parameters at 1000 classes (Table 1). 1.1
(the authors' SqueezeNet v1.1, ``forresti/SqueezeNet``) has a 3x3 stem with 64 filters and
pools earlier: 2.4x fewer MACs for the same accuracy. The layers are torchvision's
``SqueezeNet`` (module names ``features.*`` and ``classifier.1`` match its checkpoints).

CIFAR-size (``*_cifar``, 32x32 inputs): the stem becomes a 3x3 conv with stride 1 and
padding 1 (1.0's is 7x7 stride 2, 1.1's 3x3 stride 2, both unpadded), the usual CIFAR
adaptation of ImageNet stems (as in the CIFAR ResNets); the three max-pools stay, so the
total stride is 8 and the last maps are 4x4, as in ``mobilenetv2_cifar``. Departures:
``num_classes`` (1000 ImageNet-size, 10 CIFAR-size) and ``in_chans`` are free; the dropout
rate is ``drop_rate`` (default the paper's 0.5).
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn
from torchvision.models.squeezenet import SqueezeNet as TorchvisionSqueezeNet

from benchmarks.models._entrypoint import input_size_args, input_size_config


class SqueezeNet(TorchvisionSqueezeNet):
    """torchvision's SqueezeNet ``version`` ("1_0" or "1_1"), its stem rebuilt for ``in_chans`` or CIFAR."""

    def __init__(
        self,
        version: str,
        num_classes: int = 1000,
        in_chans: int = 3,
        cifar: bool = False,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__(version=version, num_classes=num_classes, dropout=drop_rate)
        stem = self.features[0]
        if cifar or in_chans != 3:
            kernel, stride, padding = (3, 1, 1) if cifar else (stem.kernel_size, stem.stride, stem.padding)
            self.features[0] = nn.Conv2d(in_chans, stem.out_channels, kernel, stride=stride, padding=padding)
            nn.init.kaiming_uniform_(self.features[0].weight)  # torchvision's initialisation of its convs
            nn.init.zeros_(self.features[0].bias)
        self.pretrained_cfg = input_size_config(in_chans, cifar, num_classes, first_conv="features.0", classifier="classifier.1")


@register_model
def squeezenet1_0(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.0 for 224x224 inputs (1,248,424 parameters at 1000 classes)."""
    return SqueezeNet("1_0", **input_size_args("squeezenet1_0", pretrained, kwargs, cifar=False))


@register_model
def squeezenet1_1(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 for 224x224 inputs (1,235,496 parameters at 1000 classes)."""
    return SqueezeNet("1_1", **input_size_args("squeezenet1_1", pretrained, kwargs, cifar=False))


@register_model
def squeezenet1_0_cifar(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.0 for 32x32 inputs (3x3 stride-1 stem), 10 classes by default."""
    return SqueezeNet("1_0", **input_size_args("squeezenet1_0_cifar", pretrained, kwargs, cifar=True))


@register_model
def squeezenet1_1_cifar(pretrained: bool = False, **kwargs: Any) -> SqueezeNet:
    """SqueezeNet 1.1 for 32x32 inputs (3x3 stride-1 stem), 10 classes by default."""
    return SqueezeNet("1_1", **input_size_args("squeezenet1_1_cifar", pretrained, kwargs, cifar=True))
