"""Half-precision inference: fp16 (IEEE binary16) or bf16 (bfloat16) weights and arithmetic.

Berthelier et al. (2020, Sec. 2.5) list 16-bit representations as the first step down from
32-bit floating point; Gupta et al. train in 16 bits, and every modern CPU and GPU runtime
infers in it. Here the trained model's floating-point tensors are stored in the chosen 16-bit
format (half the bytes of fp32) and the model decoded from that file *computes* in that format:
inputs are cast on entry, logits cast back to fp32 on exit (:class:`HalfPrecisionModel`), so the
accuracy and the measured latency are those of real 16-bit execution, not of a simulation.

On this CPU, torch 2.14 runs both fp16 and bf16 convolutions, batch norm and linear layers;
a dtype the installed torch cannot run is refused at ``compress`` with the error it raised.
ONNX Runtime's CPU provider loads fp16 graphs but refuses bfloat16 convolutions, so bf16 on the
``onnxruntime_cpu`` target is refused up front with that reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import option
from methods.storage import StoredState, load_model, load_state_into, register_architecture, save_model
from methods.storage.codecs import dtype_name, raw_entry

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class HalfPrecisionModel(nn.Module):
    """Runs ``model`` (already in ``dtype``) on inputs cast to ``dtype``; returns fp32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def save_half(model: nn.Module, path: Any, dtype_key: str) -> dict[str, int]:
    """Floating tensors of the state dict in ``dtype_key`` (kind ``weights16``), the rest as they are."""
    dtype = DTYPES[dtype_key]
    entries = [raw_entry(key, tensor, "weights16", dtype) if tensor.is_floating_point() else raw_entry(key, tensor)
               for key, tensor in model.state_dict().items()]
    return save_model(path, entries, architecture="half")


@register_architecture("half")
def _half_model(template: nn.Module, state: StoredState) -> HalfPrecisionModel:
    """The template cast to the stored 16-bit dtype, computing in it (:class:`HalfPrecisionModel`)."""
    dtypes = {t.dtype for t in state.tensors.values() if t.is_floating_point()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES.values()):
        raise MethodConfigError(f"{state.path}: a half-precision file holds one 16-bit float dtype, found "
                                f"{sorted(dtype_name(d) for d in dtypes)}")
    (dtype,) = dtypes
    model = load_state_into(copy.deepcopy(template).cpu().eval().to(dtype), state)
    return HalfPrecisionModel(model, dtype).eval()


@dataclass
class HalfConfig:
    """conf/method/half.yaml."""

    dtype: str = option("bf16", choices=tuple(sorted(DTYPES)))


class HalfPrecision(CompressionMethod):
    """``half``: fp16 or bf16 storage and inference."""

    name = "half"
    Config = HalfConfig
    config: HalfConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        if self.config.dtype == "bf16" and ctx.target.executes == "onnx":
            raise MethodConfigError(
                f"method.dtype=bf16 cannot run on hw {ctx.target.name!r}: ONNX Runtime's CPU provider has no bfloat16 "
                "Conv kernel (the session refuses the graph); use method.dtype=fp16 there (ONNX Runtime may run ops "
                "without fp16 CPU kernels through inserted fp32 casts) or a torch target such as hw=local_cpu"
            )
        path = ctx.workdir / f"{self.name}_{self.config.dtype}.cbm"
        sizes = save_half(model, path, self.config.dtype)
        decoded = load_model(path, model)
        sample = torch.randn(ctx.input_shape)
        try:
            with torch.no_grad():
                out16 = decoded(sample)
        except (RuntimeError, NotImplementedError) as err:
            raise MethodConfigError(
                f"method.dtype={self.config.dtype}: this torch ({torch.__version__}) cannot run the model in "
                f"{DTYPES[self.config.dtype]} on CPU ({err}); use dtype=bf16 or the onnxruntime_cpu target"
            ) from err
        with torch.no_grad():
            out32 = copy.deepcopy(model).cpu().eval()(sample)
        bits = 16
        layer_bits = {name: (bits, bits) for name, m in decoded.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        metrics = {f"bytes_{kind}": float(size) for kind, size in sizes.items()}
        metrics["max_abs_logit_diff_vs_fp32"] = float((out16 - out32).abs().max())
        return CompressionResult(model=decoded, stored_file=path, layer_bits=layer_bits, metrics=metrics)
