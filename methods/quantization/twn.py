"""Ternary weight networks: ``{-alpha, 0, +alpha}`` per layer, threshold ``0.7 * E|W|``.

Li, Zhang & Liu, "Ternary Weight Networks" (2016), Sec. 2 (summarised by Berthelier et al. 2020,
Sec. 2.5): each layer's weights are replaced by ``alpha * t`` with ``t`` in ``{-1, 0, +1}``:
``t = +1`` where ``W > Delta``, ``-1`` where ``W < -Delta``, 0 elsewhere, with the approximate
optimum ``Delta = 0.7 * E(|W|)`` (their Eq. 7; ``threshold`` is the factor) and ``alpha`` the mean
``|W|`` over the weights above the threshold (Eq. 6). Training keeps the real-valued weights and
passes the gradient straight through the ternary function; ``alpha`` is recomputed at every step.

The file stores 2-bit codes and the layer's two values (codec ``codebook`` with the zero code,
here ``-alpha`` and ``+alpha``); the evaluated model is decoded from it. Departure: training starts
from the run's trained baseline with the run's recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import option
from methods.quantization.binary import (
    BinaryConfig,
    Ternary,
    store_quantized,
    ternary_ste,
    train_quantized,
    weight_quantizer,
)
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantScheme


@register_quantizer("twn", "weight", bits=(2, 2))
class TWNQuantizer(Ternary):
    """``alpha * t``: ``Delta = threshold * mean|W|``, ``alpha`` = mean |W| above ``Delta``."""

    def __init__(self, scheme: QuantScheme, threshold: float = 0.7) -> None:
        super().__init__()
        self.factor = threshold

    def threshold(self, latent: torch.Tensor) -> torch.Tensor:
        return self.factor * latent.detach().abs().mean()

    def values(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        above = (latent.detach().abs() > self.threshold(latent)).to(latent.dtype)
        alpha = (latent.abs() * above).sum() / above.sum().clamp(min=1)
        return alpha, alpha

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        alpha, _ = self.values(latent)
        return alpha * ternary_ste(latent, self.threshold(latent))


@dataclass
class TWNConfig(BinaryConfig):
    """conf/method/twn.yaml: the threshold factor, the fine-tuning, the layers."""

    threshold: float = option(0.7, gt=0, lt=1, why="Delta = threshold * mean|W| (the paper's 0.7)")


class TernaryWeightNetwork(CompressionMethod):
    """``twn``: ternary weights {-alpha, 0, alpha} per layer, threshold 0.7 x E|W|."""

    name = "twn"
    Config = TWNConfig
    config: TWNConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        quantized = train_quantized(model, ctx, self.config,
                                    lambda _name, _layer: weight_quantizer("twn", 2, threshold=self.config.threshold))
        return store_quantized(self.name, quantized, model, ctx)
