"""Table units: what one table entry times, and the units a model's forward pass executes.

A unit is what the runtime executes as one piece of Python (see ``hardware.lookup``): a
convolution with the BatchNorm and activation that follow it, a leaf layer, an ATen
operation run outside the leaf layers, or the call of a container module. Its key is
every field that determines its cost plus its channel counts; units that differ only in
their channel counts form a family, along whose axes the table interpolates. Units are
read off the one layer description of ``hardware.layers`` (its execution sequence).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hardware.layers import AtenCall, LayerSpec, ModelTrace, ModuleCall, TensorArg, trace_model
from hardware.target import HardwareError

GRANULARITIES = ("block", "op")
#: interpolation axes of each unit kind
AXES: dict[str, tuple[str, ...]] = {
    "conv": ("cin", "cout"),
    "linear": ("cin", "cout"),
    "dwconv": ("channels",),
    "bn": ("channels",),
    "act": ("channels",),
    "pool": ("channels",),
    "func": ("channels",),
    "gconv": (),
    "module_call": (),
}


@dataclass
class Unit:
    """One table entry's worth of work: its kind, cost-determining fields and channel counts."""

    kind: str
    fields: dict[str, Any]
    axes: dict[str, int] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)  # model layer names it covers (breakdown)
    replay: dict[str, Any] | None = None  # extra data to rebuild it that is not part of the key

    @property
    def key(self) -> str:
        return json.dumps({"kind": self.kind, **self.fields, **self.axes}, sort_keys=True)

    @property
    def family(self) -> str:
        return json.dumps({"kind": self.kind, **self.fields}, sort_keys=True)

    @property
    def axis_values(self) -> tuple[int, ...]:
        return tuple(self.axes[name] for name in sorted(self.axes))

    def with_axes(self, values: tuple[int, ...]) -> Unit:
        return Unit(self.kind, dict(self.fields), dict(zip(sorted(self.axes), values, strict=False)), [], self.replay)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "fields": self.fields, "axes": self.axes, "replay": self.replay}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Unit:
        return cls(data["kind"], dict(data["fields"]), dict(data["axes"]), [], data.get("replay"))


# -- argument encoding for func units ------------------------------------------------------
def _encode(value: Any, channels: int | None) -> Any:
    if isinstance(value, TensorArg):
        shape: list[Any] = list(value.shape)
        if channels is not None and len(shape) >= 2 and shape[1] == channels:
            shape[1] = "C"
        return {"tensor": shape, "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, channels) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, channels) for k, v in value.items()}}
    if isinstance(value, torch.dtype):
        return {"dtype_value": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device_value": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    raise TypeError(f"cannot encode argument of type {type(value).__name__}")


def decode_shape(shape: list[int | str], channels: int | None) -> list[int]:
    """A stored tensor shape with its channel axis ("C", written only for a unit with ``channels``) filled in."""
    decoded = []
    for size in shape:
        if size == "C":
            if channels is None:
                raise HardwareError(f"stored shape {shape} has a channel axis 'C' but its unit has no channels")
            size = channels
        decoded.append(int(size))
    return decoded


def decode_argument(value: Any, channels: int | None) -> Any:
    if isinstance(value, list):
        return [decode_argument(v, channels) for v in value]
    if isinstance(value, dict):
        if "dict" in value:
            return {k: decode_argument(v, channels) for k, v in value["dict"].items()}
        if "tensor" in value:
            shape = decode_shape(value["tensor"], channels)
            dtype = getattr(torch, value["dtype"])
            # ones: in-place replays (add_, mul_) neither overflow nor turn denormal
            return torch.ones(shape, dtype=dtype)
        if "dtype_value" in value:
            return getattr(torch, value["dtype_value"])
        if "device_value" in value:
            return torch.device(value["device_value"])
        if "memory_format" in value:
            return getattr(torch, value["memory_format"])
        if "layout" in value:
            return getattr(torch, value["layout"])
    return value


def _ints_in(value: Any) -> Iterable[int]:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _ints_in(v)


def _func_unit(call: AtenCall) -> Unit:
    args, kwargs = call.args, call.kwargs
    tensors = [a for a in args if isinstance(a, TensorArg)]
    if call.is_view:
        # views cost the same whatever the sizes: one entry per op and rank
        rank = len(tensors[0].shape) if tensors else 0
        return Unit(
            "func",
            {"op": call.op, "view": True, "rank": rank},
            {},
            replay={"args": _encode(args, None), "kwargs": _encode(kwargs, None)},
        )
    first = tensors[0] if tensors else None
    channels = int(first.shape[1]) if first is not None and len(first.shape) >= 2 else None
    if channels is not None and channels >= 2:
        # a size argument derived from the channel count (view, expand) cannot be templated
        sizes = [v for v in _ints_in([a for a in args if not isinstance(a, TensorArg)]) if abs(v) >= channels]
        if any(v % channels == 0 for v in sizes):
            channels = None
    else:
        channels = None
    fields = {"op": call.op, "args": _encode(args, channels), "kwargs": _encode(kwargs, channels)}
    return Unit("func", fields, {"channels": channels} if channels is not None else {})


# -- units of a traced model ------------------------------------------------------------------
def _conv_unit(spec: LayerSpec) -> Unit:
    shape = spec.input_shape
    fields: dict[str, Any] = {
        "batch": shape[0],
        "h": shape[2],
        "w": shape[3],
        "k": list(spec.kernel),
        "s": list(spec.stride),
        "p": list(spec.padding),
        "d": list(spec.dilation),
        "bias": spec.bias,
        "bn": False,
        "act": None,
    }
    if spec.groups == 1:
        return Unit("conv", fields, {"cin": spec.in_channels, "cout": spec.out_channels}, [spec.name])
    if spec.groups == spec.in_channels == spec.out_channels:
        return Unit("dwconv", fields, {"channels": spec.in_channels}, [spec.name])
    fields.update(cin=spec.in_channels, cout=spec.out_channels, groups=spec.groups)
    return Unit("gconv", fields, {}, [spec.name])


def _template(shape: tuple[int, ...]) -> tuple[list[Any], dict[str, int]]:
    if len(shape) >= 2:
        return [shape[0], "C", *shape[2:]], {"channels": shape[1]}
    return list(shape), {}


def _leaf_unit(spec: LayerSpec) -> Unit:
    shape = spec.input_shape
    if spec.op in ("conv", "dwconv"):
        return _conv_unit(spec)
    if spec.op == "linear":
        return Unit(
            "linear",
            {"lead": list(shape[:-1]), "bias": spec.bias, "act": None},
            {"cin": spec.in_channels, "cout": spec.out_channels},
            [spec.name],
        )
    template, axes = _template(shape)
    if spec.op == "pool":
        fields: dict[str, Any] = {"type": spec.module_type, "shape": template}
        if spec.module_type == "AdaptiveAvgPool2d":
            fields["out"] = list(spec.output_shape[2:])
        else:
            fields.update(k=list(spec.kernel), s=list(spec.stride), p=list(spec.padding), ceil=spec.ceil_mode)
        return Unit("pool", fields, axes, [spec.name])
    if spec.op == "bn":
        return Unit(
            "bn",
            {"type": "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d", "shape": template, "act": None},
            axes,
            [spec.name],
        )
    return Unit("act", {"type": spec.module_type, "shape": template, "inplace": spec.inplace}, axes, [spec.name])


def _absorb_act(unit: Unit, flat: list, index: int, shape: tuple[int, ...]) -> int:
    """Fuse the activation at ``flat[index]`` into ``unit`` when it acts on ``shape``; the next index."""
    step = flat[index] if index < len(flat) else None
    if isinstance(step, LayerSpec) and step.op == "act" and step.input_shape == shape:
        unit.fields["act"] = step.module_type
        unit.fields["inplace"] = step.inplace
        unit.layers.append(step.name)
        return index + 1
    return index


def units_of(trace: ModelTrace, granularity: str = "block") -> tuple[list[Unit], list[str]]:
    """The units of a traced forward pass, in order, and what could not be modelled."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"table granularity must be one of {GRANULARITIES}, got {granularity!r}")
    units: list[Unit] = []
    unmodelled: list[str] = []
    # Leaves nested in a leaf (timm's BatchNormAct2d holds its activation) run inside
    # their parent: they become the parent's fused activation, not units of their own.
    nested_acts: dict[str, str] = {}
    for step in trace.sequence:
        if isinstance(step, LayerSpec) and step.nested_in is not None:
            if step.op == "act":
                nested_acts[step.nested_in] = step.module_type
            else:
                unmodelled.append(f"{step.name}: {step.module_type} nested in {step.nested_in}")
    flat = [s for s in trace.sequence if not (isinstance(s, LayerSpec) and s.nested_in is not None)]
    index = 0
    while index < len(flat):
        step = flat[index]
        index += 1
        if isinstance(step, ModuleCall):
            units.append(Unit("module_call", {}, {}, [step.name]))
            continue
        if isinstance(step, AtenCall):
            try:
                units.append(_func_unit(step))
            except TypeError as error:
                unmodelled.append(f"{step.op}: {error}")
            continue
        unit = _leaf_unit(step)
        if unit.kind == "bn" and step.name in nested_acts:
            unit.fields["act"] = nested_acts[step.name]
        if granularity == "block" and unit.kind in ("conv", "dwconv", "gconv", "linear"):
            # absorb a BatchNorm right after a convolution, then an activation of the same shape
            following = flat[index] if index < len(flat) else None
            if (
                unit.kind != "linear"
                and isinstance(following, LayerSpec)
                and following.op == "bn"
                and following.input_shape == step.output_shape
            ):
                unit.fields["bn"] = True
                unit.layers.append(following.name)
                index += 1
                if following.name in nested_acts:
                    unit.fields["act"] = nested_acts[following.name]
            if unit.fields.get("act") is None:
                index = _absorb_act(unit, flat, index, step.output_shape)
        elif granularity == "block" and unit.kind == "bn" and unit.fields["act"] is None:
            index = _absorb_act(unit, flat, index, step.output_shape)
        units.append(unit)
    return units, unmodelled


def trace_units(
    model: nn.Module, input_shape: tuple[int, ...], granularity: str = "block"
) -> tuple[list[Unit], list[str]]:
    """The units one forward pass of ``input_shape`` executes, in order, and what could not be modelled."""
    return units_of(trace_model(model, tuple(input_shape)), granularity)


def model_units(model: nn.Module, input_shape: tuple[int, ...], granularity: str = "block") -> list[Unit]:
    units, _ = trace_units(model, input_shape, granularity)
    return units
