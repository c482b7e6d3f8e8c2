"""BinaryConnect: weights of +-H in the forward and backward passes, real-valued weights kept for the updates.

Courbariaux, Bengio & David, "BinaryConnect: Training Deep Neural Networks with binary weights
during propagations" (NeurIPS 2015), Sec. 2 (as summarised by Berthelier et al. 2020, Sec. 2.5):

* deterministic binarization ``w_b = +H if w >= 0 else -H`` (their Eq. 1), or stochastic
  (``stochastic: true``, Eq. 2): ``+H`` with probability ``p = hard_sigmoid(w / H) =
  clip((w / H + 1) / 2, 0, 1)``, else ``-H``;
* ``H`` per layer is Glorot's bound halved, ``sqrt(6 / (fan_in + fan_out)) / 2``, as the authors'
  code (``binary_connect.py``) uses it;
* the gradient reaches the real-valued weight straight through, and only inside ``[-H, H]``
  (the clipped straight-through estimator, :class:`.binary.SignSTE`); after every update the
  real-valued weights are clipped to ``[-H, H]`` (Sec. 2.4: "clip the real-valued weights").

The stored file holds one bit per weight and ``H`` per layer; the evaluated model is decoded from
it. Departures: training starts from the run's trained baseline (the paper trains from scratch),
with the run's recipe (their ADAM and batch norm belong to their recipe and models); the stochastic
variant is evaluated with its deterministic binary weights (the signs of the real-valued weights),
the ones the file can hold, where the paper's Sec. 2.6 tests with the real-valued weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, Layer, finetune_default, option
from methods.quantization.binary import BinaryConfig, ScaledSign, store_quantized, train_quantized, weight_quantizer
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantScheme


def glorot_h(layer: Layer) -> float:
    """BinaryConnect's ``H``: ``sqrt(6 / (fan_in + fan_out)) / 2`` of the layer's weight."""
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
    return math.sqrt(6.0 / (fan_in + fan_out)) / 2


@register_quantizer("binaryconnect", "weight", bits=(1, 1))
class BinaryConnectQuantizer(ScaledSign):
    """``+-H``: deterministic sign, or stochastic with the hard-sigmoid probability while training."""

    def __init__(self, scheme: QuantScheme, h: float = 1.0, stochastic: bool = False) -> None:
        super().__init__(clip=h)
        self.h = h
        self.stochastic = stochastic

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        return latent.new_tensor(self.h)

    def signs(self, latent: torch.Tensor) -> torch.Tensor:
        hard = super().signs(latent)
        if not (self.stochastic and self.training):
            return hard
        p = torch.clamp((latent.detach() / self.h + 1) / 2, 0, 1)
        drawn = torch.where(torch.rand_like(p) < p, 1.0, -1.0).to(latent.dtype)
        return hard + (drawn - hard).detach()  # the drawn value forward, the clipped STE's gradient backward

    @torch.no_grad()
    def after_step(self, latent: nn.Parameter) -> None:
        latent.clamp_(-self.h, self.h)


@dataclass
class BinaryConnectConfig(BinaryConfig):
    """conf/method/binaryconnect.yaml: deterministic or stochastic binarization, the fine-tuning, the layers."""

    trained = True

    stochastic: bool = option(False, why="Bernoulli(hard_sigmoid(w / H)) signs while training")
    finetune: FineTuning = option(factory=finetune_default(2.0, 0.01))


class BinaryConnect(CompressionMethod):
    """``binaryconnect``: +-H weights (Glorot's H per layer), clipped straight-through training."""

    name = "binaryconnect"
    Config = BinaryConnectConfig
    config: BinaryConnectConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        quantized = train_quantized(model, ctx, self.config, lambda _name, layer: weight_quantizer(
            "binaryconnect", 1, h=glorot_h(layer), stochastic=self.config.stochastic))
        return store_quantized(self.name, quantized, model, ctx)
