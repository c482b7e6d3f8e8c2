"""What a search is constrained by: the cost of a candidate model, at per-layer bit-widths.

Shared by the families that search under a budget: AMC (He et al., ECCV 2018, section
3.3: "resource-constrained compression", FLOPs or latency), CompactNet (Li et al., IJCAI
2019, section 3.1: a platform simulator sums per-layer latencies of a trimmed model),
NetAdapt (Yang et al., ECCV 2018, section 3: "direct metrics", latency from per-layer
look-up tables), and HAQ (Wang et al., CVPR 2019, section 3.3: latency, energy or model
size of a mixed-precision policy).

A :class:`Resource` is one cost: MACs (``flops``, counted by PyTorch's flop counter
through ``hardware.layers``), latency or energy on the run's hardware target
(``latency``, ``energy``), or the stored weights (``size``, bytes). Latency and energy
are *never* measured here: the target is asked (``HardwareTarget.latency``), and an
emulated target answers from its per-layer table or cost model. Every query takes an
optional ``layer_bits`` (layer name -> (weight bits, activation bits)), written into the
layer description (``hardware.layers.describe_layers``) the target reads, so a
bit-aware target (the roofline devices, e.g. ``bitfusion``) costs each layer at its
precision. Answers are cached per architecture (the channel count of every layer) and
bit-widths, so a search that revisits a candidate costs nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping

from torch import nn

from hardware.layers import LayerSpec, count_macs, describe_layers
from hardware.target import HardwareTarget, LatencyReport
from methods.base import MethodConfigError

#: layer name -> (weight bits, activation bits); layers not named stay at 32 (float).
LayerBits = Mapping[str, tuple[int, int]]

log = logging.getLogger(__name__)


def architecture_key(model: nn.Module) -> tuple:
    """The shape of every conv/linear layer (channels, groups, kernel, stride): equal keys mean equal cost."""
    key: list[tuple] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            key.append((name, module.in_channels, module.out_channels, module.groups, module.kernel_size,
                        module.stride))
        elif isinstance(module, nn.Linear):
            key.append((name, module.in_features, module.out_features))
    return tuple(key)


def describe_at_bits(model: nn.Module, input_shape: tuple[int, ...], layer_bits: LayerBits | None) -> list[LayerSpec]:
    """The layer description with ``layer_bits`` applied; a name that is no layer of ``model`` is refused."""
    return with_bits(describe_layers(model, input_shape), layer_bits)


def with_bits(layers: list[LayerSpec], layer_bits: LayerBits | None) -> list[LayerSpec]:
    """Copies of ``layers`` at ``layer_bits`` (the others at 32 bits, as the tracer leaves them)."""
    bits = {name: (int(w), int(a)) for name, (w, a) in (layer_bits or {}).items()}
    for name, pair in bits.items():
        if min(pair) < 1:
            raise MethodConfigError(f"layer_bits[{name!r}]={pair}: bit-widths must be >= 1")
    layers = [dataclasses.replace(spec, weight_bits=bits.get(spec.name, (32, 32))[0],
                                  act_bits=bits.get(spec.name, (32, 32))[1]) for spec in layers]
    unknown = sorted(set(bits) - {spec.name for spec in layers})
    if unknown:
        raise MethodConfigError(f"layer_bits names {unknown}, which are not layers of the model; use the module "
                                f"names of its conv/linear layers (e.g. {[s.name for s in layers][:3]})")
    return layers


def _macs_shares(layers: list[LayerSpec], total: float) -> dict[str, float]:
    """``total`` split over the layers in proportion to their MACs (when a target gives no breakdown)."""
    total_macs = sum(spec.macs for spec in layers) or 1
    return {spec.name: total * spec.macs / total_macs for spec in layers}


class Resource(ABC):
    """The cost a search keeps within budget; lower is cheaper."""

    kind: str = ""
    unit: str = ""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        self._cache: dict[tuple, float] = {}
        self._described: dict[tuple, list[LayerSpec]] = {}
        self.queries = 0  # answers not served from the cache

    @classmethod
    def build(cls, target: HardwareTarget, input_shape: tuple[int, ...]) -> Resource:
        """The resource for a run (``target`` is ignored by costs that do not ask it)."""
        return cls(input_shape)

    def __call__(self, model: nn.Module, layer_bits: LayerBits | None = None) -> float:
        key = (architecture_key(model), tuple(sorted((layer_bits or {}).items())))
        if key not in self._cache:
            self.queries += 1
            self._cache[key] = float(self._cost(model, layer_bits))
        return self._cache[key]

    def layers(self, model: nn.Module, layer_bits: LayerBits | None = None) -> list[LayerSpec]:
        """The description at ``layer_bits``; the model is traced once per architecture (a bit-width
        search such as HAQ's asks one architecture at hundreds of bit-widths)."""
        arch = architecture_key(model)
        if arch not in self._described:
            self._described[arch] = describe_layers(model, self.input_shape)
        return with_bits(self._described[arch], layer_bits)

    @abstractmethod
    def _cost(self, model: nn.Module, layer_bits: LayerBits | None) -> float:
        ...

    @abstractmethod
    def per_layer(self, model: nn.Module, layer_bits: LayerBits | None = None) -> dict[str, float]:
        """The cost of each layer (layer name -> cost), for state features and reports."""

    def describe(self) -> dict[str, str]:
        return {"resource": self.kind, "unit": self.unit}


class MacsResource(Resource):
    """Multiply-accumulates of one forward pass ("FLOPs" in the AMC paper's sense); bit-widths do not change them."""

    kind, unit = "flops", "MACs"

    def _cost(self, model: nn.Module, layer_bits: LayerBits | None) -> float:
        if layer_bits:
            self.layers(model, layer_bits)  # refuses names that are not layers, as every cost does
        return count_macs(model, self.input_shape)

    def per_layer(self, model: nn.Module, layer_bits: LayerBits | None = None) -> dict[str, float]:
        return {spec.name: float(spec.macs) for spec in self.layers(model, layer_bits)}


class SizeResource(Resource):
    """Bytes of the weights at their bit-widths (HAQ's model-size constraint), index overheads aside."""

    kind, unit = "size", "bytes"

    def _cost(self, model: nn.Module, layer_bits: LayerBits | None) -> float:
        return sum(self.per_layer(model, layer_bits).values())

    def per_layer(self, model: nn.Module, layer_bits: LayerBits | None = None) -> dict[str, float]:
        return {spec.name: float(spec.weight_bytes) for spec in self.layers(model, layer_bits)}


class TargetResource(Resource):
    """A figure of the run's hardware target's report on the model at its bit-widths."""

    def __init__(self, target: HardwareTarget, input_shape: tuple[int, ...]) -> None:
        super().__init__(input_shape)
        self.target = target
        if target.source == "measured":
            # results/pruning_platform_exchange.md: on a loaded machine, single timings of a
            # sub-millisecond model varied by more than the target speedup and steered the search.
            log.warning("[search] %s is measured: every candidate is timed once and its noise steers the search; "
                        "an emulated or lookup-table target (e.g. +hw=local_cpu_table) is steadier", target.name)

    @classmethod
    def build(cls, target: HardwareTarget, input_shape: tuple[int, ...]) -> Resource:
        return cls(target, input_shape)

    def report(self, model: nn.Module, layer_bits: LayerBits | None = None) -> tuple[LatencyReport, list[LayerSpec]]:
        layers = self.layers(model, layer_bits)
        return self.target.latency(model, self.input_shape, layers=layers), layers

    @abstractmethod
    def figure(self, report: LatencyReport) -> float:
        """The cost read from the target's report."""

    def _cost(self, model: nn.Module, layer_bits: LayerBits | None) -> float:
        return self.figure(self.report(model, layer_bits)[0])

    def per_layer(self, model: nn.Module, layer_bits: LayerBits | None = None) -> dict[str, float]:
        """MACs shares of the total (:class:`LatencyResource` uses the target's breakdown when it has one)."""
        report, layers = self.report(model, layer_bits)
        return _macs_shares(layers, self.figure(report))

    def describe(self) -> dict[str, str]:
        return {"resource": self.kind, "unit": self.unit, "hw": self.target.name, "source": self.target.source}


class LatencyResource(TargetResource):
    """Latency on the run's hardware target, as the target reports it (ms)."""

    kind, unit = "latency", "ms"

    def figure(self, report: LatencyReport) -> float:
        return report.latency_ms

    def per_layer(self, model: nn.Module, layer_bits: LayerBits | None = None) -> dict[str, float]:
        """The target's per-layer breakdown when it gives one, else MACs shares of the total."""
        report, layers = self.report(model, layer_bits)
        return dict(report.per_layer_ms) if report.per_layer_ms else _macs_shares(layers, report.latency_ms)


class EnergyResource(TargetResource):
    """Energy of one batch on the run's hardware target (mJ), where the target models it."""

    kind, unit = "energy", "mJ"

    def figure(self, report: LatencyReport) -> float:
        if report.energy_mj is None:
            raise MethodConfigError(f"method.resource=energy: hw {self.target.name!r} does not model energy; use a "
                                    "target that does (the roofline devices, e.g. +hw=bitfusion) or another resource")
        return report.energy_mj


#: The costs a search can keep within budget, by their name in ``method.resource``.
RESOURCES: dict[str, type[Resource]] = {cls.kind: cls for cls in (MacsResource, LatencyResource, EnergyResource,
                                                                    SizeResource)}


def make_resource(kind: str, target: HardwareTarget, input_shape: tuple[int, ...], key: str = "method.resource") -> Resource:
    """The resource named ``kind`` (of ``target`` where it asks one); anything else is refused naming ``key``."""
    if kind not in RESOURCES:
        raise MethodConfigError(f"{key}={kind!r} is not a resource; choose one of {sorted(RESOURCES)}")
    return RESOURCES[kind].build(target, input_shape)
