"""A per-operator cost model fitted to measured per-layer latencies, and the pixel1 target.

ProxylessNAS (Cai et al., ICLR 2019; Sec. 2 of Han et al., "Design Automation for
Efficient Deep Learning Computing", 2019) and AMC (He et al., ECCV 2018) steer by the
latency of a Google Pixel-1 running TF-Lite. ProxylessNAS predicts it with a lookup table
of measured operators; we have no phone, but we have real per-operator TF-Lite profiles
of four MobileNetV1 variants (published with the AMC models, see
``hardware.tflite_profiles``). A lookup table of 120 operators would only cover those
shapes, so instead this module fits a small, physically motivated cost model per operator
family and uses it for any network:

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

import copy
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn
from torch.overrides import TorchFunctionMode

from hardware.layers import LayerSpec
from hardware.target import HardwareError, HardwareTarget, LatencyReport, ValidationCase

#: Activations the TF-Lite converter fuses into the preceding convolution / add.
FUSED_ACTIVATIONS = frozenset({"ReLU", "ReLU6", "Identity"})
#: Op kinds of the elementwise family that the profiles measure directly.
_ELEMENTWISE_KINDS = ("pool", "softmax", "reshape")
#: Ops TF-Lite removes at conversion (folded into the previous operator).
_FOLDED_OPS = frozenset({"bn"})

GEMM_FEATURES = ("macs", "input", "output", "weights", "im2col", "small_m_macs")
DEPTHWISE_FEATURES = ("macs", "input", "output", "spill_bytes")


# --------------------------------------------------------------------------- elementwise ops
class _ElementwiseRecorder(TorchFunctionMode):
    """Records tensor-tensor add/mul and spatial means (ops that are not nn.Modules)."""

    _ADD = {
        torch.add,
        torch.Tensor.add,
        torch.Tensor.add_,
        torch.Tensor.__add__,
        torch.Tensor.__iadd__,
        torch.Tensor.__radd__,
    }
    _MUL = {
        torch.mul,
        torch.Tensor.mul,
        torch.Tensor.mul_,
        torch.Tensor.__mul__,
        torch.Tensor.__imul__,
        torch.Tensor.__rmul__,
    }
    _MEAN = {torch.mean, torch.Tensor.mean}

    def __init__(self, scope: list[str]) -> None:
        super().__init__()
        self.scope = scope
        self.records: list[LayerSpec] = []
        self._count: dict[str, int] = {}

    def _name(self, kind: str) -> str:
        prefix = self.scope[-1] if self.scope else ""
        key = f"{prefix}.{kind}" if prefix else kind
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        return key if n == 0 else f"{key}_{n}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        kind = "add" if func in self._ADD else "mul" if func in self._MUL else "mean" if func in self._MEAN else None
        if kind is None or not isinstance(out, torch.Tensor) or out.dim() < 2:
            return out
        if kind in ("add", "mul"):
            if len(args) < 2 or not all(isinstance(a, torch.Tensor) and a.dim() >= 2 for a in args[:2]):
                return out  # a scalar operand: part of an activation or a scale, not a tensor op
            shapes = [tuple(a.shape) for a in args[:2]]
            self.records.append(
                LayerSpec(
                    name=self._name(kind),
                    op=kind,
                    module_type="functional",
                    input_shape=max(shapes, key=math.prod),
                    output_shape=tuple(out.shape),
                    in_channels=int(out.shape[1]),
                    out_channels=int(out.shape[1]),
                    extra={"operand_shapes": shapes},
                )
            )
        elif kind == "mean" and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            self.records.append(
                LayerSpec(
                    name=self._name("mean"),
                    op="pool",
                    module_type="functional",
                    input_shape=tuple(args[0].shape),
                    output_shape=tuple(out.shape),
                    in_channels=int(args[0].shape[1]),
                    out_channels=int(out.shape[1]) if out.dim() > 1 else int(args[0].shape[1]),
                )
            )
        return out


def _push(scope: list[str], name: str):
    def hook(_module, _inputs) -> None:
        scope.append(name)

    return hook


def _pop(scope: list[str]):
    def hook(_module, _inputs, _output) -> None:
        scope.pop()

    return hook


def describe_elementwise(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerSpec]:
    """The functional ops of one forward pass that ``describe_layers`` cannot see.

    Residual adds, squeeze-excitation multiplies and spatial means are plain tensor
    operations, not modules; a latency model of a phone CPU must still pay for them.
    Each is named after the innermost module that ran it (``blocks.1.0.add``).
    """
    try:
        # Shapes are all that matter: run a copy on the meta device (no arithmetic).
        meta_model = copy.deepcopy(model).to("meta")
        return _record_elementwise(meta_model, torch.zeros(input_shape, device="meta"))
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return _record_elementwise(model, torch.zeros(input_shape, device=device))


def _record_elementwise(model: nn.Module, example: torch.Tensor) -> list[LayerSpec]:
    scope: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue
        handles.append(module.register_forward_pre_hook(_push(scope, name)))
        handles.append(module.register_forward_hook(_pop(scope)))
    was_training = model.training
    model.eval()
    recorder = _ElementwiseRecorder(scope)
    try:
        with torch.no_grad(), recorder:
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return recorder.records


def with_elementwise(
    target: HardwareTarget, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None
) -> list[LayerSpec]:
    """``target.layers_of(...)`` plus the functional ops, unless the caller's list has them."""
    described = target.layers_of(model, input_shape, layers)
    if any(layer.module_type == "functional" for layer in described):
        return described
    functional = describe_elementwise(model, input_shape)
    # A functional op runs at the activation precision of the block it belongs to (the
    # quantization method sets bit-widths on modules only): the lowest in that block.
    for op in functional:
        scope = op.name.rsplit(".", 1)[0] + "." if "." in op.name else ""
        bits = [layer.act_bits for layer in described if scope and layer.name.startswith(scope)]
        if bits:
            op.act_bits = min(bits)
    return list(described) + functional


def memory_of(layers: Iterable[LayerSpec]) -> dict[str, int]:
    """Weight bytes (at each layer's weight bit-width) and the largest input+output of a layer."""
    layers = list(layers)
    weight_bytes = sum(layer.weight_bytes for layer in layers if layer.op not in ("add", "mul"))
    peak = max((layer.input_bytes + layer.output_bytes for layer in layers), default=0)
    return {"peak_activation_bytes": int(peak), "weight_bytes": int(weight_bytes)}


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


# --------------------------------------------------------------------------- fit statistics
def _rmspe(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.sqrt(np.mean(((pred - meas) / meas) ** 2)))


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


# --------------------------------------------------------------------------- the pixel1 target
class Pixel1(HardwareTarget):
    """Google Pixel-1 CPU (TF-Lite, float, one thread), emulated by a fitted per-op cost model.

    Calibrated on the real per-layer TF-Lite profiles in ``reference_dir`` at construction
    (fitting takes milliseconds). ``validation_cases()`` replays the profiles.
    """

    source = "analytical"

    def __init__(
        self,
        name: str = "pixel1",
        calibration: str = "published",
        batch_size: int = 1,
        reference_dir: str | Path | None = None,
        cache_bytes: float = 1.0e6,
        simd_channels: int = 16,
        small_m_rows: int = 100,
        holdout_file: str | Path | None = None,
        validation: dict[str, bool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        from hardware.tflite_profiles import load_reference

        self.reference_dir = _resolve_reference_dir(reference_dir)
        try:
            self.references = load_reference(self.reference_dir)
        except FileNotFoundError as err:
            raise HardwareError(f"hw.reference_dir: {err}") from err
        self.settings = {"cache_bytes": cache_bytes, "simd_channels": simd_channels, "small_m_rows": small_m_rows}
        self.holdout_file = (
            Path(holdout_file) if holdout_file else Path(__file__).parent / "devices" / "pixel1_published.yaml"
        )
        self.validation = {"lomo": True, "per_layer": True, "holdout": False}
        for key, value in dict(validation or {}).items():
            if key not in self.validation:
                raise ValueError(f"hw.validation.{key} is unknown; use {sorted(self.validation)}")
            self.validation[key] = bool(value)
        self.cost_model = OpCostModel.fit(self._samples(self.references), **self.settings)
        self.fit_report = self._fit_report()

    @staticmethod
    def _samples(references) -> list[tuple[LayerSpec, float]]:
        return [pair for ref in references for pair in zip(ref.layers(), ref.per_layer_ms(), strict=True)]

    def _fit_report(self) -> FitReport:
        whole: dict[str, dict[str, float]] = {}
        rows: list[dict[str, Any]] = []
        lomo_errors: list[float] = []
        for i, ref in enumerate(self.references):
            layers, measured = ref.layers(), np.array(ref.per_layer_ms())
            pred = np.array([self.cost_model.predict_layer(layer) for layer in layers])
            others = [r for j, r in enumerate(self.references) if j != i]
            lomo_model = OpCostModel.fit(self._samples(others), **self.settings)
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
            lomo_errors.extend(lo / m - 1 for lo, m in zip(lomo, measured, strict=True))
        # Per-layer statistics over the compute layers (convolutions, pool); the tail
        # reshape/softmax of a few microseconds carries timer resolution, not cost.
        compute = [r for r in rows if r["op"] in ("conv", "dwconv", "pool")]
        errs = np.array([r["error"] for r in compute])
        lomo_c = np.array([r["lomo_error"] for r in compute])
        return FitReport(
            whole_model=whole,
            per_layer_rmspe=float(np.sqrt(np.mean(errs**2))),
            per_layer_rmspe_lomo=float(np.sqrt(np.mean(lomo_c**2))),
            per_layer_max_abs_error=float(np.abs(errs).max()),
            per_layer=rows,
        )

    # ----- the HardwareTarget interface
    def latency(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        layers: list[LayerSpec] | None = None,
        onnx_file: Path | None = None,
    ) -> LatencyReport:
        described = with_elementwise(self, model, input_shape, layers)
        return self.report(described)

    def report(self, layers: list[LayerSpec]) -> LatencyReport:
        """The latency report of a layer list (no torch model needed)."""
        per_layer = self.cost_model.predict(layers)
        total = float(sum(per_layer.values()))
        notes = [
            "calibrated on TF-Lite float32 profiles, 1 thread; batch > 1 scales the activation terms only",
            "energy: not modelled (no Pixel-1 power measurements to calibrate on)",
        ]
        if any(layer.weight_bits < 32 or layer.act_bits < 32 for layer in layers if self.cost_model.family(layer)):
            notes.append("bit-widths < 32 shrink the byte terms only: integer TF-Lite kernels were not profiled")
        if any(layer.sparsity > 0.05 for layer in layers if layer.op in ("conv", "dwconv", "linear")):
            notes.append("unstructured sparsity ignored: TF-Lite's CPU kernels are dense")
        unfused = sorted(
            {layer.module_type for layer in layers if layer.op == "act" and layer.module_type not in FUSED_ACTIVATIONS}
        )
        if unfused:
            notes.append(f"{', '.join(unfused)} costed as streaming elementwise ops (not in the profiles)")
        if input_shape_batch(layers) > 1:
            notes.append("profiles are batch 1: larger batches are extrapolated")
        known_error = max(self.fit_report.max_whole_model_error_lomo, self.fit_report.max_whole_model_error)
        return LatencyReport(
            hw=self.name,
            latency_ms=total,
            source=self.source,
            calibration=self.calibration,
            spread_ms=total * known_error,
            energy_mj=None,
            memory=memory_of(layers),
            per_layer_ms=per_layer,
            provenance=self.provenance(),
            notes=notes,
        )

    def provenance(self) -> dict[str, Any]:
        fit = self.fit_report
        return {
            "profile": "Google Pixel-1 CPU, TF-Lite float32, 1 thread, batch 1 (per-operator cost model)",
            "calibration_source": str(self.reference_dir),
            "reference": "AMC (He et al., ECCV 2018) TF-Lite benchmark_model profiles, mit-han-lab/amc-models",
            "fit": "NNLS on relative per-layer error; families gemm / depthwise / elementwise",
            "coefficients": self.cost_model.as_dict(),
            "known_error": {
                "whole_model_max_abs": fit.max_whole_model_error,
                "whole_model_max_abs_leave_one_model_out": fit.max_whole_model_error_lomo,
                "per_layer_rmspe": fit.per_layer_rmspe,
                "per_layer_rmspe_leave_one_model_out": fit.per_layer_rmspe_lomo,
            },
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "reference_dir": str(self.reference_dir)}

    # ----- validation
    def validation_cases(
        self,
        lomo: bool | None = None,
        per_layer: bool | None = None,
        holdout: bool | None = None,
        **_: Any,
    ) -> list[ValidationCase]:
        """Whole-model predicted against measured latency of each AMC profile (group
        ``amc-profiles``), and by default (``hw.validation``) also:

        ``lomo``: each model predicted by a fit without it (group ``amc-profiles-lomo``);
        ``per_layer``: one case per profiled operator (group ``per-layer``);
        ``holdout``: published Pixel-1 figures of other networks (builds timm models).
        """
        lomo = self.validation["lomo"] if lomo is None else lomo
        per_layer = self.validation["per_layer"] if per_layer is None else per_layer
        holdout = self.validation["holdout"] if holdout is None else holdout
        cases = []
        for prefix, row in self.fit_report.whole_model.items():
            cases.append(_case(f"mobilenetv1-{prefix}", row["predicted_ms"], row["measured_ms"], "amc-profiles", {}))
        if lomo:
            for prefix, row in self.fit_report.whole_model.items():
                cases.append(
                    _case(
                        f"mobilenetv1-{prefix} (lomo)",
                        row["lomo_predicted_ms"],
                        row["measured_ms"],
                        "amc-profiles-lomo",
                        {},
                    )
                )
        if per_layer:
            for row in self.fit_report.per_layer:
                cases.append(
                    _case(
                        f"{row['model']}/{row['layer']}",
                        row["predicted_ms"],
                        row["measured_ms"],
                        "per-layer",
                        {"op": row["op"]},
                    )
                )
        if holdout:
            cases.extend(self.holdout_cases())
        return cases

    def per_layer_validation(self) -> list[dict[str, Any]]:
        """Per-operator rows: model, layer, op, measured and predicted ms, error (in-sample and LOMO)."""
        return list(self.fit_report.per_layer)

    def holdout_cases(self) -> list[ValidationCase]:
        """Published whole-model Pixel-1 latencies of other networks, never used in the fit."""
        import timm
        import yaml

        if not self.holdout_file.is_file():
            raise HardwareError(f"pixel1 hold-out file {self.holdout_file} is missing")
        entries = [e for e in yaml.safe_load(self.holdout_file.read_text())["models"] if e.get("timm")]
        predicted = []
        for entry in entries:
            size = int(entry.get("input_size", 224))
            model = timm.create_model(entry["timm"], pretrained=False, **entry.get("kwargs", {}))
            predicted.append(self.latency(model, (1, 3, size, size)).latency_ms)
        # Each paper used its own TF-Lite build: compare ratios to that paper's reference model too.
        reference = {
            e.get("group"): (p, float(e["latency_ms"]))
            for e, p in zip(entries, predicted, strict=True)
            if e.get("reference")
        }
        cases = []
        for entry, pred in zip(entries, predicted, strict=True):
            measured = float(entry["latency_ms"])
            info: dict[str, Any] = {"source": entry.get("source", ""), "timm": entry["timm"]}
            if entry.get("group") in reference:
                ref_pred, ref_meas = reference[entry["group"]]
                info["same_paper_ratio_error"] = (pred / ref_pred) / (measured / ref_meas) - 1
            cases.append(_case(entry["name"], pred, measured, f"holdout-{entry.get('group', 'published')}", info))
        return cases


def _resolve_reference_dir(reference_dir: str | Path | None) -> Path:
    """The profile folder: absolute as given; relative from the working directory, else the project root."""
    if reference_dir is None or not str(reference_dir).strip() or str(reference_dir).startswith("None"):
        raise HardwareError(
            f"hw.reference_dir is unset ({reference_dir!r}): point it at the folder of Pixel-1 TF-Lite profiles "
            "(../shared/reference/pixel1-amc-tflite), e.g. +hw.reference_dir=/path/to/pixel1-amc-tflite "
            "or COMPRESSBENCH_PIXEL1_PROFILES=/path/to/pixel1-amc-tflite"
        )
    path = Path(reference_dir).expanduser()
    if path.is_absolute() or path.is_dir():
        return path
    from_root = Path(__file__).resolve().parents[1] / path
    return from_root if from_root.is_dir() else path


def input_shape_batch(layers: list[LayerSpec]) -> int:
    return int(layers[0].input_shape[0]) if layers and layers[0].input_shape else 1


def _case(name: str, predicted: float, measured: float, group: str, info: dict[str, Any]) -> ValidationCase:
    """A ValidationCase, with group/info when this version of the dataclass has them."""
    names = {f.name for f in dataclasses.fields(ValidationCase)}
    kwargs: dict[str, Any] = {}
    if "group" in names:
        kwargs["group"] = group
    if "info" in names:
        kwargs["info"] = info
    return ValidationCase(name=name, predicted_ms=float(predicted), measured_ms=float(measured), **kwargs)
