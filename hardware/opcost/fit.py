"""How well a fitted cost model reproduces its profiles: in-sample and leave-one-model-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.layers import LayerSpec
from hardware.opcost.model import OpCostModel
from hardware.target import rmspe


@dataclass
class FitReport:
    """How well the cost model reproduces the profiles: in-sample and leave-one-model-out."""

    whole_model: dict[str, dict[str, float]]  # model -> predicted, measured, error, lomo_predicted, lomo_error
    per_layer_rmspe: float
    per_layer_rmspe_lomo: float
    per_layer_max_abs_error: float
    per_layer: list[dict[str, Any]]  # model, layer, op, measured, predicted, error

    @property
    def max_whole_model_error(self) -> float:
        return max(abs(v["error"]) for v in self.whole_model.values())

    @property
    def max_whole_model_error_lomo(self) -> float:
        return max(abs(v["lomo_error"]) for v in self.whole_model.values())

def samples(references: list[Any]) -> list[tuple[LayerSpec, float]]:
    """(layer, measured ms) of every profiled operator of ``references``."""
    return [pair for ref in references for pair in zip(ref.layers(), ref.per_layer_ms(), strict=True)]


def fit_report(references: list[Any], cost_model: OpCostModel, settings: dict[str, Any]) -> FitReport:
    """Errors of ``cost_model`` on each profiled model, and of a refit without that model (LOMO).

    ``references``: profiled models with ``prefix``, ``layers()``, ``per_layer_ms()`` and ``measured_ms``.
    """
    whole: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    for i, ref in enumerate(references):
        layers, measured = ref.layers(), np.array(ref.per_layer_ms())
        pred = np.array([cost_model.predict_layer(layer) for layer in layers])
        others = [r for j, r in enumerate(references) if j != i]
        lomo_model = OpCostModel.fit(samples(others), **settings)
        lomo = np.array([lomo_model.predict_layer(layer) for layer in layers])
        whole[ref.prefix] = {
            "predicted_ms": float(pred.sum()),
            "measured_ms": ref.measured_ms,
            "error": float(pred.sum() / ref.measured_ms - 1),
            "lomo_predicted_ms": float(lomo.sum()),
            "lomo_error": float(lomo.sum() / ref.measured_ms - 1),
        }
        for layer, p, m, lo in zip(layers, pred, measured, lomo, strict=True):
            rows.append(
                {
                    "model": ref.prefix,
                    "layer": layer.name,
                    "op": layer.op,
                    "measured_ms": float(m),
                    "predicted_ms": float(p),
                    "error": float(p / m - 1),
                    "lomo_error": float(lo / m - 1),
                }
            )
    # Per-layer statistics over the compute layers (convolutions, pool); the tail
    # reshape/softmax of a few microseconds carries timer resolution, not cost.
    compute = [r for r in rows if r["op"] in ("conv", "dwconv", "pool")]
    errs = np.array([r["error"] for r in compute])
    lomo_c = np.array([r["lomo_error"] for r in compute])
    return FitReport(
        whole_model=whole,
        per_layer_rmspe=rmspe(errs),
        per_layer_rmspe_lomo=rmspe(lomo_c),
        per_layer_max_abs_error=float(np.abs(errs).max()),
        per_layer=rows,
    )

