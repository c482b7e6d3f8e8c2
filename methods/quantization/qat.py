"""Quantization-aware training (QAT) with simulated quantization and the straight-through estimator.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (CVPR 2018), Sec. 3: the network is fine-tuned with the quantization it will be
deployed with simulated in the forward pass: weights are quantized with their min-max range at
every step, activations with ranges tracked by an exponential moving average, and the backward
pass treats rounding as the identity inside the clipping range (the straight-through estimator of
:class:`.uniform.FakeQuantizeSTE`). Float weights are kept and updated ("a higher precision must
be used to update the parameters", Berthelier et al. 2020, Sec. 2.5).

Here the fine-tuning starts from the trained baseline, its activation ranges initialised by a PTQ
calibration, and runs through ``ctx.finetune`` (the run's own recipe, shortened to ``epochs``).
The result is stored and decoded exactly as PTQ's (:func:`.ptq.store_and_decode`), with the
int8 ONNX deployment for 8-bit models.

Departures: batch normalisation is folded once before training, from the baseline's running
statistics (Jacob et al. fold it with batch statistics during training and switch to running
ones later); quantization is active from the first step (no quantization delay).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.quantization.ptq import calibration_inputs, quantize_for_inference, store_and_decode, uniform_config


def check_training(epochs: Any, lr: Any, ema: Any) -> tuple[float, float | None, float]:
    """Validated (epochs, lr, ema) of a quantization-aware fine-tuning; errors name the key."""
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs <= 0:
        raise MethodConfigError(f"method.epochs: fine-tuning epochs must be > 0, got {epochs!r}")
    if lr is not None and (not isinstance(lr, (int, float)) or lr <= 0):
        raise MethodConfigError(f"method.lr: must be > 0 or null (the recipe's), got {lr!r}")
    if not isinstance(ema, (int, float)) or not 0 < ema <= 1:
        raise MethodConfigError(f"method.ema: the activation-range averaging constant must be in (0, 1], got {ema!r}")
    return float(epochs), None if lr is None else float(lr), float(ema)


class QuantizationAwareTraining(CompressionMethod):
    """``qat``: fake-quantized fine-tuning of the baseline (Jacob et al. 2018)."""

    TRAINING_KEYS = ("epochs", "lr", "ema")

    def __init__(self, name: str = "qat", epochs: float = 1.0, lr: float | None = 0.001, ema: float = 0.01,
                 **options: Any) -> None:
        super().__init__(name)
        self.config = uniform_config(options, extra=("name", "epochs", "lr", "ema"))
        self.epochs, self.lr, self.ema = check_training(epochs, lr, ema)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        calibration = calibration_inputs(ctx.datamodule, self.config.calibration_batches)
        quantized, plan, folded = quantize_for_inference(model, self.config, calibration, ema=self.ema)
        before = ctx.evaluate(quantized, "val")
        ctx.finetune(quantized, self.epochs, lr=self.lr)
        quantized.eval()
        metrics = {"val_top1_before_finetune": before["top1"], "finetune_epochs": self.epochs,
                   "calibration_batches": float(len(calibration))}
        return store_and_decode(self.name, quantized, model, plan, folded, self.config, ctx, calibration, metrics)
