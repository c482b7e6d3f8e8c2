"""Networks of the NAS search space: a derived architecture from its file, and the supernet itself.

``searched``: ``model=searched model.arch=<arch.json>`` builds the network a NAS run derived
(methods.nas.space.Architecture: the space and one op per block), so a searched network trains,
prunes and quantizes like any model of the zoo. ``proxyless_supernet``: the over-parameterised
network (methods.nas.supernet) of a space preset, with any of its numbers overridden.
"""
from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model

from benchmarks.models._entrypoint import architecture_args, data_config
from methods.nas.space import Architecture, SearchedNet, SpaceConfig
from methods.nas.supernet import SuperNet


def _with_data_config(model: Any, input_size: int, in_chans: int, num_classes: int) -> Any:
    model.pretrained_cfg = data_config((in_chans, input_size, input_size), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, num_classes,
                                       first_conv="stem.0.0", classifier="head.4")
    return model


@register_model
def searched(pretrained: bool = False, arch: str | None = None, **kwargs: Any) -> SearchedNet:
    """The derived network in ``arch`` (the arch.json a NAS run wrote)."""
    args = architecture_args("searched", pretrained, kwargs)
    if arch is None:
        raise ValueError("model=searched needs model.arch=<path to the arch.json a NAS run wrote>")
    net = SearchedNet(Architecture.load(arch), **args)
    return _with_data_config(net, net.arch.space.input_size, args.get("in_chans", 3), args.get("num_classes", 10))


@register_model
def proxyless_supernet(pretrained: bool = False, preset: str = "cifar", num_classes: int = 10, in_chans: int = 3,
                       drop_rate: float = 0.0, **space: Any) -> SuperNet:
    """The supernet of ``preset`` with any space key (widths, depths, ...) overridden."""
    space = architecture_args("proxyless_supernet", pretrained, space)
    resolved = SpaceConfig(preset=preset, **space).resolved()
    net = SuperNet(resolved, num_classes, in_chans, drop_rate)
    return _with_data_config(net, resolved.input_size, in_chans, num_classes)
