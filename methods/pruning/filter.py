"""Filter (channel) pruning with a choice of criterion; channels physically removed.

Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017
(Aswani survey, Sec. II.J; Berthelier et al. 2020, Sec. 2.3): rank each layer's filters by
an importance criterion, remove the least important ones together with their feature maps
and the kernels of the next layer that read them, then retrain; one-shot or iteratively.
The criteria (:mod:`methods.pruning.criteria`): ``l1`` (Li et al.), ``l2``, ``taylor``
(Molchanov et al. 2019), ``fpgm`` (He et al. 2019), Torch-Pruning's group importances, which
score each channel over its whole coupled group (the filter, its batch norm, the residual
branches added to it, the next layers' input slices; ``criterion_options.group_reduction:
first`` scores the filter alone, as Li et al. do); and ``thinet`` (Luo et al. 2017).

What is pruned and how much:

* ``pruning_ratio``: one fraction of output channels removed from every prunable layer,
  overridden per layer by ``layer_ratios`` ({layer name: ratio}); or
* ``scope: global``: one ranking over all layers (each layer's scores divided by their L2
  norm, as Molchanov et al. 2017 do) removes ``pruning_ratio`` of all channels; layers then
  lose different fractions (each keeps at least one channel); or
* ``target_macs_ratio``: prune until MACs <= ratio x baseline MACs, by bisection on one
  uniform ratio (the MACs of a width assignment do not depend on which channels go, so the
  search prunes scratch copies by index and the criterion then picks the channels once).
* ``iterations: k``: at step i, a fraction i/k of the final removal (or MACs reduction) is
  reached, scores are recomputed on the current model, and the model is fine-tuned for
  ``finetune.epochs / k`` epochs (Li et al.'s "prune and retrain iteratively").

Removal goes through :class:`methods.pruning.structured.ChannelPruner` (Torch-Pruning's
dependency graph: residual adds, depthwise convs, concatenations, batch norm and the
classifier stay consistent). The stored file is the pruning history plus the pruned state
dict; the returned model is decoded from it (:func:`methods.storage.load_model`).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from hardware.layers import count_macs
from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, excluded_layers, fail, finetune_default, option
from methods.pruning.criteria import CRITERIA, ChannelImportance, layer_normalised, make_criterion
from methods.pruning.structured import (
    ChannelPruner,
    channel_plan,
    channels_to_remove,
    count_params,
    out_channels,
    prune_counts,
    save_pruned,
)
from methods.reporting import plot_policy, write_json
from methods.storage import load_model

log = logging.getLogger(__name__)


def calibration_batches(ctx: CompressionContext, count: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of the training split (data criteria look at these)."""
    return itertools.islice(iter(ctx.datamodule.train_dataloader()), count)


def structured_metrics(decoded: nn.Module, baseline: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    params_before, params_after = count_params(baseline), count_params(decoded)
    macs_before, macs_after = count_macs(baseline, input_shape), count_macs(decoded, input_shape)
    return {
        "params_before": float(params_before), "params_after": float(params_after),
        "macs_before": float(macs_before), "macs_after": float(macs_after),
        "macs_ratio": macs_after / macs_before, "params_ratio": params_after / params_before,
        # structured pruning removes parameters: the removed fraction is its sparsity
        "sparsity": 1.0 - params_after / params_before,
    }


def layer_policy(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per layer: channels before/after and the removed fraction (the per-layer pruning ratio)."""
    return {name: {"channels_before": before[name], "channels_after": after[name],
                   "pruned_ratio": 1.0 - after[name] / before[name]}
            for name in before if name in after}


@dataclass
class FilterConfig:
    """conf/method/filter.yaml."""

    criterion: str = option("l1", choices=tuple(sorted(CRITERIA)))
    pruning_ratio: float | None = option(0.5, ge=0, lt=1, why="1 would remove every channel")
    layer_ratios: dict[str, float] = option(factory=dict, ge=0, lt=1, why="1 would remove every channel")
    target_macs_ratio: float | None = option(None, gt=0, le=1, why="MACs after / before")
    iterations: int = option(1, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    calibration_batches: int = option(4, ge=1)
    layers: LayerSelection = option(factory=LayerSelection)
    round_to: int = option(1, ge=1)
    criterion_options: dict[str, Any] = option(factory=dict)
    scope: str = option("layer", choices=("layer", "global"), why="layer: each layer loses its ratio; "
                                                                 "global: one ranking over all layers")

    def check(self, key: str) -> None:
        if self.scope == "global" and (self.layer_ratios or self.target_macs_ratio is not None):
            fail(f"{key}.scope=global", f"ranks all channels against one {key}.pruning_ratio; "
                                        f"it excludes {key}.layer_ratios and {key}.target_macs_ratio")
        if self.target_macs_ratio is not None and self.layer_ratios:
            fail(f"{key}.target_macs_ratio", f"and {key}.layer_ratios exclude each other; set one")
        if self.target_macs_ratio is None and self.pruning_ratio is None and not self.layer_ratios:
            fail(key, "sets no removal: set pruning_ratio, layer_ratios or target_macs_ratio")


class FilterPruning(CompressionMethod):
    """Prune filters by a criterion (l1, l2, taylor, fpgm, thinet); remove them physically."""

    name = "filter"
    Config = FilterConfig
    config: FilterConfig

    def __init__(self, name: str | None = None, **options: Any) -> None:
        super().__init__(name, **options)
        if self.config.target_macs_ratio is not None:  # the MACs target replaces the ratio
            self.config = replace(self.config, pruning_ratio=None)
        make_criterion(self.config.criterion, **self._criterion_kwargs())  # fail early on bad options

    def _criterion_kwargs(self) -> dict[str, Any]:
        options = dict(self.config.criterion_options)
        if CRITERIA[self.config.criterion].requires_data:
            options.setdefault("max_batches", self.config.calibration_batches)
        return options

    # -- how many channels go ------------------------------------------------------------------
    def _removal_counts(self, original: Mapping[str, int], current: Mapping[str, int], fraction: float,
                        uniform: float | None = None) -> dict[str, int]:
        """Channels to remove now so that ``fraction`` of the final removal is reached."""
        counts = {}
        for name, channels in original.items():
            ratio = uniform if uniform is not None else self.config.layer_ratios.get(name, self.config.pruning_ratio or 0.0)
            final = channels_to_remove(channels, ratio, name, self.config.round_to)
            target_removed = int(round(final * fraction))
            counts[name] = max(0, target_removed - (channels - current[name]))
        return counts

    def _uniform_ratio_for_macs(self, model: nn.Module, pruner: ChannelPruner, original: Mapping[str, int],
                                current: Mapping[str, int], target_macs: float, resolution: float = 0.01) -> float:
        """Smallest uniform ratio (of the original widths, on a ``resolution`` grid) meeting ``target_macs``.

        MACs depend on the widths, not on which channels go, so candidates are scratch copies
        pruned by index; MACs fall as the ratio grows, so the grid is bisected.
        """
        max_ratio = min((c - 1) / c for c in original.values())
        grid = [i * resolution for i in range(int(max_ratio / resolution) + 1)]
        if grid[-1] < max_ratio:
            grid.append(max_ratio)

        def macs_at(ratio: float) -> int:
            scratch = copy.deepcopy(model)
            scratch_pruner = ChannelPruner(scratch, pruner.input_shape, pruner.ignored_layers)
            for name, count in self._removal_counts(original, current, 1.0, ratio).items():
                if count:
                    scratch_pruner.prune(name, list(range(count)))
            return count_macs(scratch, pruner.input_shape)

        if count_macs(model, pruner.input_shape) <= target_macs:
            return 0.0
        smallest = macs_at(grid[-1])
        if smallest > target_macs:
            raise MethodConfigError(
                f"method.target_macs_ratio={self.config.target_macs_ratio} cannot be reached: the largest uniform ratio "
                f"({max_ratio:.3f}, leaving the narrowest prunable layer one channel) gives "
                f"{smallest / self._macs_before:.3f} of the baseline MACs (the layers that are not prunable cost "
                "the rest); use layer_ratios or a higher target")
        low, high = 0, len(grid) - 1  # macs(grid[low]) > target >= macs(grid[high])
        while high - low > 1:
            mid = (low + high) // 2
            if macs_at(grid[mid]) <= target_macs:
                high = mid
            else:
                low = mid
        return grid[high]

    def _global_counts(self, pruner: ChannelPruner, criterion: ChannelImportance, original: Mapping[str, int],
                       current: Mapping[str, int], fraction: float) -> dict[str, int]:
        """One ranking of all channels (scores L2-normalised per layer, Molchanov et al. 2017,
        Sec. 2.2): the lowest ``pruning_ratio`` of all original channels go, every layer keeping one."""
        total_removed = sum(original.values()) - sum(current.values())
        to_remove = int(round(sum(original.values()) * (self.config.pruning_ratio or 0.0) * fraction)) - total_removed
        pool = sorted(
            (float(score), name, index)
            for name, group in pruner.groups().items()
            for index, score in enumerate(layer_normalised(criterion(group).detach().float().cpu()).tolist())
        )
        counts = {name: 0 for name in current}
        for _score, name, _index in pool:
            if to_remove <= 0:
                break
            if current[name] - counts[name] > 1:
                counts[name] += 1
                to_remove -= 1
        return counts

    # -- the method --------------------------------------------------------------------------
    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline = model
        model = copy.deepcopy(baseline)
        input_shape = tuple(ctx.input_shape)
        trace_shape = (1, *input_shape[1:])
        pruner = ChannelPruner(model, trace_shape, excluded_layers(model, trace_shape, self.config.layers))
        original = {layer.name: layer.channels for layer in pruner.layers()}
        if not original:
            raise MethodConfigError("the model has no prunable layer (all ignored or tied to the output)")
        unknown = sorted(set(self.config.layer_ratios) - set(original))
        if unknown:
            raise MethodConfigError(f"method.layer_ratios names layer(s) {unknown} that are not prunable; "
                                    f"prunable layers: {list(original)}")
        plan_before = channel_plan(model)
        self._macs_before = count_macs(model, trace_shape)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        criterion: ChannelImportance = make_criterion(self.config.criterion, **self._criterion_kwargs())
        steps = []
        for step in range(1, self.config.iterations + 1):
            fraction = step / self.config.iterations
            modules = dict(model.named_modules())
            current = {name: out_channels(modules[name]) for name in original}
            uniform = None
            if self.config.target_macs_ratio is not None:
                step_target = self._macs_before * (1.0 - (1.0 - self.config.target_macs_ratio) * fraction)
                uniform = self._uniform_ratio_for_macs(model, pruner, original, current, step_target)
                counts = self._removal_counts(original, current, 1.0, uniform)
            if criterion.requires_data:
                criterion.calibrate(model, pruner.groups(), calibration_batches(ctx, self.config.calibration_batches))
            if self.config.scope == "global":
                counts = self._global_counts(pruner, criterion, original, current, fraction)
            elif self.config.target_macs_ratio is None:
                counts = self._removal_counts(original, current, fraction)
            prune_counts(pruner, criterion, counts)
            pruned_top1 = ctx.evaluate(model, "val")["top1"]
            epochs = self.config.finetune.epochs / self.config.iterations
            if epochs > 0:
                ctx.finetune(model, epochs, lr=self.config.finetune.lr)
            macs, finetuned_top1 = count_macs(model, trace_shape), ctx.evaluate(model, "val")["top1"]
            steps.append({"step": step, "uniform_ratio": uniform, "macs": macs,
                          "top1_pruned": pruned_top1, "top1_finetuned": finetuned_top1})
            log.info("filter/%s step %d/%d: MACs %.3f of baseline, top1 %.2f -> %.2f", self.config.criterion, step,
                     self.config.iterations, macs / self._macs_before, pruned_top1, finetuned_top1)
        metrics["top1_before_finetune"] = pruned_top1

        stored = save_pruned(model, pruner.history, trace_shape, ctx.workdir / "model.pruned.cbm",
                             extra={"method": self.name, "criterion": self.config.criterion})
        decoded = load_model(stored, baseline)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(structured_metrics(decoded, baseline, trace_shape))
        metrics["stored_bytes"] = float(stored.stat().st_size)
        policy = layer_policy(plan_before, channel_plan(decoded))
        prunable_policy = {name: policy[name] for name in original}
        for name, row in prunable_policy.items():
            metrics[f"pruned_ratio/{name}"] = row["pruned_ratio"]
        artifacts = [write_json(ctx.workdir / "policy.json", {
            "method": self.name, "criterion": self.config.criterion, "scope": self.config.scope, "iterations": self.config.iterations,
            "pruning_ratio": self.config.pruning_ratio, "layer_ratios": self.config.layer_ratios,
            "target_macs_ratio": self.config.target_macs_ratio, "layers": prunable_policy, "steps": steps,
        }), *plot_policy({n: r["pruned_ratio"] for n, r in prunable_policy.items()}, "pruned channel ratio",
                         ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
