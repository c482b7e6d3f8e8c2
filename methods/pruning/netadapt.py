"""NetAdapt: platform-aware network adaptation (Yang, Howard, Chen, Zhang, Go, Sandler, Sze, Adam; ECCV 2018).

Algorithm 1 of the paper: while the resource Res_i of the current network exceeds the
budget, the constraint of iteration i is Con = Res_i - dR_i; for each layer k the number
of filters is the largest that meets Con (from the platform's per-layer latency look-up
tables), the filters with the largest L2 norm are kept, the candidate is fine-tuned for
a short while, and the most accurate candidate becomes the next network. The resource
reduction dR_i decays from iteration to iteration ("the resource reduction schedule",
section 4.1: an initial reduction, here a fraction of the original latency, times
``decay`` per iteration). When the budget is met, the network is fine-tuned long-term.

It shares the whole loop with CompactNet (:class:`methods.pruning.compactnet.ProgressiveTrimming`,
the platform simulator being the run's hardware target); only the schedule differs:
NetAdapt's constraint follows the *achieved* resource (Con = Res_i - dR_i) and runs until
the budget is met, CompactNet's sub-targets are fixed in advance. Departure: the last
iteration's constraint is clipped to the budget, so the result lands on it (the paper
stops at the first network below the budget, which may overshoot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from methods.base import MethodConfigError
from methods.config import option
from methods.pruning.compactnet import ProgressiveTrimming, TrimmingConfig


@dataclass
class NetAdaptConfig(TrimmingConfig):
    """conf/method/netadapt.yaml: iteration i must save dR_i = initial_reduction x original x decay^i."""

    initial_reduction: float = option(0.1, gt=0, lt=1, why="a fraction of the original resource")
    decay: float = option(0.96, gt=0, le=1)
    max_iterations: int = option(100, ge=1)


class NetAdapt(ProgressiveTrimming):
    """NetAdapt: per-iteration resource reduction dR_i = initial_reduction x original x decay^i."""

    name = "netadapt"
    Config = NetAdaptConfig
    config: NetAdaptConfig

    def constraints(self, base_cost: float, target_cost: float, current_cost: Callable[[], float]) -> Iterator[float]:
        # Con_i = Res_i - dR_i, with Res_i the cost of the network the previous iteration chose.
        for i in range(self.config.max_iterations):
            achieved = current_cost()
            if achieved <= target_cost:
                return
            yield max(target_cost, achieved - self.config.initial_reduction * base_cost * self.config.decay ** i)
        if current_cost() <= target_cost:
            return
        raise MethodConfigError(f"netadapt: budget not met after method.max_iterations={self.config.max_iterations}; "
                                "raise it or method.initial_reduction")

    def schedule_description(self) -> dict[str, Any]:
        return {"initial_reduction": self.config.initial_reduction, "decay": self.config.decay}
