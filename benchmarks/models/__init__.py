"""CompressBench's model zoo, registered into timm (``timm.create_model`` is the one door).

Importing this package registers: ``lenet_300_100``, ``mlp``, ``lenet5`` (``lenet``);
``resnet{20,32,44,56,110}_cifar`` (``resnet_cifar``); ``mobilenetv1``, ``mobilenetv1_075``,
``mobilenetv1_amc_0_5flops``, ``mobilenetv1_amc_0_5time`` (``mobilenetv1``);
``mobilenetv2_cifar`` (``mobilenetv2_cifar``); ``mobilenetv3_{large,small}[_cifar]`` (``mobilenetv3``);
``squeezenet1_{0,1}[_cifar]`` (``squeezenet``); ``shufflenet_v1[_cifar]`` (``shufflenet_v1``);
``shufflenet_v2[_cifar]`` (``shufflenet_v2``). ``*_cifar`` are the 32x32 variants.
"""
from benchmarks.models import (  # noqa: F401  (registration)
    lenet,
    mobilenetv1,
    mobilenetv2_cifar,
    mobilenetv3,
    resnet_cifar,
    shufflenet_v1,
    shufflenet_v2,
    squeezenet,
)
from benchmarks.models._entrypoint import PretrainedDownloadError
from benchmarks.models.checkpoint import CheckpointMismatchError, load_pretrained
from benchmarks.models.zoo import build_model, model_code_version, zoo_model_names

__all__ = [
    "CheckpointMismatchError",
    "PretrainedDownloadError",
    "build_model",
    "load_pretrained",
    "model_code_version",
    "zoo_model_names",
]
