"""Filter importance criteria: one small class each, Torch-Pruning style.

A criterion scores the output channels (filters) of a pruning group's root layer; the
lowest scores are removed first. ``criterion(group) -> Tensor[channels]``, so a new
criterion is a new class, not a new branch in a pruner (STYLE.md, Torch-Pruning).
Criteria that need data (``requires_data``) are first given a few batches through
:meth:`ChannelImportance.calibrate`.

* ``l1`` — Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets",
  ICLR 2017: the sum of absolute kernel weights of each filter, sum |F_ij|
  (Aswani survey, Sec. II.J; Berthelier et al. 2020, Sec. 2.3, ref. [37]).
* ``l2`` — the same with the Euclidean norm of each filter.
* ``taylor`` — Molchanov, Tyree, Karras, Aila, Kautz, "Pruning Convolutional Neural Networks
  for Resource Efficient Inference", ICLR 2017 (Berthelier Sec. 2.3, ref. [31]): the
  first-order Taylor estimate of the loss change when a feature map z is removed,
  |mean over the map's M positions of z * dC/dz|, averaged over the examples of a few
  batches. Computed on the root layer's output (the conv output, before batch norm).
* ``fpgm`` — He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median", CVPR 2019
  (Berthelier Sec. 2.3, ref. [43]): filters closest to the layer's geometric median are the
  most replaceable; the score of filter i is sum_j ||F_i - F_j||_2 (the paper's
  approximation of the median by the filter minimising that sum).
* ``thinet`` — Luo, Wu, Lin, "ThiNet", ICCV 2017 (Berthelier Sec. 2.3, ref. [38]): uses the
  *next* layer. On sampled data, each sampled output entry y of the next layer is a sum of
  per-input-channel contributions x_c; ThiNet greedily builds the removed set T that
  minimises sum over samples (sum_{c in T} x_c)^2 (its Eq. 5, the greedy Algorithm 1). The
  greedy order is the score: the first channel it removes scores lowest. Departure: the
  paper's final least-squares rescaling of the kept weights (Eq. 7) is not applied; the
  fine-tuning that follows pruning plays that role.

Molchanov et al. normalise each layer's scores by their L2 norm before ranking across
layers; :func:`layer_normalised` does that for methods that rank globally.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from methods.base import MethodConfigError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def root_module(group: tp.Group) -> nn.Module:
    return group[0].dep.target.module


def filter_matrix(module: nn.Module) -> torch.Tensor:
    """The weights of a conv/linear layer as one row per output channel (filter)."""
    weight = cast(torch.Tensor, module.weight).detach()
    return weight.reshape(weight.shape[0], -1).float()


class ChannelImportance(ABC):
    """Scores the output channels of a group's root layer; higher means keep."""

    #: True when :meth:`calibrate` must see data before scores are asked for
    requires_data: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        """Collect what the criterion needs from a few batches (no-op for weight criteria)."""
        return None

    @abstractmethod
    def __call__(self, group: tp.Group) -> torch.Tensor:
        """One score per output channel of ``root_module(group)``."""


class L1FilterNorm(ChannelImportance):
    """Li et al. 2017: sum of absolute weights of each filter."""

    name = "l1"

    def __call__(self, group: tp.Group) -> torch.Tensor:
        return filter_matrix(root_module(group)).abs().sum(dim=1)


class L2FilterNorm(ChannelImportance):
    """Euclidean norm of each filter."""

    name = "l2"

    def __call__(self, group: tp.Group) -> torch.Tensor:
        return filter_matrix(root_module(group)).norm(p=2, dim=1)


class GeometricMedian(ChannelImportance):
    """He et al. 2019 (FPGM): filters near the geometric median are redundant."""

    name = "fpgm"

    def __call__(self, group: tp.Group) -> torch.Tensor:
        filters = filter_matrix(root_module(group))
        return torch.cdist(filters, filters, p=2).sum(dim=1)


class _DataCriterion(ChannelImportance):
    requires_data = True

    def __init__(self, max_batches: int = 4) -> None:
        if max_batches < 1:
            raise MethodConfigError(f"{self.name}: calibration batches must be >= 1, got {max_batches}")
        self.max_batches = max_batches
        self._scores: dict[nn.Module, torch.Tensor] = {}

    def __call__(self, group: tp.Group) -> torch.Tensor:
        module = root_module(group)
        if module not in self._scores:
            raise RuntimeError(f"{self.name}: call calibrate() with this model's groups before scoring")
        scores = self._scores[module]
        if scores.numel() != filter_matrix(module).shape[0]:
            raise RuntimeError(f"{self.name}: the layer changed width since calibrate(); calibrate again")
        return scores


class TaylorFirstOrder(_DataCriterion):
    """Molchanov et al. 2017: |mean_m z_m dC/dz_m| per feature map, averaged over examples."""

    name = "taylor"

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        roots = {root_module(g) for g in groups.values()}
        sums: dict[nn.Module, torch.Tensor] = {}
        counts: dict[nn.Module, int] = {}
        saved: dict[nn.Module, tuple[torch.Tensor, list[torch.Tensor]]] = {}

        def keep_output(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            if output.requires_grad:  # the value now (a later in-place op may change it) and its gradient
                grads: list[torch.Tensor] = []
                output.register_hook(lambda g: grads.append(g.detach()))
                saved[module] = (output.detach().clone(), grads)

        handles = [m.register_forward_hook(keep_output) for m in roots]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # batch-norm statistics of the trained model, untouched
        try:
            for i, (x, y) in enumerate(batches):
                if i >= self.max_batches:
                    break
                saved.clear()
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    loss = F.cross_entropy(model(x.to(device)), y.to(device))
                    loss.backward()
                for module, (z, grads) in saved.items():
                    if not grads:
                        continue
                    prod = (z * grads[0]).float()
                    per_example = prod.reshape(prod.shape[0], prod.shape[1], -1).mean(dim=2).abs()  # [N, C]
                    sums[module] = sums.get(module, 0) + per_example.sum(dim=0).cpu()
                    counts[module] = counts.get(module, 0) + per_example.shape[0]
        finally:
            for h in handles:
                h.remove()
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        if not counts:
            raise MethodConfigError("taylor: no calibration batch was seen; the training split is empty")
        self._scores = {m: sums[m] / counts[m] for m in sums}


def _next_layer(group: tp.Group, graph: tp.DependencyGraph) -> tuple[nn.Module, list[int], list[int]] | None:
    """The first dense conv/linear whose *input* channels are the group's channels."""
    for item in group[1:]:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if not graph.is_in_channel_pruning_fn(dep.handler):
            continue
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            return module, list(idxs), list(item.root_idxs)
        if isinstance(module, nn.Linear):
            return module, list(idxs), list(item.root_idxs)
    return None


class ThiNet(_DataCriterion):
    """Luo et al. 2017: greedy channel selection on the next layer's reconstruction error."""

    name = "thinet"

    def __init__(self, max_batches: int = 4, samples_per_image: int = 10, max_samples: int = 4096, seed: int = 0) -> None:
        super().__init__(max_batches)
        if samples_per_image < 1 or max_samples < 1:
            raise MethodConfigError("thinet: samples_per_image and max_samples must be >= 1")
        self.samples_per_image = samples_per_image
        self.max_samples = max_samples
        self.seed = seed

    def _contributions(self, layer: nn.Module, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """[samples, in_channels]: per-input-channel terms of sampled outputs of ``layer``."""
        weight = cast(torch.Tensor, layer.weight).detach().float()
        x = x.detach().float()
        n = x.shape[0]
        s = self.samples_per_image
        if isinstance(layer, nn.Linear):
            if x.dim() != 2:
                x = x.reshape(-1, x.shape[-1])
                n = x.shape[0]
            rows = torch.arange(n).repeat_interleave(s)
            outs = torch.randint(weight.shape[0], (n * s,), generator=generator)
            return x[rows] * weight[outs]
        conv = cast(nn.Conv2d, layer)
        padding = cast(tuple[int, ...], conv.padding)  # 'same'/'valid' strings: not in the dense convs we sample
        patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=padding,
                           stride=conv.stride)  # [N, C*k*k, L]
        k = weight.shape[2] * weight.shape[3]
        c = weight.shape[1]
        rows = torch.arange(n).repeat_interleave(s)
        locations = torch.randint(patches.shape[2], (n * s,), generator=generator)
        outs = torch.randint(weight.shape[0], (n * s,), generator=generator)
        sampled = patches[rows, :, locations].reshape(-1, c, k)  # [S, C, k*k]
        return (sampled * weight[outs].reshape(-1, c, k)).sum(dim=2)

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        if not groups:
            self._scores = {}
            return
        graph = next(iter(groups.values()))._DG
        consumers: dict[nn.Module, tuple[nn.Module, list[int], list[int]]] = {}
        for group in groups.values():
            found = _next_layer(group, graph)
            if found is None:
                log.warning("thinet: %s has no dense next layer; scoring it by filter L2 norm",
                            graph._module2name.get(root_module(group)))
                continue
            consumers[root_module(group)] = found
        generator = torch.Generator().manual_seed(self.seed)
        collected: dict[nn.Module, list[torch.Tensor]] = {}

        def record(layer: nn.Module):
            def _hook(module: nn.Module, inputs: tuple, _output: Any) -> None:
                if sum(t.shape[0] for t in collected.get(module, [])) < self.max_samples:
                    collected.setdefault(module, []).append(self._contributions(module, inputs[0], generator))
            return _hook

        layers = {consumer for consumer, _, _ in consumers.values()}
        handles = [layer.register_forward_hook(record(layer)) for layer in layers]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i, (x, _y) in enumerate(batches):
                    if i >= self.max_batches:
                        break
                    model(x.to(device))
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self._scores = {}
        for group in groups.values():
            root = root_module(group)
            if root not in consumers:
                self._scores[root] = L2FilterNorm()(group).cpu()
                continue
            consumer, in_idxs, root_idxs = consumers[root]
            if consumer not in collected:
                raise MethodConfigError("thinet: no calibration batch was seen; the training split is empty")
            terms = torch.cat(collected[consumer])[: self.max_samples]
            self._scores[root] = greedy_removal_scores(terms[:, in_idxs], root_idxs, filter_matrix(root).shape[0])


def greedy_removal_scores(terms: torch.Tensor, channel_of_column: list[int], channels: int) -> torch.Tensor:
    """ThiNet's greedy selection (Luo et al. 2017, Alg. 1) turned into scores.

    ``terms[m, j]`` is the contribution of column j to sampled output m. Columns are added to
    the removed set T one at a time, each time the one that keeps ||sum_{j in T} terms[:, j]||^2
    smallest; the channel removed at step r gets score r (removed first = least important).
    Several columns may map to one channel (a channel read twice): their terms are summed.
    """
    merged = torch.zeros(terms.shape[0], channels, dtype=torch.float64)
    merged.index_add_(1, torch.tensor(channel_of_column), terms.double())
    present = sorted(set(channel_of_column))
    x = merged[:, present]
    norms = (x * x).sum(dim=0)
    partial = torch.zeros(x.shape[0], dtype=torch.float64)
    remaining = torch.ones(len(present), dtype=torch.bool)
    scores = torch.full((channels,), float(channels), dtype=torch.float64)  # absent channels: never chosen
    for step in range(len(present)):
        cost = 2.0 * (x.T @ partial) + norms  # ||partial + x_j||^2 - ||partial||^2
        cost[~remaining] = float("inf")
        j = int(torch.argmin(cost))
        remaining[j] = False
        partial += x[:, j]
        scores[present[j]] = step
    return scores.float()


def layer_normalised(scores: torch.Tensor) -> torch.Tensor:
    """Molchanov et al. 2017, Sec. 2.2: divide a layer's scores by their L2 norm."""
    return scores / scores.norm(p=2).clamp_min(1e-12)


#: criterion name (conf/method/filter.yaml ``criterion``) -> class
CRITERIA: dict[str, type[ChannelImportance]] = {
    cls.name: cls for cls in (L1FilterNorm, L2FilterNorm, TaylorFirstOrder, GeometricMedian, ThiNet)
}


def make_criterion(name: str, **options: Any) -> ChannelImportance:
    """Build a criterion by name; data criteria accept ``max_batches`` (and ThiNet its sampling)."""
    if name not in CRITERIA:
        raise MethodConfigError(f"method.criterion: unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    cls = CRITERIA[name]
    if not cls.requires_data:
        options = {}
    return cls(**options)
