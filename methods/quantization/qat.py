"""Quantization-aware training (QAT) with simulated quantization and the straight-through estimator.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference" (CVPR 2018), Sec. 3: the network is fine-tuned with the quantization it will be
deployed with simulated in the forward pass: weights are quantized with their min-max range at
every step, activations with ranges tracked by an exponential moving average, and the backward
pass treats rounding as the identity inside the clipping range (the straight-through estimator of
:class:`.uniform.FakeQuantizeSTE`). Float weights are kept and updated ("a higher precision must
be used to update the parameters", Berthelier et al. 2020, Sec. 2.5).

Here the fine-tuning starts from the trained baseline, its activation ranges initialised by a PTQ
calibration, and runs through ``ctx.finetune`` (the run's own recipe, shortened to ``finetune.epochs``).
The result is stored and decoded exactly as PTQ's (:func:`.ptq.store_and_decode`), with the
int8 ONNX deployment for 8-bit models.

Departures: batch normalisation is folded once before training, from the baseline's running
statistics (Jacob et al. fold it with batch statistics during training and switch to running
ones later); quantization is active from the first step (no quantization delay).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.quantization.ptq import (
    UniformQuantizationConfig,
    calibration_inputs,
    quantize_for_inference,
    store_and_decode,
)


def must_train(training: FineTuning, key: str) -> None:
    """Quantization-aware methods are their fine-tuning: ``epochs`` 0 would leave nothing of them."""
    if training.epochs <= 0:
        fail(f"{key}.finetune.epochs", f"must be > 0 (quantization-aware training is the method), got {training.epochs}")


@dataclass
class QATConfig(UniformQuantizationConfig):
    """conf/method/qat.yaml: PTQ's keys, the fine-tuning, and the averaging constant of the activation ranges."""

    finetune: FineTuning = option(factory=finetune_default(1.0, 0.001))
    ema: float = option(0.01, gt=0, le=1, why="the activation-range averaging constant")

    def check(self, key: str) -> None:
        super().check(key)
        must_train(self.finetune, key)


class QuantizationAwareTraining(CompressionMethod):
    """``qat``: fake-quantized fine-tuning of the baseline (Jacob et al. 2018)."""

    name = "qat"
    Config = QATConfig
    config: QATConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        calibration = calibration_inputs(ctx.datamodule, self.config.calibration_batches)
        quantized, plan, folded = quantize_for_inference(model, self.config, calibration, ema=self.config.ema)
        before = ctx.evaluate(quantized, "val")
        ctx.finetune(quantized, self.config.finetune.epochs, lr=self.config.finetune.lr)
        quantized.eval()
        metrics = {"val_top1_before_finetune": before["top1"], "finetune_epochs": self.config.finetune.epochs,
                   "calibration_batches": float(len(calibration))}
        return store_and_decode(self.name, quantized, model, plan, folded, self.config, ctx, calibration, metrics)
