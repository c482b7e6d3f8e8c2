"""Structured Sparsity Learning: Wen, Wu, Wang, Chen, Li, "Learning Structured Sparsity in
Deep Neural Networks", NIPS 2016 (Aswani survey, Sec. II.I).

Training minimises E(W) = E_D(W) + lambda_n sum_l sum_n ||W_l[n,:,:,:]||_2
                               + lambda_c sum_l sum_c ||W_l[:,c,:,:]||_2,
the filter-wise and channel-wise group Lasso of the paper's Eq. (2): whole filters (output
channels) and whole input channels are driven towards zero together. Groups whose norm fell
below ``threshold`` are then removed physically, and the smaller network is fine-tuned.

Departures, stated:

* The groups are those that can be removed consistently: for every prunable channel group
  of :class:`methods.pruning.structured.ChannelPruner` (Torch-Pruning's dependency graph),
  the filters of the dense layers that *produce* the channels (filter-wise term) and the
  input channels of the dense layers that *read* them (channel-wise term). A filter of a
  residual stream tied by channel padding cannot be removed alone, so it is not penalised.
  Wen et al.'s shape-wise and depth-wise groups are not implemented.
* A channel is removed when its producing filter's norm, or the norm of its input-channel
  slice in every reading layer, is below ``threshold`` (either side being zero makes the
  channel dead, up to the batch-norm shift that fine-tuning absorbs). At least
  ``min_channels`` channels of every layer are kept (the largest filter norms).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, LayerSelection, excluded_layers, fail, finetune_default, option
from methods.losses import TrainingStep
from methods.pruning.filter import layer_policy, structured_metrics
from methods.pruning.structured import ChannelPruner, channel_plan, save_pruned
from methods.reporting import plot_policy, write_json
from methods.storage import load_model

log = logging.getLogger(__name__)


def _dense(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def group_lasso_terms(pruner: ChannelPruner) -> tuple[list[nn.Module], list[nn.Module]]:
    """(layers whose filters are penalised, layers whose input channels are penalised)."""
    filter_layers: dict[int, nn.Module] = {}
    channel_layers: dict[int, nn.Module] = {}
    graph = pruner.graph
    for group in pruner.groups().values():
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, nn.Module) or not _dense(module):
                continue
            if graph.is_out_channel_pruning_fn(dep.handler):
                filter_layers[id(module)] = module
            elif graph.is_in_channel_pruning_fn(dep.handler):
                channel_layers[id(module)] = module
    return list(filter_layers.values()), list(channel_layers.values())


def filter_norms(module: nn.Module) -> torch.Tensor:
    w = cast(torch.Tensor, module.weight)
    return w.reshape(w.shape[0], -1).norm(p=2, dim=1)


def channel_norms(module: nn.Module) -> torch.Tensor:
    w = cast(torch.Tensor, module.weight)
    return w.transpose(0, 1).reshape(w.shape[1], -1).norm(p=2, dim=1)


class GroupLasso:
    """Wen et al.'s Eq. (2) regulariser: lambda_n * sum of filter norms + lambda_c * sum of channel norms.

    A loss term of the training loop (methods.losses): it reads the layers it was built on.
    """

    def __init__(self, filter_layers: Sequence[nn.Module], channel_layers: Sequence[nn.Module],
                 filter_decay: float, channel_decay: float) -> None:
        self.filter_layers, self.channel_layers = list(filter_layers), list(channel_layers)
        self.filter_decay, self.channel_decay = filter_decay, channel_decay

    def __call__(self, step: TrainingStep | None = None) -> torch.Tensor:
        total = torch.zeros(())
        if self.filter_decay:
            for module in self.filter_layers:
                total = total + self.filter_decay * filter_norms(module).sum()
        if self.channel_decay:
            for module in self.channel_layers:
                total = total + self.channel_decay * channel_norms(module).sum()
        return total


def dead_channels(pruner: ChannelPruner, threshold: float, min_channels: int) -> dict[str, list[int]]:
    """Per prunable layer, the channels whose filter or every reading channel slice is below ``threshold``."""
    graph = pruner.graph
    result: dict[str, list[int]] = {}
    with torch.no_grad():
        for name, group in pruner.groups().items():
            root = group[0].dep.target.module
            channels = root.weight.shape[0]
            filter_norm = filter_norms(root).cpu()
            readers_dead = torch.ones(channels, dtype=torch.bool)
            has_reader = False
            for item in group:
                module = item.dep.target.module
                if isinstance(module, nn.Module) and _dense(module) and graph.is_in_channel_pruning_fn(item.dep.handler):
                    norms = channel_norms(module).cpu()
                    slice_dead = torch.zeros(channels, dtype=torch.bool)
                    for in_idx, root_idx in zip(item.idxs, item.root_idxs, strict=True):
                        slice_dead[root_idx] = norms[in_idx] < threshold
                    readers_dead &= slice_dead
                    has_reader = True
            dead = (filter_norm < threshold) | (readers_dead if has_reader else torch.zeros_like(readers_dead))
            candidates = sorted(dead.nonzero().flatten().tolist(), key=lambda i: float(filter_norm[i]))
            allowed = max(0, channels - min_channels)
            if candidates[:allowed]:
                result[name] = sorted(candidates[:allowed])
    return result


@dataclass
class SSLConfig:
    """conf/method/ssl.yaml: the group-Lasso training (``sparsify``), the removal, the fine-tuning after it."""

    filter_decay: float = option(1e-4, ge=0, why="lambda_n of Eq. (2)")
    channel_decay: float = option(1e-4, ge=0, why="lambda_c")
    sparsify: FineTuning = option(factory=finetune_default(1.0))
    threshold: float = option(1e-3, gt=0, why="a group norm below it counts as zero")
    min_channels: int = option(1, ge=1, why="0 would remove every channel")
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)

    def check(self, key: str) -> None:
        if self.filter_decay == 0 and self.channel_decay == 0:
            fail(f"{key}.filter_decay and {key}.channel_decay", "are both 0: the group Lasso would remove nothing")
        if self.sparsify.epochs <= 0:
            fail(f"{key}.sparsify.epochs", f"must be > 0 (the group-Lasso training), got {self.sparsify.epochs}")


class StructuredSparsityLearning(CompressionMethod):
    """Wen et al. 2016: group-Lasso training, removal of zeroed filters/channels, fine-tuning."""

    name = "ssl"
    Config = SSLConfig
    config: SSLConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline = model
        model = copy.deepcopy(baseline)
        trace_shape = (1, *tuple(ctx.input_shape)[1:])
        c = self.config
        pruner = ChannelPruner(model, trace_shape, excluded_layers(model, trace_shape, c.layers))
        plan_before = channel_plan(model)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        filter_layers, channel_layers = group_lasso_terms(pruner)
        regularizer = GroupLasso(filter_layers, channel_layers, c.filter_decay, c.channel_decay)
        metrics["group_lasso_before"] = float(regularizer().detach())
        ctx.finetune(model, c.sparsify.epochs, lr=c.sparsify.lr, loss_terms=[regularizer])
        metrics["group_lasso_after"] = float(regularizer().detach())
        metrics["top1_after_ssl"] = ctx.evaluate(model, "val")["top1"]

        removed = dead_channels(pruner, c.threshold, c.min_channels)
        for name, indices in removed.items():
            pruner.prune(name, indices)
        metrics["channels_removed"] = float(sum(len(v) for v in removed.values()))
        metrics["top1_before_finetune"] = ctx.evaluate(model, "val")["top1"]
        if c.finetune.epochs > 0:
            ctx.finetune(model, c.finetune.epochs, lr=c.finetune.lr)

        stored = save_pruned(model, pruner.history, trace_shape, ctx.workdir / "model.pruned.cbm",
                             extra={"method": self.name})
        decoded = load_model(stored, baseline)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(structured_metrics(decoded, baseline, trace_shape))
        metrics["stored_bytes"] = float(stored.stat().st_size)
        policy = layer_policy(plan_before, channel_plan(decoded))
        layers = {name: policy[name] for name in pruner.groups() if name in policy}
        for name, row in layers.items():
            metrics[f"pruned_ratio/{name}"] = row["pruned_ratio"]
        artifacts = [write_json(ctx.workdir / "policy.json", {
            "method": self.name, "filter_decay": c.filter_decay, "channel_decay": c.channel_decay,
            "threshold": c.threshold, "layers": layers,
        }), *plot_policy({n: r["pruned_ratio"] for n, r in layers.items()}, "pruned channel ratio",
                         ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
