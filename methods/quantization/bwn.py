"""Binary-weight networks: ``alpha * sign(W)`` with ``alpha`` the mean absolute weight of each output channel.

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks"
(ECCV 2016), Sec. 3.1 (summarised by Berthelier et al. 2020, Sec. 2.5): a filter ``W`` of ``n``
weights is approximated by ``alpha * B`` with ``B = sign(W)`` and ``alpha = ||W||_1 / n``, the
optimum of ``||W - alpha B||^2`` (their Eq. 4). Training keeps the real-valued weights; the
gradient is their corrected Eq. 7, ``dC/dW = dC/dW~ (1/n + alpha * d sign/dW)``, with ``d sign/dW
= 1`` inside ``|W| <= 1`` (the clipped straight-through estimator): autograd gives it exactly, the
``1/n`` term through ``alpha``'s own dependence on ``W`` (:class:`BWNQuantizer`).

The file stores one bit per weight and one float32 ``alpha`` per output channel (codec ``sign``);
the evaluated model is decoded from it. The ``bwn`` quantizer is XNOR-Net's weight quantizer too
(:mod:`.xnor`). Departures: training starts from the run's trained baseline; every selected layer
is binarized (the paper keeps the first and last layers in float for XNOR-Net, not for BWN;
``layers`` chooses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.quantization.binary import (
    BinaryConfig,
    ScaledSign,
    channel_mean_abs,
    store_quantized,
    train_quantized,
    weight_quantizer,
)
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantScheme


@register_quantizer("bwn", "weight", bits=(1, 1))
class BWNQuantizer(ScaledSign):
    """``alpha_c * sign(W_c)``, ``alpha_c = mean |W_c|`` per output channel, gradients through both factors."""

    def __init__(self, scheme: QuantScheme, clip: float = 1.0) -> None:
        super().__init__(clip=clip)

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return channel_mean_abs(latent)


@dataclass
class BWNConfig(BinaryConfig):
    """conf/method/bwn.yaml: the fine-tuning and the layers binarized."""


class BinaryWeightNetwork(CompressionMethod):
    """``bwn``: binary weights scaled per output channel by their mean absolute value."""

    name = "bwn"
    Config = BWNConfig
    config: BWNConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        quantized = train_quantized(model, ctx, self.config, lambda _name, _layer: weight_quantizer("bwn", 1))
        return store_quantized(self.name, quantized, model, ctx)
