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

from hardware.layers import count_macs
from methods.base import CompressionContext
from methods.config import FineTuning
from methods.lowrank.decompose import SKELETONS, parameter_count
from methods.lowrank.ttmatrix import TTLinear
from methods.storage import (
    StorageError,
    StoredState,
    load_model,
    load_state_into,
    register_architecture,
    save_model,
    size_metrics,
)
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


def finetune_and_store(model: nn.Module, baseline: nn.Module, layers: Mapping[str, Mapping[str, Any]],
                       ctx: CompressionContext, finetune: FineTuning, method: str) -> tuple[nn.Module, Path, dict[str, float]]:
    """Fine-tune the factorized ``model``, store it, decode it: the model a method returns, its file, and
    its accuracy before and after, sizes, MACs and parameters against the ``baseline``."""
    metrics: dict[str, float] = {"top1_before_finetune": ctx.evaluate(model, "val")["top1"]}
    if finetune.epochs > 0:
        ctx.finetune(model, finetune.epochs, lr=finetune.lr)
    path = ctx.workdir / f"model.{method}.cbm"
    metrics.update(size_metrics(save_factorized(model, layers, path, {"method": method})))
    decoded = load_model(path, baseline)
    shape = (1, *tuple(ctx.input_shape)[1:])
    macs_before, macs_after = count_macs(baseline, shape), count_macs(decoded, shape)
    metrics.update({"top1_after_finetune": ctx.evaluate(decoded, "val")["top1"], "layers_factorized": float(len(layers)),
                    "macs_before": float(macs_before), "macs_after": float(macs_after), "macs_ratio": macs_after / macs_before,
                    "params_ratio": parameter_count(decoded) / parameter_count(baseline)})
    return decoded, path, metrics


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
