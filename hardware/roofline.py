"""Analytical (roofline) hardware targets: CPUs, GPUs and accelerators the papers name.

HAQ (Wang et al., CVPR 2019; Sec. 4 of Han et al., "Design Automation for Efficient Deep
Learning Computing", 2019) explains its per-layer bit-widths with the roofline model: a
layer is bounded either by compute (MACs / peak MAC rate at its precision) or by memory
(bytes moved / bandwidth), and lowering the bits of weights or activations moves it along
one axis or the other (their Fig. 4). This module turns that reasoning into a latency and
energy model, one configuration (``conf/hw/<device>.yaml``) per device:

    time(op)   = max(MACs / (peak(bits) x efficiency[op kind]), bytes / bandwidth) + overhead
    energy(op) = MACs x energy_per_mac(bits) + bytes x energy_per_byte + static power x time

* ``compute: fixed`` (CPUs, GPUs, NPUs): the op runs at the narrowest precision the device
  supports that holds both its weight and activation bits (``peak_macs_per_s`` maps bits
  to MAC/s); bytes are counted at that executed precision.
* ``compute: bit_serial`` (BISMO on zynq7020/vu9p, Umuroglu et al. FPL 2018; BitFusion,
  Sharma et al. ISCA 2018): the MAC rate is ``peak_macs_per_s`` (for ``granularity``-bit
  operands) divided by ceil(w/g) x ceil(a/g), i.e. compute scales with the product of
  the bit-widths; bytes are counted at the layer's own bits.
* Unstructured sparsity lowers MACs and weight bytes (plus ``sparse_index_bits`` per
  nonzero) only when ``exploits_sparsity`` is true (an EIE-like device, Han et al. ISCA
  2016); otherwise a sparse model costs what the dense one costs and the report says so.
* Elementwise ops (adds, unfused activations, pooling) are bandwidth-bound streams.
* ``fuse_bn_act``: batch norm and cheap activations are fused into the previous op by the
  deployment stack (TF-Lite, accelerators' output stages); PyTorch eager on a CPU/GPU
  runs them as separate kernels.

Calibration: ``spec-sheet`` devices use datasheet figures and stated efficiency
assumptions (uncalibrated, every report says so). ``published`` devices had some
parameters (``calibrated_parameters``) fitted to published latencies (``anchors`` in the
yaml, fitted with ``python -m hardware.roofline calibrate conf/hw/<device>.yaml``).
``validation_cases()`` replays each anchor twice: with the yaml's fit (in-sample: it was
fitted on it) and with a fit of the same parameters on the other anchors only
(leave-one-out). ``python -m hardware validate --hw <device>`` stores the leave-one-out
RMSPE beside the device data (``hardware/devices/<device>.validation.json``); every
report states it as its error, and flags a model outside the anchors' domain.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hardware import validation
from hardware.domain import FittedDomain
from hardware.layers import FUSED_ACTIVATIONS, LayerSpec, memory_footprint
from hardware.paths import resolve_path
from hardware.target import HardwareError, LatencyReport, LayerCostTarget, ValidationCase

#: Efficiency keys: what kind of op a layer is, for the per-op efficiency factor.
OP_KINDS = ("conv", "pointwise", "dwconv", "linear", "elementwise")
_FREE_WHEN_FUSED = frozenset({"bn"})
#: Below this fraction of zeros a layer is dense (zero-initialised biases are not pruning).
SPARSITY_NOTE_THRESHOLD = 0.05
#: Parameters ``calibrate`` can fit, besides ``efficiency.<kind>``: every peak scaled, the
#: bandwidth scaled, the per-op overhead, and the conv and pointwise efficiency together.
CALIBRATABLE = ("compute_scale", "bandwidth", "overhead_us", "efficiency.gemm")


def _numel(shape) -> int:
    return math.prod(int(s) for s in shape)


@dataclass
class OpCost:
    """The roofline terms of one op (for reports and tests)."""

    kind: str
    macs: float
    bytes: float
    compute_s: float
    memory_s: float
    time_s: float
    energy_j: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"


class Roofline(LayerCostTarget):
    """A device described by its peak compute, memory bandwidth and per-op efficiency."""


    def __init__(
        self,
        name: str,
        calibration: str = "spec-sheet",
        batch_size: int = 1,
        peak_macs_per_s: dict[int, float] | float = 1e9,
        compute: str = "fixed",
        granularity: int = 1,
        operand_bits: list[int] | None = None,
        memory_bandwidth_gb_s: float = 10.0,
        efficiency: dict[str, float] | None = None,
        overhead_us: float = 0.0,
        energy_pj_per_mac: dict[int, float] | float = 0.0,
        energy_pj_per_byte: float = 0.0,
        static_power_w: float = 0.0,
        exploits_sparsity: bool = False,
        sparse_index_bits: int = 4,
        fuse_bn_act: bool = True,
        reference: str = "",
        anchors: list[dict[str, Any]] | None = None,
        calibrated_parameters: list[str] | None = None,
        stated_error_file: str | Path | None = None,
        device: str = "",
        **kwargs: Any,
    ) -> None:
        # The device's own settings, to refit its calibrated parameters without one anchor.
        self.config = {k: _plain(v) for k, v in locals().items() if k not in ("self", "kwargs", "__class__")}
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if compute not in ("fixed", "bit_serial"):
            raise ValueError(f"hw.compute must be 'fixed' or 'bit_serial', got {compute!r}")
        if memory_bandwidth_gb_s <= 0:
            raise ValueError(f"hw.memory_bandwidth_gb_s must be > 0, got {memory_bandwidth_gb_s}")
        self.compute = compute
        self.granularity = int(granularity)
        # Bit Fusion composes 2-bit bricks into 2/4/8/16-bit operands only; BISMO takes any width.
        self.operand_bits = sorted(int(b) for b in _plain(operand_bits)) if operand_bits else None
        self.peak = _bits_table(peak_macs_per_s, "peak_macs_per_s", compute)
        self.energy_per_mac = _bits_table(energy_pj_per_mac, "energy_pj_per_mac", compute)
        self.bandwidth = float(memory_bandwidth_gb_s) * 1e9
        self.efficiency = {kind: 1.0 for kind in OP_KINDS}
        for key, value in dict(efficiency or {}).items():
            if key not in OP_KINDS:
                raise ValueError(f"hw.efficiency.{key} is not an op kind; use one of {OP_KINDS}")
            if not 0 < float(value) <= 1:
                raise ValueError(f"hw.efficiency.{key} must be in (0, 1], got {value}")
            self.efficiency[key] = float(value)
        self.overhead_s = float(overhead_us) * 1e-6
        self.energy_per_byte = float(energy_pj_per_byte) * 1e-12
        self.static_power_w = float(static_power_w)
        self.exploits_sparsity = bool(exploits_sparsity)
        self.sparse_index_bits = int(sparse_index_bits)
        self.fuse_bn_act = bool(fuse_bn_act)
        self.reference = reference
        self.anchors = [_plain(a) for a in (anchors or [])]
        self.calibrated_parameters = list(_plain(calibrated_parameters) or [])
        for parameter in self.calibrated_parameters:
            if parameter not in CALIBRATABLE and not parameter.startswith("efficiency."):
                raise ValueError(f"hw.calibrated_parameters: {parameter!r} is not one of {CALIBRATABLE} or efficiency.<kind>")
        self.stated_error_file = (
            resolve_path(stated_error_file) if stated_error_file else validation.stated_error_path(name)
        )
        self.stated_error = validation.StatedError.load(self.stated_error_file) if self.anchors else None
        self.device = device

    # ----- per-op model
    def kind_of(self, layer: LayerSpec) -> str | None:
        """Efficiency kind of a layer, or None when the deployment stack fuses it away."""
        if layer.op in _FREE_WHEN_FUSED:
            return None if self.fuse_bn_act else "elementwise"
        if layer.op == "act":
            return None if self.fuse_bn_act and layer.module_type in FUSED_ACTIVATIONS else "elementwise"
        if layer.op == "dwconv":
            return "dwconv"
        if layer.op == "conv":
            return "pointwise" if layer.kernel == (1, 1) else "conv"
        if layer.op == "linear":
            return "linear"
        return "elementwise"

    def executed_bits(self, bits: int) -> int:
        """Precision a fixed-precision device runs ``bits`` at: among the supported
        precisions that hold ``bits``, the fastest (the narrowest on a tie)."""
        if self.compute == "bit_serial":
            return bits
        fitting = [b for b in self.peak if b >= bits]
        if not fitting:
            return max(self.peak)
        return max(fitting, key=lambda b: (self.peak[b], -b))

    def mac_rate(self, weight_bits: int, act_bits: int) -> float:
        """Peak MAC/s for these operand widths (before the per-op efficiency)."""
        if self.compute == "bit_serial":
            return self.peak[self.granularity] / self.bit_passes(weight_bits, act_bits)
        return self.peak[self.executed_bits(max(weight_bits, act_bits))]

    def operand_width(self, bits: int) -> int:
        """Width a bit-serial device processes an operand of ``bits`` at."""
        if not self.operand_bits:
            return bits
        fitting = [b for b in self.operand_bits if b >= bits]
        return min(fitting) if fitting else max(self.operand_bits)

    def bit_passes(self, weight_bits: int, act_bits: int) -> int:
        """Granularity-bit x granularity-bit products per MAC: ceil(w/g) x ceil(a/g)."""
        g = self.granularity
        return math.ceil(self.operand_width(weight_bits) / g) * math.ceil(self.operand_width(act_bits) / g)

    def mac_energy(self, weight_bits: int, act_bits: int) -> float:
        """Joules per MAC."""
        if self.compute == "bit_serial":
            return self.energy_per_mac[self.granularity] * 1e-12 * self.bit_passes(weight_bits, act_bits)
        bits = self.executed_bits(max(weight_bits, act_bits))
        table = self.energy_per_mac
        return table.get(bits, table[min(table, key=lambda b: abs(b - bits))]) * 1e-12

    def op_cost(self, layer: LayerSpec) -> OpCost | None:
        kind = self.kind_of(layer)
        if kind is None:
            return None
        w_bits, a_bits = layer.weight_bits, layer.act_bits
        if self.compute == "fixed":
            w_bits = a_bits = self.executed_bits(max(w_bits, a_bits))
        act_elems = _numel(layer.input_shape) + _numel(layer.output_shape)
        if kind == "elementwise":
            shapes = layer.extra.get("operand_shapes")
            if shapes:
                act_elems = sum(_numel(s) for s in shapes) + _numel(layer.output_shape)
            macs = float(_numel(layer.output_shape))  # one operation per output element
            weight_bytes = layer.params * w_bits / 8
        else:
            macs = float(layer.macs)
            weight_bytes = layer.params * w_bits / 8
            if self.exploits_sparsity and layer.params and layer.nonzero_params < layer.params:
                density = layer.nonzero_params / layer.params
                macs *= density
                weight_bytes = layer.nonzero_params * (w_bits + self.sparse_index_bits) / 8
        nbytes = act_elems * a_bits / 8 + weight_bytes
        compute_s = macs / (self.mac_rate(w_bits, a_bits) * self.efficiency[kind]) if macs else 0.0
        memory_s = nbytes / self.bandwidth
        time_s = max(compute_s, memory_s) + self.overhead_s
        energy = macs * self.mac_energy(w_bits, a_bits) + nbytes * self.energy_per_byte + self.static_power_w * time_s
        return OpCost(kind, macs, nbytes, compute_s, memory_s, time_s, energy)

    # ----- the LayerCostTarget interface
    def report(self, layers: list[LayerSpec]) -> LatencyReport:
        """The latency report of a layer list (no torch model needed)."""
        per_layer: dict[str, float] = {}
        energy = 0.0
        bounds = {"compute": 0, "memory": 0}
        for layer in layers:
            cost = self.op_cost(layer)
            per_layer[layer.name] = cost.time_s * 1e3 if cost else 0.0
            if cost:
                energy += cost.energy_j
                bounds[cost.bound] += 1
        total = float(sum(per_layer.values()))
        notes = []
        if self.calibration == "spec-sheet":
            notes.append("spec-sheet: uncalibrated (datasheet peak/bandwidth, assumed efficiencies)")
        sparse = any(
            layer.sparsity > SPARSITY_NOTE_THRESHOLD for layer in layers if layer.op in ("conv", "dwconv", "linear")
        )
        if sparse and not self.exploits_sparsity:
            notes.append("unstructured sparsity ignored: dense device (a sparse model costs the dense cost)")
        if sparse and self.exploits_sparsity:
            notes.append(
                f"unstructured sparsity exploited: nonzero MACs, {self.sparse_index_bits}-bit index per nonzero weight"
            )
        if self.compute == "fixed":
            requested = {max(layer.weight_bits, layer.act_bits) for layer in layers if self.kind_of(layer)}
            rounded = sorted(b for b in requested if self.executed_bits(b) != b)
            if rounded:
                notes.append(f"bit-widths {rounded} run at the device's supported precisions {sorted(self.peak)}")
        if self.compute == "bit_serial" and self.operand_bits:
            operands = {b for layer in layers if self.kind_of(layer) for b in (layer.weight_bits, layer.act_bits)}
            widened = {b: self.operand_width(b) for b in sorted(operands) if self.operand_width(b) != b}
            if widened:
                notes.append("operand widths " + ", ".join(f"{b} run as {w}-bit" for b, w in widened.items())
                             + f" (the device's operand widths are {self.operand_bits})")
        notes.append(f"{bounds['compute']} ops compute-bound, {bounds['memory']} memory-bound")
        notes.append("energy: per-op energies (Horowitz ISSCC 2014 class) + static power x time; uncalibrated")
        if self.anchors:
            notes += validation.fitted_notes(self.name, self.stated_error, self.fitted_domain, layers, self.kind_of)
        return self.new_report(
            total,
            error_fraction=self.stated_error.fraction() if self.stated_error else 0.0,
            energy_mj=energy * 1e3,
            memory=memory_footprint(layers),
            per_layer_ms=per_layer,
            provenance=self.provenance(),
            notes=notes,
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "profile": f"roofline model of {self.device or self.name} ({self.compute} precision)",
            "calibration_source": self.calibration,
            "reference": self.reference,
            "stated_error": self.stated_error.provenance() if self.stated_error else None,
            "fitted_domain": self.fitted_domain.as_dict() if self.anchors else None,
            "peak_macs_per_s": {str(k): v for k, v in self.peak.items()},
            "memory_bandwidth_gb_s": self.bandwidth / 1e9,
            "efficiency": dict(self.efficiency),
            "overhead_us": self.overhead_s * 1e6,
            "exploits_sparsity": self.exploits_sparsity,
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "compute": self.compute}

    # ----- anchors: published measurements this device was (or can be) calibrated on
    def anchor_layers(self, anchor: dict[str, Any]) -> list[LayerSpec]:
        return anchor_layers(anchor)

    @functools.cached_property
    def fitted_domain(self) -> FittedDomain:
        """Input sizes, batches, bits, operator kinds and channels of the anchors (built once, at batch 1)."""
        if not self.anchors:
            raise HardwareError(f"hw {self.name!r} has no anchors: it was not fitted, so it has no fitted domain")
        networks = [anchor_layers({**anchor, "batch_size": 1}) for anchor in self.anchors]
        domain = FittedDomain.of(f"{len(self.anchors)} published anchors", networks, self.kind_of)
        batches = [int(anchor.get("batch_size", 1)) for anchor in self.anchors]
        return replace(domain, batch=(min(batches), max(batches)))

    def validation_cases(self, **_: Any) -> list[ValidationCase]:
        """Predicted against published latency for each anchor: in-sample with the yaml's
        fit, and leave-one-out (the calibrated parameters refitted on the other anchors)."""
        if not self.anchors:
            raise HardwareError(
                f"hw {self.name!r} has no published anchors: it is {self.calibration}, nothing to validate against"
            )
        layers = [self.anchor_layers(anchor) for anchor in self.anchors]
        cases = []
        for anchor, anchor_specs in zip(self.anchors, layers, strict=True):
            cases.append(self._case(anchor, self.report(anchor_specs).latency_ms, "in-sample"))
        if len(self.anchors) > len(self.calibrated_parameters) and self.calibrated_parameters:
            for i, anchor in enumerate(self.anchors):
                others = [j for j in range(len(self.anchors)) if j != i]
                config = {**self.config, "anchors": [self.anchors[j] for j in others]}
                refit, _ = fit(config, self.calibrated_parameters, [layers[j] for j in others])
                cases.append(self._case(anchor, refit.report(layers[i]).latency_ms, "leave-one-out"))
        return cases

    def _case(self, anchor: dict[str, Any], predicted: float, fit_kind: str) -> ValidationCase:
        return ValidationCase(
            anchor["name"],
            float(predicted),
            float(anchor["latency_ms"]),
            group=f"{self.name}-anchors",
            info={"source": anchor.get("source", "")},
            fit=fit_kind,
        )


def _plain(value: Any) -> Any:
    """A Hydra/OmegaConf container as plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return value


def _bits_table(value: dict[int, float] | float, key: str, compute: str) -> dict[int, float]:
    if isinstance(value, (int, float)):
        return {1 if compute == "bit_serial" else 32: float(value)}
    try:
        table = {int(k): float(v) for k, v in dict(_plain(value)).items()}
    except (TypeError, ValueError):
        raise ValueError(f"hw.{key} must be a number or a mapping bits -> value, got {value!r}") from None
    if not table:
        raise ValueError(f"hw.{key} is empty")
    return table


def anchor_layers(anchor: dict[str, Any]) -> list[LayerSpec]:
    """Layers of a published measurement: a timm model or a MobileNetV1 channel plan,
    at the anchor's batch size, input size and uniform bit-widths."""
    batch = int(anchor.get("batch_size", 1))
    size = int(anchor.get("input_size", 224))
    if "plan" in anchor:
        from hardware.tflite_profiles import mobilenetv1_layers

        plan = anchor["plan"]
        layers = mobilenetv1_layers(
            int(plan["first_conv"]),
            [tuple(b) if isinstance(b, (list, tuple)) else (int(b), 1) for b in plan["blocks"]],
            input_size=size,
            num_classes=int(plan.get("num_classes", 1001)),
            batch_size=batch,
        )
    elif "timm" in anchor:
        layers = copy.deepcopy(_timm_layers(anchor["timm"], size, batch, json.dumps(anchor.get("kwargs", {}))))
    else:
        raise ValueError(f"anchor {anchor.get('name')!r} needs 'timm' (a model name) or 'plan' (a MobileNetV1 plan)")
    bits = anchor.get("bits")
    if bits is not None:
        w_bits, a_bits = (bits, bits) if isinstance(bits, int) else (int(bits[0]), int(bits[1]))
        for layer in layers:
            layer.weight_bits, layer.act_bits = w_bits, a_bits
    return layers


@functools.lru_cache(maxsize=16)
def _timm_layers(name: str, size: int, batch: int, kwargs: str) -> list[LayerSpec]:
    """Layers of a timm model (built once per process: anchors share models across bit-widths)."""
    import timm

    from hardware.layers import describe_layers

    model = timm.create_model(name, pretrained=False, **json.loads(kwargs))
    shape = (batch, 3, size, size)
    return describe_layers(model, shape)


# --------------------------------------------------------------------------- calibration
def calibrate(config: dict[str, Any], parameters: list[str]) -> dict[str, Any]:
    """Fit the named parameters of a device config to its anchors (log-space least squares).

    ``parameters``: keys among ``compute_scale`` (multiplies every peak), ``bandwidth``,
    ``overhead_us``, ``efficiency.<kind>``, ``efficiency.gemm`` (conv and pointwise). Returns the fitted
    config values and the per-anchor errors before and after. Used offline; the yaml stores the result.
    """
    anchors = config.get("anchors") or []
    target, result = fit(config, parameters, [anchor_layers(a) for a in anchors])
    return {
        **result,
        "peak_macs_per_s": dict(target.peak),
        "memory_bandwidth_gb_s": target.bandwidth / 1e9,
        "overhead_us": target.overhead_s * 1e6,
        "efficiency": target.efficiency,
        "anchors": [a["name"] for a in anchors],
    }


def fit(
    config: dict[str, Any], parameters: list[str], layers: list[list[LayerSpec]]
) -> tuple[Roofline, dict[str, Any]]:
    """The device of ``config`` with ``parameters`` fitted to its anchors (``layers``: each anchor's layers).

    Returns the fitted target and the fitted values with the per-anchor errors before and after.
    """
    import numpy as np
    from scipy.optimize import least_squares

    anchors = config.get("anchors") or []
    if not anchors:
        raise ValueError("the config has no anchors to calibrate on")
    measured = np.array([float(a["latency_ms"]) for a in anchors])
    # The candidates carry no anchors: they are priced, not validated (no stated error, no domain).
    config = {k: v for k, v in config.items() if k not in ("_target_", "source", "calibrated_parameters", "anchors")}

    def build(x: np.ndarray) -> Roofline:
        cfg = dict(config)
        cfg["efficiency"] = dict(config.get("efficiency") or {})
        for name, value in zip(parameters, np.exp(x), strict=True):
            if name == "compute_scale":
                peak = cfg["peak_macs_per_s"]
                cfg["peak_macs_per_s"] = (
                    {k: v * value for k, v in peak.items()} if isinstance(peak, dict) else peak * value
                )
            elif name == "bandwidth":
                cfg["memory_bandwidth_gb_s"] = config["memory_bandwidth_gb_s"] * value
            elif name == "overhead_us":
                cfg["overhead_us"] = value
            elif name == "efficiency.gemm":  # convolutions and pointwise convolutions together
                cfg["efficiency"]["conv"] = cfg["efficiency"]["pointwise"] = min(value, 1.0)
            elif name.startswith("efficiency."):
                cfg["efficiency"][name.split(".", 1)[1]] = min(value, 1.0)
            else:
                raise ValueError(f"cannot calibrate {name!r}")
        return Roofline(**cfg)

    def residuals(x: np.ndarray) -> np.ndarray:
        target = build(x)
        pred = np.array([target.report(specs).latency_ms for specs in layers])
        return np.log(pred / measured)

    x0 = []
    for name in parameters:
        if name == "overhead_us":
            x0.append(math.log(max(float(config.get("overhead_us", 1.0)), 1e-3)))
        elif name == "efficiency.gemm":
            x0.append(math.log(float((config.get("efficiency") or {}).get("pointwise", 0.5))))
        elif name.startswith("efficiency."):
            x0.append(math.log(float((config.get("efficiency") or {}).get(name.split(".", 1)[1], 0.5))))
        else:
            x0.append(0.0)
    before = residuals(np.array(x0))
    upper = [0.0 if p.startswith("efficiency.") else np.inf for p in parameters]
    solution = least_squares(residuals, np.array(x0), bounds=([-np.inf] * len(x0), upper))
    return build(solution.x), {
        "parameters": dict(zip(parameters, np.exp(solution.x).tolist(), strict=True)),
        "errors_before": (np.exp(before) - 1).tolist(),
        "errors_after": (np.exp(solution.fun) - 1).tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m hardware.roofline calibrate conf/hw/<device>.yaml [param ...]``."""
    import argparse
    import json

    import yaml

    parser = argparse.ArgumentParser(prog="python -m hardware.roofline")
    sub = parser.add_subparsers(dest="command", required=True)
    cal = sub.add_parser("calibrate", help="fit parameters of a roofline device yaml to its anchors")
    cal.add_argument("config", type=Path)
    cal.add_argument("parameters", nargs="*", help="default: the yaml's calibrated_parameters")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    parameters = args.parameters or config.pop("calibrated_parameters", None)
    config.pop("calibrated_parameters", None)
    config.pop("source", None)
    if not parameters:
        raise SystemExit(f"{args.config}: name the parameters to fit (or set calibrated_parameters)")
    print(json.dumps(calibrate(config, list(parameters)), indent=2))


if __name__ == "__main__":
    main()
