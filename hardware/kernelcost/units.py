"""The units of the ProxylessNAS Pixel-1 table read off a network's kernels (``table_units``).

First conv (``Conv``), inverted residual blocks (``expanded_conv``), last 1x1 conv (``Conv_1``) and
pooling plus classifier (``Logits``), keyed as the table keys them: the table target prices them
(:mod:`hardware.kernelcost.proxyless`), and validation tells which units of a held-out network the
table measured (:mod:`hardware.kernelcost.target`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hardware.kernels import Kernel

#: the activation the table's convolutions fuse (ReLU6 throughout; projections have none)
_ACT = "ReLU6"


@dataclass
class TableUnit:
    """A run of kernels the table prices as one entry; ``key`` None: it has no form in the table."""

    key: str | None
    kernels: list[Kernel]

    @property
    def name(self) -> str:
        return self.key or "not a table unit: " + " + ".join(_describe(k) for k in self.kernels)


def _describe(kernel: Kernel) -> str:
    return f"{kernel.type}(" + ",".join(f"{k}={v}" for k, v in kernel.config.items() if k != "batch" and v != "") + ")"


def _shape_in(c: Mapping[str, Any]) -> str:
    return f"{c['h']}x{c['w']}x{c['cin']}"


def _shape_out(c: Mapping[str, Any]) -> str:
    return f"{c['ho']}x{c['wo']}x{c['cout']}"


def _pointwise(kernel: Kernel, act: str) -> bool:
    c = kernel.config
    return kernel.type == "conv" and c["k"] == 1 and c["s"] == 1 and c["groups"] == 1 and c["act"] == act


def _block(kernels: list[Kernel], i: int) -> tuple[str, int] | None:
    """An inverted residual starting at ``kernels[i]``: its key and how many kernels it spans."""
    expand = kernels[i] if _pointwise(kernels[i], _ACT) else None
    j = i + (expand is not None)
    if j + 1 >= len(kernels):
        return None
    depthwise, project = kernels[j], kernels[j + 1]
    dw = depthwise.config
    if depthwise.type != "dwconv" or dw["act"] != _ACT or not _pointwise(project, "") or project.config["cin"] != dw["cout"]:
        return None
    first = (expand or depthwise).config
    if expand is not None and (first["cout"] != dw["cin"] or first["cout"] == first["cin"]):
        return None  # an expansion by 1 is not the table's E = 1 block (which has no expansion conv)
    out = project.config
    span = j + 2 - i
    add = kernels[i + span] if i + span < len(kernels) else None
    skip = (add is not None and add.type == "add" and not add.config["act"] and _shape_in(first) == _shape_out(out)
            and (add.config["c"], add.config["h"], add.config["w"]) == (out["cout"], out["ho"], out["wo"]))
    ratio = dw["cin"] / first["cin"]
    expand_ratio = int(ratio) if ratio.is_integer() else round(ratio, 3)
    key = (f"expanded_conv-input:{_shape_in(first)}-output:{_shape_out(out)}-expand:{expand_ratio}"
           f"-kernel:{dw['k']}-stride:{dw['s']}-idskip:{int(skip)}")
    return key, span + skip


def _logits(kernels: list[Kernel], i: int) -> tuple[str, int] | None:
    """Global average pooling followed by the classifier."""
    pool, fc = kernels[i], kernels[i + 1] if i + 1 < len(kernels) else None
    if pool.type != "gpool" or fc is None or fc.type != "linear" or fc.config["cin"] != pool.config["c"]:
        return None
    c = pool.config
    return f"Logits-input:{c['h']}x{c['w']}x{c['c']}-output:{fc.config['cout']}", 2


def _conv(kernels: list[Kernel], i: int) -> tuple[str, int] | None:
    """The first convolution (3x3, stride 2) or the last 1x1 convolution, each with BN and ReLU6."""
    kernel = kernels[i]
    c = kernel.config
    if kernel.type != "conv" or c["groups"] != 1 or c["act"] != _ACT:
        return None
    name = {(3, 2): "Conv", (1, 1): "Conv_1"}.get((c["k"], c["s"]))
    return (f"{name}-input:{_shape_in(c)}-output:{_shape_out(c)}", 1) if name else None


def table_units(kernels: list[Kernel]) -> list[TableUnit]:
    """The kernels grouped into the table's units, in order; a kernel of no unit form is a unit of its own."""
    units, i = [], 0
    while i < len(kernels):
        key, span = _block(kernels, i) or _logits(kernels, i) or _conv(kernels, i) or (None, 1)
        units.append(TableUnit(key, kernels[i:i + span]))
        i += span
    return units
