"""PACT: parameterized clipping activation, a learned clipping level per layer, trained.

Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks" (2018):
the activation is clipped to ``[0, alpha]`` with ``alpha`` a trainable parameter of each layer,
then quantized uniformly to ``k`` bits: ``y_q = round(clip(x, 0, alpha) * (2^k - 1) / alpha) *
alpha / (2^k - 1)``. With the straight-through estimator, ``dy_q/dx = 1`` on ``[0, alpha)`` and 0
elsewhere, and ``dy_q/dalpha = 1`` where ``x >= alpha`` and 0 elsewhere (their Eq. 3). ``alpha``
is kept small by an L2 penalty ``lambda_alpha * sum(alpha^2)`` added to the loss. The surveys
place it among the reduced-precision methods that quantize activations as well as weights
(Berthelier et al. 2020, Sec. 2.5; Aswani et al., Sec. C).

Weights are quantized as in QAT (uniform, min-max each step, straight-through). Training goes
through ``ctx.finetune`` with the penalty as its regularizer. At inference PACT is plain uniform
quantization with ``scale = alpha / (2^k - 1)`` and zero-point 0, so the stored file (and the
decoded model) holds only that scale, as PTQ's does.

Departures: ``alpha`` starts at each layer's calibrated activation range (the ``observer``'s
upper end on calibration batches) rather than at 10, since training starts from a trained
baseline; the paper replaces ReLU by PACT, here PACT acts on the input of each conv/linear layer
(after the ReLU, the same values); inputs with negative values (the normalised image into the
first layer) keep a calibrated asymmetric quantizer, since PACT's clip at 0 would erase them;
weights use uniform (not DoReFa) quantization.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.quantization.fakequant import ActQuantizer, quant_layers
from methods.quantization.ptq import calibration_inputs, quantize_for_inference, store_and_decode, uniform_config
from methods.quantization.qat import check_training


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


class PACTQuantizer(nn.Module):
    """A learned clipping level ``alpha`` (a parameter) and the uniform scale it implies.

    Its ``scale`` / ``zero_point`` buffers follow ``alpha``, so storing a PACT layer stores the
    same two numbers as any calibrated activation quantizer.
    """

    def __init__(self, bits: int, alpha: float) -> None:
        super().__init__()
        if alpha <= 0:
            raise MethodConfigError(f"PACT's clipping level must start > 0, got {alpha}")
        self.bits = bits
        self.levels = 2**bits - 1
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("scale", torch.tensor(float(alpha) / self.levels))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    @property
    def scheme(self) -> Any:  # what layer_bits and the int8 checks read
        from methods.quantization.uniform import QuantScheme

        return QuantScheme(bits=self.bits, symmetric=False, signed=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.alpha.clamp_(min=1e-3)  # a clipping level stays positive
            self.scale.copy_(self.alpha.detach() / self.levels)
        return PACTFunction.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, alpha={float(self.alpha):.4f}"


def pact_layers(model: nn.Module) -> dict[str, PACTQuantizer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PACTQuantizer)}


class AlphaL2:
    """PACT's regulariser: ``weight * sum(alpha^2)`` over the model's clipping levels."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, model: nn.Module) -> torch.Tensor:
        alphas = [m.alpha for m in model.modules() if isinstance(m, PACTQuantizer)]
        if not alphas:
            return torch.zeros(())
        return self.weight * torch.stack([a.pow(2) for a in alphas]).sum()


class PACT(CompressionMethod):
    """``pact``: learned activation clipping with quantization-aware fine-tuning."""

    def __init__(self, name: str = "pact", epochs: float = 1.0, lr: float | None = 0.001, alpha_decay: float = 2e-4,
                 **options: Any) -> None:
        super().__init__(name)
        options.setdefault("bits", 4)
        self.config = uniform_config(options, extra=("name", "epochs", "lr", "alpha_decay"))
        if self.config.act_bits == 32:
            raise MethodConfigError("method.act_bits: PACT quantizes activations; 32 (float) leaves it nothing to learn")
        self.epochs, self.lr, _ = check_training(epochs, lr, 1.0)
        if not isinstance(alpha_decay, (int, float)) or alpha_decay < 0:
            raise MethodConfigError(f"method.alpha_decay: the L2 weight of alpha must be >= 0, got {alpha_decay!r}")
        self.alpha_decay = float(alpha_decay)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        calibration = calibration_inputs(ctx.datamodule, self.config.calibration_batches)
        quantized, plan, folded = quantize_for_inference(model, self.config, calibration)
        swapped = 0
        for layer in quant_layers(quantized).values():
            q = layer.input_quantizer
            if isinstance(q, ActQuantizer):
                lo, hi = q.observer.range()
                if float(lo) >= 0 and float(hi) > 0:  # non-negative inputs: PACT's domain
                    layer.input_quantizer = PACTQuantizer(self.config.act_bits, float(hi))
                    swapped += 1
        before = ctx.evaluate(quantized, "val")
        ctx.finetune(quantized, self.epochs, lr=self.lr, regularizer=AlphaL2(self.alpha_decay))
        quantized.eval()
        alphas = {name: float(m.alpha) for name, m in pact_layers(quantized).items()}
        metrics = {"val_top1_before_finetune": before["top1"], "finetune_epochs": self.epochs,
                   "pact_layers": float(swapped), "mean_alpha": sum(alphas.values()) / max(len(alphas), 1)}
        result = store_and_decode(self.name, quantized, model, plan, folded, self.config, ctx, calibration, metrics)
        alpha_file = ctx.workdir / f"{self.name}_alpha.json"
        import json

        alpha_file.write_text(json.dumps(alphas, indent=1))
        result.artifacts.append(alpha_file)
        return result
