"""Trained ternary quantization: ``{-W_n, 0, +W_p}`` per layer with both scales learned.

Zhu, Han, Mao & Dally, "Trained Ternary Quantization" (ICLR 2017), Sec. 3 (summarised by
Berthelier et al. 2020, Sec. 2.5), as the authors' code (``ternary.py::tw_ternarize``) does it:

* threshold ``Delta = t * max|W|`` per layer (``threshold``, the code's ``t = 0.05``);
* ternary weight ``+W_p`` where ``W > Delta``, ``-W_n`` where ``W < -Delta``, 0 elsewhere, with
  ``W_p`` and ``W_n`` trainable scalars of each layer;
* gradients (their Eq. 7-8, the code's gradient override): the latent weights receive the
  upstream gradient times ``W_p``, 1 and ``W_n`` in the positive, zero and negative regions;
  ``W_p`` receives the sum of the gradients over the positive region, ``W_n`` minus the sum over
  the negative region (:class:`TTQFunction`). The run's recipe (its weight decay included, which
  the code also applies to the scales) trains both.

The file stores 2-bit codes and ``-W_n``, ``+W_p`` of each layer (codec ``codebook`` with the zero
code); the evaluated model is decoded from it. Departures: ``W_p`` and ``W_n`` start at the mean
magnitude of the baseline's weights above and below the threshold, not at 1.0 (the code's value
for BN-normalised ResNets: a network without batch norm, LeNet-5, would start at another scale);
no normalisation of the weights to [-1, 1] (the code has none either). Which layers stay in float
is ``layers`` (the authors' script ternarised the classifier and kept the first convolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import option
from methods.quantization.binary import BinaryConfig, Ternary, store_quantized, train_quantized, weight_quantizer
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantScheme


class TTQFunction(torch.autograd.Function):
    """``W_p`` above ``delta``, ``-W_n`` below ``-delta``, 0 between; TTQ's scaled straight-through gradients."""

    @staticmethod
    def forward(ctx: Any, latent: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                delta: torch.Tensor) -> torch.Tensor:
        pos, neg = latent > delta, latent < -delta
        ctx.save_for_backward(pos, neg, positive, negative)
        return positive * pos.to(latent.dtype) - negative * neg.to(latent.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pos, neg, positive, negative = ctx.saved_tensors
        scale = torch.where(pos, positive, torch.where(neg, negative, torch.ones_like(positive)))
        return grad * scale, (grad * pos).sum().reshape(positive.shape), -(grad * neg).sum().reshape(negative.shape), None


@register_quantizer("ttq", "weight", bits=(2, 2))
class TTQQuantizer(Ternary):
    """Learned ``W_p``, ``W_n`` (parameters) over the threshold ``t * max|W|``."""

    def __init__(self, scheme: QuantScheme, initial: torch.Tensor, threshold: float = 0.05) -> None:
        super().__init__()
        self.factor = threshold
        initial = initial.detach()
        delta = self.threshold(initial)
        above, below = initial[initial > delta], initial[initial < -delta]
        self.positive = nn.Parameter(above.mean() if above.numel() else initial.abs().max())
        self.negative = nn.Parameter(-below.mean() if below.numel() else initial.abs().max())

    def threshold(self, latent: torch.Tensor) -> torch.Tensor:
        return self.factor * latent.detach().abs().max()

    def values(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.negative, self.positive

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return TTQFunction.apply(latent, self.positive, self.negative, self.threshold(latent))


@dataclass
class TTQConfig(BinaryConfig):
    """conf/method/ttq.yaml: the threshold factor t, the fine-tuning (it trains the scales), the layers."""

    trained = True

    threshold: float = option(0.05, gt=0, lt=1, why="Delta = threshold * max|W| (the authors' t = 0.05)")


class TrainedTernaryQuantization(CompressionMethod):
    """``ttq``: ternary weights {-W_n, 0, W_p} with both scales of each layer learned."""

    name = "ttq"
    Config = TTQConfig
    config: TTQConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        quantized = train_quantized(model, ctx, self.config, lambda _name, layer: weight_quantizer(
            "ttq", 2, initial=layer.weight, threshold=self.config.threshold))
        return store_quantized(self.name, quantized, model, ctx)
