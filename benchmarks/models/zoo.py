"""The pipeline's one door to models: ``build_model`` and ``model_code_version``.

Every model, ours or timm's own, is made by ``timm.create_model``; importing
``benchmarks.models`` registers ours (``lenet``, ``resnet_cifar``, ``mobilenetv1``,
``mobilenetv2_cifar``, ``mobilenetv3``, ``squeezenet``, ``shufflenet_v1``, ``shufflenet_v2``,
``searched``: NAS-derived networks and the supernet).
Weights never download: a checkpoint path is loaded with
:func:`benchmarks.models.checkpoint.load_pretrained`.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path
from typing import Any

import timm
from torch import nn

from benchmarks.model_names import ModelNames
from benchmarks.models.checkpoint import load_pretrained

ZOO_PACKAGE = "benchmarks.models"
ZOO_MODULES = (
    "lenet", "resnet_cifar", "mobilenetv1", "mobilenetv2_cifar", "mobilenetv3", "squeezenet", "shufflenet_v1",
    "shufflenet_v2", "searched",
)
_CODE_VERSION_LENGTH = 12


def register_zoo() -> None:
    """Import the zoo's family modules so their ``@register_model`` factories are in timm's registry."""
    for module_name in ZOO_MODULES:
        importlib.import_module(f"{ZOO_PACKAGE}.{module_name}")


def zoo_model_names() -> list[str]:
    """Names of the models CompressBench registers into timm (sorted)."""
    register_zoo()
    return sorted(
        name for name in timm.list_models() if _factory_module(name).startswith(f"{ZOO_PACKAGE}.")
    )


def _factory_module(name: str) -> str:
    return timm.models.model_entrypoint(name).__module__


def _architecture_name(name: str) -> str:
    """timm accepts ``arch.tag`` names; the registry knows ``arch``."""
    return timm.models.split_model_name_tag(name)[0]


def model_names() -> ModelNames:
    """The names in timm's registry, the zoo's registered first."""
    register_zoo()
    return ModelNames(tuple(timm.list_models()), tuple(zoo_model_names()))


def check_known(name: str) -> None:
    """Refuse a name that is neither ours nor timm's (the close matches named), before anything is built."""
    register_zoo()
    if isinstance(name, str) and timm.is_model(_architecture_name(name)):
        return
    model_names().check(name)


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Create ``name`` via ``timm.create_model`` and load the checkpoint at ``pretrained`` if given.

    ``kwargs`` go to the model's factory (``model.kwargs`` in the config). ``pretrained`` is
    a file path (``model.pretrained``), never a download flag.
    """
    if isinstance(pretrained, bool):
        raise ValueError(
            f"model.pretrained={pretrained}: expected a checkpoint path or null; CompressBench never downloads "
            "weights, so set model.pretrained=/path/to/checkpoint"
        )
    check_known(name)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def model_code_version(name: str) -> str:
    """A short sha256 identifying the code that builds ``name``.

    For CompressBench's models: the source of the module that defines the factory, so an
    edit to the architecture invalidates cached baselines. For timm's models: timm's
    version and the module name (timm's code only changes with its version).
    """
    check_known(name)
    module_name = _factory_module(_architecture_name(name))
    if module_name.startswith(f"{ZOO_PACKAGE}."):
        identity = inspect.getsource(importlib.import_module(module_name)).encode()
    else:
        identity = f"timm=={timm.__version__}:{module_name}".encode()
    return hashlib.sha256(identity).hexdigest()[:_CODE_VERSION_LENGTH]
