"""The one interface every hardware target implements, and the report it returns.

A target answers "how long does this model take on you?" and says where the answer
comes from. It never knows which method produced the model (docs/ARCHITECTURE.md, Contracts).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hardware.layers import LayerSpec, describe_layers

#: Where a latency figure comes from.
SOURCES = ("measured", "table", "analytical")
#: How far an emulated figure is calibrated (ISSUE 3): by us here, on published data, or not at all.
CALIBRATIONS = ("measured", "published", "spec-sheet")


class HardwareError(RuntimeError):
    """A target cannot answer: unknown device, missing table, absent GPU."""


@dataclass
class LatencyReport:
    """Latency of one model on one target, with its provenance."""

    hw: str
    latency_ms: float
    source: str
    calibration: str
    spread_ms: float = 0.0  # inter-quartile range for measured; for emulated, the stated (out-of-sample) error
    energy_mj: float | None = None
    memory: dict[str, int] | None = None  # peak_activation_bytes, weight_bytes
    per_layer_ms: dict[str, float] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: measured: the median of each round the model was timed in, paired with the other models of the same
    #: ``latencies`` call round by round (hardware.speedup); empty for a prediction
    rounds_ms: list[float] = field(default_factory=list)
    noisy: bool = False  # measured: the timing crossed the protocol's noise threshold

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"latency source {self.source!r} is not one of {SOURCES}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration {self.calibration!r} is not one of {CALIBRATIONS}")

    @property
    def label(self) -> str:
        """Short provenance string for tables: 'measured', 'table/published', ..."""
        if self.source == "measured":
            return "measured"
        return f"{self.source}/{self.calibration}"


#: How a validation case relates to the data its target was fitted on. Only the last two
#: measure the error on models the target has not seen; an untagged case counts as in-sample,
#: so forgetting the tag can never inflate a headline.
FITS = ("in-sample", "leave-one-out", "held-out")
OUT_OF_SAMPLE = ("leave-one-out", "held-out")
#: What one case predicts: a whole network, or one operator of a network.
SCOPES = ("network", "operator")


def rmspe(relative_errors: Iterable[float]) -> float:
    """Root mean square of relative errors (predicted / measured - 1), the emulators' error statistic; NaN for none."""
    errors = np.asarray(list(relative_errors), dtype=float)
    return float(np.sqrt(np.mean(errors ** 2))) if errors.size else math.nan


@dataclass
class ValidationCase:
    """One architecture's emulated latency against its measured latency."""

    name: str
    predicted_ms: float
    measured_ms: float
    group: str = ""  # a subset to report separately (search space, network family, ...)
    info: dict[str, Any] = field(default_factory=dict)  # per-case details for the report
    fit: str = "in-sample"  # in-sample | leave-one-out (refitted without it) | held-out (never fitted on)
    scope: str = "network"  # network | operator

    def __post_init__(self) -> None:
        if self.fit not in FITS:
            raise ValueError(f"ValidationCase.fit {self.fit!r} is not one of {FITS}")
        if self.scope not in SCOPES:
            raise ValueError(f"ValidationCase.scope {self.scope!r} is not one of {SCOPES}")

    @property
    def relative_error(self) -> float:
        return (self.predicted_ms - self.measured_ms) / self.measured_ms

    @property
    def out_of_sample(self) -> bool:
        return self.fit in OUT_OF_SAMPLE


class HardwareTarget(ABC):
    """A device a model is evaluated on. Subclasses are configured by conf/hw/<name>.yaml."""

    #: the source kind of this target's figures (one of SOURCES)
    source: str = "measured"
    #: where ``python -m hardware validate`` stores the error this target states (emulated targets)
    stated_error_file: Path | None = None
    #: the deployable format this target executes (a key of a method's ``deployables``, e.g.
    #: ``"onnx"``); None: it runs (or models) the PyTorch model itself
    executes: str | None = None

    def __init__(self, name: str, calibration: str = "measured", batch_size: int = 1, **_: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"hw.batch_size must be >= 1, got {batch_size}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"hw.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        self.name = name
        self.calibration = calibration
        self.batch_size = batch_size

    @abstractmethod
    def latency(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        layers: list[LayerSpec] | None = None,
        deployables: Mapping[str, Path] | None = None,
    ) -> LatencyReport:
        """Latency of ``model`` for one batch of ``input_shape`` (batch dim included).

        ``layers`` lets the caller pass a description it already has (with per-layer
        bit-widths, for example); targets that need one build it otherwise.
        ``deployables`` are the files a method wrote for runtimes (``{"onnx": int8 QDQ model}``):
        a target that executes one of them (:attr:`executes`) runs that file instead of ``model``;
        other targets ignore them.
        """

    def latencies(self, models: Mapping[str, nn.Module], input_shape: tuple[int, ...],
                  layers: Mapping[str, list[LayerSpec] | None] | None = None,
                  deployables: Mapping[str, Mapping[str, Path] | None] | None = None) -> dict[str, LatencyReport]:
        """The latency of several models, by name, for comparing them (``hardware.speedup.speedup_between``).

        A prediction does not depend on when it is made; measured targets time the models
        together, in interleaved rounds, so that their ratio is paired.
        """
        layers, deployables = layers or {}, deployables or {}
        return {name: self.latency(model, input_shape, layers.get(name), deployables.get(name))
                for name, model in models.items()}

    def new_report(self, latency_ms: float, *, error_fraction: float = 0.0, **fields: Any) -> LatencyReport:
        """A report of this target (name, source, calibration filled in); ``error_fraction`` of an emulated
        figure (its stated relative error) becomes its spread."""
        return LatencyReport(hw=self.name, latency_ms=latency_ms, source=self.source, calibration=self.calibration,
                             spread_ms=latency_ms * error_fraction, **fields)

    def deployable(self, deployables: Mapping[str, Path] | None) -> Path | None:
        """The file of ``deployables`` this target executes, if any."""
        if self.executes is None or not deployables:
            return None
        return deployables.get(self.executes)

    def layers_of(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None) -> list[LayerSpec]:
        return layers if layers is not None else describe_layers(model, input_shape)

    def validation_cases(self, **options: Any) -> list[ValidationCase]:
        """Predicted against measured latency on this target's reference data.

        Emulated targets override this (the lookup table of a measured device samples
        random architectures; pixel1 replays its published profiles); ``python -m
        hardware validate`` turns the cases into results/hardware_validation.md.
        """
        raise HardwareError(f"hw {self.name!r} has no validation data: it is measured, not emulated")

    def describe(self) -> dict[str, Any]:
        return {"hw": self.name, "source": self.source, "calibration": self.calibration, "batch_size": self.batch_size}


class LayerCostTarget(HardwareTarget):
    """A target that prices the one layer description (op-cost models, rooflines): the model never runs.

    Subclasses implement :meth:`report`; per-layer bit-widths and sparsity reach them through
    the description a caller passes (``layers``), else the model's own is traced.
    """

    source = "analytical"

    def latency(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None = None,
                deployables: Mapping[str, Path] | None = None) -> LatencyReport:
        return self.report(self.layers_of(model, input_shape, layers))

    @abstractmethod
    def report(self, layers: list[LayerSpec]) -> LatencyReport:
        """Latency (and energy, memory where modelled) of the described layers on this device."""
