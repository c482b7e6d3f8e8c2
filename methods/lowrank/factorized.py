"""The stored form of a factorized model: its factors' tensors and, per layer, the kind and ranks.

A file written by :func:`save_factorized` names the ``factorized`` architecture; its header holds
``{"layers": {name: {"kind": svd|tucker2|cp|tt, "ranks": [...], (tt) "in_modes", "out_modes"}}}``.
:func:`methods.storage.load_model` rebuilds the model by replacing each named layer of the
uncompressed template by the skeleton of its kind, then loading the stored factors into it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from methods.lowrank.decompose import SKELETONS
from methods.lowrank.ttmatrix import TTLinear
from methods.storage import StorageError, StoredState, load_state_into, register_architecture, save_model
from methods.storage.codecs import dense_entries

ARCHITECTURE = "factorized"


def skeleton(layer: nn.Module, spec: Mapping[str, Any]) -> nn.Module:
    """The untrained factorized module of ``spec`` in place of ``layer``."""
    kind = spec["kind"]
    if kind == "tt":
        return TTLinear(spec["in_modes"], spec["out_modes"], spec["ranks"], bias=layer.bias is not None)
    if kind not in SKELETONS:
        raise StorageError(f"unknown factorization {kind!r}; known are {sorted([*SKELETONS, 'tt'])}")
    return SKELETONS[kind](layer, spec["ranks"])


def replace_layer(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def save_factorized(model: nn.Module, layers: Mapping[str, Mapping[str, Any]], path: Path,
                    extra: Mapping[str, Any] | None = None) -> dict[str, int]:
    """Write the factorized ``model``'s tensors and the per-layer ``layers`` specs; return the sizes by kind."""
    meta = {"layers": {name: dict(spec) for name, spec in layers.items()}, **dict(extra or {})}
    return save_model(path, dense_entries(model.state_dict()), meta, architecture=ARCHITECTURE)


@register_architecture(ARCHITECTURE)
def _factorized_model(template: nn.Module, state: StoredState) -> nn.Module:
    """A copy of the template with each stored layer replaced by its factorized skeleton, the factors loaded."""
    model = copy.deepcopy(template).cpu()
    for name, spec in state.meta["layers"].items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise StorageError(f"{state.path}: the template has no layer {name!r}; is it the architecture the file "
                               "was factorized from?") from None
        replace_layer(model, name, skeleton(layer, spec))
    return load_state_into(model, state).eval()
