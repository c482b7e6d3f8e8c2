"""What the binary and ternary methods share: the clipped straight-through sign, the latent weights, the file.

The surveys' far end of precision (Berthelier et al. 2020, Sec. 2.5; Aswani et al., Sec. C):
weights of one bit (BinaryConnect, binary-weight networks, XNOR-Net, loss-aware binarization) or
of three values (ternary weight networks, trained ternary quantization). All of them train the
same way, which lives here once:

* the real-valued ("latent") weight is kept and updated; the layer computes with its binary or
  ternary image. Each method's weight quantizer (registered in :mod:`.quantizers`, role
  ``weight``, 1 or 2 bits) is a ``torch.nn.utils.parametrize`` function of the latent weight, so
  the run's recipe trains the latent weights (and a quantizer's own parameters, TTQ's scales)
  through ``ctx.finetune`` with no loop of its own;
* :class:`SignSTE`: ``sign`` forward, the straight-through estimator with clipping backward
  (Courbariaux et al. 2015, Sec. 2; Hubara et al. 2016): the gradient passes where
  ``|x| <= clip`` and is zero outside;
* :class:`LatentWeights`, a training hook calling each quantizer's hooks around the
  optimizer step (BinaryConnect clips the latent weights to ``[-H, H]``; LAB preconditions their
  gradient with its second moment);
* the file: a binary weight is its signs bit-packed at 1 bit plus one float32 scale per layer or
  per output channel (codec ``sign``), a ternary one its codes at 2 bits plus the two float32
  values of the layer (codec ``codebook`` with the zero code); every other tensor is stored as it
  is, and the evaluated model is the one decoded from that file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from methods.base import CompressionContext, CompressionResult
from methods.config import FineTuning, Layer, LayerSelection, fail, finetune_default, option, select_layers
from methods.hooks import TrainingHook, TrainingState
from methods.quantization.quantizers import create_quantizer
from methods.quantization.uniform import QuantScheme
from methods.storage import TensorEntry, load_model, save_model, size_metrics
from methods.storage.codebook import codebook_entry
from methods.storage.codecs import sign_entry, state_entries


class SignSTE(torch.autograd.Function):
    """``+1`` where ``x >= 0``, else ``-1``; backward: the gradient where ``|x| <= clip``, zero elsewhere."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: float) -> torch.Tensor:
        ctx.save_for_backward(x.abs() <= clip)
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad_output * inside, None


def sign_ste(x: torch.Tensor, clip: float = 1.0) -> torch.Tensor:
    """``sign(x)`` (0 counts as +1) with the clipped straight-through gradient."""
    return SignSTE.apply(x, clip)


def channel_mean_abs(weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute value of each output channel (dim 0), shaped to broadcast against ``weight``."""
    return weight.abs().reshape(weight.shape[0], -1).mean(dim=1).reshape(-1, *[1] * (weight.dim() - 1))


class LevelQuantizer(nn.Module):
    """A weight quantizer of 1 or 2 bits: ``forward(latent)`` is what the layer computes with.

    ``entry(name, latent)`` is the stored form of the same values; :meth:`before_step` and
    :meth:`after_step` run around each optimizer step (``latent`` is the trained parameter).
    """

    bits: int = 1

    def entry(self, name: str, latent: torch.Tensor) -> TensorEntry:
        raise NotImplementedError

    def before_step(self, latent: nn.Parameter) -> None:
        """Called after the backward pass, before the optimizer updates ``latent``."""

    def after_step(self, latent: nn.Parameter) -> None:
        """Called after the optimizer updated ``latent``."""


class ScaledSign(LevelQuantizer):
    """``scale * sign(w)`` with the clipped straight-through sign; subclasses say what the scale is.

    Stored as the bit-packed signs and the scale (one per layer, or per output channel where the
    scale has one per channel).
    """

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        self.clip = clip

    def scale(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def signs(self, latent: torch.Tensor) -> torch.Tensor:
        return sign_ste(latent, self.clip)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.scale(latent) * self.signs(latent)

    @torch.no_grad()
    def entry(self, name: str, latent: torch.Tensor) -> TensorEntry:
        scale = self.scale(latent).detach().float()
        axis = 0 if scale.numel() > 1 else None
        return sign_entry(name, latent >= 0, scale.reshape(-1) if axis == 0 else scale.reshape(()), axis)


class Ternary(LevelQuantizer):
    """Three values per layer ``{-negative, 0, positive}``; subclasses give the threshold and the values.

    Stored as 2-bit codes (0: zero, 1: ``-negative``, 2: ``positive``) and the two float32 values.
    """

    bits = 2

    def threshold(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def values(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(negative, positive) magnitudes of the layer."""
        raise NotImplementedError

    @torch.no_grad()
    def entry(self, name: str, latent: torch.Tensor) -> TensorEntry:
        delta = self.threshold(latent)
        codes = torch.zeros(latent.shape, dtype=torch.long)
        codes[latent < -delta] = 1
        codes[latent > delta] = 2
        negative, positive = self.values(latent)
        centroids = torch.stack([-negative.detach(), positive.detach()]).float().reshape(2)
        return codebook_entry(name, tuple(latent.shape), centroids, codes, self.bits, zero_code=True)


def weight_quantizer(name: str, bits: int, **options: Any) -> LevelQuantizer:
    """The registered ``name`` weight quantizer at ``bits`` (its range checked by the registry)."""
    quantizer = create_quantizer(name, "weight", QuantScheme(bits=bits, symmetric=False), **options)
    assert isinstance(quantizer, LevelQuantizer), f"{name!r} is not a binary or ternary quantizer"
    return quantizer


def quantizer_of(module: nn.Module) -> LevelQuantizer:
    """The level quantizer parametrizing ``module.weight``."""
    found = module.parametrizations["weight"][0]  # type: ignore[index,union-attr]
    assert isinstance(found, LevelQuantizer)
    return found


def latent_of(module: nn.Module) -> nn.Parameter:
    """The real-valued weight behind ``module.weight`` while it is parametrized."""
    return module.get_parameter("parametrizations.weight.original")


class LatentWeights(TrainingHook):
    """Runs each quantizer's hooks around the optimizer step of every binarized layer."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        self.modules = dict(modules)

    def on_before_optimizer_step(self, state: TrainingState) -> None:
        for module in self.modules.values():
            quantizer_of(module).before_step(latent_of(module))

    def on_train_batch_end(self, state: TrainingState) -> None:
        for module in self.modules.values():
            quantizer_of(module).after_step(latent_of(module))


@dataclass
class BinaryConfig:
    """The keys every binary and ternary method has: its fine-tuning and the layers it quantizes.

    ``trained``: the method is its training (learned scales, clipped or preconditioned updates), so
    ``finetune.epochs`` must be > 0; the others may binarize the baseline as it is.
    """

    trained: ClassVar[bool] = False
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)

    def check(self, key: str) -> None:
        if self.trained and self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", f"must be > 0 (the training is the method), got {self.finetune.epochs}")


@dataclass
class Quantized:
    """A trained binary or ternary model: the model (weights plain again), its stored entries, its widths."""

    model: nn.Module
    entries: dict[str, TensorEntry]
    layer_bits: dict[str, tuple[int, int]]


def train_quantized(model: nn.Module, ctx: CompressionContext, config: BinaryConfig,
                    make: Callable[[str, Layer], LevelQuantizer], act_bits: int = 32,
                    prepare: Callable[[nn.Module, dict[str, Layer]], dict[str, Layer]] | None = None) -> Quantized:
    """Quantize the selected layers of a copy of ``model`` with ``make(name, layer)``, train the latent weights.

    ``prepare`` may replace the selected layers first (XNOR's binary-input layers) and returns them.
    """
    model = copy.deepcopy(model)
    layers = dict(select_layers(model, (1, *tuple(ctx.input_shape)[1:]), config.layers))
    if prepare is not None:
        layers = prepare(model, layers)
    quantizers = {name: make(name, layer) for name, layer in layers.items()}
    for name, layer in layers.items():
        parametrize.register_parametrization(layer, "weight", quantizers[name])
    try:
        if config.finetune.epochs > 0:
            ctx.finetune(model, config.finetune.epochs, lr=config.finetune.lr, hooks=[LatentWeights(layers)])
        model.eval()
        entries = {f"{name}.weight": quantizers[name].entry(f"{name}.weight", latent_of(layer))
                   for name, layer in layers.items()}
    finally:
        for layer in layers.values():
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
    return Quantized(model, entries, {name: (quantizers[name].bits, act_bits) for name in layers})


def store_quantized(method: str, quantized: Quantized, template: nn.Module, ctx: CompressionContext,
                    architecture: str = "template", meta: dict[str, Any] | None = None) -> CompressionResult:
    """Write the model's file (the quantized weights as encoded, the rest as it is) and decode the model from it."""
    path = Path(ctx.workdir) / f"{method}.cbm"
    sizes = save_model(path, state_entries(quantized.model.state_dict(), quantized.entries),
                       {"method": method, **(meta or {})}, architecture=architecture)
    decoded = load_model(path, template)
    float_bytes = sum(4 * entry.numel for entry in quantized.entries.values())
    stored_bytes = sum(len(data) for entry in quantized.entries.values() for _kind, data in entry.parts.values())
    fp32 = sum(4 * t.numel() for t in template.state_dict().values() if t.is_floating_point())
    metrics = {**size_metrics(sizes), "compression_ratio": fp32 / sizes["total"],
               "quantized_layers": float(len(quantized.entries)),
               "quantized_layer_compression": float_bytes / stored_bytes}
    return CompressionResult(model=decoded, stored_file=path, layer_bits=quantized.layer_bits, metrics=metrics)


def ternary_ste(latent: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``+1`` above ``delta``, ``-1`` below ``-delta``, else 0; the gradient passes straight through."""
    hard = (latent > delta).to(latent.dtype) - (latent < -delta).to(latent.dtype)
    return latent + (hard - latent).detach()
