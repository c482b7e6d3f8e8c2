"""Optimal Brain Damage: LeCun, Denker & Solla, NIPS 1989.

Delete the weights whose deletion raises the training loss least to second order, with the
Hessian taken diagonal and the network at a minimum (gradient zero): the saliency of weight i is
s_i = h_ii w_i^2 / 2 (Sec. 3, Eq. 5). Berthelier et al. 2020 (Sec. 2.3) list it as the first
Hessian-based pruning; its claim is that this beats the magnitude where the curvature differs
between weights. Steps (Sec. 4): train, compute the saliencies, delete the lowest, retrain, iterate.

* h_ii from ``calibration_batches`` training batches (:mod:`methods.hessian`):
  ``hessian: fisher`` (default) is the exact Gauss-Newton diagonal, the paper's
  Levenberg-Marquardt approximation (non-negative); ``hutchinson`` estimates the true Hessian's
  diagonal with ``probes`` Rademacher vectors per batch. Departure: the paper back-propagates the
  diagonal second derivatives layer by layer (its own approximation); the Gauss-Newton diagonal
  here is exact for the whole network, computed from per-sample gradients.
* ``scope: global`` (default) ranks all weights together, as the paper does (saliencies are
  changes of the same loss, so they compare across layers); ``layer`` prunes each layer alike.
* Iterations, fine-tuning with masks and the sparse file: :mod:`methods.pruning.saliency`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext
from methods.config import option
from methods.hessian import HESSIAN_DIAGONALS, diagonal_hessian, hutchinson_diagonal
from methods.pruning.filter import calibration_batches
from methods.pruning.masks import SCOPES, WeightMasks, weight_of
from methods.pruning.saliency import SaliencyConfig, SaliencyPruning


@dataclass
class OBDConfig(SaliencyConfig):
    """conf/method/obd.yaml."""

    scope: str = option("global", choices=SCOPES)
    hessian: str = option("fisher", choices=tuple(sorted(HESSIAN_DIAGONALS)))
    probes: int = option(1, ge=1, why="Rademacher vectors per batch (hessian: hutchinson)")


def obd_saliency(weight: torch.Tensor, hessian_diagonal: torch.Tensor) -> torch.Tensor:
    """s = h_ii w_i^2 / 2, shaped like the weight."""
    return hessian_diagonal * weight.detach().square() / 2


class OptimalBrainDamage(SaliencyPruning):
    """LeCun et al. 1989: prune by h_ii w_i^2 / 2 with a diagonal Hessian; retrain; iterate."""

    name = "obd"
    Config = OBDConfig
    config: OBDConfig

    def prune_to(self, model: nn.Module, masks: WeightMasks, sparsity: float, ctx: CompressionContext) -> None:
        c = self.config
        estimate = HESSIAN_DIAGONALS[c.hessian]
        if c.hessian == "hutchinson":
            estimate = functools.partial(hutchinson_diagonal, probes=c.probes)
        diagonal = diagonal_hessian(model, masks.layers, calibration_batches(ctx, c.calibration_batches), estimate,
                                    ctx.seed)
        masks.update(sparsity, c.scope, {n: obd_saliency(weight_of(m), diagonal[n]) for n, m in masks.layers.items()})
