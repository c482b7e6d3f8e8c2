"""The lookup-table target: a network's latency is the sum of its units' table entries."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from hardware import validation as _validation
from hardware.layers import LayerSpec, memory_footprint, trace_model
from hardware.lookup import calibration
from hardware.lookup.profiling import time_unit
from hardware.lookup.table import LatencyTable
from hardware.lookup.units import Unit, units_of
from hardware.paths import resolve_path
from hardware.protocol import TimingProtocol, cpu_mismatch
from hardware.target import HardwareError, HardwareTarget, LatencyReport, ValidationCase

log = logging.getLogger(__name__)


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
        validation: dict[str, Any] | None = None,
        statistic: str = "median",
        kernels: str | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("source", None)
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if on_missing not in ("profile", "error", "kernels"):
            raise ValueError(f"hw.on_missing must be 'profile', 'error' or 'kernels', got {on_missing!r}")
        if on_missing == "kernels" and not kernels:
            raise ValueError("hw.on_missing=kernels needs hw.kernels: the device of kernel predictors (local_cpu_kernels)")
        self.kernels = kernels
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
        self.validation = dict(validation or {})
        # The stated error lives beside the table it was measured with (``validate`` writes it).
        self.stated_error_file = self.table_path.with_suffix(".validation.json")
        self.stated_error = _validation.StatedError.load(self.stated_error_file)
        self.cpu_warning = cpu_mismatch(self.table.metadata.get("device"), f"the table {self.table_path.name}")
        if self.cpu_warning:
            log.warning("hw %r: %s", name, self.cpu_warning)
        self._reference = None
        self._kernel_target: HardwareTarget | None = None

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

    def latency(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None = None,
                deployables: Mapping[str, Path] | None = None) -> LatencyReport:
        input_shape = tuple(int(s) for s in input_shape)
        trace = trace_model(model, input_shape)
        units, unmodelled = units_of(trace, self.granularity)
        if self.on_missing == "kernels" and any(self.table.lookup(u, self._field)[0] is None for u in units):
            return self._kernel_report(model, input_shape, layers)
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
        if self.cpu_warning:
            notes.append(self.cpu_warning)
        notes.append(_validation.stated_error_note(self.name, self.stated_error))
        layers = trace.layers if layers is None else layers
        meta = self.table.metadata
        return self.new_report(
            latency_ms,
            error_fraction=self.stated_error.fraction() if self.stated_error else 0.0,
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
                "stated_error": self.stated_error.provenance() if self.stated_error else None,
                "statistic": self.statistic,
                "sum_of_minima_ms": scale * math.fsum(minima) + overhead * len(minima),
                "sum_of_entries_ms": math.fsum(values),
                "sequence_scale": scale,
                "per_unit_overhead_ms": overhead,
                "input_shape": list(input_shape),
            },
            notes=notes,
        )

    def _kernel_report(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None) -> LatencyReport:
        """The answer of the kernel predictors (hw.kernels) for a model whose units the table lacks."""
        from hardware.registry import build

        if self._kernel_target is None:  # a device name, or a device's config (its yaml as a mapping)
            assert self.kernels is not None  # __init__ refuses on_missing=kernels without it
            self._kernel_target = build(self.kernels)
        report = self._kernel_target.latency(model, input_shape, layers)
        note = (f"units outside {self.table_path.name}: answered by the kernel predictors of {self.kernels!r} "
                "(provenance 'kernels' says which kernels came from its table and which from its models)")
        return dataclasses.replace(report, hw=self.name, notes=[note, *report.notes],
                                   provenance={**report.provenance, "answered_by": self.kernels})

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
        profile's, so most of their channel counts are interpolated, never looked up: the
        cases are held-out. With the seed of the profile or of the calibration they are
        in-sample (the table was built or calibrated on those very architectures).
        The first ``repeat_measurements`` architectures are measured twice: how far two
        measurements of one network disagree is the floor under the emulator's error.
        """
        from hardware import search_space

        spaces = tuple(
            spaces or self.validation.get("spaces") or self.table.metadata.get("spaces") or ("mobilenetv2", "resnet")
        )
        reference = self.reference_target(**self.validation.get("reference", {}))
        meta = self.table.metadata
        fitted_seeds = {s["seed"] for s in meta.get("sources", []) if "seed" in s}
        fitted_seeds |= {meta["calibration"]["seed"]} if "seed" in meta.get("calibration", {}) else set()
        fit = "in-sample" if seed in fitted_seeds else "held-out"
        cases: list[ValidationCase] = []
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
                    fit=fit,
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
        """Fit how units run in sequence (see :func:`hardware.lookup.calibration.calibrate`); saves the table."""
        reference = self.reference_target(**self.validation.get("reference", {}))
        fitted = calibration.calibrate(self.table, self.latency, reference.latency, self.batch_size, n, seed, progress)
        self.table.save(self.table_path)
        return fitted

    def sequence_calibration(self) -> tuple[float, float]:
        """(scale, per-unit overhead in ms) of :meth:`calibrate`; (1, 0) for an uncalibrated table."""
        return calibration.sequence_calibration(self.table)

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
