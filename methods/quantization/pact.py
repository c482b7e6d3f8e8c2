"""PACT: parameterized clipping activation, a learned clipping level per layer, trained.

Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks" (2018):
the activation is clipped to ``[0, alpha]`` with ``alpha`` a trainable parameter of each layer,
then quantized uniformly to ``k`` bits: ``y_q = round(clip(x, 0, alpha) * (2^k - 1) / alpha) *
alpha / (2^k - 1)``. With the straight-through estimator, ``dy_q/dx = 1`` on ``[0, alpha)`` and 0
elsewhere, and ``dy_q/dalpha = 1`` where ``x >= alpha`` and 0 elsewhere (their Eq. 3). ``alpha``
is kept small by an L2 penalty ``lambda_alpha * sum(alpha^2)`` added to the loss. The surveys
place it among the reduced-precision methods that quantize activations as well as weights
(Berthelier et al. 2020, Sec. 2.5; Aswani et al., Sec. C).

Weights are quantized as in QAT (uniform, min-max each step, straight-through); activations by
the ``pact`` quantizer of the registry (:mod:`.quantizers`), which any method's plan may name
(``act_quantizer: pact``). Training goes through ``ctx.finetune`` with the penalty as a loss term
(:class:`AlphaL2`). At inference PACT is plain uniform quantization with ``scale = alpha / (2^k - 1)``
and zero-point 0, so the stored file (and the decoded model) holds only that scale, as PTQ's does.

Departures: ``alpha`` starts at each layer's calibrated activation range (the ``observer``'s
upper end on calibration batches) rather than at 10, since training starts from a trained
baseline; the paper replaces ReLU by PACT, here PACT acts on the input of each conv/linear layer
(after the ReLU, the same values); inputs with negative values (the normalised image into the
first layer) keep a calibrated asymmetric quantizer, since PACT's clip at 0 would erase them;
weights use uniform (not DoReFa) quantization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.losses import TrainingStep
from methods.quantization.fakequant import ActQuantizer
from methods.quantization.ptq import (
    UniformQuantizationConfig,
    calibration_inputs,
    quantize_for_inference,
    store_and_decode,
)
from methods.quantization.qat import must_train
from methods.quantization.quantizers import register_quantizer
from methods.quantization.uniform import QuantizationError, QuantScheme


class PACTFunction(torch.autograd.Function):
    """Clip to [0, alpha], quantize to ``levels`` steps; PACT's straight-through gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:
        ctx.save_for_backward(x, alpha)
        scale = alpha / levels
        clipped = torch.minimum(torch.clamp(x, min=0.0), alpha)
        return torch.round(clipped / scale) * scale

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, alpha = ctx.saved_tensors
        grad_x = grad_output * ((x >= 0) & (x < alpha))
        grad_alpha = (grad_output * (x >= alpha)).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


@register_quantizer("pact", "act", bits=(1, 8), stored_as="uniform")
class PACTQuantizer(ActQuantizer):
    """A learned clipping level ``alpha`` (a parameter) and the uniform scale it implies.

    Calibrated like the uniform activation quantizer; :meth:`finish_calibration` then starts
    ``alpha`` at the observed upper end where the inputs are non-negative (PACT's domain), and
    keeps the calibrated uniform quantizer where they are not (``learning`` stays False). Its
    ``scale`` / ``zero_point`` buffers follow ``alpha``, so storing a PACT layer stores the same
    two numbers as any calibrated activation quantizer.
    """

    def __init__(self, scheme: QuantScheme, observer: str = "minmax", observer_kwargs: dict[str, Any] | None = None,
                 ema: float | None = None) -> None:
        if scheme.signed or scheme.symmetric:
            raise QuantizationError("the 'pact' quantizer clips to [0, alpha]: its scheme must be unsigned and "
                                    "asymmetric (act_symmetric: false)")
        super().__init__(scheme, observer, observer_kwargs, ema)
        self.levels = 2**scheme.bits - 1
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.learning = False

    def clip_at(self, alpha: float) -> None:
        """Start learning the clipping level from ``alpha`` (> 0)."""
        if not alpha > 0:
            raise QuantizationError(f"PACT's clipping level must start > 0, got {alpha}")
        with torch.no_grad():
            self.alpha.fill_(float(alpha))
        self.set_qparams(torch.tensor(float(alpha) / self.levels), torch.tensor(0, dtype=torch.int32))
        self.learning = True
        self.mode = "quantize"

    def finish_calibration(self) -> None:
        lo, hi = self.observer.range()
        if float(lo) >= 0 and float(hi) > 0:  # non-negative inputs: PACT's domain
            self.clip_at(float(hi))
        else:  # PACT's clip at 0 would erase the negative values: the calibrated uniform quantizer
            super().finish_calibration()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.learning or self.mode != "quantize":
            return super().forward(x)
        with torch.no_grad():
            self.alpha.clamp_(min=1e-3)  # a clipping level stays positive
            self.scale.copy_(self.alpha.detach() / self.levels)
        return PACTFunction.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", alpha={float(self.alpha):.4f}" if self.learning else ", alpha not learned")


def pact_layers(model: nn.Module) -> dict[str, PACTQuantizer]:
    """The quantizers of ``model`` that learn their clipping level, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PACTQuantizer) and m.learning}


@dataclass(frozen=True)
class AlphaL2:
    """PACT's penalty, a loss term: ``weight * sum(alpha^2)`` over the clipping levels of ``step.model``."""

    weight: float

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        alphas = [m.alpha for m in pact_layers(step.model).values()]
        if not alphas:
            return torch.zeros((), device=step.logits.device)
        return self.weight * torch.stack([a.pow(2) for a in alphas]).sum()


@dataclass
class PACTConfig(UniformQuantizationConfig):
    """conf/method/pact.yaml: PTQ's keys (4 bits, the 'pact' activation quantizer), the fine-tuning, alpha's penalty."""

    bits: int = 4
    act_quantizer: str = "pact"
    finetune: FineTuning = option(factory=finetune_default(1.0, 0.001))
    alpha_decay: float = option(2e-4, ge=0, why="the L2 weight of alpha")

    def check(self, key: str) -> None:
        super().check(key)
        must_train(self.finetune, key)
        if self.act_width == 32:
            fail(f"{key}.act_bits", "is 32: PACT quantizes activations; float leaves it nothing to learn")
        if self.act_quantizer != "pact":
            fail(f"{key}.act_quantizer", f"is {self.act_quantizer!r}: PACT learns its clipping levels with the 'pact' "
                                         "quantizer (fine-tuning with another quantizer is +method=qat)")
        if self.act_symmetric:
            fail(f"{key}.act_symmetric", "is true: PACT clips activations to [0, alpha] (unsigned); set false")


class PACT(CompressionMethod):
    """``pact``: learned activation clipping with quantization-aware fine-tuning."""

    name = "pact"
    Config = PACTConfig
    config: PACTConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        calibration = calibration_inputs(ctx.datamodule, self.config.calibration_batches)
        quantized, plan, folded = quantize_for_inference(model, self.config, calibration)
        before = ctx.evaluate(quantized, "val")
        c = self.config
        ctx.finetune(quantized, c.finetune.epochs, lr=c.finetune.lr, loss_terms=[AlphaL2(c.alpha_decay)])
        quantized.eval()
        alphas = {name: float(m.alpha) for name, m in pact_layers(quantized).items()}
        metrics = {"val_top1_before_finetune": before["top1"], "finetune_epochs": c.finetune.epochs,
                   "pact_layers": float(len(alphas)), "mean_alpha": sum(alphas.values()) / max(len(alphas), 1)}
        result = store_and_decode(self.name, quantized, model, plan, folded, self.config, ctx, calibration, metrics)
        alpha_file = ctx.workdir / f"{self.name}_alpha.json"
        alpha_file.write_text(json.dumps(alphas, indent=1))
        result.artifacts.append(alpha_file)
        return result
