"""Channel importance criteria: the score of a whole coupled group, one small class each.

A criterion scores the channels of a pruning group (Torch-Pruning's ``Group``: the root
conv/linear whose output channels go, and every layer a removed channel touches: the
batch norm after it, the residual branches added to it, the consumers' input slices);
the lowest scores are removed first. ``criterion(group) -> Tensor[channels]``, so a new
criterion is a new class, not a new branch in a pruner (STYLE.md); every criterion has the
interface of Torch-Pruning's own scorers (``torch_pruning.importance.Importance``). Torch-Pruning
(which imports timm) is imported where a criterion is built, so a method's config is checked without it.
Criteria that need data (``requires_data``) are first given a few batches through
:meth:`ChannelImportance.calibrate`.

``l1``, ``l2``, ``fpgm`` and ``taylor`` are Torch-Pruning's group importances (Fang et al.,
"DepGraph", CVPR 2023, Sec. 3.3): the per-layer score of each channel is *summed over the
group* (``group_reduction="sum"``), so a channel whose filter is small but whose coupled
layers lean on it is kept. ``group_reduction="first"`` (``method.criterion_options``)
scores the root layer alone, as the papers below do. Torch-Pruning counts conv/linear
filters and their input slices (not depthwise kernels), and for l1/l2 batch-norm scales.

* ``l1`` — Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient ConvNets",
  ICLR 2017: the sum of absolute kernel weights of each filter, sum |F_ij| (Aswani survey,
  Sec. II.J; Berthelier et al. 2020, Sec. 2.3, ref. [37]); here the sum of |w| over every
  weight of the group that belongs to the channel.
* ``l2`` — the Euclidean norm of the same weights.
* ``taylor`` — Molchanov, Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural
  Network Pruning", CVPR 2019 (the group form of Molchanov et al., ICLR 2017, Berthelier
  Sec. 2.3, ref. [31]): the first-order Taylor estimate of the loss change when weights go,
  sum over the channel's weights of |w * dC/dw|, with dC/dw the gradient averaged over a
  few training batches.
* ``fpgm`` — He, Liu, Wang, Hu, Yang, "Filter Pruning via Geometric Median", CVPR 2019
  (Berthelier Sec. 2.3, ref. [43]): filters closest to the layer's geometric median are the
  most replaceable; the score of filter i is sum_j ||F_i - F_j||_2 (the paper's
  approximation of the median by the filter minimising that sum). Departure (Torch-Pruning's):
  distances are between the filters' absolute values, so F and -F count as one.
* ``thinet`` — Luo, Wu, Lin, "ThiNet", ICCV 2017 (Berthelier Sec. 2.3, ref. [38]): ours, as
  it needs activations. It uses the group's *next* layer. On sampled data, each sampled output
  entry y of the next layer is a sum of per-input-channel contributions x_c; ThiNet greedily
  builds the removed set T that minimises sum over samples (sum_{c in T} x_c)^2 (its Eq. 5,
  the greedy Algorithm 1). The greedy order is the score: the first channel it removes
  scores lowest. Departure: the paper's final least-squares rescaling of the kept weights
  (Eq. 7) is not applied; the fine-tuning that follows pruning plays that role.

Molchanov et al. normalise each layer's scores by their L2 norm before ranking across
layers; :func:`layer_normalised` does that for methods that rank globally.
"""

from __future__ import annotations

import functools
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from hardware.layers import conv_padding
from methods.base import MethodConfigError

if TYPE_CHECKING:
    import torch_pruning as tp

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]

#: ``group_reduction`` values: the whole group's score, or the root layer's alone
REDUCTIONS = ("sum", "first")


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
    #: the ``torch_pruning.importance`` class a criterion delegates to, with ``scorer_options`` (if any)
    scorer_class: ClassVar[str] = ""
    scorer_options: dict[str, Any]

    @functools.cached_property
    def scorer(self) -> tp.importance.Importance:
        """Built when first scoring: Torch-Pruning (and the timm it imports) is not needed to check options."""
        import torch_pruning as tp

        return getattr(tp.importance, self.scorer_class)(**self.scorer_options)

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        """Collect what the criterion needs from a few batches (no-op for weight criteria)."""
        return None

    @abstractmethod
    def __call__(self, group: tp.Group) -> torch.Tensor:
        """One score per output channel of ``root_module(group)``."""


def _reduction(name: str, group_reduction: str) -> str:
    if group_reduction not in REDUCTIONS:
        raise MethodConfigError(f"method.criterion_options.group_reduction of {name!r} must be 'sum' (the coupled "
                                f"group's score) or 'first' (the root layer's alone), got {group_reduction!r}")
    return group_reduction


def group_scores(scorer: tp.importance.Importance, group: tp.Group) -> torch.Tensor:
    """A Torch-Pruning importance of ``group``, one float per root channel."""
    scores = scorer(group)
    if scores is None:
        raise RuntimeError(f"{type(scorer).__name__} found no weighted layer in the group of {root_module(group)}")
    return scores.detach().float()


class L1FilterNorm(ChannelImportance):
    """Li et al. 2017, group form: sum of |w| over each channel's weights in the group."""

    name = "l1"
    p: ClassVar[int] = 1

    scorer_class = "GroupMagnitudeImportance"

    def __init__(self, group_reduction: str = "sum") -> None:
        self.scorer_options = {"p": self.p, "group_reduction": _reduction(self.name, group_reduction), "normalizer": None}

    def __call__(self, group: tp.Group) -> torch.Tensor:
        return group_scores(self.scorer, group)


class L2FilterNorm(L1FilterNorm):
    """Euclidean norm of each channel's weights in the group (the square root of Torch-Pruning's p=2 sum)."""

    name = "l2"
    p = 2

    def __call__(self, group: tp.Group) -> torch.Tensor:
        return super().__call__(group).sqrt()


class GeometricMedian(ChannelImportance):
    """He et al. 2019 (FPGM): filters near the geometric median are redundant."""

    name = "fpgm"

    scorer_class = "FPGMImportance"

    def __init__(self, group_reduction: str = "sum") -> None:
        self.scorer_options = {"p": 1, "group_reduction": _reduction(self.name, group_reduction), "normalizer": None}

    def __call__(self, group: tp.Group) -> torch.Tensor:
        return group_scores(self.scorer, group)


class _DataCriterion(ChannelImportance):
    """Scores computed by :meth:`calibrate` for the groups it was given, keyed by root layer."""

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
    """Molchanov et al. 2019: |w * dC/dw| summed over each channel's weights in the group."""

    name = "taylor"

    scorer_class = "GroupTaylorImportance"

    def __init__(self, max_batches: int = 4, group_reduction: str = "sum") -> None:
        super().__init__(max_batches)
        self.scorer_options = {"group_reduction": _reduction(self.name, group_reduction), "normalizer": None}

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()  # batch-norm statistics of the trained model, untouched
        model.zero_grad(set_to_none=True)
        try:
            seen = 0
            for x, y in batches:
                if seen >= self.max_batches:
                    break
                with torch.enable_grad():
                    F.cross_entropy(model(x.to(device)), y.to(device)).backward()  # gradients add up
                seen += 1
            if not seen:
                raise MethodConfigError("taylor: no calibration batch was seen; the training split is empty")
            with torch.no_grad():
                for parameter in model.parameters():
                    if parameter.grad is not None:
                        parameter.grad /= seen  # the mean gradient over the batches
            self._scores = {root_module(g): group_scores(self.scorer, g).cpu() for g in groups.values()}
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)


def _next_layer(group: tp.Group) -> tuple[nn.Module, list[int], list[int]] | None:
    """The first dense conv/linear whose *input* channels are the group's channels."""
    import torch_pruning as tp

    dense_input_handlers = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)  # Torch-Pruning's
    for item in group[1:]:
        module = item.dep.target.module
        if item.dep.handler not in dense_input_handlers:
            continue
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
            return module, list(item.idxs), list(item.root_idxs)
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
        patches = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv_padding(conv),
                           stride=conv.stride)  # [N, C*k*k, L]
        k = weight.shape[2] * weight.shape[3]
        c = weight.shape[1]
        rows = torch.arange(n).repeat_interleave(s)
        locations = torch.randint(patches.shape[2], (n * s,), generator=generator)
        outs = torch.randint(weight.shape[0], (n * s,), generator=generator)
        sampled = patches[rows, :, locations].reshape(-1, c, k)  # [S, C, k*k]
        return (sampled * weight[outs].reshape(-1, c, k)).sum(dim=2)

    def calibrate(self, model: nn.Module, groups: dict[str, tp.Group], batches: Iterable[Batch]) -> None:
        consumers: dict[nn.Module, tuple[nn.Module, list[int], list[int]]] = {}
        for name, group in groups.items():
            found = _next_layer(group)
            if found is None:
                log.warning("thinet: %s has no dense next layer; scoring it by the group's L2 norm", name)
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
    """Build a criterion by name with its ``method.criterion_options``.

    Data criteria accept ``max_batches`` (and ThiNet its sampling); the Torch-Pruning ones
    ``group_reduction`` ('sum': the coupled group's score, 'first': the root layer's alone).
    """
    if name not in CRITERIA:
        raise MethodConfigError(f"method.criterion: unknown criterion {name!r}; choose one of {sorted(CRITERIA)}")
    cls = CRITERIA[name]
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise MethodConfigError(f"method.criterion_options: {name} does not take {unknown}; it takes {sorted(accepted)}")
    return cls(**options)
