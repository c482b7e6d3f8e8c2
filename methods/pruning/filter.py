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
  ``finetune_epochs / k`` epochs (Li et al.'s "prune and retrain iteratively").

Removal goes through :class:`methods.pruning.structured.ChannelPruner` (Torch-Pruning's
dependency graph: residual adds, depthwise convs, concatenations, batch norm and the
classifier stay consistent). The stored file is the pruning history plus the pruned state
dict; the returned model is decoded from it (:func:`methods.storage.load_model`).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from hardware.layers import count_macs
from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
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


class FilterPruning(CompressionMethod):
    """Prune filters by a criterion (l1, l2, taylor, fpgm, thinet); remove them physically."""

    def __init__(
        self,
        name: str = "filter",
        criterion: str = "l1",
        pruning_ratio: float | None = 0.5,
        layer_ratios: Mapping[str, float] | None = None,
        target_macs_ratio: float | None = None,
        iterations: int = 1,
        finetune_epochs: float = 1.0,
        lr: float | None = None,
        calibration_batches: int = 4,
        ignored_layers: Sequence[str] = (),
        round_to: int = 1,
        criterion_options: Mapping[str, Any] | None = None,
        scope: str = "layer",
    ) -> None:
        super().__init__(name)
        if scope not in ("layer", "global"):
            raise MethodConfigError(f"method.scope must be 'layer' (each layer loses its ratio) or 'global' "
                                    f"(one ranking over all layers), got {scope!r}")
        if scope == "global" and (layer_ratios or target_macs_ratio is not None):
            raise MethodConfigError("method.scope=global ranks all channels against one method.pruning_ratio; "
                                    "it excludes method.layer_ratios and method.target_macs_ratio")
        self.scope = scope
        if criterion not in CRITERIA:
            raise MethodConfigError(f"method.criterion: unknown criterion {criterion!r}; choose one of {sorted(CRITERIA)}")
        self.criterion = criterion
        if target_macs_ratio is not None:
            if not 0.0 < target_macs_ratio <= 1.0:
                raise MethodConfigError(f"method.target_macs_ratio must be in (0, 1] (MACs after / before), got {target_macs_ratio}")
            if layer_ratios:
                raise MethodConfigError("method.target_macs_ratio and method.layer_ratios exclude each other; set one")
            pruning_ratio = None
        elif pruning_ratio is None and not layer_ratios:
            raise MethodConfigError("set method.pruning_ratio, method.layer_ratios or method.target_macs_ratio")
        if pruning_ratio is not None and not 0.0 <= pruning_ratio < 1.0:
            raise MethodConfigError(f"method.pruning_ratio must be in [0, 1) (1 would remove every channel), got {pruning_ratio}")
        self.layer_ratios = {str(k): float(v) for k, v in (layer_ratios or {}).items()}
        for layer, ratio in self.layer_ratios.items():
            if not 0.0 <= ratio < 1.0:
                raise MethodConfigError(f"method.layer_ratios.{layer} must be in [0, 1) (1 would remove every channel), got {ratio}")
        self.pruning_ratio = pruning_ratio
        self.target_macs_ratio = target_macs_ratio
        if int(iterations) != iterations or iterations < 1:
            raise MethodConfigError(f"method.iterations must be an integer >= 1, got {iterations}")
        self.iterations = int(iterations)
        if finetune_epochs < 0:
            raise MethodConfigError(f"method.finetune_epochs must be >= 0, got {finetune_epochs}")
        self.finetune_epochs, self.lr = float(finetune_epochs), lr
        if lr is not None and lr <= 0:
            raise MethodConfigError(f"method.lr must be > 0 (or null for the recipe's), got {lr}")
        if calibration_batches < 1:
            raise MethodConfigError(f"method.calibration_batches must be >= 1, got {calibration_batches}")
        self.calibration_batches = int(calibration_batches)
        self.ignored_layers = list(ignored_layers)
        if round_to < 1:
            raise MethodConfigError(f"method.round_to must be >= 1, got {round_to}")
        self.round_to = int(round_to)
        self.criterion_options = dict(criterion_options or {})
        make_criterion(self.criterion, **self._criterion_kwargs())  # fail early on bad options

    def _criterion_kwargs(self) -> dict[str, Any]:
        options = dict(self.criterion_options)
        if CRITERIA[self.criterion].requires_data:
            options.setdefault("max_batches", self.calibration_batches)
        return options

    # -- how many channels go ------------------------------------------------------------------
    def _removal_counts(self, original: Mapping[str, int], current: Mapping[str, int], fraction: float,
                        uniform: float | None = None) -> dict[str, int]:
        """Channels to remove now so that ``fraction`` of the final removal is reached."""
        counts = {}
        for name, channels in original.items():
            ratio = uniform if uniform is not None else self.layer_ratios.get(name, self.pruning_ratio or 0.0)
            final = channels_to_remove(channels, ratio, name, self.round_to)
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
            scratch_pruner = ChannelPruner(scratch, pruner.input_shape, self.ignored_layers)
            for name, count in self._removal_counts(original, current, 1.0, ratio).items():
                if count:
                    scratch_pruner.prune(name, list(range(count)))
            return count_macs(scratch, pruner.input_shape)

        if count_macs(model, pruner.input_shape) <= target_macs:
            return 0.0
        smallest = macs_at(grid[-1])
        if smallest > target_macs:
            raise MethodConfigError(
                f"method.target_macs_ratio={self.target_macs_ratio} cannot be reached: the largest uniform ratio "
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
        to_remove = int(round(sum(original.values()) * (self.pruning_ratio or 0.0) * fraction)) - total_removed
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
        pruner = ChannelPruner(model, trace_shape, self.ignored_layers)
        original = {layer.name: layer.channels for layer in pruner.layers()}
        if not original:
            raise MethodConfigError("the model has no prunable layer (all ignored or tied to the output)")
        unknown = sorted(set(self.layer_ratios) - set(original))
        if unknown:
            raise MethodConfigError(f"method.layer_ratios names layer(s) {unknown} that are not prunable; "
                                    f"prunable layers: {list(original)}")
        plan_before = channel_plan(model)
        self._macs_before = count_macs(model, trace_shape)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        criterion: ChannelImportance = make_criterion(self.criterion, **self._criterion_kwargs())
        steps = []
        for step in range(1, self.iterations + 1):
            fraction = step / self.iterations
            modules = dict(model.named_modules())
            current = {name: out_channels(modules[name]) for name in original}
            uniform = None
            if self.target_macs_ratio is not None:
                step_target = self._macs_before * (1.0 - (1.0 - self.target_macs_ratio) * fraction)
                uniform = self._uniform_ratio_for_macs(model, pruner, original, current, step_target)
                counts = self._removal_counts(original, current, 1.0, uniform)
            if criterion.requires_data:
                criterion.calibrate(model, pruner.groups(), calibration_batches(ctx, self.calibration_batches))
            if self.scope == "global":
                counts = self._global_counts(pruner, criterion, original, current, fraction)
            elif self.target_macs_ratio is None:
                counts = self._removal_counts(original, current, fraction)
            prune_counts(pruner, criterion, counts)
            pruned_top1 = ctx.evaluate(model, "val")["top1"]
            epochs = self.finetune_epochs / self.iterations
            if epochs > 0:
                ctx.finetune(model, epochs, lr=self.lr)
            macs, finetuned_top1 = count_macs(model, trace_shape), ctx.evaluate(model, "val")["top1"]
            steps.append({"step": step, "uniform_ratio": uniform, "macs": macs,
                          "top1_pruned": pruned_top1, "top1_finetuned": finetuned_top1})
            log.info("filter/%s step %d/%d: MACs %.3f of baseline, top1 %.2f -> %.2f", self.criterion, step,
                     self.iterations, macs / self._macs_before, pruned_top1, finetuned_top1)
        metrics["top1_before_finetune"] = pruned_top1

        stored = save_pruned(model, pruner.history, trace_shape, ctx.workdir / "model.pruned.cbm",
                             extra={"method": self.name, "criterion": self.criterion})
        decoded = load_model(stored, baseline)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(structured_metrics(decoded, baseline, trace_shape))
        metrics["stored_bytes"] = float(stored.stat().st_size)
        policy = layer_policy(plan_before, channel_plan(decoded))
        prunable_policy = {name: policy[name] for name in original}
        for name, row in prunable_policy.items():
            metrics[f"pruned_ratio/{name}"] = row["pruned_ratio"]
        artifacts = [write_json(ctx.workdir / "policy.json", {
            "method": self.name, "criterion": self.criterion, "scope": self.scope, "iterations": self.iterations,
            "pruning_ratio": self.pruning_ratio, "layer_ratios": self.layer_ratios,
            "target_macs_ratio": self.target_macs_ratio, "layers": prunable_policy, "steps": steps,
        }), *plot_policy({n: r["pruned_ratio"] for n, r in prunable_policy.items()}, "pruned channel ratio",
                         ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
