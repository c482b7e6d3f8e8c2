"""The cost of every candidate block, asked of the run's target once, and the expected cost of a supernet.

ProxylessNAS (Sec. 3.3, Eq. 7): E[LAT] = sum over blocks of sum_j p_j F(o_j), with F(o_j) the
latency of candidate j at its block's input shape, from a latency model. Here F is whatever the
run's ``ctx.target`` answers (measured, lookup table or analytical alike: docs/ARCHITECTURE.md,
Contracts 1), asked once per distinct (op, shapes) through :mod:`methods.search.resource`, or the
candidate's MACs for the FLOPs-regularised variant. The fixed parts (stem, first block, head) are
one constant. The table is saved with the run (``cost_table.json``), so a search can be rerun on
exactly the latencies it saw, and every sample-based search (MnasNet, evolution) prices its
candidates from the same table without asking the target again.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hardware.target import HardwareTarget
from methods.base import CompressionContext
from methods.config import fail
from methods.nas.space import ZERO, Architecture, Head, SearchSpace, build_op, stem
from methods.search.resource import Resource, make_resource

log = logging.getLogger(__name__)

#: what a search may be steered by (a methods.search resource kind)
COST_KINDS = ("latency", "flops")


def mnasnet_reward(accuracy: float, cost: float, target: float, alpha: float, beta: float) -> float:
    """MnasNet's reward (Tan et al., CVPR 2019, Sec. 3): ACC x (cost/T)^w, w = ``alpha`` if cost <= T else ``beta``."""
    return accuracy * (cost / target) ** (alpha if cost <= target else beta)


@dataclass
class CostTable:
    """Per searched block, the cost of each candidate; plus the fixed parts' cost."""

    kind: str
    unit: str
    fixed: float
    blocks: list[dict[str, float]]
    source: dict[str, Any]

    def of(self, arch: Architecture) -> float:
        """The cost of a derived network: fixed parts plus its op in every block."""
        return self.fixed + sum(costs[op] for costs, op in zip(self.blocks, arch.ops, strict=True))

    @functools.cached_property
    def _costs(self) -> list[torch.Tensor]:
        """Each block's candidate costs as a tensor, in candidate order (built once: every architecture step reads them)."""
        return [torch.tensor(list(costs.values()), dtype=torch.float32) for costs in self.blocks]

    def expected(self, probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
        """E[cost] = fixed + sum_blocks sum_j p_j cost_j (differentiable in ``probabilities``)."""
        return self.fixed + torch.stack([(p * costs).sum() for costs, p in zip(self._costs, probabilities, strict=True)]).sum()

    def expected_sampled(self, alphas: Sequence[torch.Tensor], pairs: Sequence[tuple[int, ...]]) -> torch.Tensor:
        """E[cost] over the sampled paths of each block with their renormalised probabilities (two-path mode)."""
        return self.fixed + torch.stack([(torch.softmax(alpha[list(pair)], 0) * costs[list(pair)]).sum()
                                         for costs, alpha, pair in zip(self._costs, alphas, pairs, strict=True)]).sum()

    def bounds(self) -> tuple[float, float]:
        """The cheapest and the dearest network of the space."""
        return (self.fixed + sum(min(c.values()) for c in self.blocks),
                self.fixed + sum(max(c.values()) for c in self.blocks))

    def reachable(self, target: float, key: str) -> float:
        """``target`` (T) in the table's unit, refused naming ``key`` when no network of the space meets it."""
        fastest, slowest = self.bounds()
        if target < fastest:
            fail(key, f"is {target:.4g} {self.unit}, below the cheapest network of the space ({fastest:.4g} {self.unit}; "
                      f"the dearest is {slowest:.4g}): no architecture can meet it; raise it or widen the space")
        return target

    def save(self, path: Path) -> Path:
        path.write_text(json.dumps({"kind": self.kind, "unit": self.unit, "fixed": self.fixed, "blocks": self.blocks,
                                    "source": self.source}, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> CostTable:
        return cls(**json.loads(path.read_text()))


def _price(resources: dict[tuple[int, ...], Resource], kind: str, target: HardwareTarget, module: nn.Module,
           shape: tuple[int, ...]) -> float:
    if shape not in resources:
        resources[shape] = make_resource(kind, target, shape, key="method.cost")
    return resources[shape](module.eval())


def build_cost_table(space: SearchSpace, kind: str, target: HardwareTarget, batch_size: int, in_chans: int,
                     num_classes: int) -> CostTable:
    """Ask ``target`` (or count MACs) once per distinct candidate at its input shape in ``space``."""
    if kind not in COST_KINDS:
        fail("method.cost", f"{kind!r} is not a cost a search can be steered by; choose one of {list(COST_KINDS)}")
    resources: dict[tuple[int, ...], Resource] = {}
    size = space.input_size
    fixed_stem = _price(resources, kind, target, stem(space, in_chans), (batch_size, in_chans, size, size))
    slots = space.slots()
    head_shape = (batch_size, space.widths[-1], space.output_size, space.output_size)
    fixed_head = _price(resources, kind, target, Head(space.widths[-1], space.head_channels, num_classes), head_shape)
    blocks = []
    for slot in slots:
        shape = (batch_size, slot.in_channels, slot.input_size, slot.input_size)
        blocks.append({op: 0.0 if op == ZERO else _price(resources, kind, target, build_op(op, slot), shape)
                       for op in slot.candidates})
    some = next(iter(resources.values()))
    return CostTable(kind=kind, unit=some.unit, fixed=fixed_stem + fixed_head, blocks=blocks,
                     source={**some.describe(), "input_size": size, "batch_size": batch_size,
                             "queries": sum(r.queries for r in resources.values())})


def run_cost_table(space: SearchSpace, kind: str, ctx: CompressionContext) -> CostTable:
    """:func:`build_cost_table` for a run: its target, batch, channels and classes (a search's first step)."""
    if space.input_size != ctx.input_shape[-1]:
        log.warning("[nas] candidates are priced at %d px (method.space.input_size or its preset) while the data are "
                    "%d px: the search steers by the network's latency at %d px", space.input_size, ctx.input_shape[-1],
                    space.input_size)
    return build_cost_table(space, kind, ctx.target, ctx.input_shape[0], int(ctx.input_shape[1]),
                            int(ctx.datamodule.num_classes))
