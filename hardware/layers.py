"""One layer description, extracted once from a model, shared by every consumer.

MAC counting, lookup tables and roofline models all reason about the same per-layer
record (DESIGN.md, "seams"): op type, shapes, kernel, stride, groups, channels,
bit-widths and sparsity. Shapes come from forward hooks on a real forward pass;
MACs come from PyTorch's own flop counter (``torch.utils.flop_counter``), not from
formulas of ours.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from hardware.target import HardwareTarget

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


@dataclass
class LayerSpec:
    """What a cost model needs to know about one layer."""

    name: str
    op: str  # conv, dwconv, linear, bn, act, pool
    module_type: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    in_channels: int = 0
    out_channels: int = 0
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    params: int = 0
    nonzero_params: int = 0
    macs: int = 0
    weight_bits: int = 32
    act_bits: int = 32
    extra: dict[str, Any] = field(default_factory=dict)

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
        for key in ("input_shape", "output_shape", "kernel", "stride", "padding"):
            row[key] = "x".join(str(v) for v in row[key])
        return row


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


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


def describe_layers(
    model: nn.Module,
    input_shape: tuple[int, ...],
    bit_widths: dict[str, tuple[int, int]] | None = None,
) -> list[LayerSpec]:
    """Run one forward pass of ``input_shape`` (batch included) and describe each leaf.

    ``bit_widths`` maps a layer name to (weight_bits, act_bits); quantization methods
    pass it so that emulated targets see the precision of every layer.
    """
    bit_widths = bit_widths or {}
    specs: list[LayerSpec] = []
    handles = []

    def hook(name: str, module: nn.Module, op: str):
        def _record(_mod: nn.Module, inputs: tuple, output: Any) -> None:
            x = inputs[0]
            params, nonzero = _param_counts(module)
            w_bits, a_bits = bit_widths.get(name, (32, 32))
            spec = LayerSpec(
                name=name,
                op=op,
                module_type=type(module).__name__,
                input_shape=tuple(x.shape),
                output_shape=tuple(output.shape),
                params=params,
                nonzero_params=nonzero,
                weight_bits=w_bits,
                act_bits=a_bits,
            )
            if isinstance(module, nn.Conv2d):
                spec.in_channels, spec.out_channels = module.in_channels, module.out_channels
                spec.kernel, spec.stride = _pair(module.kernel_size), _pair(module.stride)
                spec.padding = _pair(module.padding) if not isinstance(module.padding, str) else (0, 0)
                spec.groups = module.groups
            elif isinstance(module, nn.Linear):
                spec.in_channels, spec.out_channels = module.in_features, module.out_features
            elif x.dim() >= 2:
                spec.in_channels = spec.out_channels = int(x.shape[1])
                if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
                    spec.kernel, spec.stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
            specs.append(spec)

        return _record

    for name, module in model.named_modules():
        op = _op_of(module)
        if op is not None:
            handles.append(module.register_forward_hook(hook(name, module, op)))

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    flop_counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), flop_counter:
            model(torch.zeros(input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    flops_by_module = flop_counter.get_flop_counts()
    for spec in specs:
        # The counter counts a multiply-add as two flops; keys are qualified with the root.
        counts = flops_by_module.get(f"{type(model).__name__}.{spec.name}", {})
        spec.macs = int(sum(counts.values()) // 2)
    return specs


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Total multiply-accumulates of one forward pass, from PyTorch's flop counter."""
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


#: Activations deployment converters (TF-Lite, accelerators' output stages) fuse into the previous op.
FUSED_ACTIVATIONS = frozenset({"ReLU", "ReLU6", "Identity"})


# --------------------------------------------------------------------------- elementwise ops
class _ElementwiseRecorder(TorchFunctionMode):
    """Records tensor-tensor add/mul and spatial means (ops that are not nn.Modules)."""

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

    def __init__(self, scope: list[str]) -> None:
        super().__init__()
        self.scope = scope
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
        out = func(*args, **kwargs)
        kind = "add" if func in self._ADD else "mul" if func in self._MUL else "mean" if func in self._MEAN else None
        if kind is None or not isinstance(out, torch.Tensor) or out.dim() < 2:
            return out
        if kind in ("add", "mul"):
            if len(args) < 2 or not all(isinstance(a, torch.Tensor) and a.dim() >= 2 for a in args[:2]):
                return out  # a scalar operand: part of an activation or a scale, not a tensor op
            shapes = [tuple(a.shape) for a in args[:2]]
            self.records.append(
                LayerSpec(
                    name=self._name(kind),
                    op=kind,
                    module_type="functional",
                    input_shape=max(shapes, key=math.prod),
                    output_shape=tuple(out.shape),
                    in_channels=int(out.shape[1]),
                    out_channels=int(out.shape[1]),
                    extra={"operand_shapes": shapes},
                )
            )
        elif kind == "mean" and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            self.records.append(
                LayerSpec(
                    name=self._name("mean"),
                    op="pool",
                    module_type="functional",
                    input_shape=tuple(args[0].shape),
                    output_shape=tuple(out.shape),
                    in_channels=int(args[0].shape[1]),
                    out_channels=int(out.shape[1]) if out.dim() > 1 else int(args[0].shape[1]),
                )
            )
        return out


def _push(scope: list[str], name: str):
    def hook(_module, _inputs) -> None:
        scope.append(name)

    return hook


def _pop(scope: list[str]):
    def hook(_module, _inputs, _output) -> None:
        scope.pop()

    return hook


def describe_elementwise(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """The functional ops of one forward pass that ``describe_layers`` cannot see.

    Residual adds, squeeze-excitation multiplies and spatial means are plain tensor
    operations, not modules; a latency model of a phone CPU must still pay for them.
    Each is named after the innermost module that ran it (``blocks.1.0.add``).
    """
    try:
        # Shapes are all that matter: run a copy on the meta device (no arithmetic).
        meta_model = copy.deepcopy(model).to("meta")
        return _record_elementwise(meta_model, torch.zeros(input_shape, device="meta"))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return _record_elementwise(model, torch.zeros(input_shape, device=device))


def _record_elementwise(model: nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    scope: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(_push(scope, name)))
        handles.append(module.register_forward_hook(_pop(scope)))
    was_training = model.training
    model.eval()
    recorder = _ElementwiseRecorder(scope)
    try:
        with torch.no_grad(), recorder:
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return recorder.records


def with_elementwise(
    target: HardwareTarget, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None
) -> list[LayerSpec]:
    """``target.layers_of(...)`` plus the functional ops, unless the caller's list has them."""
    described = target.layers_of(model, input_shape, layers)
    if any(layer.module_type == "functional" for layer in described):
        return described
    functional = describe_elementwise(model, input_shape)
    # A functional op runs at the activation precision of the block it belongs to (the
    # quantization method sets bit-widths on modules only): the lowest in that block.
    for op in functional:
        scope = op.name.rsplit(".", 1)[0] + "." if "." in op.name else ""
        bits = [layer.act_bits for layer in described if scope and layer.name.startswith(scope)]
        if bits:
            op.act_bits = min(bits)
    return list(described) + functional


def memory_of(layers: Iterable[LayerSpec]) -> dict[str, int]:
    """Weight bytes (at each layer's weight bit-width) and the largest input+output of a layer."""
    layers = list(layers)
    weight_bytes = sum(layer.weight_bytes for layer in layers if layer.op not in ("add", "mul"))
    peak = max((layer.input_bytes + layer.output_bytes for layer in layers), default=0)
    return {"peak_activation_bytes": int(peak), "weight_bytes": int(weight_bytes)}

