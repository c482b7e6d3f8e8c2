"""What a kernel costs inside a network beyond its cost alone (eager PyTorch on this CPU).

A kernel profiled on its own runs again and again with its weights and activations warm in the
caches and nothing between its calls; inside a network its weights arrive cold and every module
call pays the framework's dispatch. On the networks `validate` timed both ways, the whole network
took about +38% over the sum of its kernels timed alone while the predictors were within a few
percent of that sum (results/hardware_validation.md, local_cpu_kernels). So a kernel in a network
costs its prediction plus ``per_kernel + per_mweight * weights (millions) + per_ms * prediction``,
non-negative coefficients fitted on whole networks sampled from the profiling search spaces
(``python -m hardware profile --kernels --networks N``), never on the networks a validation predicts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from hardware.kernels import Kernel

TERMS = ("per_kernel", "per_mweight", "per_ms")


def mweights(kernel: Kernel) -> float:
    """The kernel's weights, in millions (what arrives cold from memory inside a network)."""
    c = kernel.config
    if kernel.type in ("conv", "dwconv"):
        return c["cin"] // max(c["groups"], 1) * c["k"] ** 2 * c["cout"] / 1e6
    if kernel.type == "linear":
        return c["cin"] * c["cout"] / 1e6
    if kernel.type == "se":
        return 2 * c["c"] * c["mid"] / 1e6
    return 0.0


@dataclass
class Composition:
    """Per-kernel in-network terms (ms); all zero when no whole network was measured."""

    coefficients: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TERMS, 0.0))
    networks: int = 0  # how many measured networks they were fitted on

    def extra_ms(self, kernel: Kernel, predicted_ms: float) -> float:
        c = self.coefficients
        return c["per_kernel"] + c["per_mweight"] * mweights(kernel) + c["per_ms"] * predicted_ms


def features(kernels: Sequence[Kernel], predicted: Sequence[float]) -> list[float]:
    """One network's sums of the terms: kernels, millions of weights, predicted ms."""
    return [float(len(kernels)), sum(mweights(k) for k in kernels), float(sum(predicted))]


def fit_composition(networks: Sequence[tuple[list[Kernel], float]],
                    predict: Callable[[list[Kernel]], list[float]]) -> Composition:
    """Non-negative terms such that ``sum(predicted) + terms`` matches each network's measured ms,
    least squares on relative error (small and large networks count alike)."""
    if not networks:
        return Composition()
    from scipy.optimize import nnls

    rows, gaps, totals = [], [], []
    for kernels, measured in networks:
        predicted = predict(kernels)
        rows.append(features(kernels, predicted))
        gaps.append(measured - sum(predicted))
        totals.append(measured)
    x, gap, ms = np.array(rows), np.array(gaps), np.array(totals)
    coef, _ = nnls(x / ms[:, None], gap / ms)  # each network's error relative to its measured total
    return Composition(dict(zip(TERMS, map(float, coef), strict=True)), len(networks))
