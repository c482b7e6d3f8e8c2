"""Physical channel removal through Torch-Pruning's dependency graph, and its stored file.

Structured pruning (filters/channels) only makes a network faster on dense hardware if
the channels are really removed, consistently across everything coupled to them: the
batch norm after a conv, the next layer's input channels, every branch of a residual
addition, a depthwise conv (whose input and output channels are one and the same), the
slices of a concatenation, the classifier's input features. Berthelier et al. 2020,
Sec. 2.3 ("automatically removing the filter's corresponding feature map and related
kernels in the next layer") and Aswani's survey, Sec. II.J, describe the operation; the
bookkeeping is Torch-Pruning's ``DependencyGraph`` (Fang et al., "DepGraph", CVPR 2023),
built once from a traced example input and reused for every removal (STYLE.md).

A *prunable layer* here is one Torch-Pruning group named after its root: the conv or
linear layer whose output channels are removed, with everything coupled to them.

Departures and guards:

* The model's output layer (the classifier) is never a root: its outputs are the classes.
* Channel padding (``F.pad`` on the channel dimension, as in the option-A shortcut of the
  CIFAR ResNets) is traced by Torch-Pruning as an element-wise op, which couples the 16-,
  32- and 64-channel residual streams as if they had one width. Groups that pass through
  channel padding are therefore refused; on the CIFAR ResNets this leaves the first conv
  of every residual block prunable and the residual streams intact, which is exactly the
  protocol of Li et al. 2017 (Sec. 4.2) and of AMC for ResNets.
* The stored file (:mod:`methods.storage`'s container, architecture ``pruned_channels``)
  is the unpruned architecture's name-free recipe: the *pruning history* (root layer,
  out/in, removed indices, in order) in the JSON header, plus the pruned state dict's
  tensors. :func:`methods.storage.load_model` replays the history on a fresh copy of the
  unpruned model (the same dependency graph, so the same surgery) and loads the weights
  strictly; no pickled modules, no code path of the method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hardware.layers import count_macs
from methods.base import MethodConfigError
from methods.config import forward_order
from methods.storage import StoredState, load_state_into, read_entries, register_architecture, save_model
from methods.storage.codecs import dense_entries

if TYPE_CHECKING:
    import torch_pruning as tp

#: The architecture name of a file written by :func:`save_pruned` (:func:`methods.storage.load_model` reads it).
PRUNED_ARCHITECTURE = "pruned_channels"

#: Modules that may be the root of a pruning group (their output channels are removed).
ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear)

#: One removal: (root layer name, True for output channels, removed indices).
PruningStep = list  # [str, bool, list[int]] — a list, so it survives weights_only loading


@dataclass
class PrunableLayer:
    """One group of coupled channels, named after the layer whose outputs it removes."""

    name: str
    module: nn.Module
    channels: int  # current output channels of the root
    coupled: tuple[str, ...]  # other layers whose channels go with the root's outputs
    depthwise: bool = False

    @property
    def kind(self) -> str:
        return "linear" if isinstance(self.module, nn.Linear) else ("dwconv" if self.depthwise else "conv")


def out_channels(module: nn.Module) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    raise TypeError(f"{type(module).__name__} is not a prunable root (Conv2d or Linear)")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def channels_to_remove(channels: int, ratio: float, layer: str = "", round_to: int = 1) -> int:
    """How many of ``channels`` a pruning ratio removes; refuses to remove them all.

    ``round_to`` keeps the remaining count a multiple of it (hardware-friendly widths);
    the count is rounded to the nearest integer otherwise.
    """
    if not 0.0 <= ratio < 1.0:
        raise MethodConfigError(f"pruning ratio of layer {layer!r} must be in [0, 1), got {ratio}")
    remove = int(round(channels * ratio))
    if round_to > 1:
        keep = max(round_to, int(round((channels - remove) / round_to)) * round_to)
        remove = max(0, channels - keep)
    if remove >= channels:
        raise MethodConfigError(
            f"pruning ratio {ratio} removes every one of the {channels} channels of layer {layer!r}; "
            f"use a ratio below {(channels - 1) / channels:.3f} for it (or exclude it)"
        )
    return remove


def _example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    return torch.randn(tuple(input_shape), generator=generator).to(device)


def _pads_channels(node: Any) -> bool:
    """True when a traced node pads the channel dimension (tp sees it as element-wise)."""
    grad_fn = getattr(node, "grad_fn", None)
    if grad_fn is None or "Pad" not in type(grad_fn).__name__:
        return False
    pad = getattr(grad_fn, "_saved_pad", None)
    if pad is None:
        return True  # unknown padding: refuse rather than risk a wrong coupling
    pad = list(pad)
    # F.pad lists (last dim before, after, second-to-last before, after, ...); channels are dim 1 of NCHW.
    return len(pad) >= 6 and any(int(p) != 0 for p in pad[4:6])


class ChannelPruner:
    """The dependency graph of one model, built once; removes channels physically.

    Args:
        model: the model to prune, in place (deep-copy it first to keep the original).
        input_shape: one example batch shape (batch dim included) to trace.
        ignored_layers: names of conv/linear layers whose output channels must stay.

    ``history`` is the ordered list of removals; :func:`save_pruned` stores it with the
    weights and :func:`methods.storage.load_model` replays it.
    ``graph`` is the traced Torch-Pruning graph and ``module_names`` names the modules its
    groups hold (public, so no caller reads the graph's private tables).
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], ignored_layers: Sequence[str] = ()) -> None:
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        names = dict(model.named_modules())
        unknown = [n for n in ignored_layers if n not in names]
        if unknown:
            raise MethodConfigError(f"ignored layer(s) {unknown} are not modules of the model; known layers: "
                                    f"{[n for n, m in names.items() if isinstance(m, ROOT_TYPES)][:20]} ...")
        #: module -> its name in the model (Torch-Pruning prunes modules in place: the keys stay valid)
        self.module_names: dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        # models that know which of their convs are tied by parameter-free channel padding say so
        tied = getattr(model, "residual_stream_convs", None)
        hinted = [self.module_names[m] for m in tied()] if callable(tied) else []
        self.ignored_layers = tuple(dict.fromkeys([*ignored_layers, *hinted]))
        self.graph = build_dependency_graph(model, self.input_shape)
        self._order = forward_order(model, self.input_shape, ROOT_TYPES)

    # -- what can be pruned -------------------------------------------------------------
    def name_of(self, module: nn.Module) -> str:
        return self.module_names[module]

    def _group_is_supported(self, group: tp.Group) -> bool:
        for dep, _ in group:
            if _pads_channels(dep.target) or _pads_channels(dep.source):
                return False
            if self.graph.is_out_channel_pruning_fn(dep.handler) and len(dep.target.outputs) == 0:
                return False  # feeds the model's output directly: the classes
        return True

    def groups(self) -> dict[str, tp.Group]:
        """Full-index groups of every prunable layer, in forward order, keyed by root name."""
        modules = dict(self.model.named_modules())
        ignored = [modules[n] for n in self.ignored_layers]
        found: dict[str, tp.Group] = {}
        for group in self.graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES):
            if not self._group_is_supported(group):
                continue
            group = self._dense_rooted(group)
            found[self.name_of(group[0].dep.target.module)] = group
        rank = {name: i for i, name in enumerate(self._order)}
        return dict(sorted(found.items(), key=lambda item: rank.get(item[0], len(rank))))

    def _dense_rooted(self, group: tp.Group) -> tp.Group:
        """The same group rooted at the first dense conv/linear that produces its channels.

        Torch-Pruning roots a group at whichever coupled layer it met first, a depthwise conv
        say; the group is named after its root, its scores are indexed by the root's channels
        and ThiNet reads the root's next layer, so the root is moved to the first dense
        producer in forward order (Li et al. 2017's filters) when there is one.
        """
        rank = {name: i for i, name in enumerate(self._order)}
        producers = [
            dep.target.module for dep, _ in group
            if self.graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, ROOT_TYPES)
            and not (isinstance(dep.target.module, nn.Conv2d) and dep.target.module.groups > 1)
        ]
        if not producers:
            return group
        first = min(producers, key=lambda m: rank.get(self.name_of(m), len(rank)))
        if first is group[0].dep.target.module:
            return group
        pruner = self.graph.get_pruner_of_module(first)
        return self.graph.get_pruning_group(first, pruner.prune_out_channels, list(range(out_channels(first))))

    def layers(self) -> list[PrunableLayer]:
        """The prunable layers (current channel counts), in forward order."""
        result = []
        for name, group in self.groups().items():
            root = group[0].dep.target.module
            coupled = tuple(dict.fromkeys(
                self.name_of(dep.target.module) for dep, _ in group[1:]
                if isinstance(dep.target.module, nn.Module) and dep.target.module in self.module_names
            ))
            depthwise = isinstance(root, nn.Conv2d) and root.groups > 1 and root.groups == root.out_channels
            result.append(PrunableLayer(name, root, out_channels(root), coupled, depthwise))
        return result

    def group(self, name: str) -> tp.Group:
        groups = self.groups()
        if name not in groups:
            raise MethodConfigError(f"layer {name!r} is not prunable; prunable layers: {list(groups)}")
        return groups[name]

    # -- removal ----------------------------------------------------------------------
    def prune(self, name: str, indices: Sequence[int]) -> None:
        """Remove output channels ``indices`` of layer ``name`` and everything coupled to them."""
        indices = sorted({int(i) for i in indices})
        if not indices:
            return
        module = dict(self.model.named_modules()).get(name)
        if module is None or not isinstance(module, ROOT_TYPES):
            raise MethodConfigError(f"{name!r} is not a Conv2d/Linear layer of the model")
        channels = out_channels(module)
        if indices[0] < 0 or indices[-1] >= channels:
            raise MethodConfigError(f"channel indices of layer {name!r} must be in [0, {channels}), got {indices}")
        if len(indices) >= channels:
            raise MethodConfigError(f"removing {len(indices)} of the {channels} channels of layer {name!r} leaves none")
        pruner = self.graph.get_pruner_of_module(module)
        group = self.graph.get_pruning_group(module, pruner.prune_out_channels, indices)
        if not self._group_is_supported(group):
            raise MethodConfigError(f"layer {name!r} cannot be pruned: its channels pass through channel padding "
                                    "or feed the model's output")
        if not self.graph.check_pruning_group(group):
            raise MethodConfigError(f"removing channels {indices} of layer {name!r} would empty a coupled layer")
        group.prune()

    def remove_lowest(self, name: str, scores: torch.Tensor, count: int) -> list[int]:
        """Remove the ``count`` channels of ``name`` with the lowest ``scores``; return their indices."""
        if count <= 0:
            return []
        channels = out_channels(dict(self.model.named_modules())[name])
        if scores.numel() != channels:
            raise ValueError(f"{name}: {scores.numel()} scores for {channels} channels")
        # stable order: ties broken by channel index, so runs are reproducible
        order = sorted(range(channels), key=lambda i: (float(scores[i]), i))
        removed = sorted(order[:count])
        self.prune(name, removed)
        return removed

    @property
    def history(self) -> list[PruningStep]:
        return [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in self.graph.pruning_history()]

    def macs(self) -> int:
        return count_macs(self.model, self.input_shape)


def build_dependency_graph(model: nn.Module, input_shape: Sequence[int]) -> tp.DependencyGraph:
    """Trace ``model`` (in eval mode, so batch-norm statistics stay untouched)."""
    import torch_pruning as tp  # here, not at the top: it imports timm, which checking a config does not need

    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, _example_input(model, input_shape), verbose=False)
    finally:
        model.train(was_training)


Importance = Callable[["tp.Group"], torch.Tensor]


def prune_counts(pruner: ChannelPruner, importance: Importance, counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Remove ``counts[name]`` channels of each layer, lowest ``importance`` first.

    All scores are computed before any removal (Li et al. 2017, Sec. 3.3, "independent"
    strategy), so the order of layers does not change which channels go. Returns the
    removed indices per layer (indices of that layer at the time of the call).
    """
    groups = pruner.groups()
    unknown = sorted(set(counts) - set(groups))
    if unknown:
        raise MethodConfigError(f"layer(s) {unknown} are not prunable; prunable layers: {list(groups)}")
    plan: dict[str, tuple[torch.Tensor, int]] = {}
    for name, count in counts.items():
        channels = out_channels(groups[name][0].dep.target.module)
        if count >= channels:
            raise MethodConfigError(f"removing {count} of the {channels} channels of layer {name!r} leaves none")
        if count > 0:
            plan[name] = (importance(groups[name]).detach().float().cpu(), count)
    return {name: pruner.remove_lowest(name, scores, count) for name, (scores, count) in plan.items()}


def prune_layers(pruner: ChannelPruner, importance: Importance, ratios: Mapping[str, float],
                 round_to: int = 1) -> dict[str, list[int]]:
    """Remove ``ratios[name]`` of each layer's current channels, lowest ``importance`` first."""
    layers = {layer.name: layer for layer in pruner.layers()}
    unknown = sorted(set(ratios) - set(layers))
    if unknown:
        raise MethodConfigError(f"layer_ratios names unprunable layer(s) {unknown}; prunable: {list(layers)}")
    counts = {name: channels_to_remove(layers[name].channels, r, name, round_to) for name, r in ratios.items()}
    return prune_counts(pruner, importance, counts)


def channel_plan(model: nn.Module) -> dict[str, int]:
    """Output channels of every conv/linear layer: the architecture a pruning left."""
    return {name: out_channels(m) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)}


# -- the stored file -------------------------------------------------------------------
def save_pruned(model: nn.Module, history: Sequence[PruningStep], input_shape: Sequence[int], path: Path,
                extra: Mapping[str, Any] | None = None) -> Path:
    """Write the pruned model as its pruning history (header) and its state dict's tensors."""
    meta = {
        "input_shape": [int(s) for s in input_shape],
        "history": [[str(n), bool(o), [int(i) for i in idxs]] for n, o, idxs in history],
        "channels": channel_plan(model),
        "extra": dict(extra or {}),
    }
    save_model(path, dense_entries(model.state_dict()), meta, architecture=PRUNED_ARCHITECTURE)
    return Path(path)


def read_pruned(path: Path) -> dict[str, Any]:
    """The header of a file of :func:`save_pruned`: input_shape, history, channels, extra."""
    header, _entries = read_entries(path)
    if header["architecture"] != PRUNED_ARCHITECTURE:
        raise ValueError(f"{path} is not a pruned-model file (architecture {header['architecture']!r}, expected "
                         f"{PRUNED_ARCHITECTURE!r}); was it written by save_pruned?")
    return header["meta"]


def apply_history(model: nn.Module, history: Sequence[PruningStep], input_shape: Sequence[int]) -> nn.Module:
    """Replay a pruning history on ``model`` (in place): the same removals, in the same order."""
    graph = build_dependency_graph(model, input_shape)
    graph.load_pruning_history([[n, bool(o), list(idxs)] for n, o, idxs in history])
    return model


@register_architecture(PRUNED_ARCHITECTURE)
def _pruned_model(template: nn.Module, state: StoredState) -> nn.Module:
    """Replay the stored pruning history on a copy of the *unpruned* ``template``, then load the weights."""
    model = apply_history(copy.deepcopy(template), state.meta["history"], state.meta["input_shape"])
    channels = channel_plan(model)
    if channels != state.meta["channels"]:
        diff = {k: (channels.get(k), v) for k, v in state.meta["channels"].items() if channels.get(k) != v}
        raise ValueError(f"{state.path}: replaying the pruning history on the template gives other widths {diff}; "
                         "is the template the same unpruned architecture?")
    return load_state_into(model, state)
