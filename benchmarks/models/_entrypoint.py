"""What every CompressBench model factory shares: timm's calling convention.

``timm.create_model(name, **kwargs)`` calls a registered factory as
``factory(pretrained=..., pretrained_cfg=..., pretrained_cfg_overlay=..., cache_dir=..., **kwargs)``
(timm 1.0, ``timm/models/_factory.py``). Our models have no hub weights and these
machines are offline, so ``pretrained=True`` is refused with an error that names the
config key that does work (``model.pretrained=<path>``, loaded by
:func:`benchmarks.models.checkpoint.load_pretrained`). timm's download-related
arguments are accepted and dropped; any other unknown argument still reaches the model
builder, so a misspelt architecture argument raises ``TypeError`` instead of vanishing.
"""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# Arguments timm.create_model passes to every factory that only concern hub/URL weights.
_TIMM_DOWNLOAD_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "pretrained_model_args")


class PretrainedDownloadError(ValueError):
    """``pretrained=True`` asked for a download that CompressBench never does."""


def architecture_args(model_name: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse ``pretrained=True`` and strip timm's download arguments from ``kwargs``."""
    if pretrained:
        raise PretrainedDownloadError(
            f"{model_name}: pretrained=True would download weights, which CompressBench never does "
            f"(it runs offline). Set model.pretrained=<path to a checkpoint> instead, e.g. "
            f"`model.pretrained=/path/to/weights.th`, or call "
            f"benchmarks.models.build_model('{model_name}', ..., pretrained='/path/to/weights.th')."
        )
    return {key: value for key, value in kwargs.items() if key not in _TIMM_DOWNLOAD_ARGS}


def input_size_args(model_name: str, pretrained: bool, kwargs: dict[str, Any], cifar: bool) -> dict[str, Any]:
    """:func:`architecture_args` plus ``cifar`` and the class count its data has by default (10 or 1000)."""
    return {"cifar": cifar, "num_classes": 10 if cifar else 1000, **architecture_args(model_name, pretrained, kwargs)}


def data_config(
    input_size: tuple[int, int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int,
    first_conv: str,
    classifier: str,
) -> dict[str, Any]:
    """A timm-style ``pretrained_cfg`` dict so ``timm.data.resolve_data_config(model=m)`` works."""
    return dict(
        input_size=input_size,
        mean=mean,
        std=std,
        num_classes=num_classes,
        first_conv=first_conv,
        classifier=classifier,
        interpolation="bilinear",
        crop_pct=1.0,
    )




def input_size_config(in_chans: int, cifar: bool, num_classes: int, first_conv: str, classifier: str) -> dict[str, Any]:
    """:func:`data_config` of a family with an ImageNet-size (224 px) and a CIFAR-size (32 px) variant."""
    size = 32 if cifar else 224
    return data_config((in_chans, size, size), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, num_classes, first_conv, classifier)
