"""Fixed-point (Gupta et al. 2015) and dynamic fixed-point (Courbariaux et al. 2014) networks.

Gupta, Agrawal, Gopalakrishnan & Narayanan, "Deep Learning with Limited Numerical
Precision" (ICML 2015), as summarised by Berthelier et al. (2020, Sec. 2.5):

* a number is a signed fixed-point word ``<IL, FL>`` of ``WL = IL + FL`` bits: ``IL``
  integer bits (sign included) and ``FL`` fractional bits, resolution ``eps = 2**-FL``,
  range ``[-2**(IL-1), 2**(IL-1) - eps]``; values outside saturate to the range ends;
* round-to-nearest (the survey's Eq. 1): ``floor(x)`` (the largest multiple of ``eps``
  <= x) when ``x - floor(x) < eps/2``, else ``floor(x) + eps``;
* stochastic rounding (Eq. 2): ``floor(x) + eps`` with probability ``(x - floor(x))/eps``,
  else ``floor(x)`` -- unbiased, so that weight updates smaller than ``eps`` survive in
  expectation, which is why Gupta et al. train at 16 bits with FL=12..14 where
  round-to-nearest fails;
* weights, biases and activations (the input of every quantized layer, i.e. the previous
  layer's output) are fixed-point. For fine-tuning the parameters themselves live on the
  fixed-point grid: after every optimizer step they are rounded back with the configured
  rounding (:class:`ParameterRounding`), as a fixed-point weight update would; the
  activation rounding passes gradients straight through inside the range.

Courbariaux, Bengio & David, "Training deep neural networks with low precision
multiplications" (ICLR 2015 workshop), dynamic fixed point: the word length is fixed but
the scaling factor ``2**-FL`` is shared by a *group* of variables (each layer's weights,
its biases, its input activations; or, with ``group: channel``, each output channel's
weights) and updated during training from the overflow rate: the group takes the largest
FL for which at most ``max_overflow_rate`` of its values overflow the range.

Storage: the integers are written at exactly their word length (16-bit words take 2 bytes,
12-bit words 1.5 bytes; :func:`methods.storage.codecs.fixed_point_entry`), with the
group FLs (int8) for dynamic fixed point; the activation formats are in the file's header.
The returned model is decoded from that file (:func:`methods.storage.load_model`, architecture
``fixed_point``), its activation quantizers included.

Departures: evaluation (``model.eval()``) rounds activations to nearest, so that a
stored model's accuracy is deterministic; stochastic rounding of activations is used
while training. Gupta et al. also round inside the GEMM accumulations of their FPGA; we
quantize operands (weights, biases, layer inputs) and accumulate in float32. Courbariaux
et al. move FL by one step per update; we jump to the FL that their rule converges to.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, Layer, LayerSelection, fail, finetune_default, option, select_layers
from methods.hooks import TrainingHook, TrainingState
from methods.storage import StoredState, load_model, load_state_into, register_architecture, save_model, size_metrics
from methods.storage.codecs import fixed_point_entry, state_entries

ROUNDINGS = ("nearest", "stochastic")
GROUPS = ("tensor", "channel")


# ------------------------------------------------------------------------------ arithmetic
def code_range(word_length: int) -> tuple[int, int]:
    """Integer range of a signed ``word_length``-bit word (two's complement)."""
    return -(1 << (word_length - 1)), (1 << (word_length - 1)) - 1


def _along(t: torch.Tensor | int, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def fixed_point_codes(x: torch.Tensor, word_length: int, fraction_bits: torch.Tensor | int, rounding: str,
                      axis: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """The integers ``q`` (int64) of ``x`` in ``<WL - FL, FL>``: ``x ~ q * 2**-FL``, saturated.

    ``fraction_bits`` is one int or one per slice along ``axis`` (dynamic fixed point).
    """
    scaled = x.detach().float() * torch.pow(2.0, _along(fraction_bits, x, axis))
    low = torch.floor(scaled)
    if rounding == "nearest":  # Eq. 1: up when x - floor(x) >= eps/2
        q = low + (scaled - low >= 0.5).float()
    elif rounding == "stochastic":  # Eq. 2: up with probability (x - floor(x)) / eps
        draws = torch.rand(scaled.shape, generator=generator, dtype=scaled.dtype)
        q = low + (draws < scaled - low).float()
    else:
        raise MethodConfigError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    qmin, qmax = code_range(word_length)
    return q.clamp(qmin, qmax).to(torch.int64)


def to_fixed_point(x: torch.Tensor, word_length: int, fraction_bits: torch.Tensor | int, rounding: str,
                   axis: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` rounded onto the ``<WL - FL, FL>`` grid (float32 values)."""
    q = fixed_point_codes(x, word_length, fraction_bits, rounding, axis, generator)
    return q.float() * torch.pow(2.0, -_along(fraction_bits, x, axis))


class _FixedPointSTE(torch.autograd.Function):
    """Fixed-point rounding forward; the gradient passes unchanged where nothing saturated."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, word_length: int, fraction_bits: int, rounding: str) -> torch.Tensor:
        y = to_fixed_point(x, word_length, fraction_bits, rounding).to(x.dtype)
        limit = 2.0 ** (word_length - 1 - fraction_bits)
        ctx.save_for_backward((x >= -limit) & (x < limit))
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None


def overflow_fraction_bits(x: torch.Tensor, word_length: int, max_overflow_rate: float,
                           axis: int | None = None) -> torch.Tensor:
    """Courbariaux et al.'s scaling: the largest FL (per slice along ``axis``) such that at
    most ``max_overflow_rate`` of the values fall outside ``[-2**(IL-1), 2**(IL-1))``, IL = WL - FL."""
    magnitudes = x.detach().float().abs()
    if axis is None:
        magnitudes = magnitudes.reshape(1, -1)
    else:
        magnitudes = magnitudes.movedim(axis, 0).reshape(magnitudes.shape[axis], -1)
    # the value the range must hold: the (1 - rate) quantile of |x| (the max when rate = 0)
    quantile = torch.quantile(magnitudes, 1.0 - max_overflow_rate, dim=1) if max_overflow_rate > 0 \
        else magnitudes.max(dim=1).values
    quantile = quantile.clamp(min=2.0 ** -(2 * word_length))
    # need 2**(IL-1) > quantile  <=>  IL - 1 >= floor(log2(quantile)) + 1
    integer_bits = torch.floor(torch.log2(quantile)) + 2
    fraction = (word_length - integer_bits).clamp(-127, 127).to(torch.int64)
    return fraction if axis is not None else fraction[0]


# ------------------------------------------------------------------------------ activations
class ActivationQuantizer:
    """Forward pre-hook rounding a layer's input to ``<WL - FL, FL>`` (straight-through gradient).

    ``dynamic``: the FL follows the overflow rate of the inputs seen while training
    (Courbariaux et al.); it is frozen in eval mode and in the stored model.
    """

    def __init__(self, word_length: int, fraction_bits: int, rounding: str, dynamic: bool = False,
                 max_overflow_rate: float = 0.0) -> None:
        self.word_length = word_length
        self.fraction_bits = int(fraction_bits)
        self.rounding = rounding
        self.dynamic = dynamic
        self.max_overflow_rate = max_overflow_rate

    def observe(self, x: torch.Tensor) -> None:
        self.fraction_bits = int(overflow_fraction_bits(x, self.word_length, self.max_overflow_rate))

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        if module.training and self.dynamic:
            self.observe(x)
        rounding = self.rounding if module.training else "nearest"
        return (_FixedPointSTE.apply(x, self.word_length, self.fraction_bits, rounding), *inputs[1:])


def attach_activation_quantizers(model: nn.Module, formats: dict[str, dict[str, Any]], rounding: str,
                                 dynamic: bool = False, max_overflow_rate: float = 0.0) -> dict[str, ActivationQuantizer]:
    """Hook an :class:`ActivationQuantizer` on the input of each named module."""
    modules = dict(model.named_modules())
    quantizers = {}
    for name, fmt in formats.items():
        quantizer = ActivationQuantizer(int(fmt["word_length"]), int(fmt["fraction_bits"]), rounding, dynamic,
                                        max_overflow_rate)
        modules[name].register_forward_pre_hook(quantizer)
        quantizers[name] = quantizer
    return quantizers


# ------------------------------------------------------------------------------ parameters
class ParameterRounding(TrainingHook):
    """Keeps the quantized parameters on their fixed-point grid during fine-tuning: each
    optimizer step's result is rounded back (Gupta et al.'s fixed-point weight update).
    With ``dynamic``, every ``update_interval`` steps each group's FL is re-chosen from
    its overflow rate first (Courbariaux et al.)."""

    def __init__(self, params: dict[str, nn.Parameter], formats: dict[str, dict[str, Any]], rounding: str,
                 dynamic: bool = False, max_overflow_rate: float = 0.0, update_interval: int = 100) -> None:
        self.params = params
        self.formats = formats
        self.rounding = rounding
        self.dynamic = dynamic
        self.max_overflow_rate = max_overflow_rate
        self.update_interval = update_interval
        self.steps = 0

    @torch.no_grad()
    def round_all(self) -> None:
        for name, param in self.params.items():
            fmt = self.formats[name]
            if self.dynamic and self.steps % self.update_interval == 0:
                fmt["fraction_bits"] = overflow_fraction_bits(param, fmt["word_length"], self.max_overflow_rate,
                                                              fmt["axis"])
            param.copy_(to_fixed_point(param, fmt["word_length"], fmt["fraction_bits"], self.rounding, fmt["axis"]))

    def on_train_start(self, state: TrainingState) -> None:
        self.round_all()

    def on_train_batch_end(self, state: TrainingState) -> None:
        self.steps += 1
        self.round_all()


# ------------------------------------------------------------------------------ storage
@register_architecture("fixed_point")
def _fixed_point_model(template: nn.Module, state: StoredState) -> nn.Module:
    """The template's architecture with the stored parameters and, from the header, the
    activation quantizers on the input of each quantized layer."""
    model = load_state_into(copy.deepcopy(template), state)
    attach_activation_quantizers(model, state.meta.get("activations", {}), "nearest")
    return model


# ------------------------------------------------------------------------------ the methods
@dataclass
class WordConfig:
    """What the static and the dynamic format share (conf/method/fixed_point.yaml, dynamic_fixed_point.yaml)."""

    rounding: str = option("stochastic", choices=ROUNDINGS)
    quantize_activations: bool = True
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)


@dataclass
class FixedPointConfig(WordConfig):
    """Gupta et al.'s ``<IL, FL>``: ``integer_bits`` (sign included) + ``fraction_bits`` = ``word_length``."""

    word_length: int = option(16, ge=2, le=32)
    integer_bits: int = option(4, ge=1, why="the sign bit included")
    fraction_bits: int = option(12, ge=0)
    activation_integer_bits: int | None = option(None, ge=1, why="null: integer_bits")
    activation_fraction_bits: int | None = option(None, ge=0, why="null: fraction_bits")

    @property
    def act_integer_bits(self) -> int:
        return self.integer_bits if self.activation_integer_bits is None else self.activation_integer_bits

    @property
    def act_fraction_bits(self) -> int:
        return self.fraction_bits if self.activation_fraction_bits is None else self.activation_fraction_bits

    @property
    def act_word_length(self) -> int:
        return self.act_integer_bits + self.act_fraction_bits

    def check(self, key: str) -> None:
        if self.integer_bits + self.fraction_bits != self.word_length:
            fail(f"{key}.integer_bits + {key}.fraction_bits",
                 f"= {self.integer_bits} + {self.fraction_bits} = {self.integer_bits + self.fraction_bits} does not "
                 f"match {key}.word_length = {self.word_length}; set integer_bits to {self.word_length - self.fraction_bits}")
        if not 2 <= self.act_word_length <= 32:
            fail(f"{key}.activation_integer_bits + {key}.activation_fraction_bits",
                 f"= {self.act_word_length} bits, must be in 2..32")


@dataclass
class DynamicFixedPointConfig(WordConfig):
    """Courbariaux et al.: ``word_length``-bit words, one scaling factor per ``group`` from its overflow rate."""

    word_length: int = option(8, ge=2, le=32)
    group: str = option("tensor", choices=GROUPS)
    max_overflow_rate: float = option(1e-4, ge=0, lt=1)
    update_interval: int = option(100, ge=1, why="optimizer steps between scaling-factor updates")
    calibration_batches: int = option(4, ge=1)
    activation_word_length: int | None = option(None, ge=2, le=32, why="null: word_length")

    @property
    def act_word_length(self) -> int:
        return self.word_length if self.activation_word_length is None else self.activation_word_length


class _FixedPointMethod(CompressionMethod):
    """What the static and the dynamic format share: validation, fine-tuning, storage."""

    dynamic = False
    config: FixedPointConfig | DynamicFixedPointConfig

    # subclasses say how each parameter and each layer input is formatted
    def parameter_format(self, name: str, param: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def activation_formats(self, model: nn.Module, layers: dict[str, Layer], ctx: CompressionContext) -> dict[str, dict[str, Any]]:
        raise NotImplementedError

    def callback_options(self) -> dict[str, Any]:
        return {}

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        work = copy.deepcopy(model)
        c = self.config
        layers = select_layers(work, (1, *tuple(ctx.input_shape)[1:]), c.layers)
        params = {f"{m_name}.{p_name}": p for m_name, m in layers.items() for p_name, p in m.named_parameters(recurse=False)}
        formats = {name: self.parameter_format(name, p) for name, p in params.items()}
        act_formats = self.activation_formats(work, layers, ctx) if c.quantize_activations else {}
        quantizers = attach_activation_quantizers(work, act_formats, c.rounding, self.dynamic,
                                                  getattr(c, "max_overflow_rate", 0.0))
        rounding = ParameterRounding(params, formats, c.rounding, self.dynamic, **self.callback_options())
        rounding.round_all()
        if c.finetune.epochs > 0:
            ctx.finetune(work, c.finetune.epochs, lr=c.finetune.lr, hooks=[rounding])
        act_formats = {name: {"word_length": q.word_length, "fraction_bits": q.fraction_bits}
                       for name, q in quantizers.items()}
        encoded = {}
        for name, p in params.items():
            fmt = formats[name]  # the parameters are on their grid: rounding to nearest is exact
            codes = fixed_point_codes(p.detach(), fmt["word_length"], fmt["fraction_bits"], "nearest", fmt["axis"])
            encoded[name] = fixed_point_entry(name, codes, fmt["word_length"], fmt["fraction_bits"], fmt["axis"])
        path = Path(ctx.workdir) / f"{self.name}.cbm"
        sizes = save_model(path, state_entries(work.state_dict(), encoded),
                           {"method": self.name, "activations": act_formats}, architecture="fixed_point")
        decoded = load_model(path, model)
        act_bits = c.act_word_length if c.quantize_activations else 32
        metrics = size_metrics(sizes)
        metrics["compression_ratio"] = sum(t.numel() * 4 for t in model.state_dict().values()) / sizes["total"]
        return CompressionResult(model=decoded, stored_file=path,
                                 layer_bits={name: (c.word_length, act_bits) for name in layers},
                                 metrics=metrics)


class FixedPoint(_FixedPointMethod):
    """Gupta et al. (2015) ``<IL, FL>`` fixed point for weights, biases and activations."""

    name = "fixed_point"
    Config = FixedPointConfig
    config: FixedPointConfig

    def parameter_format(self, name: str, param: torch.Tensor) -> dict[str, Any]:
        return {"word_length": self.config.word_length, "fraction_bits": self.config.fraction_bits, "axis": None}

    def activation_formats(self, model, layers, ctx) -> dict[str, dict[str, Any]]:
        c = self.config
        return {name: {"word_length": c.act_word_length, "fraction_bits": c.act_fraction_bits} for name in layers}


class DynamicFixedPoint(_FixedPointMethod):
    """Courbariaux et al. dynamic fixed point: ``word_length``-bit words whose scaling
    factor ``2**-FL`` is shared by a group and set from the group's overflow rate."""

    dynamic = True
    name = "dynamic_fixed_point"
    Config = DynamicFixedPointConfig
    config: DynamicFixedPointConfig

    def parameter_format(self, name: str, param: torch.Tensor) -> dict[str, Any]:
        c = self.config
        axis = 0 if c.group == "channel" and param.dim() > 1 else None
        return {"word_length": c.word_length, "axis": axis,
                "fraction_bits": overflow_fraction_bits(param, c.word_length, c.max_overflow_rate, axis)}

    def callback_options(self) -> dict[str, Any]:
        return {"max_overflow_rate": self.config.max_overflow_rate, "update_interval": self.config.update_interval}

    @torch.no_grad()
    def activation_formats(self, model, layers, ctx) -> dict[str, dict[str, Any]]:
        """Each layer's input FL from the overflow rate over ``calibration_batches`` training batches."""
        seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
        handles = [m.register_forward_pre_hook(lambda _m, inp, n=name: seen[n].append(inp[0].detach().flatten()))
                   for name, m in layers.items()]
        was_training = model.training
        model.eval()
        try:
            for i, (x, _y) in enumerate(ctx.datamodule.train_dataloader()):
                if i >= self.config.calibration_batches:
                    break
                model(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        c = self.config
        return {name: {"word_length": c.act_word_length,
                       "fraction_bits": int(overflow_fraction_bits(torch.cat(values), c.act_word_length,
                                                                   c.max_overflow_rate))}
                for name, values in seen.items()}
