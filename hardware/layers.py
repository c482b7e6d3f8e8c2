"""One layer description, extracted once from a model, shared by every consumer.

MAC counting, lookup tables, the per-operator cost model and roofline models all reason
about the same per-layer record (docs/ARCHITECTURE.md, "One layer tracer"): op type, shapes, kernel, stride,
padding, dilation, groups, channels, bias, bit-widths and sparsity. One forward pass
(:func:`trace_model`) produces it:

- forward hooks describe every leaf module (conv, dwconv, linear, bn, act, pool) as a
  :class:`LayerSpec`, and say which leaf a leaf ran inside (timm's BatchNormAct2d holds
  its activation);
- a ``TorchFunctionMode`` adds the functional ops that are not modules but cost time on
  a device: tensor-tensor adds and multiplies (residuals, squeeze-excitation gates),
  spatial means, concatenations (``concat``: fire modules, ShuffleNet's strided units) and
  the copy that makes a transposed tensor contiguous (``transpose``: a channel shuffle, which
  TF-Lite runs as a TRANSPOSE), each named after the innermost module that ran it
  (``blocks.1.0.add``);
- a ``TorchDispatchMode`` records, in order, every ATen operation run outside the leaf
  layers and every container module call: the execution sequence a lookup table replays;
- MACs come from PyTorch's own flop counter (``torch.utils.flop_counter``), not from
  formulas of ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

#: Modules that are leaves of the description: each becomes one LayerSpec.
_LEAF_TYPES: dict[type[nn.Module], str] = {
    nn.Conv2d: "conv",
    nn.Linear: "linear",
    nn.BatchNorm2d: "bn",
    nn.BatchNorm1d: "bn",
    nn.ReLU: "act",
    nn.ReLU6: "act",
    nn.Hardswish: "act",
    nn.Hardsigmoid: "act",
    nn.SiLU: "act",
    nn.GELU: "act",
    nn.Sigmoid: "act",
    nn.Tanh: "act",
    nn.MaxPool2d: "pool",
    nn.AvgPool2d: "pool",
    nn.AdaptiveAvgPool2d: "pool",
}
#: module_type of the ops the description adds that are not modules (add, mul, mean).
FUNCTIONAL = "functional"
#: Activations deployment converters (TF-Lite, accelerators' output stages) fuse into the previous op.
FUSED_ACTIVATIONS = frozenset({"ReLU", "ReLU6", "Identity"})


@dataclass
class LayerSpec:
    """What a cost model needs to know about one layer."""

    name: str
    op: str  # conv, dwconv, linear, bn, act, pool; functional: add, mul, pool (a mean)
    module_type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    inplace: bool = False  # an activation that overwrites its input
    ceil_mode: bool = False  # a pool that rounds its output size up
    nested_in: str | None = None  # the leaf this one ran inside (BatchNormAct2d's activation)
    params: int = 0
    nonzero_params: int = 0
    macs: int = 0
    weight_bits: int = 32
    act_bits: int = 32
    extra: dict[str, Any] = field(default_factory=dict)  # operand_shapes of an add/mul

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_params / self.params if self.params else 0.0

    @property
    def input_bytes(self) -> int:
        return _numel(self.input_shape) * self.act_bits // 8

    @property
    def output_bytes(self) -> int:
        return _numel(self.output_shape) * self.act_bits // 8

    @property
    def weight_bytes(self) -> int:
        return self.params * self.weight_bits // 8

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        row.pop("extra")
        row["sparsity"] = self.sparsity
        for key in ("input_shape", "output_shape", "kernel", "stride", "padding", "dilation"):
            row[key] = "x".join(str(v) for v in row[key])
        return row


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument of a recorded ATen call: its shape and dtype (the values are not kept)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclass
class AtenCall:
    """One ATen operation run outside the leaf layers, tensors replaced by :class:`TensorArg`."""

    op: str  # "aten::add.Tensor"
    is_view: bool
    args: list[Any]
    kwargs: dict[str, Any]


@dataclass
class ModuleCall:
    """The call of a container module (its Python ``forward``) outside the leaf layers."""

    name: str


#: What ran, in order: a leaf layer, an ATen call outside the leaves, or a container call.
Step = LayerSpec | AtenCall | ModuleCall


@dataclass
class ModelTrace:
    """The description of one forward pass.

    ``layers``: every leaf layer (in the order they finished) then every functional op:
    what cost models sum over. ``sequence``: what ran, in order (a leaf's step is its
    LayerSpec, entered when it started): what a lookup table replays.
    """

    layers: list[LayerSpec]
    sequence: list[Step]


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(int(s) for s in shape)


def _channels(shape: tuple[int, ...] | torch.Size) -> int:
    """Channels of a feature map, also when a channel shuffle has split them into (groups, channels per group)."""
    return math.prod(int(d) for d in shape[1:-2]) if len(shape) >= 4 else int(shape[1])


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _op_of(module: nn.Module) -> str | None:
    for cls, op in _LEAF_TYPES.items():
        if isinstance(module, cls):
            if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
                return "dwconv"
            return op
    return None


def _param_counts(module: nn.Module) -> tuple[int, int]:
    tensors = list(module.parameters(recurse=False))
    return sum(t.numel() for t in tensors), sum(int(t.count_nonzero()) for t in tensors)


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(s) for s in value[0].shape)
    return ()


def conv_padding(module: nn.Conv2d) -> tuple[int, int]:
    """``module``'s padding as (height, width) pixels, its "same" / "valid" names resolved."""
    if module.padding == "same":
        return _pair(tuple((k - 1) * d // 2 for k, d in zip(module.kernel_size, module.dilation, strict=True)))
    if isinstance(module.padding, str):  # "valid", the other padding torch names
        return (0, 0)
    return _pair(module.padding)


def _leaf_spec(name: str, module: nn.Module, op: str, input_shape: tuple[int, ...], nested_in: str | None) -> LayerSpec:
    """A leaf's spec as its forward starts (the output shape and MACs are filled in later)."""
    spec = LayerSpec(name, op, type(module).__name__, input_shape, (), nested_in=nested_in)
    if isinstance(module, nn.Conv2d):
        spec.in_channels, spec.out_channels = module.in_channels, module.out_channels
        spec.kernel, spec.stride = _pair(module.kernel_size), _pair(module.stride)
        spec.padding, spec.dilation = conv_padding(module), _pair(module.dilation)
        spec.groups, spec.bias = module.groups, module.bias is not None
    elif isinstance(module, nn.Linear):
        spec.in_channels, spec.out_channels = module.in_features, module.out_features
        spec.bias = module.bias is not None
    elif len(input_shape) >= 2:
        spec.in_channels = spec.out_channels = int(input_shape[1])
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            spec.kernel, spec.stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
            spec.padding, spec.ceil_mode = _pair(module.padding), bool(module.ceil_mode)
    spec.inplace = bool(getattr(module, "inplace", False))
    return spec


class _FunctionalRecorder(TorchFunctionMode):
    """Records tensor-tensor add/mul, spatial means, concatenations and transposing copies (ops that are not
    nn.Modules). A view (reshape, transpose) moves no data; the ``contiguous()`` after it does.

    Ops inside a leaf layer's forward are the leaf's own (a fake-quantized conv's weight
    dequantization, say): the leaf is costed as one layer, so they are not recorded.
    """

    _ADD = {
        torch.add,
        torch.Tensor.add,
        torch.Tensor.add_,
        torch.Tensor.__add__,
        torch.Tensor.__iadd__,
        torch.Tensor.__radd__,
    }
    _MUL = {
        torch.mul,
        torch.Tensor.mul,
        torch.Tensor.mul_,
        torch.Tensor.__mul__,
        torch.Tensor.__imul__,
        torch.Tensor.__rmul__,
    }
    _MEAN = {torch.mean, torch.Tensor.mean}
    _CAT = {torch.cat, torch.concat, torch.concatenate}

    def __init__(self, scope: list[str], leaves: list[LayerSpec]) -> None:
        super().__init__()
        self.scope = scope
        self.leaves = leaves
        self.records: list[LayerSpec] = []
        self._count: dict[str, int] = {}

    def _name(self, kind: str) -> str:
        prefix = self.scope[-1] if self.scope else ""
        key = f"{prefix}.{kind}" if prefix else kind
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        return key if n == 0 else f"{key}_{n}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copies = func is torch.Tensor.contiguous and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous()
        out = func(*args, **kwargs)
        kind = ("add" if func in self._ADD else "mul" if func in self._MUL else "mean" if func in self._MEAN
                else "concat" if func in self._CAT else "transpose" if copies else None)
        if kind is None or self.leaves or not isinstance(out, torch.Tensor) or out.dim() < 2:
            return out
        if kind != "mean":
            operands = args[0] if kind == "concat" else args[:1] if kind == "transpose" else args[:2]
            if kind in ("add", "mul") and (
                    len(operands) < 2 or not all(isinstance(a, torch.Tensor) and a.dim() >= 2 for a in operands)):
                return out  # a scalar operand: part of an activation or a scale, not a tensor op
            shapes = [tuple(t.shape) for t in operands]
            # what the op reads: the larger operand of a (broadcast) add/mul, the whole result of a concat
            read = {"concat": tuple(out.shape), "transpose": shapes[0]}.get(kind) or max(shapes, key=math.prod)
            self.records.append(
                LayerSpec(
                    name=self._name(kind),
                    op=kind,
                    module_type=FUNCTIONAL,
                    input_shape=read,
                    output_shape=tuple(out.shape),
                    in_channels=_channels(out.shape),
                    out_channels=_channels(out.shape),
                    extra={"operand_shapes": shapes},
                )
            )
        elif isinstance(args[0], torch.Tensor) and args[0].dim() == 4:  # a spatial mean
            self.records.append(
                LayerSpec(
                    name=self._name("mean"),
                    op="pool",
                    module_type=FUNCTIONAL,
                    input_shape=tuple(args[0].shape),
                    output_shape=tuple(out.shape),
                    in_channels=int(args[0].shape[1]),
                    out_channels=int(out.shape[1]) if out.dim() > 1 else int(args[0].shape[1]),
                )
            )
        return out


def _tensor_args(value: Any) -> Any:
    """``value`` with every tensor replaced by its TensorArg (the trace keeps no activations alive)."""
    if isinstance(value, torch.Tensor):
        return TensorArg(tuple(int(s) for s in value.shape), value.dtype)
    if isinstance(value, (list, tuple)):
        return [_tensor_args(v) for v in value]
    if isinstance(value, dict):
        return {k: _tensor_args(v) for k, v in value.items()}
    return value


class _SequenceRecorder(TorchDispatchMode):
    """Appends every ATen call made outside the leaf layers to the sequence."""

    def __init__(self, state: _TraceState) -> None:
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.state.leaves:
            is_view = bool(getattr(func, "is_view", False))
            self.state.sequence.append(AtenCall(func.name(), is_view, _tensor_args(list(args)), _tensor_args(kwargs)))
        return func(*args, **kwargs)


@dataclass
class _TraceState:
    sequence: list[Step] = field(default_factory=list)
    leaves: list[LayerSpec] = field(default_factory=list)  # leaves running now, innermost last
    finished: list[tuple[LayerSpec, nn.Module]] = field(default_factory=list)
    scope: list[str] = field(default_factory=list)  # modules running now (functional op names)


def _hooks(state: _TraceState, name: str, module: nn.Module) -> tuple[Callable, Callable]:
    op = _op_of(module)

    def pre(_m: nn.Module, inputs: tuple) -> None:
        if op is not None:
            nested = state.leaves[-1].name if state.leaves else None
            spec = _leaf_spec(name, module, op, _shape(inputs), nested)
            state.sequence.append(spec)
            state.leaves.append(spec)
        elif not state.leaves:
            state.sequence.append(ModuleCall(name or "<root>"))
        if name:
            state.scope.append(name)

    def post(_m: nn.Module, _inputs: tuple, output: Any) -> None:
        if name:
            state.scope.pop()
        if op is not None:
            spec = state.leaves.pop()
            spec.output_shape = _shape(output)
            state.finished.append((spec, module))

    return pre, post


def trace_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    bit_widths: dict[str, tuple[int, int]] | None = None,
) -> ModelTrace:
    """Run one forward pass of ``input_shape`` (batch included) and describe it.

    ``bit_widths`` maps a layer name to (weight_bits, act_bits); quantization methods
    pass it so that emulated targets see the precision of every layer. A functional op
    runs at the activation precision of the block it belongs to (methods set bit-widths
    on modules only): the lowest in that block.
    """
    bit_widths = bit_widths or {}
    state = _TraceState()
    handles = []
    for name, module in model.named_modules():
        pre, post = _hooks(state, name, module)
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(tuple(input_shape), device=device)
    was_training = model.training
    model.eval()
    flop_counter = FlopCounterMode(display=False)
    functional = _FunctionalRecorder(state.scope, state.leaves)
    try:
        with torch.no_grad(), flop_counter, functional, _SequenceRecorder(state):
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    flops_by_module = flop_counter.get_flop_counts()
    layers = [spec for spec, _ in state.finished]
    for spec, module in state.finished:
        spec.params, spec.nonzero_params = _param_counts(module)  # outside the recorders: not part of the model
        # The counter counts a multiply-add as two flops; keys are qualified with the root.
        counts = flops_by_module.get(f"{type(model).__name__}.{spec.name}", {})
        spec.macs = int(sum(counts.values()) // 2)
        spec.weight_bits, spec.act_bits = bit_widths.get(spec.name, (32, 32))
    for op in functional.records:
        scope = op.name.rsplit(".", 1)[0] + "." if "." in op.name else ""
        bits = [spec.act_bits for spec in layers if scope and spec.name.startswith(scope)]
        if bits:
            op.act_bits = min(bits)
    return ModelTrace(layers=layers + functional.records, sequence=state.sequence)


def describe_layers(
    model: nn.Module,
    input_shape: tuple[int, ...],
    bit_widths: dict[str, tuple[int, int]] | None = None,
) -> list[LayerSpec]:
    """The layer description of one forward pass: leaf layers, then functional ops (see :func:`trace_model`)."""
    return trace_model(model, input_shape, bit_widths).layers


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total multiply-accumulates of one forward pass, from PyTorch's flop counter.

    Searches call it in loops: it runs the counter alone, without describing layers.
    """
    counter = FlopCounterMode(display=False)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def leaf_op(module: nn.Module) -> str | None:
    """The op name of a module that ``describe_layers`` describes as one layer, else None."""
    return _op_of(module)


def memory_footprint(layers: list[LayerSpec]) -> dict[str, int]:
    """Weight bytes and peak activation bytes of a described model.

    ``weight_bytes`` sums every layer's parameters at its weight bit-width.
    ``peak_activation_bytes`` is the largest input + output of any one layer (both are
    resident while it runs): a lower bound that ignores tensors kept alive by
    shortcuts, as the layer description has no liveness information.
    """
    weight_bytes = sum(layer.weight_bytes for layer in layers)
    peak = max((layer.input_bytes + layer.output_bytes for layer in layers), default=0)
    return {"peak_activation_bytes": int(peak), "weight_bytes": int(weight_bytes)}
