"""One layer description, extracted once from a model, shared by every consumer.

MAC counting, lookup tables and roofline models all reason about the same per-layer
record (DESIGN.md, "seams"): op type, shapes, kernel, stride, groups, channels,
bit-widths and sparsity. Shapes come from forward hooks on a real forward pass;
MACs come from PyTorch's own flop counter (``torch.utils.flop_counter``), not from
formulas of ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
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
