"""What a search is constrained by: the cost of a candidate model.

Shared by the families that search under a budget: AMC (He et al., ECCV 2018, section
3.3: "resource-constrained compression", FLOPs or latency), CompactNet (Li et al., IJCAI
2019, section 3.1: a platform simulator sums per-layer latencies of a trimmed model) and
NetAdapt (Yang et al., ECCV 2018, section 3: "direct metrics", latency from per-layer
look-up tables).

:class:`Resource` is the cost of a model, either its MACs (``flops``, counted by
PyTorch's flop counter through ``hardware.layers``) or its latency on the run's hardware
target (``latency``). Latency is *never* measured here: the target is asked
(``HardwareTarget.latency``), and an emulated target answers from its per-layer table or
cost model for the candidate architecture. Answers are cached per architecture (the
channel count of every layer), so a search that revisits a shape costs nothing.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

from torch import nn

from hardware.layers import count_macs, describe_layers
from hardware.target import HardwareTarget
from methods.base import MethodConfigError

RESOURCES = ("flops", "latency")

log = logging.getLogger(__name__)


def architecture_key(model: nn.Module) -> tuple:
    """The channel count of every conv/linear layer: equal keys mean equal cost."""
    key = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            key.append((name, module.in_channels, module.out_channels, module.groups))
        elif isinstance(module, nn.Linear):
            key.append((name, module.in_features, module.out_features))
    return tuple(key)


class Resource(ABC):
    """The cost a search keeps within budget; lower is cheaper."""

    kind: str = ""
    unit: str = ""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        self._cache: dict[tuple, float] = {}
        self.queries = 0  # answers not served from the cache

    def __call__(self, model: nn.Module) -> float:
        key = architecture_key(model)
        if key not in self._cache:
            self.queries += 1
            self._cache[key] = float(self._cost(model))
        return self._cache[key]

    @abstractmethod
    def _cost(self, model: nn.Module) -> float:
        ...

    @abstractmethod
    def per_layer(self, model: nn.Module) -> dict[str, float]:
        """The cost of each layer (layer name -> cost), for state features and reports."""

    def describe(self) -> dict[str, str]:
        return {"resource": self.kind, "unit": self.unit}


class MacsResource(Resource):
    """Multiply-accumulates of one forward pass ("FLOPs" in the AMC paper's sense)."""

    kind, unit = "flops", "MACs"

    def _cost(self, model: nn.Module) -> float:
        return count_macs(model, self.input_shape)

    def per_layer(self, model: nn.Module) -> dict[str, float]:
        return {spec.name: float(spec.macs) for spec in describe_layers(model, self.input_shape)}


class LatencyResource(Resource):
    """Latency on the run's hardware target, as the target reports it (ms)."""

    kind, unit = "latency", "ms"

    def __init__(self, target: HardwareTarget, input_shape: tuple[int, ...]) -> None:
        super().__init__(input_shape)
        self.target = target
        if target.source == "measured":
            # results/pruning_platform_exchange.md: on a loaded machine, single timings of a
            # sub-millisecond model varied by more than the target speedup and steered the search.
            log.warning("[pruning] %s is measured: every candidate is timed once and its noise steers the search; "
                        "an emulated or lookup-table target (e.g. +hw=local_cpu_table) is steadier", target.name)

    def _cost(self, model: nn.Module) -> float:
        return self.target.latency(model, self.input_shape).latency_ms

    def per_layer(self, model: nn.Module) -> dict[str, float]:
        """The target's per-layer breakdown when it gives one, else MACs shares of the total."""
        report = self.target.latency(model, self.input_shape)
        if report.per_layer_ms:
            return dict(report.per_layer_ms)
        specs = describe_layers(model, self.input_shape)
        total_macs = sum(s.macs for s in specs) or 1
        return {s.name: report.latency_ms * s.macs / total_macs for s in specs}

    def describe(self) -> dict[str, str]:
        return {"resource": self.kind, "unit": self.unit, "hw": self.target.name, "source": self.target.source}


def make_resource(kind: str, target: HardwareTarget, input_shape: tuple[int, ...], key: str = "method.resource") -> Resource:
    """``flops`` or ``latency`` (of ``target``); anything else is refused naming ``key``."""
    if kind == "flops":
        return MacsResource(input_shape)
    if kind == "latency":
        return LatencyResource(target, input_shape)
    raise MethodConfigError(f"{key}={kind!r} is not a resource; choose one of {RESOURCES}")
