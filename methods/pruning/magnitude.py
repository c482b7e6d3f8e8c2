"""Magnitude pruning: Han, Pool, Tran, Dally, "Learning both Weights and Connections for
Efficient Neural Networks", NIPS 2015.

Train (the baseline), remove the connections whose weights fall below a threshold, retrain
the remaining ones with the removed ones held at zero; iterate (Aswani survey, Sec. II.F:
"iterative pruning gave the best result"; Berthelier et al. 2020, Sec. 2.3, Fig. 3).

* The threshold of each layer (``scope: layer``) or one threshold for all (``scope: global``)
  is the one that reaches ``sparsity``; per-layer targets go in ``layer_sparsity``.
  Departure: Han et al. set the threshold as a quality factor times the layer's weight
  standard deviation; a sparsity target is what benchmarks compare at.
* ``iterations: k`` prunes to s*i/k at step i and retrains after each step (one-shot: k=1).
* Pruned weights stay zero during retraining (:class:`methods.pruning.masks.MaskHook`).
* The stored file is the sparse state dict (:mod:`methods.storage.sparse`: per
  tensor CSR or relative-index, whichever is smaller); the returned model is decoded from it.
  Unstructured zeros save storage, not time on dense hardware: MACs are reported dense
  (``macs_after`` equals ``macs_before``), the sparse count only as ``macs_nonzero_after``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from hardware.layers import count_macs, describe_layers
from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, fail, finetune_default, option, select_layers
from methods.pruning.masks import SCOPES, MaskHook, WeightMasks
from methods.reporting import plot_policy, write_json
from methods.storage import load_model, save_model
from methods.storage.sparse import FORMATS, sparse_entry, stored_format

log = logging.getLogger(__name__)


def store_sparse(model: nn.Module, template: nn.Module, path: Path, formats: Sequence[str]) -> tuple[nn.Module, dict]:
    """Write ``model``'s weights sparsely to ``path`` and decode them into a copy of ``template``."""
    state = model.state_dict()
    entries = [sparse_entry(name, tensor, formats) for name, tensor in state.items()]
    save_model(path, entries)
    report = {e.name: {"format": stored_format(e), "bytes": sum(len(data) for _kind, data in e.parts.values()),
                       "dense_bytes": state[e.name].numel() * state[e.name].element_size()} for e in entries}
    return load_model(path, template), report


def unstructured_metrics(decoded: nn.Module, baseline: nn.Module, layer_names: Sequence[str],
                         input_shape: tuple[int, ...], stored: Path, report: Mapping[str, Any]) -> dict[str, float]:
    """Sparsity (overall, per layer), MACs and parameters before/after, stored bytes."""
    modules = dict(decoded.named_modules())
    metrics: dict[str, float] = {}
    total = nonzero = 0
    for name in layer_names:
        w = modules[name].weight
        total += w.numel()
        nonzero += int(w.count_nonzero())
        metrics[f"sparsity/{name}"] = 1.0 - int(w.count_nonzero()) / w.numel()
    metrics["sparsity"] = 1.0 - nonzero / total
    params = sum(p.numel() for p in decoded.parameters())
    params_nonzero = sum(int(p.count_nonzero()) for p in decoded.parameters())
    metrics["sparsity_all_params"] = 1.0 - params_nonzero / params
    metrics["params_before"] = float(sum(p.numel() for p in baseline.parameters()))
    metrics["params_after"] = float(params)
    metrics["params_nonzero_after"] = float(params_nonzero)
    metrics["macs_before"] = float(count_macs(baseline, input_shape))
    metrics["macs_after"] = float(count_macs(decoded, input_shape))  # dense hardware: no saving
    metrics["macs_nonzero_after"] = float(sum(
        spec.macs * (1.0 - spec.sparsity) for spec in describe_layers(decoded, input_shape) if spec.op in ("conv", "dwconv", "linear")
    ))
    metrics["stored_bytes"] = float(stored.stat().st_size)
    metrics["dense_bytes"] = float(sum(r["dense_bytes"] for r in report.values()))
    metrics["compression_ratio"] = metrics["dense_bytes"] / metrics["stored_bytes"]
    return metrics


@dataclass
class MagnitudeConfig:
    """conf/method/magnitude.yaml (and Deep Compression's ``pruning`` stage)."""

    sparsity: float = option(0.5, ge=0, lt=1, why="the fraction of weights set to zero")
    scope: str = option("layer", choices=SCOPES)
    layer_sparsity: dict[str, float] = option(factory=dict, ge=0, lt=1)
    iterations: int = option(1, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)
    storage_formats: list[str] = option(factory=lambda: list(FORMATS), choices=FORMATS)

    def check(self, key: str) -> None:
        if self.layer_sparsity and self.scope == "global":
            fail(f"{key}.layer_sparsity", f"needs {key}.scope=layer (global pruning has one threshold)")
        if not self.storage_formats:
            fail(f"{key}.storage_formats", f"is empty; choose among {list(FORMATS)}")


class MagnitudePruning(CompressionMethod):
    """Han et al. 2015: prune below a magnitude threshold, retrain with masks; one-shot or iterative."""

    name = "magnitude"
    Config = MagnitudeConfig
    config: MagnitudeConfig

    def _targets(self, names: Sequence[str], fraction: float) -> float | dict[str, float]:
        c = self.config
        if c.scope == "global":
            return c.sparsity * fraction
        return {n: c.layer_sparsity.get(n, c.sparsity) * fraction for n in names}

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline = model
        model = copy.deepcopy(baseline)
        input_shape = tuple(ctx.input_shape)
        c = self.config
        layers = select_layers(model, input_shape, c.layers)
        unknown = sorted(set(c.layer_sparsity) - set(layers))
        if unknown:
            raise MethodConfigError(f"method.layer_sparsity names layer(s) {unknown} that are not pruned; "
                                    f"pruned layers: {list(layers)}")
        masks = WeightMasks(layers)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        steps = []
        for step in range(1, c.iterations + 1):
            masks.update(self._targets(list(layers), step / c.iterations), c.scope)
            pruned_top1 = ctx.evaluate(model, "val")["top1"]
            epochs = c.finetune.epochs / c.iterations
            if epochs > 0:
                ctx.finetune(model, epochs, lr=c.finetune.lr, hooks=[MaskHook(masks)])
            masks.apply()
            steps.append({"step": step, "sparsity": masks.sparsity(), "top1_pruned": pruned_top1,
                          "top1_finetuned": ctx.evaluate(model, "val")["top1"]})
            log.info("magnitude step %d/%d: sparsity %.3f, top1 %.2f -> %.2f", step, c.iterations,
                     steps[-1]["sparsity"], pruned_top1, steps[-1]["top1_finetuned"])
        metrics["top1_before_finetune"] = steps[-1]["top1_pruned"]

        stored = ctx.workdir / "model.sparse.cbm"
        decoded, report = store_sparse(model, baseline, stored, c.storage_formats)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(unstructured_metrics(decoded, baseline, list(layers), input_shape, stored, report))
        achieved = {n: metrics[f"sparsity/{n}"] for n in layers}
        policy = {
            "method": self.name, "scope": c.scope, "iterations": c.iterations,
            "requested": self._targets(list(layers), 1.0), "achieved": achieved, "steps": steps,
        }
        artifacts = [write_json(ctx.workdir / "policy.json", policy), write_json(ctx.workdir / "storage.json", report),
                     *plot_policy(achieved, "sparsity", ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
