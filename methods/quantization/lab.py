"""Loss-aware binarization: a proximal Newton step with the diagonal Hessian taken from Adam's second moment.

Hou, Yao & Kwok, "Loss-aware Binarization of Deep Networks" (ICLR 2017), Sec. 3 (Algorithm 1), as
the authors' code (``FNN/lab.py``) does it: binarization minimises the loss, not the weight
approximation error, through a proximal Newton step whose diagonal Hessian ``D`` is approximated
by the square root of Adam's second moment ``v`` (``d = sqrt(v) + 1e-8``). The closed-form step:

* ``w_l`` is updated with the gradient of the loss taken at the binarized weights ``w^_l``,
  preconditioned by ``1 / d_l`` (the Newton step) and clipped to ``[-1, 1]``;
* ``w^_l = alpha_l * b_l`` with ``b_l = sign(w_l)`` and ``alpha_l = ||d_l * w_l||_1 / ||d_l||_1``
  (one scale per layer: the ``d``-weighted mean magnitude).

Here the second moment is kept by the ``lab`` quantizer itself, with Adam's update and bias
correction (``v = beta2 * v + (1 - beta2) * g^2``), from the gradients the run's recipe computes;
before every optimizer step the latent weights' gradients are divided by ``d``, so the recipe's
step is the preconditioned one whatever its optimizer (with SGD it is LAB's Newton step with the
recipe's momentum; with Adam, Adam's own normalisation then makes it Adam's step, as in the
authors' code). The file stores one bit per weight and ``alpha`` per layer (codec ``sign``); the
evaluated model is decoded from it. Departure: training starts from the run's trained baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, finetune_default, option
from methods.quantization.binary import BinaryConfig, ScaledSign, store_quantized, train_quantized, weight_quantizer
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantScheme


@register_quantizer("lab", "weight", bits=(1, 1))
class LABQuantizer(ScaledSign):
    """``alpha * sign(w)``, ``alpha = ||d w||_1 / ||d||_1``; keeps ``v`` and preconditions the gradient by ``1/d``."""

    v: torch.Tensor
    steps: torch.Tensor

    def __init__(self, scheme: QuantScheme, shape: tuple[int, ...] = (1,), beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(clip=1.0)
        self.beta2 = beta2
        self.eps = eps
        self.register_buffer("v", torch.zeros(shape))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def curvature(self) -> torch.Tensor:
        """``d = sqrt(v^) + eps`` with Adam's bias correction (uniform before the first step)."""
        if int(self.steps) == 0:
            return torch.ones_like(self.v)
        return (self.v / (1 - self.beta2 ** int(self.steps))).sqrt() + self.eps

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        d = self.curvature()
        return ((d * latent.detach()).abs().sum() / d.sum()).reshape(())

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        binary = self.scale(latent) * torch.where(latent >= 0, 1.0, -1.0).to(latent.dtype)
        return latent + (binary - latent).detach()  # the loss's gradient at w^ reaches w unchanged

    @torch.no_grad()
    def before_step(self, latent: nn.Parameter) -> None:
        if latent.grad is None:
            return
        self.steps += 1
        self.v.mul_(self.beta2).addcmul_(latent.grad, latent.grad, value=1 - self.beta2)
        latent.grad.div_(self.curvature())

    @torch.no_grad()
    def after_step(self, latent: nn.Parameter) -> None:
        latent.clamp_(-1.0, 1.0)


@dataclass
class LABConfig(BinaryConfig):
    """conf/method/lab.yaml: Adam's second-moment constants, the fine-tuning, the layers."""

    trained = True

    beta2: float = option(0.999, gt=0, lt=1, why="the second moment's decay (Adam's beta2)")
    eps: float = option(1e-8, gt=0, why="d = sqrt(v) + eps")
    finetune: FineTuning = option(factory=finetune_default(2.0, 0.001))


class LossAwareBinarization(CompressionMethod):
    """``lab``: loss-aware binary weights, one d-weighted scale per layer (proximal Newton, Adam's v)."""

    name = "lab"
    Config = LABConfig
    config: LABConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        quantized = train_quantized(model, ctx, self.config, lambda _name, layer: weight_quantizer(
            "lab", 1, shape=tuple(layer.weight.shape), beta2=self.config.beta2, eps=self.config.eps))
        return store_quantized(self.name, quantized, model, ctx)
