"""A new device from a few whole-model measurements: per-kernel-type scales of a base device's predictors.

HELP (Lee et al., "HELP: Hardware-Adaptive Efficient Latency Prediction for NAS via
Meta-Learning", NeurIPS 2021) adapts a latency predictor to an unseen device from about
ten measured networks. Here the adaptation is linear and physical: a network's latency
on the new device is ``sum_t s_t * S_t``, where ``S_t`` is the base device's predicted
time of the network's kernels of type ``t`` (conv, dwconv, linear, se, add, ...), and the
scales ``s_t >= 0`` are fitted by non-negative least squares on relative error of the
measured totals. HELP meta-learns a neural predictor instead; with ten rows and about ten
kernel types a per-type linear map is what the data can carry, so it departs there.

Few rows cannot pin every type: types with a small share of the time share one scale
(``MIN_SHARE``), and the scales are shrunk towards the single common scale ``s0`` (a ridge
penalty ``lambda * sum_t ((s_t - s0) / s0)^2``), ``lambda`` chosen by leave-one-model-out
error (``RIDGE``: 0 is the plain NNLS, inf is ``s0`` alone). The stated error is nested:
each held-out model's ``lambda`` is chosen without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import nnls

from hardware.kernelcost import measurements
from hardware.kernelcost.predictor import KernelPredictor, KernelSample
from hardware.paths import resolve_path
from hardware.target import HardwareError, ValidationCase, rmspe

#: ridge strengths tried (leave-one-model-out picks one): 0 is plain NNLS, inf the common scale alone
RIDGE = (0.0, 1e-3, 1e-2, 1e-1, 1.0, math.inf)
#: kernel types under this share of the measured networks' base time share one scale (``SMALL``): ten totals
#: measured to a few per cent cannot pin them (results/hardware_fit.md: with free scales, 10 CPU rows fitted on
#: the Pixel-1 base gave a global pool x301 and a held-out Spearman of -0.001 in the worst of 50 draws; pooled, 0.78)
MIN_SHARE = 0.05
SMALL = "small types"


@dataclass
class ScaleFit:
    """Fitted per-kernel-type scales; a type without measurements gets ``default``."""

    scales: dict[str, float]
    default: float
    ridge: float = 0.0
    ridge_errors: dict[str, float] = field(default_factory=dict)  # lambda -> leave-one-model-out RMSPE

    def scale(self, kind: str) -> float:
        return self.scales.get(kind, self.default)

    def predict(self, sums: dict[str, float]) -> float:
        return math.fsum(self.scale(kind) * ms for kind, ms in sums.items())

    def as_dict(self) -> dict[str, Any]:
        return {"scales": self.scales, "default_scale": self.default,
                "ridge": self.ridge if math.isfinite(self.ridge) else "inf", "ridge_errors": self.ridge_errors}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScaleFit:
        return cls({k: float(v) for k, v in data["scales"].items()}, float(data["default_scale"]),
                   float(data.get("ridge", 0.0)), dict(data.get("ridge_errors", {})))


def type_sums(predictor: KernelPredictor, samples: Sequence[KernelSample]) -> list[dict[str, float]]:
    """Per sample, the base predictor's time of its kernels summed per kernel type."""
    rows = []
    for sample in samples:
        sums: dict[str, float] = {}
        for kernel, (ms, _) in zip(sample.kernels, predictor.predict_all(sample.kernels), strict=True):
            sums[kernel.type] = sums.get(kernel.type, 0.0) + ms
        rows.append(sums)
    return rows


def _columns(sums: list[dict[str, float]]) -> dict[str, str]:
    """Each kernel type's scale: its own, or (under ``MIN_SHARE`` of the measured networks' base time on
    average) the one the small types share."""
    share: dict[str, float] = {}
    for row in sums:
        total = math.fsum(row.values())
        for kind, ms in row.items():
            if ms > 0:
                share[kind] = share.get(kind, 0.0) + ms / total / len(sums)
    return {kind: kind if value >= MIN_SHARE else SMALL for kind, value in sorted(share.items())}


def _solve(sums: list[dict[str, float]], ms: np.ndarray, ridge: float) -> ScaleFit:
    totals = np.array([math.fsum(row.values()) for row in sums]) / ms
    default = float(totals.sum() / (totals ** 2).sum())  # least squares of the relative error, one scale
    column = _columns(sums)
    names = sorted(set(column.values()))
    if math.isinf(ridge) or not names:
        return ScaleFit({k: default for k in column}, default, ridge)
    x = np.zeros((len(ms), len(names)))
    for i, row in enumerate(sums):
        for kind, value in row.items():
            if kind in column:
                x[i, names.index(column[kind])] += value / ms[i]
    y = np.ones(len(ms))
    if ridge > 0:
        x = np.vstack([x, math.sqrt(ridge) / default * np.eye(len(names))])
        y = np.concatenate([y, math.sqrt(ridge) * np.ones(len(names))])
    coef, _ = nnls(x, y)
    return ScaleFit({k: float(coef[names.index(c)]) for k, c in column.items()}, default, ridge)


def _held_out(sums: list[dict[str, float]], ms: np.ndarray, groups: list[str], ridge: float | None) -> np.ndarray:
    """Each sample predicted by scales fitted without its group (``ridge`` None: chosen without it too)."""
    predicted = np.zeros(len(ms))
    for group in sorted(set(groups)):
        held = np.array([g == group for g in groups])
        train = [s for s, h in zip(sums, held, strict=True) if not h]
        train_groups = [g for g, h in zip(groups, held, strict=True) if not h]
        fitted = fit_scales(train, ms[~held], train_groups) if ridge is None else _solve(train, ms[~held], ridge)
        predicted[held] = [fitted.predict(s) for s, h in zip(sums, held, strict=True) if h]
    return predicted


def fit_scales(sums: list[dict[str, float]], ms: Sequence[float] | np.ndarray, groups: Sequence[str]) -> ScaleFit:
    """Scales of the measured ``ms`` on the base's per-type ``sums``; the ridge chosen by leave-one-group-out
    RMSPE (one group: a model measured several times). Fewer models than scales + 2 (then no fit without a
    model is overdetermined, and cross-validation cannot judge the scales): the common scale alone."""
    y = np.asarray(ms, dtype=float)
    groups = list(groups)
    if len(set(groups)) < len(set(_columns(sums).values())) + 2:
        return _solve(sums, y, math.inf)
    errors = {ridge: rmspe(_held_out(sums, y, groups, ridge) / y - 1) for ridge in RIDGE}
    best = min(errors, key=lambda r: (errors[r], r))
    fitted = _solve(sums, y, best)
    fitted.ridge_errors = {str(r): e for r, e in errors.items()}
    return fitted


def model_groups(samples: Sequence[KernelSample]) -> list[str]:
    """The model each sample measured (its operators and its whole-model rows are one group)."""
    return [s.source.removesuffix(":network") for s in samples]


def scale_cases(base: KernelPredictor, samples: Sequence[KernelSample], group: str = "measurements",
                fitted: ScaleFit | None = None) -> list[ValidationCase]:
    """The measurements in-sample (``fitted``, else refitted on all) and leave-one-model-out (nested: the
    ridge chosen without the held-out model too): the cases a fitted device's stated error comes from."""
    sums = type_sums(base, samples)
    ms = np.array([s.ms for s in samples])
    groups = model_groups(samples)
    fitted = fitted or fit_scales(sums, ms, groups)
    held = _held_out(sums, ms, groups, None) if len(set(groups)) > 1 else None
    cases = []
    for index, sample in enumerate(samples):
        info = {"kernels": len(sample.kernels)}
        scope = "network" if sample.source.endswith(":network") else "operator"
        cases.append(ValidationCase(sample.name, fitted.predict(sums[index]), sample.ms, group, info, scope=scope))
        if held is not None:
            cases.append(ValidationCase(sample.name, float(held[index]), sample.ms, f"{group}-cv", info,
                                        fit="leave-one-out", scope=scope))
    return cases


#: the format tag of a fitted device's parameter file (written by ``python -m hardware fit``)
FIT_FORMAT = "compressbench-device-fit/1"
FIT_KINDS = ("scales", "analytical")


@dataclass
class DeviceFit:
    """A fitted device's parameter file (JSON, never a pickle): ``kind`` ``scales`` (per-kernel-type scales
    of its base device's predictors) or ``analytical`` (the analytical form's coefficients, fitted from
    scratch on per-operator profiles), the measurements it was fitted on and its cross-validated error."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> DeviceFit:
        if not path.is_file():
            raise HardwareError(f"hw.fitted: {path} does not exist; write it with `python -m hardware fit`")
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FIT_FORMAT or data.get("kind") not in FIT_KINDS:
            raise HardwareError(f"hw.fitted: {path} is not a {FIT_FORMAT} file of kind {FIT_KINDS}; "
                                "write it with `python -m hardware fit`")
        return cls(path, data)

    @property
    def kind(self) -> str:
        return str(self.data["kind"])

    def scales(self) -> ScaleFit | None:
        return ScaleFit.from_dict(self.data) if self.kind == "scales" else None

    def predictor(self) -> KernelPredictor:
        """The analytical predictor of an ``analytical`` fit, as fitted (no refit)."""
        return KernelPredictor(coefficients=dict(self.data["coefficients"]), settings=dict(self.data["settings"]),
                               build=str(self.data.get("build", "")))

    def samples(self, runtime: str) -> list[KernelSample]:
        """The measurements it was fitted on, read again (their kernels by ``runtime``'s fusion rules)."""
        where = self.data["measurements"]
        return measurements.read(resolve_path(where["path"]), where["format"], runtime, where.get("imports", []))
