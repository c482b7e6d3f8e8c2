"""The ProxylessNAS authors' Pixel-1 latency table as a device: a network costs the sum of its units' entries.

ProxylessNAS (Cai et al., ICLR 2019, Sec. 3.3) prices a mobile network from a lookup table of
units measured on a Pixel-1 with TF-Lite: the first 3x3 convolution (``Conv``), each inverted
residual block (``expanded_conv``: 1x1 expansion unless E = 1, KxK depthwise, 1x1 projection,
identity add when ``idskip``), the last 1x1 convolution (``Conv_1``) and global pooling plus the
classifier (``Logits``); keys are parsed in :mod:`hardware.kernelcost.sources`. Units are read off
(:mod:`hardware.kernelcost.units`) the runtime's kernels (:mod:`hardware.kernels`: conv+BN+ReLU6 is one kernel), never off module
classes, so a block alone costs what it costs inside a network and the units of a network priced
one by one sum to the network (what a NAS latency loss needs). A unit the table lacks is refused
(``on_missing: error``) or predicted by a kernel target fitted on this same table
(``on_missing: kernels``, default ``pixel1_kernels``); the report says how much came from where.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from collections.abc import Mapping
from typing import Any

from torch import nn

from hardware.kernelcost.sources import read_proxylessnas_lut
from hardware.kernelcost.target import KernelTarget
from hardware.kernelcost.units import TableUnit, table_units
from hardware.kernels import detect_kernels
from hardware.layers import LayerSpec, memory_footprint, trace_model
from hardware.paths import resolve_path
from hardware.target import HardwareError, HardwareTarget, LatencyReport


class ProxylessTableTarget(HardwareTarget):
    """Latency = sum of the ProxylessNAS table's ``mean`` over the model's units (batch 1).

    ``table``: the table (``mobile_trim.yaml``); ``origin``: where that file comes from (its README);
    ``on_missing``: ``kernels`` (units outside the table are predicted by the kernel target ``kernels``,
    a device name or config) or ``error``.
    """

    source = "table"

    def __init__(self, name: str, table: str, origin: str = "", calibration: str = "published", batch_size: int = 1,
                 on_missing: str = "kernels", kernels: str | Mapping[str, Any] = "pixel1_kernels", **kwargs: Any) -> None:
        kwargs.pop("source", None)
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if batch_size != 1:
            raise ValueError(f"hw.batch_size must be 1: the ProxylessNAS table was measured at batch 1, got {batch_size}")
        if on_missing not in ("kernels", "error"):
            raise ValueError(f"hw.on_missing must be 'kernels' or 'error', got {on_missing!r}")
        self.table_path = resolve_path(table)
        try:
            self.entries = read_proxylessnas_lut(self.table_path)
        except FileNotFoundError:
            raise HardwareError(f"hw {name!r}: hw.table {self.table_path} does not exist; point hw.table (or "
                                "COMPRESSBENCH_PIXEL1_LUT) at the ProxylessNAS mobile_trim.yaml "
                                "(../shared/reference/pixel1-proxylessnas-lut)") from None
        self.origin, self.on_missing, self.kernels = origin, on_missing, kernels
        readme = self.table_path.parent / "README.md"
        self.readme = str(readme) if readme.is_file() else None
        self.sha256 = hashlib.sha256(self.table_path.read_bytes()).hexdigest()
        self._fallback: KernelTarget | None = None

    def fallback(self) -> KernelTarget:
        """The kernel target that predicts units outside the table (built on first use: it fits for seconds)."""
        from hardware.registry import build

        if self._fallback is None:
            target = build(self.kernels)
            if not isinstance(target, KernelTarget):
                raise HardwareError(f"hw.kernels {self.kernels!r} is not a kernel target (hardware.kernelcost.KernelTarget); "
                                    "use pixel1_kernels")
            self._fallback = target
        return self._fallback

    def missing_message(self, missing: list[TableUnit]) -> str:
        """One line: the units the table lacks (each distinct one once), each with the nearest keys it has."""
        distinct = list({unit.name: unit for unit in missing}.values())
        shown = []
        for unit in distinct[:3]:
            near = difflib.get_close_matches(unit.key, list(self.entries), n=2, cutoff=0.0) if unit.key else []
            shown.append(unit.name + (f" (nearest in the table: {', '.join(near)})" if near else ""))
        more = f"; and {len(distinct) - 3} more" if len(distinct) > 3 else ""
        return (f"hw {self.name!r}: {len(missing)} unit(s) not in {self.table_path.name}: {'; '.join(shown)}{more}. "
                "Use the table's shapes (224 px input, its channel plan), or set hw.on_missing=kernels to predict them")

    def latency(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None = None,
                deployables: Any = None) -> LatencyReport:
        input_shape = tuple(int(s) for s in input_shape)
        if input_shape[0] != 1:
            raise HardwareError(f"hw {self.name!r}: the ProxylessNAS table was measured at batch 1; got input shape "
                                f"{input_shape} (use batch 1)")
        trace = trace_model(model, input_shape)
        units = table_units(detect_kernels(trace, "tflite"))
        missing = [unit for unit in units if unit.key not in self.entries]
        if missing and self.on_missing == "error":
            raise HardwareError(self.missing_message(missing))
        by_name = {layer.name: layer for layer in trace.layers}
        rows: list[dict[str, Any]] = []
        per_layer: dict[str, float] = {}
        variance = predicted_spread = 0.0
        for unit in units:
            names = [name for kernel in unit.kernels for name in kernel.layers]
            if unit.key in self.entries:
                entry = self.entries[unit.key]
                ms, how = float(entry["mean"]), "table"
                variance += float(entry.get("var", 0.0))
            else:
                report = self.fallback().kernel_report(unit.kernels, [by_name[n] for n in names if n in by_name])
                ms, how = report.latency_ms, "predicted"
                predicted_spread += report.spread_ms
            per_layer[names[0]] = per_layer.get(names[0], 0.0) + ms
            rows.append({"unit": unit.name, "ms": ms, "from": how, "layers": names})
        counts = {how: sum(1 for r in rows if r["from"] == how) for how in ("table", "predicted")}
        ms_of = {how: math.fsum(r["ms"] for r in rows if r["from"] == how) for how in ("table", "predicted")}
        notes = [f"{counts['table']} of {len(units)} units from the ProxylessNAS table ({ms_of['table']:.3f} ms)"
                 + (f", {counts['predicted']} predicted by {self.kernels} ({ms_of['predicted']:.3f} ms): "
                    f"{'; '.join(list(dict.fromkeys(unit.name for unit in missing))[:3])}" if missing else ""),
                 "spread: the standard deviation of one run from the table's per-unit var (ms^2, units taken as "
                 "independent)" + (", plus the predictor's stated error on predicted units" if missing else "")]
        if not units:
            notes.append("no kernels (an identity or zero op): 0 ms")
        if layers is not None and any(spec.weight_bits != 32 or spec.act_bits != 32 for spec in layers):
            notes.append("the table was measured in fp32; per-layer bit-widths are ignored")
        return LatencyReport(
            hw=self.name, latency_ms=math.fsum(r["ms"] for r in rows), source=self.source, calibration=self.calibration,
            spread_ms=math.sqrt(variance) + predicted_spread, memory=memory_footprint(trace.layers),
            per_layer_ms=per_layer, notes=notes,
            provenance={"table": str(self.table_path), "table_sha256": self.sha256, "origin": self.origin,
                        "readme": self.readme, "units": rows, "units_table": counts["table"],
                        "units_predicted": counts["predicted"], "ms_table": ms_of["table"],
                        "ms_predicted": ms_of["predicted"], "predicted_by": self.kernels if missing else None,
                        "table_std_ms": math.sqrt(variance), "predicted_spread_ms": predicted_spread,
                        "input_shape": list(input_shape)},
        )

    def validation_cases(self, **options: Any) -> list:
        raise HardwareError(f"hw {self.name!r} is the ProxylessNAS table itself: its entries are the measurements, so "
                            "nothing is predicted out of sample (its reports state the table's own spread); "
                            "validate pixel1_kernels, which is fitted on it")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "table": str(self.table_path), "entries": len(self.entries),
                "origin": self.origin, "on_missing": self.on_missing}
