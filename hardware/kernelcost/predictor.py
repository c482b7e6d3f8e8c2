"""Per-kernel latency predictors: an analytical form and a random forest, and the table as exact cache.

Two model families predict a kernel's latency (``hardware.kernels.Kernel``), as nn-Meter
(Zhang et al., MobiSys 2021) compared:

* **analytical**: per operator family, ``t = sum_j c_j * term_j`` with physically
  motivated terms (MACs, bytes in and out, weights, im2col copies, the MACs of products
  with few rows, the bytes beyond the cache, a per-kernel overhead). The efficiency
  curves are in the terms: a matrix product with M rows costs ``a*MACs + b*K*N`` per
  row block, i.e. MACs at efficiency ``1 / (1 + b / (a*M))``. Coefficients are fitted
  by non-negative least squares on relative error, and a sample may be a *group* of
  kernels (a whole block, a whole network): its terms are summed, so per-block and
  per-network measurements fit the same coefficients as per-kernel ones.
* **forest**: a scikit-learn random forest per kernel type on the kernel's
  configuration and derived sizes (log scale), fitted on single-kernel samples only.

:meth:`KernelPredictor.fit` cross-validates both on the single-kernel samples of each
type and uses, per type, the one with the lower held-out error (``choice``). Entries of
``table`` (measured kernel configurations) are returned exactly: the table is a cache.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hardware.kernels import Kernel
from hardware.opcost.model import _nnls_relative
from hardware.target import rmspe

#: Operator family of each kernel type (the analytical form's terms are per family). A KxK convolution
#: (K > 1) is ``im2col``: TF-Lite copies its patches and runs a GEMM with K = k*k*cin, another kernel than the
#: 1x1 products' (with it in ``gemm``, the ProxylessNAS stem is over-predicted by 41-73% in 10-fold CV; with its
#: own terms, within 10%: 87.5% of the blocks within +-10%, RMSPE 7.4%, instead of 86.1% and 11.6%).
FAMILY = {"conv": "gemm", "linear": "gemm", "dwconv": "depthwise"}
PRODUCTS = ("gemm", "im2col", "depthwise")
#: The family of every other kernel type: elementwise (add, mul, act, bn, pool, gpool, concat). Their terms
#: are per kind (``<type>[:<activation>].elements`` and ``.overhead``); a kind without measurements is priced
#: by ``elementwise.*``, the same terms fitted with every elementwise kind sharing them.
ELEMENTWISE = "elementwise"
ACTIVATIONS = ("", "ReLU", "ReLU6", "Hardswish", "Hardsigmoid", "SiLU", "Sigmoid", "GELU", "Tanh", "Identity")
PREDICTORS = ("analytical", "forest")
#: Families whose terms are fitted per runtime build (``<term>@<build>``): every GEMM and depthwise
#: efficiency differs between TF-Lite builds (the AMC build runs 7x7 products at 3.6 GMAC/s, the
#: ProxylessNAS one at 6.5; narrow products on 56-112 px maps cost the ProxylessNAS build twice the
#: AMC build's per output). 10-fold CV on the ProxylessNAS blocks with both sources: 44% within +-10%
#: with shared terms, 76% with the overhead and map-size terms per build, 86% with every term per build.
#: A build's term without data of that build is the shared fit's. ``im2col`` is shared: each build has
#: one or four KxK convolutions (the stems), too few for a build's own terms.
BUILD_FAMILIES = ("gemm", "depthwise")


@dataclass
class KernelSample:
    """A measured latency of one kernel, or of a group of kernels run in sequence (a block, a network)."""

    name: str
    kernels: list[Kernel]
    ms: float
    source: str = ""
    build: str = ""  # the runtime build that measured it (its per-build terms, BUILD_FAMILIES)


def _family(kernel: Kernel) -> str:
    if kernel.type == "conv" and kernel.config.get("k", 1) > 1:
        return "im2col"
    return FAMILY.get(kernel.type, ELEMENTWISE)


def _elements(kernel: Kernel) -> float:
    c = kernel.config
    return float(c.get("batch", 1) * c.get("c", 1) * c.get("h", 1) * c.get("w", 1))


def _se_parts(kernel: Kernel) -> list[Kernel]:
    """Squeeze-excitation as the work it does: a global pool, two products on the pooled vector, a multiply."""
    c, mid, batch = kernel.config["c"], kernel.config["mid"], kernel.config.get("batch", 1)
    shape = {"c": c, "h": kernel.config["h"], "w": kernel.config["w"], "batch": batch}
    return [
        Kernel("gpool", dict(shape)),
        Kernel("linear", {"cin": c, "cout": mid, "rows": batch, "act": "ReLU"}),
        Kernel("linear", {"cin": mid, "cout": c, "rows": batch, "act": kernel.config.get("gate", "")}),
        Kernel("mul", dict(shape)),
    ]


def _elementwise_kind(kernel: Kernel) -> str:
    """Elementwise kernels differ per type (and per function for activations): each has its own terms."""
    activation = kernel.config.get("act", "")
    return f"{kernel.type}:{activation}" if kernel.type == "act" or (kernel.type in ("add", "bn") and activation) \
        else kernel.type


def kernel_terms(kernel: Kernel, cache_bytes: float = 1.0e6, small_m_rows: int = 100,
                 simd_channels: int = 16) -> dict[str, float]:
    """The analytical terms of one kernel, keyed ``<family>.<term>`` (MACs and elements in millions)."""
    if kernel.type == "se":
        total: dict[str, float] = {}
        for part in _se_parts(kernel):
            for key, value in kernel_terms(part, cache_bytes, small_m_rows, simd_channels).items():
                total[key] = total.get(key, 0.0) + value
        return total
    family, c = _family(kernel), kernel.config
    if family == ELEMENTWISE:
        touched = _elements(kernel) * (3 if kernel.type in ("add", "mul") else 2)
        return {f"{_elementwise_kind(kernel)}.elements": touched / 1e6, f"{_elementwise_kind(kernel)}.overhead": 1.0}
    act = 1.0 if c.get("act") not in ("", "ReLU", "ReLU6", "Identity", None) else 0.0
    if kernel.type == "linear":
        m, k, n = c["rows"], c["cin"], c["cout"]
        inputs, outputs, area, groups = m * k, m * n, 1, 1
    else:
        m, area, groups = c["batch"] * c["ho"] * c["wo"], c["k"] * c["k"], c["groups"]
        k, n = c["cin"] // groups * area, c["cout"]
        inputs, outputs = c["batch"] * c["cin"] * c["h"] * c["w"], m * n
    spill = max(0.0, 4.0 * (inputs + outputs) - cache_bytes) / 1e6
    if family == "depthwise":
        pad = math.ceil(n / simd_channels) * simd_channels / n if simd_channels else 1.0
        terms = {"macs": m * area * n * pad, "map_macs": m * area * n * pad * _map_scale(m), "input": inputs * pad, "output": outputs * pad, "spill": spill * 1e6 * pad,
                 "act": outputs * act}
    else:
        macs = m * k * n
        terms = {"macs": macs, "map_macs": macs * _map_scale(m), "input": inputs, "output": outputs, "weights": k * n, "im2col": m * k * groups * (area > 1),
                 "small_m_macs": macs * (m < small_m_rows), "spill": spill * 1e6, "act": outputs * act}
    out = {f"{family}.{name}": value / 1e6 for name, value in terms.items()}
    out[f"{family}.overhead"] = 1.0
    return out


def _map_scale(rows: int) -> float:
    """log2 of a feature map's pixels over 7x7's: MACs on larger maps run at lower efficiency (cache misses)."""
    return max(0.0, math.log2(rows / 49)) if rows > 0 else 0.0


def _family_of_term(name: str) -> str:
    family = name.split(".", 1)[0]
    return family if family in PRODUCTS else ELEMENTWISE


def forest_features(kernel: Kernel) -> list[float]:
    """The forest's inputs: the configuration's numbers and the analytical sizes, on a log scale."""
    numbers = [float(v) for _, v in sorted(kernel.config.items()) if isinstance(v, (int, float))]
    activation = kernel.config.get("act", kernel.config.get("gate", ""))
    code = float(ACTIVATIONS.index(activation)) if activation in ACTIVATIONS else float(len(ACTIVATIONS))
    sizes = [v for k, v in sorted(kernel_terms(kernel).items()) if not k.endswith("overhead")]
    return [math.log1p(v) for v in numbers] + [code] + [math.log1p(1e3 * v) for v in sizes]


@dataclass
class KernelPredictor:
    """Latency of kernels: the table's value when it has the configuration, else the chosen model's."""

    coefficients: dict[str, float] = field(default_factory=dict)  # analytical: term -> ms per unit
    forests: dict[str, Any] = field(default_factory=dict)  # kernel type -> fitted forest
    choice: dict[str, str] = field(default_factory=dict)  # kernel type -> "analytical" | "forest"
    table: dict[str, float] = field(default_factory=dict)  # Kernel.key -> measured ms (exact cache)
    settings: dict[str, Any] = field(default_factory=dict)  # cache_bytes, small_m_rows, simd_channels
    cv_error: dict[str, dict[str, float]] = field(default_factory=dict)  # type -> predictor -> held-out RMSPE
    build: str = ""  # the runtime build predictions stand for (its BUILD_FAMILIES coefficients)

    def analytical(self, kernel: Kernel) -> float:
        terms = kernel_terms(kernel, **self.settings)
        return sum(self._coefficient(_term_key(name, self.build)) * value for name, value in terms.items())

    def _coefficient(self, name: str) -> float:
        """The term's coefficient; a build's term the build had no data for is the shared fit's
        (``name`` without ``@build``), an elementwise kind without measurements ``elementwise.*``."""
        if name in self.coefficients:
            return self.coefficients[name]
        if "@" in name:
            return self._coefficient(name.split("@", 1)[0])
        if _family_of_term(name) != ELEMENTWISE:
            return 0.0
        return self.coefficients.get(f"{ELEMENTWISE}.{name.rsplit('.', 1)[1]}", 0.0)

    def forest(self, kernel: Kernel) -> float | None:
        model = self.forests.get(kernel.type)
        if model is None:
            return None
        return float(math.exp(model.predict(np.array([forest_features(kernel)]))[0]))

    def predict(self, kernel: Kernel) -> tuple[float, str]:
        """(ms, where it came from: "table", "forest" or "analytical")."""
        if kernel.key in self.table:
            return self.table[kernel.key], "table"
        if self.choice.get(kernel.type) == "forest" and (ms := self.forest(kernel)) is not None:
            return ms, "forest"
        return self.analytical(kernel), "analytical"

    def predict_all(self, kernels: Iterable[Kernel]) -> list[tuple[float, str]]:
        return [self.predict(kernel) for kernel in kernels]

    def total(self, kernels: Iterable[Kernel]) -> float:
        return math.fsum(ms for ms, _ in self.predict_all(kernels))

    # ----- fitting
    @classmethod
    def fit(cls, samples: list[KernelSample], table: dict[str, float] | None = None, folds: int = 5,
            forest: bool = True, seed: int = 0, trees: int = 100, **settings: Any) -> KernelPredictor:
        """Fit the analytical form on every sample, a forest per type on its single-kernel samples,
        and choose per type by ``folds``-fold cross-validated RMSPE of the single-kernel samples
        (``folds`` < 2: no choice, every type analytical)."""
        predictor = cls(coefficients=fit_analytical(samples, settings), table=dict(table or {}), settings=dict(settings))
        if not forest:
            return predictor
        if folds < 2:  # forests without the choice (every type analytical until the caller chooses)
            predictor.forests = _fit_forests(samples, seed, trees)
            return predictor
        singles: dict[str, list[KernelSample]] = {}
        for sample in samples:
            if len(sample.kernels) == 1:
                singles.setdefault(sample.kernels[0].type, []).append(sample)
        rng = np.random.default_rng(seed)
        fold_of = {id(s): int(f) for group in singles.values() for s, f in zip(group, rng.permutation(len(group)) % folds,
                                                                                 strict=True)}
        errors: dict[str, dict[str, list[float]]] = {t: {p: [] for p in PREDICTORS} for t in singles}
        for fold in range(folds):
            train = [s for s in samples if fold_of.get(id(s)) != fold]
            held = [s for s in samples if fold_of.get(id(s)) == fold]
            if not held:
                continue
            part = cls(coefficients=fit_analytical(train, settings), settings=dict(settings))
            part.forests = _fit_forests(train, seed, trees)
            for sample in held:
                kernel = sample.kernels[0]
                errors[kernel.type]["analytical"].append(part.analytical(kernel) / sample.ms - 1)
                by_forest = part.forest(kernel)
                errors[kernel.type]["forest"].append((by_forest if by_forest is not None else math.inf) / sample.ms - 1)
        predictor.forests = _fit_forests(samples, seed, trees)
        for kind, by_predictor in errors.items():
            predictor.cv_error[kind] = {p: rmspe(e) for p, e in by_predictor.items() if e}
            scores = predictor.cv_error[kind]
            predictor.choice[kind] = min(scores, key=lambda p: scores[p]) if scores else "analytical"
        return predictor



def _term_key(name: str, build: str) -> str:
    return f"{name}@{build}" if build and _family_of_term(name) in BUILD_FAMILIES else name


def fit_analytical(samples: list[KernelSample], settings: dict[str, Any]) -> dict[str, float]:
    """NNLS on relative error over every sample (groups of kernels sum their terms); terms without data are
    left out (0, or their fallback).

    BUILD_FAMILIES' terms get one coefficient per build of the samples that name one, beside a fallback
    fitted on every build together (``<term>``), as the elementwise kinds beside ``elementwise.*``."""
    rows = [[(_term_key(name, sample.build), value) for kernel in sample.kernels
             for name, value in kernel_terms(kernel, **settings).items()] for sample in samples]
    coefficients = _nnls_terms(rows, samples)
    shared = [[(_shared(name), value) for name, value in row] for row in rows]
    fallback = _nnls_terms(shared, samples)
    return {**fallback, **coefficients}


def _shared(name: str) -> str:
    """A term of every build under one name, the elementwise kinds' terms under one name (the fallbacks)."""
    name = name.split("@", 1)[0]
    return f"{ELEMENTWISE}.{name.rsplit('.', 1)[1]}" if _family_of_term(name) == ELEMENTWISE else name


def _nnls_terms(rows: list[list[tuple[str, float]]], samples: list[KernelSample]) -> dict[str, float]:
    names = sorted({name for row in rows for name, _ in row})
    index = {name: i for i, name in enumerate(names)}
    x = np.zeros((len(samples), len(names)))
    for i, row in enumerate(rows):
        for name, value in row:
            x[i, index[name]] += value
    y = np.array([s.ms for s in samples])
    used = np.flatnonzero(np.abs(x).sum(axis=0) > 0)
    if not len(used) or not len(samples):
        return {}
    return {names[i]: float(c) for i, c in zip(used, _nnls_relative(x[:, used], y), strict=True)}


def _fit_forests(samples: list[KernelSample], seed: int, trees: int) -> dict[str, Any]:
    """One random forest per kernel type on log latency, from the single-kernel samples (3 at least)."""
    from sklearn.ensemble import RandomForestRegressor

    by_type: dict[str, list[KernelSample]] = {}
    for sample in samples:
        if len(sample.kernels) == 1 and sample.ms > 0:
            by_type.setdefault(sample.kernels[0].type, []).append(sample)
    forests = {}
    for kind, group in by_type.items():
        if len(group) < 3:
            continue
        model = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1, min_samples_leaf=1)
        model.fit(np.array([forest_features(s.kernels[0]) for s in group]), np.log([s.ms for s in group]))
        forests[kind] = model
    return forests
