"""Iterative unstructured pruning by a saliency other than the magnitude: what OBD and L-OBS share.

Each of ``iterations`` steps removes weights up to s*i/k of the pruned layers (the lowest saliency
first, per layer or over all of them), then fine-tunes ``finetune.epochs / k`` with the removed
weights held at zero (:class:`methods.pruning.masks.MaskHook`); the saliency is recomputed
from the current weights at every step. Masks, the sparse file and the metrics are those of
magnitude pruning (:mod:`methods.pruning.magnitude`), so the methods compare at equal sparsity.
A subclass says how one step chooses (and, for OBS, corrects) the weights: :meth:`prune_to`.
"""

from __future__ import annotations

import copy
import logging
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, LayerSelection, fail, finetune_default, option, select_layers
from methods.pruning.magnitude import store_sparse, unstructured_metrics
from methods.pruning.masks import SCOPES, MaskHook, WeightMasks
from methods.reporting import plot_policy, write_json
from methods.storage.sparse import FORMATS

log = logging.getLogger(__name__)


@dataclass
class SaliencyConfig:
    """The keys OBD and OBS share (their yaml files add their own)."""

    sparsity: float = option(0.9, ge=0, lt=1, why="the fraction of the pruned layers' weights set to zero")
    scope: str = option("layer", choices=SCOPES)
    iterations: int = option(1, ge=1)
    calibration_batches: int = option(8, ge=1, why="training batches the Hessian is computed on, each step")
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)
    storage_formats: list[str] = option(factory=lambda: list(FORMATS), choices=FORMATS)

    def check(self, key: str) -> None:
        if not self.storage_formats:
            fail(f"{key}.storage_formats", f"is empty; choose among {list(FORMATS)}")


class SaliencyPruning(CompressionMethod):
    """Iterative pruning by :meth:`prune_to`'s saliency, fine-tuning with masks after each step."""

    config: Any

    @abstractmethod
    def prune_to(self, model: nn.Module, masks: WeightMasks, sparsity: float, ctx: CompressionContext) -> None:
        """Set ``masks`` (and the weights) of ``model`` to ``sparsity`` by this method's saliency."""

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline, model = model, copy.deepcopy(model)
        c = self.config
        input_shape = tuple(ctx.input_shape)
        layers = select_layers(model, input_shape, c.layers)
        masks = WeightMasks(layers)
        steps = []
        for step in range(1, c.iterations + 1):
            self.prune_to(model, masks, c.sparsity * step / c.iterations, ctx)
            row = {"step": step, "sparsity": masks.sparsity(), "top1_pruned": ctx.evaluate(model, "val")["top1"]}
            if c.finetune.epochs > 0:
                ctx.finetune(model, c.finetune.epochs / c.iterations, lr=c.finetune.lr, hooks=[MaskHook(masks)])
            masks.apply()
            steps.append({**row, "top1_finetuned": ctx.evaluate(model, "val")["top1"]})
            log.info("%s step %d/%d: sparsity %.3f, top1 %.2f -> %.2f", self.name, step, c.iterations,
                     row["sparsity"], row["top1_pruned"], steps[-1]["top1_finetuned"])

        stored = ctx.workdir / f"model.{self.name}.cbm"
        decoded, report = store_sparse(model, baseline, stored, c.storage_formats)
        metrics = {"top1_baseline": ctx.evaluate(baseline, "val")["top1"],
                   "top1_before_finetune": steps[-1]["top1_pruned"],
                   "top1_after_finetune": ctx.evaluate(decoded, "val")["top1"],
                   **unstructured_metrics(decoded, baseline, list(layers), input_shape, stored, report)}
        achieved = {n: metrics[f"sparsity/{n}"] for n in layers}
        policy = {"method": self.name, "scope": c.scope, "iterations": c.iterations, "achieved": achieved,
                  "steps": steps}
        artifacts = [write_json(ctx.workdir / "policy.json", policy), write_json(ctx.workdir / "storage.json", report),
                     *plot_policy(achieved, "sparsity", ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
