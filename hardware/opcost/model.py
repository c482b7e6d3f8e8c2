"""The per-operator cost model: features of a layer per operator family, and their NNLS fit.

A lookup table of a device's profiled operators would only cover the profiled shapes (120
operators of four MobileNetV1s for the Pixel-1), so this module fits a small, physically
motivated cost model per operator family and uses it for any network:

* ``gemm`` (1x1 and k x k convolutions, fully connected): TF-Lite runs them as a matrix
  product C[M, N] = A[M, K] B[K, N] (M output pixels, K = k*k*C_in/groups, N = C_out), with
  an im2col copy first when k > 1. ``t = a*MACs + b*in + c*out + d*weights + e*im2col +
  f*MACs[M < small_m_rows]``; the last term is the lower efficiency of products with few
  rows (the 7x7 layers), which the profiles show clearly.
* ``depthwise``: no reuse, memory bound. ``t = a*MACs + b*in + c*out + e*spill``, where
  ``spill`` is the input+output bytes beyond the (L2) cache; channels are padded to the
  SIMD/unroll width of the kernel (16 floats), which the 24-channel layers show.
* ``elementwise`` (pooling, softmax, reshape, and ops the profiles lack: add, mul,
  hard-swish, sigmoid): ``t = s*elements touched + c_kind``; add, mul and activations
  are assumed to stream like the average pool does (same rate per element and overhead).
* Batch norm is folded and ReLU/ReLU6 fused into the preceding operator by the TF-Lite
  converter, so they cost nothing.

Every coefficient is fitted by non-negative least squares on relative error (each layer
weighted by 1/measured time), so that small layers count as much as large ones and no
term can be negative (a negative cost has no physical meaning and extrapolates badly).

Departures: the profiles are float32, one thread, batch 1; lower bit-widths only shrink
the byte terms (int kernels were not profiled), and unstructured sparsity is ignored
(TF-Lite's kernels are dense): reports say so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import nnls

from hardware.layers import FUSED_ACTIVATIONS, LayerSpec

#: Op kinds of the elementwise family that the profiles measure directly.
_ELEMENTWISE_KINDS = ("pool", "softmax", "reshape")
#: Ops TF-Lite removes at conversion (folded into the previous operator).
_FOLDED_OPS = frozenset({"bn"})

GEMM_FEATURES = ("macs", "input", "output", "weights", "im2col", "small_m_macs")
DEPTHWISE_FEATURES = ("macs", "input", "output", "spill_bytes")


def _numel(shape: Iterable[int]) -> int:
    return math.prod(int(s) for s in shape)


# --------------------------------------------------------------------------- cost model
@dataclass
class OpCostModel:
    """Coefficients (ms per feature unit) of each operator family, and the fit's settings.

    Feature units: MACs and elements in millions, bytes in MB (1e6).
    """

    gemm: dict[str, float] = field(default_factory=dict)
    depthwise: dict[str, float] = field(default_factory=dict)
    elementwise: dict[str, float] = field(default_factory=dict)  # "per_element" and "overhead_<kind>"
    cache_bytes: float = 1.0e6
    simd_channels: int = 16
    small_m_rows: int = 100
    reference_bits: int = 32

    # ----- features
    def family(self, layer: LayerSpec) -> str | None:
        """gemm, depthwise, elementwise, or None (free: folded or fused at conversion)."""
        if layer.op in _FOLDED_OPS:
            return None
        if layer.op == "act":
            return None if layer.module_type in FUSED_ACTIVATIONS else "elementwise"
        if layer.op == "dwconv":
            return "depthwise"
        if layer.op in ("conv", "linear"):
            return "gemm"
        return "elementwise"

    def gemm_features(self, layer: LayerSpec) -> dict[str, float]:
        act_scale = layer.act_bits / self.reference_bits
        w_scale = layer.weight_bits / self.reference_bits
        if layer.op == "linear":
            k = layer.in_channels
            n = layer.out_channels
            m = _numel(layer.input_shape) // max(k, 1)
            kernel_area = 1
        else:
            kernel_area = layer.kernel[0] * layer.kernel[1]
            k = (layer.in_channels // max(layer.groups, 1)) * kernel_area
            n = layer.out_channels
            m = _numel(layer.output_shape) // max(n, 1)  # output pixels x batch
        macs = layer.macs or m * k * n
        im2col = m * k * layer.groups if kernel_area > 1 else 0
        return {
            "macs": macs / 1e6,
            "input": _numel(layer.input_shape) * act_scale / 1e6,
            "output": _numel(layer.output_shape) * act_scale / 1e6,
            "weights": k * n * w_scale / 1e6,
            "im2col": im2col * act_scale / 1e6,
            "small_m_macs": macs / 1e6 if m < self.small_m_rows else 0.0,
        }

    def depthwise_features(self, layer: LayerSpec) -> dict[str, float]:
        channels = max(layer.in_channels, 1)
        padded = math.ceil(channels / self.simd_channels) * self.simd_channels if self.simd_channels else channels
        pad = padded / channels
        act_scale = layer.act_bits / self.reference_bits
        in_elems, out_elems = _numel(layer.input_shape), _numel(layer.output_shape)
        footprint = 4 * act_scale * (in_elems + out_elems)
        return {
            "macs": layer.macs * pad / 1e6,
            "input": in_elems * pad * act_scale / 1e6,
            "output": out_elems * pad * act_scale / 1e6,
            "spill_bytes": max(0.0, footprint - self.cache_bytes) * pad / 1e6,
        }

    def elementwise_features(self, layer: LayerSpec) -> tuple[str, float]:
        """(kind, millions of elements touched). Kinds without data use the pool's overhead."""
        act_scale = layer.act_bits / self.reference_bits
        if layer.op == "reshape":
            return "reshape", 0.0
        touched = _numel(layer.input_shape) + _numel(layer.output_shape)
        if layer.op in ("add", "mul"):
            shapes = layer.extra.get("operand_shapes") or [layer.input_shape, layer.input_shape]
            touched = sum(_numel(s) for s in shapes) + _numel(layer.output_shape)
        kind = layer.op if layer.op in _ELEMENTWISE_KINDS else "other"
        return kind, touched * act_scale / 1e6

    # ----- prediction
    def predict_layer(self, layer: LayerSpec) -> float:
        family = self.family(layer)
        if family is None:
            return 0.0
        if family == "gemm":
            f = self.gemm_features(layer)
            return sum(self.gemm.get(k, 0.0) * v for k, v in f.items()) + self.gemm.get("overhead", 0.0)
        if family == "depthwise":
            f = self.depthwise_features(layer)
            return sum(self.depthwise.get(k, 0.0) * v for k, v in f.items()) + self.depthwise.get("overhead", 0.0)
        kind, touched = self.elementwise_features(layer)
        overhead = self.elementwise.get(f"overhead_{kind}", self.elementwise.get("overhead_pool", 0.0))
        return self.elementwise.get("per_element", 0.0) * touched + overhead

    def predict(self, layers: Iterable[LayerSpec]) -> dict[str, float]:
        return {layer.name: self.predict_layer(layer) for layer in layers}

    # ----- fitting
    @classmethod
    def fit(cls, samples: list[tuple[LayerSpec, float]], **settings: Any) -> OpCostModel:
        """Fit every family by NNLS on relative error from (layer, measured ms) pairs."""
        model = cls(**settings)
        by_family: dict[str, list[tuple[LayerSpec, float]]] = {"gemm": [], "depthwise": [], "elementwise": []}
        for layer, ms in samples:
            family = model.family(layer)
            if family is not None and ms > 0:
                by_family[family].append((layer, ms))
        for family, names, features in (
            ("gemm", GEMM_FEATURES, model.gemm_features),
            ("depthwise", DEPTHWISE_FEATURES, model.depthwise_features),
        ):
            rows = by_family[family]
            if not rows:
                raise ValueError(f"no measured {family} layers to fit the cost model on")
            x = np.array([[features(layer)[n] for n in names] + [1.0] for layer, _ in rows])
            y = np.array([ms for _, ms in rows])
            coef = _nnls_relative(x, y)
            setattr(model, family, dict(zip(list(names) + ["overhead"], map(float, coef), strict=True)))
        rows = by_family["elementwise"]
        kinds = sorted({model.elementwise_features(layer)[0] for layer, _ in rows})
        if rows:
            design = []
            for layer, _ in rows:
                kind, touched = model.elementwise_features(layer)
                design.append([touched] + [1.0 if kind == k else 0.0 for k in kinds])
            coef = _nnls_relative(np.array(design), np.array([ms for _, ms in rows]))
            model.elementwise = {"per_element": float(coef[0])}
            model.elementwise.update({f"overhead_{k}": float(c) for k, c in zip(kinds, coef[1:], strict=True)})
        return model

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """min ||(x c - y) / y|| subject to c >= 0."""
    w = 1.0 / y
    coef, _ = nnls(x * w[:, None], y * w)
    return coef

