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
parameters fitted to published latencies (``anchors`` in the yaml, fitted with
``python -m hardware.roofline calibrate conf/hw/<device>.yaml``);
``validation_cases()`` replays those anchors so that the fit's error is visible.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hardware.layers import FUSED_ACTIVATIONS, LayerSpec, memory_of, with_elementwise
from hardware.target import HardwareError, HardwareTarget, LatencyReport, ValidationCase

#: Efficiency keys: what kind of op a layer is, for the per-op efficiency factor.
OP_KINDS = ("conv", "pointwise", "dwconv", "linear", "elementwise")
_FREE_WHEN_FUSED = frozenset({"bn"})
#: Below this fraction of zeros a layer is dense (zero-initialised biases are not pruning).
SPARSITY_NOTE_THRESHOLD = 0.05


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


class Roofline(HardwareTarget):
    """A device described by its peak compute, memory bandwidth and per-op efficiency."""

    source = "analytical"

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
        known_error: float | None = None,
        anchors: list[dict[str, Any]] | None = None,
        device: str = "",
        **kwargs: Any,
    ) -> None:
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
        self.known_error = known_error
        self.anchors = [_plain(a) for a in (anchors or [])]
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

    # ----- the HardwareTarget interface
    def latency(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        layers: list[LayerSpec] | None = None,
        deployables: Mapping[str, Path] | None = None,
    ) -> LatencyReport:
        return self.report(with_elementwise(self, model, input_shape, layers))

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
        if self.compute == "bit_serial" and any(
            max(layer.weight_bits, layer.act_bits) > 8 for layer in layers if self.kind_of(layer)
        ):
            notes.append("layers above 8 bits on a bit-serial device: quantize the model (its anchors are 4-8-bit)")
        notes.append(f"{bounds['compute']} ops compute-bound, {bounds['memory']} memory-bound")
        notes.append("energy: per-op energies (Horowitz ISSCC 2014 class) + static power x time; uncalibrated")
        spread = total * self.known_error if self.known_error else 0.0
        return LatencyReport(
            hw=self.name,
            latency_ms=total,
            source=self.source,
            calibration=self.calibration,
            spread_ms=spread,
            energy_mj=energy * 1e3,
            memory=memory_of(layers),
            per_layer_ms=per_layer,
            provenance=self.provenance(),
            notes=notes,
        )

    def provenance(self) -> dict[str, Any]:
        return {
            "profile": f"roofline model of {self.device or self.name} ({self.compute} precision)",
            "calibration_source": self.calibration,
            "reference": self.reference,
            "known_error": self.known_error,
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

    def validation_cases(self, **_: Any) -> list[ValidationCase]:
        """Predicted against published latency for each anchor of the yaml."""
        if not self.anchors:
            raise HardwareError(
                f"hw {self.name!r} has no published anchors: it is {self.calibration}, nothing to validate against"
            )
        cases = []
        for anchor in self.anchors:
            predicted = self.report(self.anchor_layers(anchor)).latency_ms
            cases.append(
                ValidationCase(
                    anchor["name"],
                    predicted,
                    float(anchor["latency_ms"]),
                    f"{self.name}-anchors",
                    {"source": anchor.get("source", "")},
                )
            )
        return cases


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
    from hardware.layers import describe_elementwise, describe_layers

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
        import timm

        model = timm.create_model(anchor["timm"], pretrained=False, **anchor.get("kwargs", {}))
        shape = (batch, 3, size, size)
        layers = describe_layers(model, shape) + describe_elementwise(model, shape)
    else:
        raise ValueError(f"anchor {anchor.get('name')!r} needs 'timm' (a model name) or 'plan' (a MobileNetV1 plan)")
    bits = anchor.get("bits")
    if bits is not None:
        w_bits, a_bits = (bits, bits) if isinstance(bits, int) else (int(bits[0]), int(bits[1]))
        for layer in layers:
            layer.weight_bits, layer.act_bits = w_bits, a_bits
    return layers


# --------------------------------------------------------------------------- calibration
def calibrate(config: dict[str, Any], parameters: list[str]) -> dict[str, Any]:
    """Fit the named parameters of a device config to its anchors (log-space least squares).

    ``parameters``: keys among ``compute_scale`` (multiplies every peak), ``bandwidth``,
    ``overhead_us``, ``efficiency.<kind>``, ``efficiency.gemm`` (conv and pointwise). Returns the fitted config values and the
    per-anchor errors before and after. Used offline; the yaml stores the result.
    """
    import numpy as np
    from scipy.optimize import least_squares

    config = {k: v for k, v in config.items() if k != "_target_"}
    anchors = config.get("anchors") or []
    if not anchors:
        raise ValueError("the config has no anchors to calibrate on")
    cached = [anchor_layers(a) for a in anchors]
    measured = np.array([float(a["latency_ms"]) for a in anchors])

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
        pred = np.array([target.report(layers).latency_ms for layers in cached])
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
    fit = least_squares(residuals, np.array(x0), bounds=([-np.inf] * len(x0), upper))
    target = build(fit.x)
    return {
        "parameters": dict(zip(parameters, np.exp(fit.x).tolist(), strict=True)),
        "peak_macs_per_s": {k: v for k, v in target.peak.items()},
        "memory_bandwidth_gb_s": target.bandwidth / 1e9,
        "overhead_us": target.overhead_s * 1e6,
        "efficiency": target.efficiency,
        "errors_before": (np.exp(before) - 1).tolist(),
        "errors_after": (np.exp(fit.fun) - 1).tolist(),
        "anchors": [a["name"] for a in anchors],
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
