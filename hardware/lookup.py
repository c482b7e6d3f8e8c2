"""Latency lookup tables: profile layer configurations once, predict a network as their sum.

Implements the latency table of ProxylessNAS (Cai et al., 2019, Sec. 3.3: "we build a
latency prediction model ... the latency of a network is the sum of the latencies of its
operators") and CompactNet's platform simulator (Li et al., 2019: each layer type is
profiled on the device over a range of channel counts, and counts that were not
profiled are interpolated).

What a table entry is (the "unit"). Timing single ops (conv, then bn, then act)
misses what eager PyTorch spends between them, so a unit is what the runtime executes
as one piece of Python:

- ``conv`` / ``dwconv`` / ``gconv``: a convolution together with the BatchNorm and the
  activation that directly follow it (``granularity="block"``, the default; with
  ``granularity="op"`` each leaf layer is its own unit);
- ``linear``, ``pool``, ``bn``, ``act``: leaf layers not absorbed into a conv unit;
- ``func``: every ATen operation a model runs outside its leaf layers (residual adds,
  the flatten before the classifier, squeeze-excitation gates), captured with a
  ``TorchDispatchMode`` and replayed on tensors of the same shapes;
- ``module_call``: the Python cost of entering a container module (a ``Sequential``, a
  block's ``forward``), one unit per call.

The key of a unit is everything that determines its cost (op, input size, kernel,
stride, padding, groups, bias, fused BN/activation, batch) and its channel counts
(``cin``/``cout`` for convolutions and linear layers, ``channels`` for depthwise and
element-wise units). Units that share all but their channel counts form a *family*;
a count missing from the table is interpolated multilinearly between the nearest
profiled counts of its family (exact on table points, monotone between neighbours).
Departure from CompactNet: no extrapolation; a configuration outside the profiled
range is either measured on the spot (``on_missing="profile"``, recorded in the
report) or refused (``on_missing="error"``).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hardware.layers import LayerSpec, leaf_op, memory_footprint
from hardware.protocol import TimingProtocol, machine_provenance, protocol_dict, time_callable
from hardware.target import HardwareError, HardwareTarget, LatencyReport, ValidationCase

TABLE_FORMAT = 1
GRANULARITIES = ("block", "op")
#: default channel grid of a profile: every 8 up to 32, then coarser (CompactNet-style)
DEFAULT_CHANNEL_GRID: tuple[int, ...] = (
    1, 3, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 960, 1024, 1280, 1536, 1920, 2048,
)  # fmt: skip
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


# --------------------------------------------------------------------------------------
# Units
# --------------------------------------------------------------------------------------
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


def _decode(value: Any, channels: int | None) -> Any:
    if isinstance(value, list):
        return [_decode(v, channels) for v in value]
    if isinstance(value, dict):
        if "dict" in value:
            return {k: _decode(v, channels) for k, v in value["dict"].items()}
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


# --------------------------------------------------------------------------------------
# Rebuilding a unit to time it
# --------------------------------------------------------------------------------------
def _make_act(name: str, inplace: bool) -> nn.Module:
    cls = getattr(nn, name, None)
    if cls is None:
        raise HardwareError(f"cannot rebuild activation {name!r}: not a torch.nn class")
    try:
        return cls(inplace=inplace)
    except TypeError:
        return cls()


class _UnitCall(nn.Module):
    """An empty container: the cost of one module call on the Python side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _unit_ops(unit: Unit) -> tuple[list[nn.Module], torch.Tensor]:
    """Fresh modules doing the unit's work and an input of the unit's shape."""
    f, a = unit.fields, unit.axes
    if unit.kind in ("conv", "dwconv", "gconv"):
        if unit.kind == "conv":
            cin, cout, groups = a["cin"], a["cout"], 1
        elif unit.kind == "dwconv":
            cin = cout = groups = a["channels"]
        else:
            cin, cout, groups = f["cin"], f["cout"], f["groups"]
        ops: list[nn.Module] = [
            nn.Conv2d(cin, cout, tuple(f["k"]), tuple(f["s"]), tuple(f["p"]), tuple(f["d"]), groups, f["bias"])
        ]
        if f["bn"]:
            ops.append(nn.BatchNorm2d(cout))
        if f["act"]:
            ops.append(_make_act(f["act"], f.get("inplace", False)))
        x = torch.randn(f["batch"], cin, f["h"], f["w"])
    elif unit.kind == "linear":
        ops = [nn.Linear(a["cin"], a["cout"], f["bias"])]
        if f["act"]:
            ops.append(_make_act(f["act"], f.get("inplace", False)))
        x = torch.randn(*f["lead"], a["cin"])
    elif unit.kind in ("bn", "act", "pool"):
        shape = [a.get("channels") if s == "C" else s for s in f["shape"]]
        if unit.kind == "bn":
            ops = [nn.BatchNorm2d(shape[1]) if f["type"] == "BatchNorm2d" else nn.BatchNorm1d(shape[1])]
            if f["act"]:
                ops.append(_make_act(f["act"], f.get("inplace", False)))
        elif unit.kind == "act":
            ops = [_make_act(f["type"], f.get("inplace", False))]
        elif f["type"] == "AdaptiveAvgPool2d":
            ops = [nn.AdaptiveAvgPool2d(tuple(f["out"]))]
        else:
            pool_cls = getattr(nn, f["type"])
            ops = [pool_cls(f["k"], f["s"], f["p"], ceil_mode=f["ceil"])]
        x = torch.randn(shape)
    else:
        raise HardwareError(f"unknown table unit kind {unit.kind!r}")
    for op in ops:
        op.eval()
    return ops, x


def unit_callable(unit: Unit, rotate_bytes: int = 0, max_copies: int = 64) -> Callable[[], Any]:
    """A zero-argument callable doing exactly the unit's work, on fresh tensors.

    In a network a layer's weights were last touched a whole forward pass ago, so they
    are not in the core's private caches; timing one module in a loop would keep them
    there and under-estimate. With ``rotate_bytes`` > 0 the callable cycles through
    enough independent copies of the unit's modules that their weights add up to that
    many bytes (at most ``max_copies``), while the input stays hot as it does in a
    network (it was just written by the previous layer).
    """
    f, a = unit.fields, unit.axes
    if unit.kind == "func":
        op_name, _, overload = f["op"].removeprefix("aten::").partition(".")
        func = getattr(getattr(torch.ops.aten, op_name), overload or "default")
        source = unit.replay if f.get("view") else f
        channels = a.get("channels")
        args, kwargs = _decode(source["args"], channels), _decode(source["kwargs"], channels)
        return lambda: func(*args, **kwargs)
    if unit.kind == "module_call":
        module, x0 = _UnitCall(), torch.zeros(1)
        return lambda: module(x0)
    ops, x = _unit_ops(unit)
    weight_bytes = sum(p.numel() * p.element_size() for op in ops for p in op.parameters())
    copies = [ops]
    if rotate_bytes > 0 and weight_bytes > 0:
        wanted = min(max_copies, max(1, math.ceil(rotate_bytes / weight_bytes)))
        copies += [_unit_ops(unit)[0] for _ in range(wanted - 1)]
    state = {"next": 0}

    def run() -> torch.Tensor:
        chain = copies[state["next"]]
        state["next"] = (state["next"] + 1) % len(copies)
        y = x
        for op in chain:
            y = op(y)
        return y

    return run


def time_unit(unit: Unit, protocol: TimingProtocol, threads: int, rotate_bytes: int = 0) -> dict[str, Any]:
    """Median and spread of one unit under ``protocol`` with ``threads`` intra-op threads."""
    from hardware.measured import torch_threads

    fn = unit_callable(unit, rotate_bytes)
    with torch_threads(threads), torch.no_grad():
        timing = time_callable(fn, protocol)
    return {
        "ms": timing.median_ms,
        "min_ms": timing.min_ms,
        "iqr_ms": timing.iqr_ms,
        "cv": timing.cv,
        "repeats": timing.repeats,
    }


# --------------------------------------------------------------------------------------
# Interpolation
# --------------------------------------------------------------------------------------
def _brackets(query: tuple[int, ...], axis_values: list[list[int]]) -> list[tuple[int, int]] | None:
    out = []
    for q, values in zip(query, axis_values, strict=False):
        if q in values:
            out.append((q, q))
            continue
        lower = [v for v in values if v < q]
        upper = [v for v in values if v > q]
        if not lower or not upper:
            return None
        out.append((max(lower), min(upper)))
    return out


def interpolate(points: dict[tuple[int, ...], float], query: tuple[int, ...], grid: Iterable[int] = ()) -> float | None:
    """Multilinear interpolation of ``points`` (channel counts -> ms) at ``query``.

    Exact on table points; between two neighbouring points along an axis the value
    lies between theirs. The bracketing counts are the nearest profiled counts on each
    axis, or else the profile's grid; ``None`` when no complete bracket exists (outside
    the profiled range, or a corner never profiled).
    """
    if query in points:
        return points[query]
    if not points:
        return None
    ndim = len(query)
    candidates = [[sorted({p[i] for p in points}) for i in range(ndim)]]
    grid = sorted(set(grid))
    if grid:
        candidates.append([grid] * ndim)
    for axis_values in candidates:
        brackets = _brackets(query, axis_values)
        if brackets is None:
            continue
        total, complete = 0.0, True
        for corner in itertools.product((0, 1), repeat=ndim):
            weight, point = 1.0, []
            for (low, high), q, side in zip(brackets, query, corner, strict=False):
                if low == high:
                    if side == 1:
                        weight = 0.0
                        break
                    point.append(low)
                    continue
                t = (q - low) / (high - low)
                weight *= t if side else 1.0 - t
                point.append(high if side else low)
            if weight == 0.0:
                continue
            value = points.get(tuple(point))
            if value is None:
                complete = False
                break
            total += weight * value
        if complete:
            return total
    return None


def bracket_units(units: Iterable[Unit], grid: Iterable[int], narrower: bool = False) -> list[Unit]:
    """The grid units that bracket each unit's channel counts (what a profile measures).

    A count on the grid is kept; a count between two grid values is replaced by both;
    a count outside the grid is kept as is (profiled exactly). ``narrower`` adds every grid
    count below each count, so that the table prices every width a pruning search can reach.
    """
    grid = sorted(set(grid))
    out: dict[str, Unit] = {}
    for unit in units:
        if not unit.axes:
            out.setdefault(unit.key, unit)
            continue
        per_axis = []
        for value in unit.axis_values:
            if value in grid or value < grid[0] or value > grid[-1]:
                counts: tuple[int, ...] = (value,)
            else:
                counts = (max(g for g in grid if g < value), min(g for g in grid if g > value))
            per_axis.append(tuple(g for g in grid if g < min(counts)) + counts if narrower else counts)
        for combo in itertools.product(*per_axis):
            grid_unit = unit.with_axes(combo)
            out.setdefault(grid_unit.key, grid_unit)
    return list(out.values())


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------
class LatencyTable:
    """Entries (unit key -> measured ms) with the metadata of how they were measured."""

    def __init__(
        self, metadata: dict[str, Any] | None = None, entries: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.metadata = dict(metadata or {})
        self.entries: dict[str, dict[str, Any]] = dict(entries or {})
        self._families: dict[str, dict[str, dict[tuple[int, ...], float]]] = {}

    # -- files -------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        path = Path(path)
        if not path.is_file():
            raise HardwareError(f"latency table {path} does not exist")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != TABLE_FORMAT:
            raise HardwareError(f"latency table {path} has format {data.get('format')!r}, expected {TABLE_FORMAT}")
        return cls(data["metadata"], data["entries"])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": TABLE_FORMAT, "metadata": self.metadata, "entries": dict(sorted(self.entries.items()))}
        path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        return path

    # -- entries -----------------------------------------------------------------------
    def add(self, unit: Unit, measurement: dict[str, Any]) -> None:
        self.entries[unit.key] = {**measurement, "unit": unit.to_json()}
        self._families = {}

    def __contains__(self, unit: Unit) -> bool:
        return unit.key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.metadata.get("channel_grid", ()))

    def _family_points(self, statistic: str) -> dict[str, dict[tuple[int, ...], float]]:
        if statistic not in self._families:
            families: dict[str, dict[tuple[int, ...], float]] = {}
            for entry in self.entries.values():
                unit = Unit.from_json(entry["unit"])
                families.setdefault(unit.family, {})[unit.axis_values] = float(entry.get(statistic, entry["ms"]))
            self._families[statistic] = families
        return self._families[statistic]

    def lookup(self, unit: Unit, statistic: str = "ms") -> tuple[float | None, str]:
        """(ms, "exact" | "interpolated") or (None, "missing").

        ``statistic``: the entry field to use, "ms" (the median) or "min_ms" (the minimum).
        """
        entry = self.entries.get(unit.key)
        if entry is not None:
            return float(entry.get(statistic, entry["ms"])), "exact"
        if unit.axes:
            points = self._family_points(statistic).get(unit.family, {})
            value = interpolate(points, unit.axis_values, self.grid)
            if value is not None:
                return value, "interpolated"
        return None, "missing"


def library_versions() -> dict[str, str]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import numpy

        versions["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    return versions


def profile(
    units: Iterable[Unit],
    target: Any,
    protocol: TimingProtocol,
    table: LatencyTable | None = None,
    progress: Callable[[int, int, Unit], None] | None = None,
    rotate_bytes: int = 0,
) -> LatencyTable:
    """Measure every unit not yet in ``table`` on ``target`` (a PyTorch CPU target)."""
    from hardware.measured import LocalCPU

    if not isinstance(target, LocalCPU):
        raise HardwareError(
            f"profiling runs table units with PyTorch on this CPU; hw {getattr(target, 'name', target)!r} is "
            f"{type(target).__name__}. Profile with a LocalCPU target (e.g. --hw local_cpu)."
        )
    table = table if table is not None else LatencyTable()
    todo = [u for u in {u.key: u for u in units}.values() if u not in table]
    for done, unit in enumerate(todo, 1):
        table.add(unit, time_unit(unit, protocol, target.threads, rotate_bytes))
        if progress is not None:
            progress(done, len(todo), unit)
    table.metadata.update(
        {
            "device": machine_provenance()["cpu"],
            "machine": machine_provenance(),
            "hw": target.name,
            "runtime": target.runtime,
            "threads": target.threads,
            "versions": library_versions(),
            "protocol": protocol_dict(protocol),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "entries": len(table),
        }
    )
    return table


def model_units(model: nn.Module, input_shape: tuple[int, ...], granularity: str = "block") -> list[Unit]:
    units, _ = trace_units(model, input_shape, granularity)
    return units


# --------------------------------------------------------------------------------------
# The target
# --------------------------------------------------------------------------------------
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def resolve_path(path: str | Path) -> Path:
    """A relative path is taken from the current directory if it exists there, else from the project root."""
    path = Path(path)
    if path.is_absolute() or path.exists():
        return path
    return project_root() / path


class TableTarget(HardwareTarget):
    """Latency predicted as the sum of a lookup table's per-unit entries."""

    source = "table"

    def __init__(
        self,
        name: str = "local_cpu_table",
        calibration: str = "measured",
        batch_size: int = 1,
        table: str = "hardware/tables/local_cpu.json",
        on_missing: str = "profile",
        known_rmspe: float | None = None,
        validation: dict[str, Any] | None = None,
        statistic: str = "median",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("source", None)
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if on_missing not in ("profile", "error"):
            raise ValueError(f"hw.on_missing must be 'profile' or 'error', got {on_missing!r}")
        self.table_path = resolve_path(table)
        if not self.table_path.is_file():
            raise HardwareError(
                f"hw {name!r}: latency table {self.table_path} does not exist. Build it with "
                f"`python -m hardware profile --hw local_cpu --threads 1 --space mobilenetv2 --space resnet "
                f"--out {table}` (see hardware/tables/README.md)."
            )
        self.table = LatencyTable.load(self.table_path)
        self.granularity = self.table.metadata.get("granularity", "block")
        self.on_missing = on_missing
        if statistic not in ("median", "min"):
            raise ValueError(f"hw.statistic must be 'median' or 'min', got {statistic!r}")
        self.statistic = statistic
        self._field = "ms" if statistic == "median" else "min_ms"
        self.known_rmspe = known_rmspe
        self.validation = dict(validation or {})
        self._reference = None

    # -- the measured device the table stands for -------------------------------------
    def reference_target(self, **overrides: Any):
        """The measured target (LocalCPU, the table's thread count) this table emulates."""
        from hardware.measured import LocalCPU

        meta = self.table.metadata
        options = {
            "name": meta.get("hw", "local_cpu"),
            "threads": meta.get("threads"),
            "per_layer": False,
            "clock": meta.get("clock", "wall"),
            **overrides,
        }
        return LocalCPU(**options)

    def _profile_protocol(self) -> TimingProtocol:
        return TimingProtocol(**self.table.metadata.get("protocol", {}))

    def latency(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        layers: list[LayerSpec] | None = None,
        onnx_file: Path | None = None,
    ) -> LatencyReport:
        input_shape = tuple(int(s) for s in input_shape)
        units, unmodelled = trace_units(model, input_shape, self.granularity)
        counts = {"exact": 0, "interpolated": 0, "measured_now": 0}
        values: list[float] = []
        minima: list[float] = []
        per_layer: dict[str, float] = {}
        missing: list[Unit] = []
        scale, overhead = self.sequence_calibration()
        for unit in units:
            ms, how = self.table.lookup(unit, self._field)
            low, _ = self.table.lookup(unit, "min_ms")
            if ms is None:
                if self.on_missing == "error":
                    missing.append(unit)
                    continue
                measured = time_unit(
                    unit,
                    self._profile_protocol(),
                    int(self.table.metadata.get("threads") or 1),
                    int(self.table.metadata.get("rotate_bytes") or 0),
                )
                ms, low, how = measured[self._field], measured["min_ms"], "measured_now"
            counts[how] += 1
            values.append(ms)
            minima.append(low if low is not None else ms)
            for layer in unit.layers[:1]:
                per_layer[layer] = per_layer.get(layer, 0.0) + scale * ms
        if missing:
            raise HardwareError(
                f"hw {self.name!r}: {len(missing)} layer configurations are not in {self.table_path} and cannot be "
                f"interpolated (first: {missing[0].key}). Add them with `python -m hardware profile --hw local_cpu "
                f"--threads {self.table.metadata.get('threads')} --model <model> --input-size <size> --out {self.table_path}` "
                f"(it merges into the table), or set hw.on_missing=profile."
            )
        latency_ms = scale * math.fsum(values) + overhead * len(values)
        notes = []
        if counts["measured_now"]:
            notes.append(
                f"{counts['measured_now']} of {len(units)} table units were outside the table and were measured now "
                "on this machine (not from the table)"
            )
        if unmodelled:
            notes.append(f"not modelled by the table (counted as 0 ms): {'; '.join(unmodelled[:5])}")
        if layers is not None and any(spec.weight_bits != 32 or spec.act_bits != 32 for spec in layers):
            notes.append("the table was profiled in fp32; per-layer bit-widths are ignored")
        layers = self.layers_of(model, input_shape, layers)
        meta = self.table.metadata
        return LatencyReport(
            hw=self.name,
            latency_ms=latency_ms,
            source=self.source,
            calibration=self.calibration,
            spread_ms=latency_ms * self.known_rmspe if self.known_rmspe else 0.0,
            memory=memory_footprint(layers),
            per_layer_ms=per_layer,
            provenance={
                "table": str(self.table_path),
                "table_device": meta.get("device"),
                "table_hw": meta.get("hw"),
                "table_runtime": meta.get("runtime"),
                "threads": meta.get("threads"),
                "table_date": meta.get("date"),
                "table_versions": meta.get("versions"),
                "table_protocol": meta.get("protocol"),
                "granularity": self.granularity,
                "units": len(units),
                **{f"units_{k}": v for k, v in counts.items()},
                "known_rmspe": self.known_rmspe,
                "statistic": self.statistic,
                "sum_of_minima_ms": scale * math.fsum(minima) + overhead * len(minima),
                "sum_of_entries_ms": math.fsum(values),
                "sequence_scale": scale,
                "per_unit_overhead_ms": overhead,
                "input_shape": list(input_shape),
            },
            notes=notes,
        )

    def validation_cases(
        self,
        n: int = 50,
        seed: int = 1,
        spaces: tuple[str, ...] | list[str] | None = None,
        progress: Callable[[str], None] | None = None,
        repeat_measurements: int = 10,
        **_: Any,
    ) -> list[ValidationCase]:
        """Predicted (table) against measured (the reference target) on ``n`` random architectures.

        The architectures come from ``hardware.search_space`` with a seed other than the
        profile's, so most of their channel counts are interpolated, never looked up.
        The first ``repeat_measurements`` architectures are measured twice: how far two
        measurements of one network disagree is the floor under the emulator's error.
        """
        from hardware import search_space

        spaces = tuple(
            spaces or self.validation.get("spaces") or self.table.metadata.get("spaces") or ("mobilenetv2", "resnet")
        )
        reference = self.reference_target(**self.validation.get("reference", {}))
        cases = []
        for name, config in search_space.sample_architectures(spaces, int(n), seed):
            model = search_space.build(config)
            shape = search_space.input_shape_of(config, self.batch_size)
            predicted = self.latency(model, shape)
            measured = reference.latency(model, shape)
            again = reference.latency(model, shape) if len(cases) < repeat_measurements else None
            cases.append(
                ValidationCase(
                    name=name,
                    predicted_ms=predicted.latency_ms,
                    measured_ms=measured.latency_ms,
                    group=config["space"],
                    info={
                        "units": predicted.provenance["units"],
                        "interpolated": predicted.provenance["units_interpolated"],
                        "measured_now": predicted.provenance["units_measured_now"],
                        "measured_cv": measured.provenance["cv"],
                        "predicted_min_ms": predicted.provenance["sum_of_minima_ms"],
                        "measured_min_ms": measured.provenance["min_ms"],
                        "measured_iqr_ms": measured.spread_ms,
                        "input_size": config["input_size"],
                        **({"measured_again_ms": again.latency_ms} if again is not None else {}),
                    },
                )
            )
            if progress is not None:
                progress(
                    f"{name}: predicted {predicted.latency_ms:.3f} ms, measured {measured.latency_ms:.3f} ms "
                    f"({predicted.provenance['units_interpolated']} units interpolated, "
                    f"{predicted.provenance['units_measured_now']} measured now, of {predicted.provenance['units']})"
                )
        return cases

    def calibrate(
        self, n: int = 40, seed: int | None = None, progress: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Fit how units run in sequence, on the profile's own architectures.

        A unit timed alone in a loop runs with warm branch predictors, instruction caches
        and its own weights in cache; in a network a hundred different units take turns,
        and each pays more: in proportion to its own time (a scale ``a``, caches) and a
        fixed amount per call (``d``, dispatch). ``a`` and ``d`` (both >= 0) minimise
        sum(((a S_i + d U_i) - M_i) / M_i)^2 over ``n`` architectures sampled with the
        *profile's* seed (S_i: sum of entries, U_i: units, M_i: measured), so the
        architectures of ``validate`` (another seed) stay unseen. Stored in the table's
        metadata["calibration"]; prediction = a x sum of entries + d x units.
        """
        from hardware import search_space

        meta = self.table.metadata
        spaces = tuple(meta.get("spaces") or ("mobilenetv2", "resnet"))
        seed = int(seed if seed is not None else next((s.get("seed", 0) for s in meta.get("sources", [])), 0))
        reference = self.reference_target(**self.validation.get("reference", {}))
        saved = meta.pop("calibration", None)
        rows = []
        try:
            for name, config in search_space.sample_architectures(spaces, int(n), seed):
                model = search_space.build(config)
                shape = search_space.input_shape_of(config, self.batch_size)
                predicted = self.latency(model, shape)
                measured = reference.latency(model, shape).latency_ms
                rows.append((name, predicted.provenance["sum_of_entries_ms"], predicted.provenance["units"], measured))
                if progress is not None:
                    progress(
                        f"{name}: sum of entries {rows[-1][1]:.3f} ms over {rows[-1][2]} units, measured {measured:.3f} ms"
                    )
        except BaseException:
            if saved is not None:
                meta["calibration"] = saved
            raise
        import numpy as np
        from scipy.optimize import nnls

        relative = np.array([[s_ / m, u / m] for _, s_, u, m in rows])  # rows divided by M_i: relative error
        (scale, overhead), _ = nnls(relative, np.ones(len(rows)))
        meta["calibration"] = {
            "sequence_scale": float(scale),
            "per_unit_overhead_ms": float(overhead),
            "architectures": [
                {"name": r[0], "sum_of_entries_ms": r[1], "units": r[2], "measured_ms": r[3]} for r in rows
            ],
            "seed": seed,
            "spaces": list(spaces),
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        self.table.save(self.table_path)
        return meta["calibration"]

    def sequence_calibration(self) -> tuple[float, float]:
        """(scale, per-unit overhead in ms) of :meth:`calibrate`; (1, 0) for an uncalibrated table."""
        calibration = self.table.metadata.get("calibration", {})
        return float(calibration.get("sequence_scale", 1.0)), float(calibration.get("per_unit_overhead_ms", 0.0))

    def describe(self) -> dict[str, Any]:
        scale, overhead = self.sequence_calibration()
        return {
            **super().describe(),
            "table": str(self.table_path),
            "threads": self.table.metadata.get("threads"),
            "clock": self.table.metadata.get("clock", "wall"),
            "sequence_scale": round(scale, 4),
            "per_unit_overhead_ms": round(overhead, 6),
        }


__all__ = [
    "AXES",
    "DEFAULT_CHANNEL_GRID",
    "LatencyTable",
    "TableTarget",
    "Unit",
    "bracket_units",
    "interpolate",
    "model_units",
    "profile",
    "time_unit",
    "trace_units",
    "unit_callable",
]
