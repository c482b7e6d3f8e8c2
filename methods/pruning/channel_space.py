"""The prunable channel groups of a model, and physically shrunk copies of it.

Shared by AMC (He et al., ECCV 2018: the layers its agent walks), CompactNet (Li et al.,
IJCAI 2019) and NetAdapt (Yang et al., ECCV 2018): the layers they trim one at a time.
The groups are found once with Torch-Pruning's ``DependencyGraph`` (residual additions,
depthwise convolutions, batch norm, flatten into the classifier are coupled by the
graph, not by us), and :meth:`ChannelSpace.shrink` builds a physically smaller copy
keeping the given channels of each group. Group discovery and the stored file are
:mod:`methods.pruning.structured`'s; ``shrink`` adds a copy-and-cut path that reuses one
traced graph, because a search builds thousands of candidates. A group is identified by
its *producer* (the conv/linear whose output channels it removes); the conv/linear
layers whose *input* channels go with it are its *consumers* (the "layer t" of AMC,
whose input channels AMC's action prunes). What a candidate costs is
:mod:`methods.search.resource`'s.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from hardware.layers import describe_layers
from methods.base import MethodConfigError
from methods.pruning.structured import ChannelPruner, out_channels


@dataclass(frozen=True)
class PrunableUnit:
    """One group of coupled channels that is kept or removed together."""

    index: int
    producer: str  # the dense conv/linear whose output channels the group removes (its root)
    consumers: tuple[str, ...]  # dense conv / linear layers whose input channels go with them
    channels: int


def _is_dense_consumer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


class ChannelSpace:
    """The prunable channel groups of ``model`` and physically shrunk copies of it.

    Group discovery is :class:`methods.pruning.structured.ChannelPruner`'s (one traced
    dependency graph; the classifier, channel-padding shortcuts and ``ignored`` layers are
    refused there). Groups without a dense consumer are left out (nothing reads their
    channels through a weight, so AMC has no layer t for them). ``model`` is never
    modified: :meth:`shrink` cuts a deep copy.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], ignored: Sequence[str] = ()) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.pruner = ChannelPruner(model, self.input_shape, ignored_layers=list(ignored))
        graph = self.pruner.graph
        self.layer_specs = {s.name: s for s in describe_layers(model, self.input_shape)}
        order = {name: i for i, name in enumerate(self.layer_specs)}
        found: list[tuple[str, tuple[str, ...], int, list[str]]] = []
        for root, group in self.pruner.groups().items():
            consumers, out_members = [], []
            for dep, _ in group:
                module = dep.target.module
                name = self.pruner.module_names.get(module) if isinstance(module, nn.Module) else None
                if name is None or not isinstance(module, (nn.Conv2d, nn.Linear)):
                    continue
                if graph.is_in_channel_pruning_fn(dep.handler) and _is_dense_consumer(module):
                    if name not in consumers:
                        consumers.append(name)
                elif graph.is_out_channel_pruning_fn(dep.handler) and name not in out_members:
                    out_members.append(name)
            if consumers:
                found.append((root, tuple(consumers), out_channels(group[0].dep.target.module), out_members))
        if not found:
            raise MethodConfigError("method: the model has no prunable channel group (only the classifier?)")
        # AMC walks the layers in the order the network runs them: sort by first consumer.
        found.sort(key=lambda f: min(order.get(c, len(order)) for c in f[1]))
        self.units = [PrunableUnit(i, producer, consumers, channels)
                      for i, (producer, consumers, channels, _) in enumerate(found)]
        #: conv/linear layer -> the unit whose removal shrinks its output channels / its input
        self.out_unit: dict[str, int] = {}
        self.in_unit: dict[str, int] = {}
        for unit, (_, _, _, out_members) in zip(self.units, found, strict=False):
            for name in out_members:
                self.out_unit[name] = unit.index
            for name in unit.consumers:
                self.in_unit[name] = unit.index

    def min_keep(self, unit: PrunableUnit, ratio: float, channel_round: int) -> int:
        """Channels kept for a preserve ratio: rounded up to a multiple of ``channel_round``."""
        n = math.ceil(ratio * unit.channels - 1e-9)
        n = int(math.ceil(n / channel_round) * channel_round)
        return max(1, min(unit.channels, n))

    def _kept_indices(self, keep: Mapping[int, int | Sequence[int]]) -> dict[int, list[int]]:
        plan = {}
        for index, kept in keep.items():
            unit = self.units[index]
            kept_idx = list(range(kept)) if isinstance(kept, int) else sorted({int(i) for i in kept})
            if not kept_idx:
                raise MethodConfigError(f"method: unit {unit.producer!r} would lose every channel")
            if len(kept_idx) < unit.channels:
                plan[index] = kept_idx
        return plan

    def history(self, keep: Mapping[int, int | Sequence[int]]) -> list[list]:
        """The removals as a pruning history for :func:`methods.pruning.structured.save_pruned`."""
        return [[self.units[i].producer, True, sorted(set(range(self.units[i].channels)) - set(kept))]
                for i, kept in self._kept_indices(keep).items()]

    def shrink(self, keep: Mapping[int, int | Sequence[int]]) -> nn.Module:
        """A pruned copy: unit index -> a count (first channels kept) or the indices to keep.

        The dependency graph of the original model was traced once; for each unit it gives
        the coupled (layer, handler, indices) triples, and the handlers are applied to the
        same-named layers of a deep copy (no re-tracing per candidate: a search shrinks
        thousands of candidates). Units own disjoint tensor dimensions, so indices in the
        original numbering stay valid while several units are removed in turn.
        """
        from torch_pruning.ops import OPTYPE  # imported by the graph already

        graph = self.pruner.graph
        pruned = copy.deepcopy(self.model)
        modules = dict(pruned.named_modules())
        originals = dict(self.model.named_modules())
        for index, kept_idx in self._kept_indices(keep).items():
            unit = self.units[index]
            removed = sorted(set(range(unit.channels)) - set(kept_idx))
            producer = originals[unit.producer]
            group = graph.get_pruning_group(producer, graph.get_pruner_of_module(producer).prune_out_channels, removed)
            for dep, idxs in group:
                if dep.target.type == OPTYPE.PARAMETER:
                    raise MethodConfigError(f"method: unit {unit.producer!r} couples a bare nn.Parameter; "
                                            "list its producer in method.ignored_layers")
                name = self.pruner.module_names.get(dep.target.module) if isinstance(dep.target.module, nn.Module) else None
                if name is not None:  # parameter-free graph nodes (add, reshape) have nothing to cut
                    dep.handler(modules[name], idxs)
        return pruned

    def channel_counts(self, model: nn.Module) -> dict[str, int]:
        """Output channels of every unit's producer in ``model`` (a shrunk copy)."""
        modules = dict(model.named_modules())
        return {unit.producer: out_channels(modules[unit.producer]) for unit in self.units}
