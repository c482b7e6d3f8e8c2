"""Post-training uniform affine quantization (PTQ) to N bits, with calibration observers.

The trained network is quantized without retraining (Berthelier et al. 2020, Sec. 2.5: reducing
precision "to 16, 8 or even less" bits; Aswani et al., Sec. C for quantizing both conv filters
and fully connected matrices): batch normalisation is folded into the convolutions, every
conv/linear weight is mapped to ``bits``-bit integers (per tensor or per output channel,
symmetric or asymmetric; Jacob et al. 2018, Sec. 2), and the input activation of every such
layer gets a scale and zero-point from ``calibration_batches`` batches of the training split,
observed by min-max, percentile or MSE (:mod:`.uniform`). The quantizers are the registry's
(:mod:`.quantizers`) that ``weight_quantizer`` and ``act_quantizer`` name, at ``bits`` / ``act_bits``
or, for the layers ``layer_bits`` lists, at their own ``[weight_bits, act_bits]`` (a mixed-precision
policy such as HAQ's); the result's ``layer_bits`` records the widths applied.

The model is written in its real storage format (:func:`.fakequant.save_quantized`: packed
integer weights, scales, zero-points, fp32 biases) and the returned model is decoded from that
file. For 8-bit weights and activations the method also writes an int8 QDQ ONNX model that ONNX
Runtime executes with integer kernels (:mod:`.onnx_int8`); both the simulated (fake-quant, torch)
and the deployed (ONNX Runtime) top-1 on the test split are recorded, with their difference.

:func:`store_and_decode` is the common end of PTQ, QAT and PACT.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import LayerSelection, excluded_layers, option
from methods.quantization.fakequant import (
    calibrate,
    fold_batchnorm,
    freeze,
    layer_bits,
    layer_plan,
    prepare,
    save_quantized,
)
from methods.quantization.quantizers import QuantizerEntry, quantizer_entry
from methods.quantization.uniform import OBSERVERS, QuantizationError, QuantScheme
from methods.storage import load_model

log = logging.getLogger(__name__)

#: An activation width that means "no activation quantizer": the layer's input stays float.
FLOAT_BITS = 32


def check_quantizer(name: str, role: str, key: str) -> QuantizerEntry:
    """The registered ``role`` quantizer ``name``, else an error naming ``key`` and the registered ones."""
    try:
        return quantizer_entry(name, role)
    except QuantizationError as err:
        raise MethodConfigError(f"{key}: {err}") from None


def check_bits(value: int, key: str, quantizer: QuantizerEntry, symmetric: bool, allow_float: bool = False) -> int:
    """``value`` as a width ``quantizer`` takes (or 32 = stay float when ``allow_float``), else an
    error naming ``key`` and that quantizer's range."""
    if allow_float and value == FLOAT_BITS:
        return FLOAT_BITS
    try:
        return quantizer.check_bits(value, symmetric)
    except QuantizationError as err:
        extra = f"; or {FLOAT_BITS} keeps activations in float" if allow_float else ""
        raise MethodConfigError(f"{key}: {err}{extra}") from None


@dataclass
class UniformQuantizationConfig:
    """conf/method/ptq.yaml: the keys PTQ, QAT and PACT share; widths are checked against the quantizers named.

    ``layer_bits``: ``{layer: [weight_bits, act_bits]}`` for the layers with their own widths.
    """

    bits: int = 8
    act_bits: int | None = option(None, why="null: bits; 32 keeps activations in float")
    per_channel: bool = True
    symmetric: bool = True
    act_symmetric: bool = False
    observer: str = option("minmax", choices=tuple(OBSERVERS))
    weight_observer: str = option("minmax", choices=tuple(OBSERVERS))
    percentile: float = option(99.99, gt=50, le=100)
    calibration_batches: int = option(16, ge=1)
    layers: LayerSelection = option(factory=LayerSelection)
    fold_bn: bool = True
    onnx: bool = True
    reduce_range: bool | str = option("auto", choices=(True, False, "auto"))
    weight_quantizer: str = "uniform"
    act_quantizer: str = "uniform"
    layer_bits: dict[str, tuple[int, int]] = option(factory=dict)

    def check(self, key: str) -> None:
        wq = check_quantizer(self.weight_quantizer, "weight", f"{key}.weight_quantizer")
        aq = check_quantizer(self.act_quantizer, "act", f"{key}.act_quantizer")
        check_bits(self.bits, f"{key}.bits", wq, self.symmetric)
        check_bits(self.act_width, f"{key}.act_bits", aq, self.act_symmetric, allow_float=True)
        for layer, (weight_bits, act_bits) in self.layer_bits.items():
            check_bits(weight_bits, f"{key}.layer_bits.{layer}", wq, self.symmetric)
            check_bits(act_bits, f"{key}.layer_bits.{layer}", aq, self.act_symmetric, allow_float=True)

    @property
    def act_width(self) -> int:
        """``act_bits``, ``bits`` where it is null."""
        return self.bits if self.act_bits is None else self.act_bits

    @property
    def deploys_int8(self) -> bool:
        pairs = {(self.bits, self.act_width), *self.layer_bits.values()}
        return self.onnx and pairs == {(8, 8)}

    @property
    def reduces_range(self) -> bool:
        """7-bit weights for 8-bit deployment where this CPU's int8 kernels would saturate on
        8-bit weights (x86 without VNNI; ONNX Runtime's ``reduce_range`` remedy), so that the
        stored, simulated and deployed models are the same model."""
        if self.reduce_range == "auto":
            from methods.quantization.onnx_int8 import int8_saturates

            return self.deploys_int8 and int8_saturates(2 ** (self.bits - 1) - 1, 2**self.act_width - 1)
        return bool(self.reduce_range) and self.bits == 8

    @property
    def weight_bits(self) -> int:
        return self.bits - 1 if self.reduces_range else self.bits

    def weight_scheme(self, bits: int | None = None) -> QuantScheme:
        """Weights at ``bits`` (default: the stored width of ``bits``; 8 becomes 7 where the range is reduced)."""
        bits = self.weight_bits if bits is None else bits - int(self.reduces_range and bits == 8)
        return QuantScheme(bits=bits, symmetric=self.symmetric, per_channel=self.per_channel, ch_axis=0, signed=True)

    def act_scheme(self, bits: int | None = None) -> QuantScheme | None:
        """Activations at ``bits`` (default ``act_bits``; 32: float, None): unsigned (uint8-style) when
        asymmetric, as ReLU outputs are non-negative."""
        bits = self.act_width if bits is None else bits
        if bits == FLOAT_BITS:
            return None
        return QuantScheme(bits=bits, symmetric=self.act_symmetric, signed=self.act_symmetric)

    def observer_kwargs(self, observer: str) -> dict[str, Any]:
        return {"percentile": self.percentile} if observer == "percentile" else {}

    def plan(self, model: nn.Module, input_shape: Sequence[int], ema: float | None = None) -> dict[str, dict[str, Any]]:
        """Each selected layer's quantizers; the layers ``layers`` leaves out stay float."""
        schemes = {layer: (self.weight_scheme(w), self.act_scheme(a)) for layer, (w, a) in self.layer_bits.items()}
        skip = excluded_layers(model, (1, *tuple(input_shape)[1:]), self.layers)
        try:
            plan = layer_plan(model, self.weight_scheme(), self.act_scheme(), self.weight_observer, self.observer,
                              skip=skip, ema=ema, weight_quantizer=self.weight_quantizer,
                              act_quantizer=self.act_quantizer, layer_schemes=schemes)
        except QuantizationError as err:  # its message starts with the key (layer_bits)
            raise MethodConfigError(f"method.{err}") from None
        # weight and activation observers may differ: give each its own options
        for spec in plan.values():
            spec["weight"]["observer_kwargs"] = self.observer_kwargs(self.weight_observer)
            if spec["act"] is not None:
                spec["act"]["observer_kwargs"] = self.observer_kwargs(self.observer)
        return plan

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def calibration_inputs(datamodule: Any, batches: int) -> list[torch.Tensor]:
    """The first ``batches`` input batches of the training split."""
    out = [b[0] if isinstance(b, (tuple, list)) else b for b in itertools.islice(datamodule.train_dataloader(), batches)]
    if not out:
        raise MethodConfigError("method.calibration_batches: the training split gave no batches to calibrate on")
    return out


def quantize_for_inference(model: nn.Module, config: UniformQuantizationConfig, calibration: list[torch.Tensor],
                           ema: float | None = None) -> tuple[nn.Module, dict[str, dict[str, Any]], list[tuple[str, str]]]:
    """A fake-quant copy of ``model``: BN folded, layers wrapped, activations calibrated.

    Weights are not frozen yet (QAT trains them first); returns (model, plan, folded pairs).
    """
    quantized = copy.deepcopy(model).cpu().eval()
    folded = fold_batchnorm(quantized) if config.fold_bn else []
    plan = config.plan(quantized, calibration[0].shape, ema=ema)
    prepare(quantized, plan)
    calibrate(quantized, calibration, len(calibration))
    return quantized, plan, folded


def store_and_decode(
    name: str,
    quantized: nn.Module,
    template: nn.Module,
    plan: dict[str, dict[str, Any]],
    folded: list[tuple[str, str]],
    config: UniformQuantizationConfig,
    ctx: CompressionContext,
    calibration: list[torch.Tensor],
    metrics: dict[str, float] | None = None,
) -> CompressionResult:
    """Freeze, write the real file, decode it, and (8-bit) deploy it to int8 ONNX and evaluate both."""
    freeze(quantized)
    path = ctx.workdir / f"{name}.cbm"
    sizes = save_quantized(quantized, path, plan, folded, {"method": name, "config": config.as_dict()})
    decoded = load_model(path, template)
    metrics = dict(metrics or {})
    for kind, size in sizes.items():
        metrics[f"bytes_{kind}"] = float(size)
    bits = layer_bits(decoded)
    policy = ctx.workdir / f"{name}_layer_bits.json"
    policy.write_text(json.dumps({k: list(v) for k, v in bits.items()}, indent=1))
    result = CompressionResult(model=decoded, stored_file=path, layer_bits=bits, metrics=metrics, artifacts=[policy])
    metrics["weight_bits"] = float(config.weight_bits)
    metrics["reduce_range"] = float(config.reduces_range)
    if config.deploys_int8:
        _deploy_int8(name, decoded, config, ctx, calibration, result)
    return result


def _deploy_int8(name: str, decoded: nn.Module, config: UniformQuantizationConfig, ctx: CompressionContext,
                 calibration: list[torch.Tensor], result: CompressionResult) -> None:
    from methods.quantization.onnx_int8 import export_int8, onnx_accuracy

    onnx_path = ctx.workdir / f"{name}_int8.onnx"
    start = time.perf_counter()
    export_int8(decoded, calibration, onnx_path, calibrate_method=config.observer)
    result.metrics["int8_export_s"] = time.perf_counter() - start
    simulated = ctx.evaluate(decoded, "test")
    deployed = onnx_accuracy(onnx_path, ctx.datamodule.test_dataloader())
    result.metrics.update({
        "simulated_top1": simulated["top1"],
        "deployed_top1": deployed["top1"],
        "deployed_minus_simulated_top1": deployed["top1"] - simulated["top1"],
        "deployed_loss": deployed["loss"],
        "bytes_onnx_int8": float(onnx_path.stat().st_size),
    })
    result.deployables["onnx"] = onnx_path
    log.info("%s: simulated top-1 %.2f%%, deployed (ONNX Runtime int8) %.2f%%", name, simulated["top1"], deployed["top1"])


class PostTrainingQuantization(CompressionMethod):
    """``ptq``: uniform affine quantization of a trained model, calibrated, no retraining."""

    name = "ptq"
    Config = UniformQuantizationConfig
    config: UniformQuantizationConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        calibration = calibration_inputs(ctx.datamodule, self.config.calibration_batches)
        quantized, plan, folded = quantize_for_inference(model, self.config, calibration)
        return store_and_decode(self.name, quantized, model, plan, folded, self.config, ctx, calibration,
                                {"calibration_batches": float(len(calibration)), "folded_bn": float(len(folded))})

