"""CompactNet: platform-aware progressive trimming (Li, Wang, Luan, Huang, Du, Chen, Qian; IJCAI 2019).

../shared/papers/li2019-compactnet.md. What is implemented (paper section in brackets):

- Platform simulator (3.1): the latency of a trimmed model is what the run's hardware
  target reports for it (``ctx.target.latency``): for the ``pixel1`` and lookup-table
  targets that is a sum of per-layer latencies at the trimmed channel counts, the
  paper's simulator. The method never times anything itself.
- Searching loop (3.2): N iterations; iteration i has the sub-target
  T_sub_i = T_init / N * d^i (Eq. 1), and the sub-targets add up to the final target
  T_final (Eq. 2). ``target_speedup`` is T_final; T_init is computed from it by
  inverting Eq. 2 ("we need to keep T_final in mind and inversely compute T_init
  first"), or ``t_init`` is given and T_final follows from Eq. 2.
- Trimming (3.3): in each iteration, for each of the k trimmable layers, filters
  (output channels) are removed until the trimmed model meets the iteration's
  sub-target; the filters with the largest L2 norm are kept
  (:class:`methods.pruning.criteria.L2FilterNorm`); the next layer's input channels,
  and everything else coupled, go with them (:mod:`methods.pruning.structured`). Each of
  the k candidates is fine-tuned briefly and the most accurate one is kept: one layer is
  trimmed per iteration. After the last iteration the model is retrained.
- Hyper-parameters (4.1): Table 3 (T_init 2.0, N 24, d 0.96 for a mobile CPU) and
  Table 4 (fine-tune lr 1e-3 x 30 epochs, retraining lr 1e-4 x 500 epochs) are the
  defaults of ``conf/method/compactnet.yaml`` in comments; the active values are scaled
  down for CPU runs.

Departures, and why:

- Units of the sub-targets. Read literally, Eq. 2 with Table 3's numbers does not give
  Table 3's T_final (2.0/24 x sum 0.96^i = 1.30, not 1.5), so "speedup" cannot be
  additive. We let the sub-targets share out the *latency reduction* of the final target:
  after iteration i the model must be at most L0 - (L0 - L0/T_final) x sum_{j<=i} T_sub_j
  / T_final. The sub-targets keep Eq. 1's decaying shape and Eq. 2's sum, and the last
  iteration lands exactly on L0 / T_final.
- The number of filters to keep is found by bisection rather than one filter at a time;
  both give the largest count that meets the sub-target when latency does not decrease
  as filters are added (true of MACs and of monotone lookup tables).
- Fine-tuning uses the run's recipe (its optimizer, SGD by default) at the configured
  learning rate and length; the paper uses RMSProp with a per-epoch decay.
- ``min_preserve`` keeps a floor of each layer's original filters (the paper has none);
  a target that cannot be met even at that floor is refused up front.

NetAdapt (:mod:`methods.pruning.netadapt`) is the same loop with another schedule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hardware.layers import count_macs
from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, excluded_layers, fail, finetune_default, option
from methods.pruning.channel_space import ChannelSpace, PrunableUnit
from methods.pruning.criteria import L2FilterNorm
from methods.pruning.structured import save_pruned
from methods.search.resource import RESOURCES, Resource, make_resource
from methods.search.threads import search_threads
from methods.storage import load_model

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One layer trimmed to meet an iteration's constraint, after its short fine-tune."""

    layer: str
    channels_before: int
    channels_after: int
    cost: float
    top1: float


@dataclass
class Iteration:
    index: int
    constraint: float  # the cost the iteration's model must not exceed
    cost: float  # the cost of the chosen model
    chosen: str
    channels_before: int
    channels_after: int
    top1: float
    candidates: list[Candidate]


def compactnet_sub_targets(t_final: float, iterations: int, decay: float) -> tuple[float, list[float]]:
    """(T_init, [T_sub_i]) with T_sub_i = T_init / N d^i summing to T_final (Eqs. 1 and 2)."""
    geometric = sum(decay ** i for i in range(iterations))
    t_init = t_final * iterations / geometric
    return t_init, [t_init / iterations * decay ** i for i in range(iterations)]


@dataclass
class TrimmingConfig:
    """What CompactNet and NetAdapt share: the resource, its budget, the trimming grid and the two trainings."""

    resource: str = option("latency", choices=tuple(sorted(RESOURCES)))
    target_speedup: float | None = option(2.0, ge=1, why="original / trimmed resource")
    min_preserve: float = option(0.1, gt=0, le=1, why="each layer keeps at least this fraction of its filters")
    channel_round: int = option(1, ge=1)
    finetune: FineTuning = option(factory=finetune_default(0.1))  # short-term, every candidate
    retrain: FineTuning = option(factory=finetune_default(1.0))  # long-term, the final model
    eval_batches: int = option(4, ge=1)
    layers: LayerSelection = option(factory=LayerSelection)
    search_threads: int | None = option(1, ge=1, why="null: torch's threads unchanged")

    @property
    def speedup(self) -> float:
        """The speedup the trimming must reach."""
        assert self.target_speedup is not None, "check() refuses a null target_speedup"
        return self.target_speedup

    def check(self, key: str) -> None:
        if self.target_speedup is None:
            fail(f"{key}.target_speedup", "is null: set the speedup to reach (original / trimmed resource, >= 1)")


class ProgressiveTrimming(CompressionMethod):
    """The searching loop shared by CompactNet and NetAdapt: one layer trimmed per iteration."""

    Config = TrimmingConfig
    config: TrimmingConfig

    def _space(self, model: nn.Module, ctx: CompressionContext, original: nn.Module | None = None) -> ChannelSpace:
        """``model``'s channel space, the layers that ``layers`` leaves out of ``original`` (default: it) ignored."""
        ignored = excluded_layers(original or model, ctx.input_shape, self.config.layers)
        return ChannelSpace(model, ctx.input_shape, ignored=ignored)

    # -- what subclasses define ------------------------------------------------------------
    def constraints(self, base_cost: float, target_cost: float, current_cost: Callable[[], float]) -> Iterator[float]:
        """The cost each successive iteration must reach (the last one <= target_cost).

        ``current_cost()`` is the cost of the model the previous iteration chose."""
        raise NotImplementedError

    def schedule_description(self) -> dict[str, Any]:
        return {}

    # -- the loop ---------------------------------------------------------------------------
    def _floor(self, original: dict[str, int], unit: PrunableUnit) -> int:
        base = original.get(unit.producer, unit.channels)
        floor = math.ceil(self.config.min_preserve * base - 1e-9)
        return max(1, int(math.ceil(floor / self.config.channel_round) * self.config.channel_round))

    def _largest_fitting(self, space: ChannelSpace, resource: Resource, unit: PrunableUnit, floor: int,
                         constraint: float) -> int | None:
        """The most filters ``unit`` may keep with the model within ``constraint`` (None: none)."""
        step = self.config.channel_round
        grid = sorted({floor, *range(int(math.ceil(floor / step) * step), unit.channels, step)})
        grid = [n for n in grid if floor <= n < unit.channels]
        if not grid or resource(space.shrink({unit.index: grid[0]})) > constraint:
            return None
        lo, hi = 0, len(grid) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if resource(space.shrink({unit.index: grid[mid]})) <= constraint:
                lo = mid
            else:
                hi = mid - 1
        return grid[lo]

    def _check_reachable(self, model: nn.Module, ctx: CompressionContext, resource: Resource,
                         target_cost: float, base_cost: float) -> None:
        space = self._space(model, ctx)
        original = {u.producer: u.channels for u in space.units}
        floor_cost = resource(space.shrink({u.index: self._floor(original, u) for u in space.units}))
        if floor_cost > target_cost:
            raise MethodConfigError(
                f"method.target_speedup={self.config.speedup}: unreachable on {resource.describe()}. Even with "
                f"every layer at method.min_preserve={self.config.min_preserve} of its filters the model costs "
                f"{floor_cost:.4g} {resource.unit}, a speedup of {base_cost / floor_cost:.3f}x; lower target_speedup "
                "or min_preserve")

    def trim(self, model: nn.Module, ctx: CompressionContext, resource: Resource) -> tuple[nn.Module, list, list[Iteration]]:
        """Run the iterations; return the trimmed model, its pruning history and the log."""
        base_cost = resource(model)
        target_cost = base_cost / self.config.speedup
        self._check_reachable(model, ctx, resource, target_cost, base_cost)
        original = {u.producer: u.channels for u in self._space(model, ctx).units}
        criterion = L2FilterNorm(group_reduction="first")  # the paper's: each filter's own L2 norm
        current = model
        history: list[list] = []
        log_: list[Iteration] = []
        for index, constraint in enumerate(self.constraints(base_cost, target_cost, lambda: resource(current))):  # noqa: B023 (late binding intended: the latest model)
            if resource(current) <= constraint:
                continue  # an earlier trim already went further than this sub-target
            space = self._space(current, ctx, model)
            groups = space.pruner.groups()
            candidates: list[tuple[Candidate, nn.Module, list]] = []
            for unit in space.units:
                keep = self._largest_fitting(space, resource, unit, self._floor(original, unit), constraint)
                if keep is None:
                    continue
                scores = criterion(groups[unit.producer])
                kept = sorted(torch.argsort(scores, descending=True, stable=True)[:keep].tolist())
                trimmed = space.shrink({unit.index: kept})
                if self.config.finetune.epochs > 0:
                    trimmed.train()  # Lightning keeps the modes it is given; batch norm must train
                    ctx.finetune(trimmed, self.config.finetune.epochs, lr=self.config.finetune.lr)
                top1 = float(ctx.evaluate(trimmed, "val", self.config.eval_batches)["top1"])
                candidates.append((Candidate(unit.producer, unit.channels, keep, resource(trimmed), top1), trimmed,
                                   space.history({unit.index: kept})))
            if not candidates:
                raise MethodConfigError(
                    f"{self.name}: iteration {index} cannot reach {constraint:.4g} {resource.unit} by trimming any one "
                    f"layer (current {resource(current):.4g}); use more iterations (smaller sub-targets) or a "
                    "smaller method.target_speedup")
            best, current, steps = max(candidates, key=lambda c: c[0].top1)
            history.extend(steps)
            log_.append(Iteration(index, constraint, best.cost, best.layer, best.channels_before, best.channels_after,
                                  best.top1, [c[0] for c in candidates]))
            log.info("[%s] iteration %d: %s %d -> %d filters, %s %.4g <= %.4g, top-1 %.2f", self.name, index,
                     best.layer, best.channels_before, best.channels_after, resource.kind, best.cost, constraint,
                     best.top1)
        return current, history, log_

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        start = time.perf_counter()
        resource = make_resource(self.config.resource, ctx.target, ctx.input_shape)
        with search_threads(self.config.search_threads):
            base_cost = resource(model)
            trimmed, history, iterations = self.trim(model, ctx, resource)
            before = ctx.evaluate(trimmed, "val")
        search_seconds = time.perf_counter() - start
        if self.config.retrain.epochs > 0:
            trimmed.train()
            ctx.finetune(trimmed, self.config.retrain.epochs, lr=self.config.retrain.lr)
        path = ctx.workdir / "model.pruned.cbm"
        save_pruned(trimmed, history, ctx.input_shape, path, extra={"method": self.name})
        decoded = load_model(path, model)
        final_cost = resource(decoded)
        target_cost = base_cost / self.config.speedup

        modules_before, modules_after = _layers(model), _layers(decoded)
        layers = [{"layer": n, "filters": _out(m), "kept": _out(modules_after[n]),
                   "preserve_ratio": _out(modules_after[n]) / _out(m)}
                  for n, m in modules_before.items()]
        record = {
            "method": self.name, "resource": resource.describe(), "target_speedup": self.config.speedup,
            **self.schedule_description(), "base_cost": base_cost, "target_cost": target_cost,
            "final_cost": final_cost, "speedup": base_cost / final_cost, "target_met": final_cost <= target_cost * (1 + 1e-9),
            "layers": layers, "iterations": [asdict(it) for it in iterations],
        }
        policy_file = ctx.workdir / f"{self.name}_policy.json"
        policy_file.write_text(json.dumps(record, indent=1))
        plot = ctx.workdir / f"{self.name}_filters.png"
        _plot_filters(plot, layers, f"{self.name}: {resource.kind} speedup {base_cost / final_cost:.2f}x "
                                    f"(target {self.config.speedup:.2f}x)")
        metrics = {
            "search_seconds": search_seconds,
            "iterations": float(len(iterations)),
            "top1_before_retrain": float(before["top1"]),
            f"{resource.kind}_speedup": base_cost / final_cost,
            "target_met": float(record["target_met"]),
            "macs_ratio": count_macs(decoded, ctx.input_shape) / count_macs(model, ctx.input_shape),
            "resource_queries": float(resource.queries),
        }
        return CompressionResult(model=decoded, stored_file=path, metrics=metrics, artifacts=[policy_file, plot])


def _layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _out(module: nn.Conv2d | nn.Linear) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _plot_filters(path, layers: list[dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(layers) + 2), 3.6))
    x = np.arange(len(layers))
    ax.bar(x, [row["filters"] for row in layers], color="#cccccc", label="original")
    ax.bar(x, [row["kept"] for row in layers], color="#d62728", label="kept")
    ax.set_xticks(x, [row["layer"] for row in layers], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("filters (output channels)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class CompactNetConfig(TrimmingConfig):
    """conf/method/compactnet.yaml: N iterations with sub-targets T_init/N d^i (Eq. 1) adding up to T_final (Eq. 2)."""

    iterations: int = option(6, ge=1, why="N")
    decay: float = option(0.96, gt=0, le=1, why="d")
    t_init: float | None = option(None, gt=0, why="T_init; null: from target_speedup")

    @property
    def speedup(self) -> float:
        """T_final: ``target_speedup``, or what ``t_init`` gives by Eq. 2."""
        if self.t_init is None:
            return super().speedup
        return self.t_init / self.iterations * sum(self.decay ** i for i in range(self.iterations))

    def check(self, key: str) -> None:
        if (self.t_init is None) == (self.target_speedup is None):
            fail(f"{key}.target_speedup and {key}.t_init", "set exactly one of them (T_final, T_init); "
                                                            "the other follows from Eq. 2")


class CompactNet(ProgressiveTrimming):
    """CompactNet: N iterations with decaying sub-targets that add up to the target speedup."""

    name = "compactnet"
    Config = CompactNetConfig
    config: CompactNetConfig

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(name, **options)
        self.t_init, self.sub_targets = compactnet_sub_targets(self.config.speedup, self.config.iterations,
                                                               self.config.decay)

    def constraints(self, base_cost: float, target_cost: float, current_cost: Callable[[], float]) -> Iterator[float]:
        reduction = base_cost - target_cost
        done = 0.0
        for i, t_sub in enumerate(self.sub_targets):
            done += t_sub
            yield target_cost if i == self.config.iterations - 1 else base_cost - reduction * done / self.config.speedup

    def schedule_description(self) -> dict[str, Any]:
        return {"t_init": self.t_init, "iterations_n": self.config.iterations, "decay": self.config.decay,
                "sub_targets": self.sub_targets}
