"""Rebuilding a table unit from its key and timing it: how a table is profiled."""

from __future__ import annotations

import datetime as _dt
import math
import platform
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from hardware.lookup.table import LatencyTable
from hardware.lookup.units import Unit, decode_argument, decode_shape
from hardware.protocol import TimingProtocol, machine_provenance, protocol_dict, time_callable
from hardware.target import HardwareError


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
        shape = decode_shape(f["shape"], a.get("channels"))
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
        source = f
        if f.get("view"):
            if unit.replay is None:
                raise HardwareError(f"table unit {f['op']}: a view's arguments are kept in its replay data, which is missing")
            source = unit.replay
        channels = a.get("channels")
        args, kwargs = decode_argument(source["args"], channels), decode_argument(source["kwargs"], channels)
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
        "robust_cv": timing.robust_cv,
        "repeats": timing.repeats,
    }


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

