"""Table units: what one table entry times, and the units a model's forward pass executes.

A unit is what the runtime executes as one piece of Python (see ``hardware.lookup``): a
convolution with the BatchNorm and activation that follow it, a leaf layer, an ATen
operation run outside the leaf layers, or the call of a container module. Its key is
every field that determines its cost plus its channel counts; units that differ only in
their channel counts form a family, along whose axes the table interpolates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hardware.layers import leaf_op

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
    if isinstance(value, torch.Tensor):
        shape: list[Any] = list(value.shape)
        if channels is not None and value.dim() >= 2 and shape[1] == channels:
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


def decode_argument(value: Any, channels: int | None) -> Any:
    if isinstance(value, list):
        return [decode_argument(v, channels) for v in value]
    if isinstance(value, dict):
        if "dict" in value:
            return {k: decode_argument(v, channels) for k, v in value["dict"].items()}
        if "tensor" in value:
            shape = [channels if s == "C" else s for s in value["tensor"]]
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


def _func_unit(func: Any, args: tuple, kwargs: dict) -> Unit:
    name = func.name()
    if getattr(func, "is_view", False):
        # views cost the same whatever the sizes: one entry per op and rank
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        rank = tensors[0].dim() if tensors else 0
        return Unit(
            "func",
            {"op": name, "view": True, "rank": rank},
            {},
            replay={"args": _encode(list(args), None), "kwargs": _encode(kwargs, None)},
        )
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    channels = int(first.shape[1]) if first is not None and first.dim() >= 2 else None
    if channels is not None and channels >= 2:
        # a size argument derived from the channel count (view, expand) cannot be templated
        sizes = [v for v in _ints_in([a for a in args if not isinstance(a, torch.Tensor)]) if abs(v) >= channels]
        if any(v % channels == 0 for v in sizes):
            channels = None
    else:
        channels = None
    fields = {"op": name, "args": _encode(list(args), channels), "kwargs": _encode(kwargs, channels)}
    return Unit("func", fields, {"channels": channels} if channels is not None else {})


# -- tracing a model into units ------------------------------------------------------------
@dataclass
class _Event:
    kind: str  # "leaf", "func", "call"
    name: str = ""
    module: nn.Module | None = None
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    nested_in: str | None = None
    unit: Unit | None = None


class _FuncRecorder(TorchDispatchMode):
    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.tracer.depth == 0 and self.tracer.active:
            try:
                self.tracer.events.append(_Event("func", unit=_func_unit(func, args, kwargs)))
            except TypeError as error:
                self.tracer.unmodelled.append(f"{func.name()}: {error}")
        return func(*args, **kwargs)


class _Tracer:
    def __init__(self) -> None:
        self.events: list[_Event] = []
        self.stack: list[str] = []
        self.depth = 0
        self.active = False
        self.unmodelled: list[str] = []


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(int(s) for s in value.shape)
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], torch.Tensor):
        return tuple(int(s) for s in value[0].shape)
    return ()


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[list[_Event], list[str]]:
    tracer = _Tracer()
    handles = []

    def leaf_pre(name: str, module: nn.Module) -> Callable:
        def _pre(_m: nn.Module, inputs: tuple) -> None:
            nested = tracer.stack[-1] if tracer.stack else None
            tracer.events.append(_Event("leaf", name, module, _shape(inputs), nested_in=nested))
            tracer.stack.append(name)
            tracer.depth += 1

        return _pre

    def leaf_post(event_index: Callable[[], _Event]) -> Callable:
        def _post(_m: nn.Module, _inputs: tuple, output: Any) -> None:
            tracer.depth -= 1
            name = tracer.stack.pop()
            for event in reversed(tracer.events):
                if event.kind == "leaf" and event.name == name:
                    event.output_shape = _shape(output)
                    break

        return _post

    def container_pre(name: str) -> Callable:
        def _pre(_m: nn.Module, _inputs: tuple) -> None:
            if tracer.depth == 0:
                tracer.events.append(_Event("call", name))

        return _pre

    for name, module in model.named_modules():
        if leaf_op(module) is not None:
            handles.append(module.register_forward_pre_hook(leaf_pre(name, module)))
            handles.append(module.register_forward_hook(leaf_post(lambda: None)))
        else:
            handles.append(module.register_forward_pre_hook(container_pre(name)))
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(input_shape, device=device)
    try:
        with torch.no_grad(), _FuncRecorder(tracer):
            tracer.active = True
            model(x)
            tracer.active = False
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return tracer.events, tracer.unmodelled


def _conv_fields(module: nn.Conv2d, input_shape: tuple[int, ...]) -> tuple[str, dict[str, Any], dict[str, int]]:
    if isinstance(module.padding, str):
        padding = (
            [((k - 1) * d) // 2 for k, d in zip(module.kernel_size, module.dilation, strict=False)]
            if module.padding == "same"
            else [0, 0]
        )
    else:
        padding = list(module.padding)
    fields: dict[str, Any] = {
        "batch": input_shape[0],
        "h": input_shape[2],
        "w": input_shape[3],
        "k": list(module.kernel_size),
        "s": list(module.stride),
        "p": padding,
        "d": list(module.dilation),
        "bias": module.bias is not None,
        "bn": False,
        "act": None,
    }
    if module.groups == 1:
        return "conv", fields, {"cin": module.in_channels, "cout": module.out_channels}
    if module.groups == module.in_channels == module.out_channels:
        return "dwconv", fields, {"channels": module.in_channels}
    fields.update(cin=module.in_channels, cout=module.out_channels, groups=module.groups)
    return "gconv", fields, {}


def _template(shape: tuple[int, ...]) -> tuple[list[Any], dict[str, int]]:
    if len(shape) >= 2:
        return [shape[0], "C", *shape[2:]], {"channels": shape[1]}
    return list(shape), {}


def _leaf_unit(event: _Event) -> Unit:
    module, shape = event.module, event.input_shape
    op = leaf_op(module)
    if op in ("conv", "dwconv"):
        kind, fields, axes = _conv_fields(module, shape)
        return Unit(kind, fields, axes, [event.name])
    if op == "linear":
        return Unit(
            "linear",
            {"lead": list(shape[:-1]), "bias": module.bias is not None, "act": None},
            {"cin": module.in_features, "cout": module.out_features},
            [event.name],
        )
    if op == "pool":
        template, axes = _template(shape)
        fields = {"type": type(module).__name__, "shape": template}
        if isinstance(module, nn.AdaptiveAvgPool2d):
            fields["out"] = list(event.output_shape[2:])
        else:
            fields.update(
                k=module.kernel_size, s=module.stride, p=module.padding, ceil=bool(getattr(module, "ceil_mode", False))
            )
        return Unit("pool", fields, axes, [event.name])
    template, axes = _template(shape)
    if op == "bn":
        return Unit(
            "bn",
            {"type": "BatchNorm2d" if len(shape) == 4 else "BatchNorm1d", "shape": template, "act": None},
            axes,
            [event.name],
        )
    return Unit("act", {"type": type(module).__name__, "shape": template}, axes, [event.name])


def _act_name(module: nn.Module) -> str:
    return type(module).__name__


def trace_units(
    model: nn.Module, input_shape: tuple[int, ...], granularity: str = "block"
) -> tuple[list[Unit], list[str]]:
    """The units one forward pass of ``input_shape`` executes, in order, and what could not be modelled."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"table granularity must be one of {GRANULARITIES}, got {granularity!r}")
    events, unmodelled = _trace(model, tuple(input_shape))
    units: list[Unit] = []
    # Leaves nested in a leaf (timm's BatchNormAct2d holds its activation) run inside
    # their parent: they become the parent's fused activation, not units of their own.
    nested_acts: dict[str, str] = {}
    for event in events:
        if event.kind == "leaf" and event.nested_in is not None:
            if leaf_op(event.module) == "act":
                nested_acts[event.nested_in] = _act_name(event.module)
            else:
                unmodelled.append(f"{event.name}: {type(event.module).__name__} nested in {event.nested_in}")
    flat = [e for e in events if not (e.kind == "leaf" and e.nested_in is not None)]
    index = 0
    while index < len(flat):
        event = flat[index]
        index += 1
        if event.kind == "call":
            units.append(Unit("module_call", {}, {}, [event.name or "<root>"]))
            continue
        if event.kind == "func":
            units.append(event.unit)
            continue
        unit = _leaf_unit(event)
        if unit.kind == "bn" and event.name in nested_acts:
            unit.fields["act"] = nested_acts[event.name]
        if granularity == "block" and unit.kind in ("conv", "dwconv", "gconv", "linear"):
            out_shape = event.output_shape
            # absorb a BatchNorm right after a convolution, then an activation of the same shape
            if (
                unit.kind != "linear"
                and index < len(flat)
                and flat[index].kind == "leaf"
                and leaf_op(flat[index].module) == "bn"
                and flat[index].input_shape == out_shape
            ):
                bn_event = flat[index]
                unit.fields["bn"] = True
                unit.layers.append(bn_event.name)
                index += 1
                if bn_event.name in nested_acts:
                    unit.fields["act"] = nested_acts[bn_event.name]
            if (
                unit.fields.get("act") is None
                and index < len(flat)
                and flat[index].kind == "leaf"
                and leaf_op(flat[index].module) == "act"
                and flat[index].input_shape == out_shape
            ):
                unit.fields["act"] = _act_name(flat[index].module)
                unit.fields["inplace"] = bool(getattr(flat[index].module, "inplace", False))
                unit.layers.append(flat[index].name)
                index += 1
        elif (
            granularity == "block"
            and unit.kind == "bn"
            and unit.fields["act"] is None
            and index < len(flat)
            and flat[index].kind == "leaf"
            and leaf_op(flat[index].module) == "act"
            and flat[index].input_shape == event.output_shape
        ):
            unit.fields["act"] = _act_name(flat[index].module)
            unit.fields["inplace"] = bool(getattr(flat[index].module, "inplace", False))
            unit.layers.append(flat[index].name)
            index += 1
        if unit.kind == "act":
            unit.fields["inplace"] = bool(getattr(event.module, "inplace", False))
        units.append(unit)
    return units, unmodelled




def model_units(model: nn.Module, input_shape: tuple[int, ...], granularity: str = "block") -> list[Unit]:
    units, _ = trace_units(model, input_shape, granularity)
    return units

