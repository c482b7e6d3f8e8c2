"""ShuffleNet V2 at widths 0.5x/1.0x/1.5x/2.0x, ImageNet-size and CIFAR-size, built by torchvision.

Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design"
(ECCV 2018), Sec. 4 and Table 5: a 3x3 stride-2 conv with 24 filters and a max-pool, three
stages of 4, 8 and 4 units (a unit splits its channels in two, transforms one half with
1x1 conv, 3x3 depthwise conv and 1x1 conv, concatenates and shuffles the channels; the
first unit of a stage downsamples both halves), a 1x1 conv to 1024 channels (2048 at
2.0x), global average pooling and a fully connected classifier. 1.0x has 2.3M parameters
and 146M FLOPs at 1000 classes (Table 5). The layers are torchvision's ``ShuffleNetV2``
(module names match its checkpoints).

CIFAR-size (``shufflenet_v2_cifar``, 32x32 inputs): the stem conv has stride 1 and the
max-pool is dropped, so the three stages downsample 32 -> 16 -> 8 -> 4 (total stride 8, as
in ``mobilenetv2_cifar``); the same change as the widely used CIFAR ShuffleNetV2 of
kuangliu/pytorch-cifar. Departures: ``num_classes`` (1000 ImageNet-size, 10 CIFAR-size)
and ``in_chans`` are free.
"""
from __future__ import annotations

from typing import Any

from timm.models import register_model
from torch import nn
from torchvision.models.shufflenetv2 import ShuffleNetV2 as TorchvisionShuffleNetV2

from benchmarks.models._entrypoint import input_size_args, input_size_config

STAGE_REPEATS = (4, 8, 4)
#: output channels of the stem, the three stages and the last 1x1 conv per width (Table 5)
STAGE_CHANNELS: dict[float, tuple[int, ...]] = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


class ShuffleNetV2(TorchvisionShuffleNetV2):
    """torchvision's ShuffleNetV2 at ``width_mult``, its stem rebuilt for ``in_chans`` or CIFAR."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, in_chans: int = 3, cifar: bool = False) -> None:
        if width_mult not in STAGE_CHANNELS:
            raise ValueError(
                f"shufflenet_v2 width_mult={width_mult!r}: the paper's widths are {sorted(STAGE_CHANNELS)}; "
                "set model.kwargs.width_mult to one of them"
            )
        super().__init__(list(STAGE_REPEATS), list(STAGE_CHANNELS[width_mult]), num_classes=num_classes)
        self.num_classes = num_classes
        if cifar or in_chans != 3:
            stem = self.conv1[0]
            self.conv1[0] = nn.Conv2d(in_chans, stem.out_channels, 3, stride=1 if cifar else 2, padding=1, bias=False)
        if cifar:
            self.maxpool = nn.Identity()
        self.pretrained_cfg = input_size_config(in_chans, cifar, num_classes, first_conv="conv1.0", classifier="fc")


@register_model
def shufflenet_v2(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 for 224x224 inputs; ``width_mult=`` 0.5/1.0/1.5/2.0 (1.0x: 2,278,604 parameters)."""
    return ShuffleNetV2(**input_size_args("shufflenet_v2", pretrained, kwargs, cifar=False))


@register_model
def shufflenet_v2_cifar(pretrained: bool = False, **kwargs: Any) -> ShuffleNetV2:
    """ShuffleNet V2 for 32x32 inputs (stride-1 stem, no max-pool), 10 classes by default."""
    return ShuffleNetV2(**input_size_args("shufflenet_v2_cifar", pretrained, kwargs, cifar=True))
