"""The weight initialisation of the MobileNet-style reference code, shared by the model zoo and the
networks that NAS derives (they must start alike to be compared alike)."""

from __future__ import annotations

from torch import nn


def init_conv_linear(model: nn.Module) -> None:
    """He-normal convs (fan-out, as in the MobileNet/ShuffleNet/ProxylessNAS reference code), N(0, 0.01)
    classifiers, zero biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
