"""MobileNetV3-Large and -Small 1.0, ImageNet-size and CIFAR-size, built by timm.

Howard et al., "Searching for MobileNetV3" (ICCV 2019), Tables 1 and 2: inverted residual
blocks (MobileNetV2's) with squeeze-and-excitation in some of them (hard-sigmoid gate),
hard-swish in the later layers, a 16-filter 3x3 stride-2 stem and an efficient last stage
(global pooling before the 1x1 conv to 1280 / 1024 features). Large has 5.4M parameters and
219M MACs, Small 2.5M and 56M, at 1000 classes (Table 3). The networks are timm's
``mobilenetv3_large_100`` / ``mobilenetv3_small_100`` builders (the paper's tables as timm's
block strings); the ImageNet-size names here differ from those only by refusing downloads.

CIFAR-size (``*_cifar``, 32x32 inputs): the stem conv and the first strided block's depthwise
conv get stride 1 (total stride 8 instead of 32, last maps 4x4), the rule of
``mobilenetv2_cifar``. At these kernels timm's static padding is the same at stride 1 and 2, so
only the stride changes; the block keeps no residual (its input and output shapes differ in
Large; in Small's first block timm builds the shortcut only at stride 1, and this block was
strided). Departures: ``num_classes`` (1000 ImageNet-size, 10 CIFAR-size) and ``in_chans`` are
free; timm's ``feature_info`` reductions still describe the ImageNet strides.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from timm.models import register_model
from timm.models.mobilenetv3 import MobileNetV3, mobilenetv3_large_100, mobilenetv3_small_100
from torch import nn

from benchmarks.models._entrypoint import input_size_args, input_size_config


def _cifar_strides(model: MobileNetV3) -> list[nn.Conv2d]:
    """The convs whose stride 2 the CIFAR-size variant sets to 1: the stem and the first strided block's depthwise."""
    depthwise = [conv for name, conv in model.blocks.named_modules() if name.endswith("conv_dw")]  # in network order
    first_strided = next(conv for conv in depthwise if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2))
    return [model.conv_stem, first_strided]


def _create(builder: Callable[..., MobileNetV3], model_name: str, cifar: bool, pretrained: bool,
            kwargs: dict[str, Any]) -> MobileNetV3:
    model_args = input_size_args(model_name, pretrained, kwargs, cifar)
    model = builder(pretrained=False, **{key: value for key, value in model_args.items() if key != "cifar"})
    if cifar:
        for conv in _cifar_strides(model):
            conv.stride = (1, 1)
        in_chans = model.conv_stem.in_channels
        cast(Any, model).pretrained_cfg = input_size_config(in_chans, True, model.num_classes, "conv_stem", "classifier")
    return model


@register_model
def mobilenetv3_large(pretrained: bool = False, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large 1.0 for 224x224 inputs (5,483,032 parameters at 1000 classes)."""
    return _create(mobilenetv3_large_100, "mobilenetv3_large", False, pretrained, kwargs)


@register_model
def mobilenetv3_small(pretrained: bool = False, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small 1.0 for 224x224 inputs (2,542,856 parameters at 1000 classes)."""
    return _create(mobilenetv3_small_100, "mobilenetv3_small", False, pretrained, kwargs)


@register_model
def mobilenetv3_large_cifar(pretrained: bool = False, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large 1.0 for 32x32 inputs (stem and first strided block at stride 1), 10 classes by default."""
    return _create(mobilenetv3_large_100, "mobilenetv3_large_cifar", True, pretrained, kwargs)


@register_model
def mobilenetv3_small_cifar(pretrained: bool = False, **kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small 1.0 for 32x32 inputs (stem and first strided block at stride 1), 10 classes by default."""
    return _create(mobilenetv3_small_100, "mobilenetv3_small_cifar", True, pretrained, kwargs)
