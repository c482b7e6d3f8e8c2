"""Fake-quantized conv and linear layers, batch-norm folding, and the quantized model file.

Simulated quantization as Jacob et al. (CVPR 2018, Sec. 3) describe it: every convolution and
fully connected layer quantizes its weights and its input activations with the uniform affine
scheme of :mod:`.uniform` and computes in float on the dequantized values, so that the result
equals integer arithmetic up to the rounding of the accumulator. Batch normalisation is folded
into the preceding convolution first (``w * gamma / sigma``, ``(b - mu) * gamma / sigma + beta``;
Jacob et al., Sec. 3.2), so that the folded weights are what is quantized, as on an integer
device.

* :class:`QuantConv2d`, :class:`QuantLinear` — subclasses of ``nn.Conv2d`` / ``nn.Linear``
  (module names, parameter counts and the layer description stay those of the float model) with
  a :class:`WeightQuantizer` and an input :class:`ActQuantizer`.
* :func:`prepare` wraps a model's layers; :func:`calibrate` runs batches through the activation
  observers; :func:`freeze` fixes the weight parameters.
* :func:`save_quantized` writes the real storage format (bit-packed integer weights, their scales
  and zero-points, fp32 biases, activation scales, everything else fp32) in
  :mod:`methods.storage`'s container; :func:`methods.storage.load_model` decodes it (architecture
  ``fakequant``) into a fake-quant model whose weights are the dequantized stored integers and
  whose activation quantizers carry the stored scales.

Departure: Jacob et al. keep batch normalisation unfolded during training and correct the folded
weights with batch statistics; here BN is folded once, from the baseline's running statistics,
before quantization-aware fine-tuning (the "frozen BN" variant their Sec. 3.2 reaches after a few
epochs anyway).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from methods.quantization.quantizers import create_quantizer, quantizer_entry, register_quantizer
from methods.quantization.uniform import (
    MinMaxObserver,
    QuantizationError,
    QuantScheme,
    fake_quantize,
    make_observer,
    min_bits,
    quantize,
)
from methods.storage import StoredState, TensorEntry, load_state_into, register_architecture, save_model
from methods.storage.codecs import affine_entry, fill_entry, packed_entry, raw_entry

# --------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------


def uniform_bit_range(symmetric: bool) -> tuple[int, int]:
    """Widths of the uniform quantizers: from the scheme's fewest (1 asymmetric, 2 symmetric) to 8,
    the widest the methods store and deploy."""
    return min_bits(symmetric), 8


@register_quantizer("uniform", "act", bits=uniform_bit_range)
class ActQuantizer(nn.Module):
    """Fake-quantizes activations with calibrated ``scale`` / ``zero_point`` buffers.

    ``mode``: ``"float"`` passes values through, ``"observe"`` feeds the observer (calibration)
    and passes values through, ``"quantize"`` fake-quantizes. With ``ema`` set, training-mode
    forwards also update the range as an exponential moving average (Jacob et al., Sec. 3).
    """

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, scheme: QuantScheme, observer: str = "minmax", observer_kwargs: dict[str, Any] | None = None,
                 ema: float | None = None) -> None:
        super().__init__()
        self.scheme = scheme
        self.observer_name = observer
        self.observer_kwargs = dict(observer_kwargs or {})
        self.observer = make_observer(observer, scheme, **self.observer_kwargs)
        self.ema = ema
        self.mode = "float"
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))

    def set_qparams(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        self.scale.copy_(scale.reshape(()))
        self.zero_point.copy_(zero_point.reshape(()))

    def finish_calibration(self) -> None:
        """Turn what the observer saw into the quantization parameters, and start quantizing."""
        self.set_qparams(*self.observer.qparams())
        if self.ema is not None:  # training continues from the calibrated range, as a moving average
            lo, hi = self.observer.range()
            self.observer = MinMaxObserver(self.scheme, averaging_constant=self.ema)
            self.observer.min_val, self.observer.max_val = lo.reshape(1).clone(), hi.reshape(1).clone()
        self.mode = "quantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "float":
            return x
        if self.mode == "observe":
            self.observer.observe(x)
            return x
        if self.training and self.ema is not None:
            self.observer.observe(x)
            self.set_qparams(*self.observer.qparams())
        qmin, qmax = self.scheme.qrange()
        # torch's fused kernel: the same affine fake quantization and clipped straight-through
        # gradient as uniform.fake_quantize, three times faster on activations (it rounds
        # x * (1 / scale), which can differ from x / scale at exact ties: one step, rarely)
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, qmin, qmax)

    def extra_repr(self) -> str:
        return f"bits={self.scheme.bits}, symmetric={self.scheme.symmetric}, observer={self.observer_name}, mode={self.mode}"


@register_quantizer("uniform", "weight", bits=uniform_bit_range)
class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight: parameters recomputed from the weight at every forward (training),
    or fixed once :meth:`freeze` has been called (inference, decoded models)."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, scheme: QuantScheme, observer: str = "minmax", observer_kwargs: dict[str, Any] | None = None,
                 channels: int = 1) -> None:
        super().__init__()
        self.scheme = scheme
        self.observer_name = observer
        self.observer_kwargs = dict(observer_kwargs or {})
        self.frozen = False
        self.enabled = True
        n = channels if scheme.per_channel else 1
        self.register_buffer("scale", torch.ones(n))
        self.register_buffer("zero_point", torch.zeros(n, dtype=torch.int32))

    @property
    def axis(self) -> int | None:
        return self.scheme.ch_axis if self.scheme.per_channel else None

    def observe(self, weight: torch.Tensor) -> None:
        obs = make_observer(self.observer_name, self.scheme, **self.observer_kwargs)
        obs.observe(weight)
        scale, zero_point = obs.qparams()
        self.scale.copy_(scale.reshape(-1))
        self.zero_point.copy_(zero_point.reshape(-1))

    def freeze(self, weight: torch.Tensor) -> None:
        self.observe(weight)
        self.frozen = True

    def _qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scheme.per_channel:
            return self.scale, self.zero_point
        return self.scale[0], self.zero_point[0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        if not self.frozen:
            self.observe(weight)
        qmin, qmax = self.scheme.qrange()
        return fake_quantize(weight, *self._qparams(), qmin, qmax, self.axis)

    def integer_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The stored integers of ``weight`` under the current parameters (int32)."""
        qmin, qmax = self.scheme.qrange()
        return quantize(weight.detach().float(), *self._qparams(), qmin, qmax, self.axis)

    def extra_repr(self) -> str:
        return (f"bits={self.scheme.bits}, symmetric={self.scheme.symmetric}, per_channel={self.scheme.per_channel}, "
                f"observer={self.observer_name}, frozen={self.frozen}")


class _QuantLayerMixin:
    weight_quantizer: WeightQuantizer
    input_quantizer: nn.Module

    @property
    def weight_bits(self) -> int:
        return self.weight_quantizer.scheme.bits

    @property
    def act_scheme(self) -> QuantScheme | None:
        """The input quantizer's scheme; None where the inputs stay float."""
        scheme = getattr(self.input_quantizer, "scheme", None)
        return scheme if isinstance(scheme, QuantScheme) else None

    @property
    def act_bits(self) -> int:
        scheme = self.act_scheme
        return 32 if scheme is None else scheme.bits


def _two(size: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d size attribute as the pair it always is (torch types it ``tuple[int, ...]``)."""
    first, second = size
    return first, second


ConvT = TypeVar("ConvT", bound=nn.Conv2d)


def conv2d_like(cls: type[ConvT], conv: nn.Conv2d) -> ConvT:
    """A new ``cls`` with ``conv``'s channels, geometry and bias flag (its weights are the caller's to set)."""
    padding = conv.padding if isinstance(conv.padding, str) else _two(conv.padding)
    return cls(conv.in_channels, conv.out_channels, _two(conv.kernel_size), stride=_two(conv.stride), padding=padding,
               dilation=_two(conv.dilation), groups=conv.groups, bias=conv.bias is not None,
               padding_mode=conv.padding_mode)


class QuantConv2d(_QuantLayerMixin, nn.Conv2d):
    """``nn.Conv2d`` computing on fake-quantized input and weights."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: WeightQuantizer, input_quantizer: nn.Module) -> QuantConv2d:
        new = conv2d_like(cls, conv)
        new.weight = conv.weight
        new.bias = conv.bias
        new.weight_quantizer = weight_quantizer
        new.input_quantizer = input_quantizer
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


class QuantLinear(_QuantLayerMixin, nn.Linear):
    """``nn.Linear`` computing on fake-quantized input and weights."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: WeightQuantizer, input_quantizer: nn.Module) -> QuantLinear:
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight_quantizer = weight_quantizer
        new.input_quantizer = input_quantizer
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.weight_quantizer(self.weight), self.bias)


QUANT_LAYERS = (QuantConv2d, QuantLinear)
QuantLayer = QuantConv2d | QuantLinear


def quant_layers(model: nn.Module) -> dict[str, QuantLayer]:
    """The fake-quantized layers of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


# --------------------------------------------------------------------------------------------
# Batch-norm folding
# --------------------------------------------------------------------------------------------


def find_conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) module names where a BatchNorm2d consumes a Conv2d's output and nothing else does.

    Traces the model with torch.fx once; a model that cannot be traced has no pairs (nothing is
    folded, which is correct, only less faithful to integer inference).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable models simply keep their BN layers
        return []
    modules = dict(model.named_modules())
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0] if node.args else None
        if (isinstance(src, torch.fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Conv2d)
                and len(src.users) == 1):
            pairs.append((str(src.target), str(node.target)))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module, pairs: Iterable[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold each BN into its conv in place (the BN becomes ``nn.Identity``); return the pairs."""
    pairs = find_conv_bn_pairs(model) if pairs is None else [(conv, bn) for conv, bn in pairs]
    for conv_name, bn_name in pairs:
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise QuantizationError(f"cannot fold {bn_name!r} into {conv_name!r}: not a Conv2d followed by BatchNorm2d")
        if bn.running_mean is None or bn.running_var is None:
            raise QuantizationError(f"cannot fold {bn_name!r} into {conv_name!r}: it keeps no running statistics "
                                    "(track_running_stats=False)")
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(std)
        beta = bn.bias if bn.affine else torch.zeros_like(std)
        factor = gamma / std
        bias = conv.bias if conv.bias is not None else torch.zeros_like(std)
        conv.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * factor + beta)
        model.set_submodule(bn_name, nn.Identity())
    return list(pairs)


# --------------------------------------------------------------------------------------------
# Preparing and calibrating a model
# --------------------------------------------------------------------------------------------


def scheme_to_dict(scheme: QuantScheme) -> dict[str, Any]:
    return asdict(scheme)


def _quantizer_from(spec: dict[str, Any], role: str, **options: Any) -> nn.Module:
    """The registered quantizer a plan entry names, built for its scheme and observer."""
    return create_quantizer(spec["quantizer"], role, QuantScheme(**spec["scheme"]),
                            observer=spec.get("observer", "minmax"), observer_kwargs=spec.get("observer_kwargs"),
                            **options)


def layer_plan(
    model: nn.Module,
    weight_scheme: QuantScheme,
    act_scheme: QuantScheme | None,
    weight_observer: str = "minmax",
    act_observer: str = "minmax",
    observer_kwargs: dict[str, Any] | None = None,
    skip: Iterable[str] = (),
    ema: float | None = None,
    weight_quantizer: str = "uniform",
    act_quantizer: str = "uniform",
    layer_schemes: Mapping[str, tuple[QuantScheme, QuantScheme | None]] | None = None,
) -> dict[str, dict[str, Any]]:
    """What :func:`prepare` does to each conv/linear layer, as JSON-able data (kept in the file).

    Every layer gets ``weight_scheme`` and ``act_scheme`` (None: float activations) with the
    registered quantizers named, except the layers ``layer_schemes`` gives their own pair
    (per-layer bit-widths).
    """
    skip = set(skip)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    unknown = skip - set(layers)
    if unknown:
        raise QuantizationError(f"skip_layers names layers that are not conv/linear layers of the model: {sorted(unknown)}")
    quantized = [n for n in layers if n not in skip]
    misplaced = sorted(set(layer_schemes or {}) - set(quantized))
    if misplaced:
        raise QuantizationError(f"layer_bits names {misplaced}, which are not quantized conv/linear layers of the "
                                f"model; those are {quantized}")
    plan = {}
    for name, module in model.named_modules():
        if name not in quantized:
            continue
        w_scheme, a_scheme = (layer_schemes or {}).get(name, (weight_scheme, act_scheme))
        plan[name] = {
            "op": "conv" if isinstance(module, nn.Conv2d) else "linear",
            # "quantizer" last: the stored header's compression dictionary starts specs with "scheme"
            "weight": {"scheme": scheme_to_dict(w_scheme), "observer": weight_observer,
                       "observer_kwargs": dict(observer_kwargs or {}), "quantizer": weight_quantizer},
            "act": None if a_scheme is None else {"scheme": scheme_to_dict(a_scheme), "observer": act_observer,
                                                  "observer_kwargs": dict(observer_kwargs or {}), "ema": ema,
                                                  "quantizer": act_quantizer},
        }
    return plan


def stored_plan(plan: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``plan`` with each quantizer replaced by the one its stored model is rebuilt with (the
    registry's ``stored_as``: PACT's learned clipping is stored as the uniform scale it implies)."""

    def stored(spec: dict[str, Any] | None, role: str) -> dict[str, Any] | None:
        if spec is None:
            return None
        return {**spec, "quantizer": quantizer_entry(spec["quantizer"], role).stored_as}

    return {name: {**spec, "weight": stored(spec["weight"], "weight"), "act": stored(spec["act"], "act")}
            for name, spec in plan.items()}


def prepare(model: nn.Module, plan: dict[str, dict[str, Any]]) -> nn.Module:
    """Replace the planned conv/linear layers of ``model`` (in place) by fake-quant layers."""
    for name, spec in plan.items():
        module = model.get_submodule(name)
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise QuantizationError(f"the plan quantizes {name!r}, a {type(module).__name__}: only conv/linear layers")
        channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        wq = _quantizer_from(spec["weight"], "weight", channels=channels)
        if not isinstance(wq, WeightQuantizer):  # the stored file holds its scale, zero-point and integers
            raise QuantizationError(f"weight quantizer {spec['weight']['quantizer']!r} builds a {type(wq).__name__}; "
                                    "a weight quantizer must be a WeightQuantizer")
        aq = nn.Identity() if spec["act"] is None else _quantizer_from(spec["act"], "act", ema=spec["act"].get("ema"))
        layer = (QuantConv2d.from_float(module, wq, aq) if isinstance(module, nn.Conv2d)
                 else QuantLinear.from_float(module, wq, aq))
        model.set_submodule(name, layer)
    return model


def act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActQuantizer)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Any], max_batches: int) -> int:
    """Run up to ``max_batches`` input batches through the activation observers; return how many ran."""
    if max_batches < 1:
        raise QuantizationError(f"calibration_batches must be >= 1, got {max_batches}")
    quantizers = act_quantizers(model)
    was_training = model.training
    model.eval()
    # observe layer by layer in one pass: earlier layers run in float, as the calibrated model
    # will see them only once quantized; standard post-training calibration (Jacob et al. Sec. 3)
    for q in quantizers:
        q.mode = "observe"
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = 0
    for batch in batches:
        if seen >= max_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x.to(device))
        seen += 1
    if seen == 0:
        raise QuantizationError("calibration got no batches: the train split is empty")
    for q in quantizers:
        q.finish_calibration()
    model.train(was_training)
    return seen


@torch.no_grad()
def freeze(model: nn.Module) -> None:
    """Fix every weight quantizer's parameters from the current weights (end of PTQ or QAT)."""
    for layer in quant_layers(model).values():
        layer.weight_quantizer.freeze(layer.weight)


def set_quantization(model: nn.Module, enabled: bool) -> None:
    """Switch all fake quantization on or off (off: the float model with the current weights)."""
    for layer in quant_layers(model).values():
        layer.weight_quantizer.enabled = enabled
    for q in act_quantizers(model):
        q.mode = "quantize" if enabled else "float"


def layer_bits(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Per-layer (weight_bits, act_bits) of every conv/linear layer; float layers are (32, 32)."""
    bits = {}
    for name, m in model.named_modules():
        if isinstance(m, QUANT_LAYERS):
            bits[name] = (m.weight_bits, m.act_bits)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            bits[name] = (32, 32)
    return bits


# --------------------------------------------------------------------------------------------
# The stored file
# --------------------------------------------------------------------------------------------


def _compact_plan(plan: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The plan with each distinct weight/activation spec written once (a smaller header)."""
    specs: list[Any] = []
    layers = {}
    for name, spec in plan.items():
        refs = []
        for key in ("weight", "act"):
            if spec[key] not in specs:
                specs.append(spec[key])
            refs.append(specs.index(spec[key]))
        layers[name] = [spec["op"], *refs]
    return {"specs": specs, "layers": layers}


def _expand_plan(compact: dict[str, Any]) -> dict[str, dict[str, Any]]:
    specs = compact["specs"]
    return {name: {"op": op, "weight": specs[w], "act": specs[a]} for name, (op, w, a) in compact["layers"].items()}


def save_quantized(model: nn.Module, path: str | Path, plan: dict[str, dict[str, Any]],
                   folded: list[tuple[str, str]], meta: dict[str, Any] | None = None) -> dict[str, int]:
    """Write ``model`` (prepared by :func:`prepare`, weights frozen) in its real storage format.

    Per quantized layer: the weight's integers bit-packed to ``bits`` bits (``weight_codes``),
    their float32 scales (``scales``) and, for asymmetric schemes, their zero-points packed to the
    same width (``zero_points``), the float32 bias (``biases``), the input activation's float32
    scale and int32 zero-point (``act_qparams``). Every other tensor of the state dict is stored
    as it is (``float_rest``: unfolded BN, embeddings, ...). Returns the bytes of each kind,
    ``header`` and ``total`` (:func:`methods.storage.save_model`).
    """
    layers = quant_layers(model)
    covered: set[str] = set()
    entries: list[TensorEntry] = []
    for name, layer in layers.items():
        wq = layer.weight_quantizer
        if not wq.frozen:
            raise QuantizationError(f"layer {name!r}: freeze() the weights before saving")
        scheme = wq.scheme
        scale, zero_point = f"{name}.weight_quantizer.scale", f"{name}.weight_quantizer.zero_point"
        entries.append(raw_entry(scale, wq.scale, "scales", torch.float32))
        entries.append(fill_entry(zero_point, tuple(wq.zero_point.shape), 0, wq.zero_point.dtype) if scheme.symmetric
                       else packed_entry(zero_point, wq.zero_point, scheme.bits, scheme.signed, "zero_points"))
        entries.append(affine_entry(f"{name}.weight", wq.integer_weight(layer.weight), scheme.bits, scheme.signed,
                                    scale, zero_point, wq.axis, "weight_codes"))
        covered |= {f"{name}.weight", scale, zero_point}
        if layer.bias is not None:
            entries.append(raw_entry(f"{name}.bias", layer.bias, "biases", torch.float32))
            covered.add(f"{name}.bias")
        # only the activation's scale and zero-point are stored: a learned clipping level (PACT)
        # is training state, its effect is entirely in the scale
        for buf_name, buf in layer.input_quantizer.named_buffers():
            entries.append(raw_entry(f"{name}.input_quantizer.{buf_name}", buf, "act_qparams"))
        covered |= {f"{name}.input_quantizer.{k}" for k in layer.input_quantizer.state_dict()}
    for key, tensor in model.state_dict().items():
        if key not in covered:
            entries.append(raw_entry(key, tensor, "float_rest"))
    header = {"plan": _compact_plan(stored_plan(plan)), "folded": [list(p) for p in folded], **(meta or {})}
    return save_model(path, entries, header, architecture="fakequant")


@register_architecture("fakequant")
@torch.no_grad()
def _fakequant_model(template: nn.Module, state: StoredState) -> nn.Module:
    """The float ``template`` with its stored BN folding and fake-quant layers, the stored tensors loaded."""
    model = copy.deepcopy(template).eval()
    fold_batchnorm(model, state.meta["folded"])
    prepare(model, _expand_plan(state.meta["plan"]))
    load_state_into(model, state)
    for layer in quant_layers(model).values():
        layer.weight_quantizer.frozen = True
    for q in act_quantizers(model):
        q.mode = "quantize"
    return model.eval()  # the quantizers prepare() added start in training mode
