"""Tensor-train layers: fully connected layers replaced by TT-matrices, trained end to end.

Novikov, Podoprikhin, Osokin, Vetrov, "Tensorizing Neural Networks", NIPS 2015 (Sec. 3-5): a
layer's weight (out x in) is reshaped to a d-dimensional TT-matrix with out = m_1...m_d and
in = n_1...n_d and held as d cores of TT-ranks r_1..r_{d-1} (:class:`.ttmatrix.TTLinear`); the
cores are trained by back-propagation with the rest of the network. The mode factorisations
come from ``shapes`` per layer, else ``cores`` near-equal factors of each size (:func:`.ttmatrix.factor_modes`);
the ranks from ``shapes.<layer>.ranks``, else ``rank``.

Departure: the paper trains the TT-network from scratch. Here the method receives a trained
network: ``init: tt_svd`` starts the cores from the TT-SVD of the trained layer (TensorLy), ``random``
from Gaussian cores (the paper's setting for the replaced layers; the other layers keep their
trained weights); then everything is fine-tuned ``finetune.epochs``. The stored file holds the cores.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, LayerSelection, fail, finetune_default, option, select_layers
from methods.lowrank.decompose import parameter_count
from methods.lowrank.factorized import finetune_and_store, replace_layer
from methods.lowrank.ttmatrix import TTLinear, bond_ranks, factor_modes, max_ranks, random_cores, tt_svd
from methods.reporting import plot_policy, write_json


@dataclass
class TTShape:
    """One layer's TT-matrix shape: ``in_modes`` (product = in_features), ``out_modes`` (product = out_features),
    ``ranks`` (the d - 1 inner TT-ranks; null: the method's ``rank``)."""

    in_modes: list[int] = option(factory=list, ge=1)
    out_modes: list[int] = option(factory=list, ge=1)
    ranks: list[int] | None = option(None, ge=1, why="a TT-rank of 0 disconnects the cores")


@dataclass
class TensorTrainConfig:
    """conf/method/tensor_train.yaml."""

    rank: int = option(8, ge=1, why="a TT-rank of 0 disconnects the cores")
    cores: int = option(4, ge=2, why="one core is the dense matrix")
    shapes: dict[str, TTShape] = option(factory=dict)
    init: str = option("tt_svd", choices=("tt_svd", "random"))
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=lambda: LayerSelection(types=["linear"], last=False))

    def check(self, key: str) -> None:
        if "conv" in self.layers.types:
            fail(f"{key}.layers.types={self.layers.types}:", "tensor_train replaces linear layers only; use [linear]")


class TensorTrain(CompressionMethod):
    """``tensor_train``: linear layers as TT-matrices of given ranks and mode factorisations, trained end to end."""

    name = "tensor_train"
    Config = TensorTrainConfig
    config: TensorTrainConfig

    def _spec(self, name: str, layer: nn.Linear) -> dict[str, Any]:
        c, key = self.config, f"method.shapes.{name}"
        shape = c.shapes.get(name, TTShape())
        in_modes = shape.in_modes or factor_modes(layer.in_features, len(shape.out_modes) or c.cores)
        out_modes = shape.out_modes or factor_modes(layer.out_features, len(in_modes))
        for modes, size, which in ((in_modes, layer.in_features, "in"), (out_modes, layer.out_features, "out")):
            if math.prod(modes) != size:
                fail(f"{key}.{which}_modes={modes}", f"multiplies to {math.prod(modes)}, but {name} has {size} "
                                             f"{which}_features: give factors whose product is {size}")
        if len(in_modes) != len(out_modes):
            fail(f"{key}:", f"in_modes {in_modes} and out_modes {out_modes} need as many factors (one per core)")
        ranks = bond_ranks(in_modes, out_modes, shape.ranks if shape.ranks is not None else c.rank)
        rank_key = f"{key}.ranks" if shape.ranks is not None else "method.rank"
        if len(ranks) != len(in_modes) + 1:
            fail(f"{rank_key}={shape.ranks}:", f"{len(in_modes)} cores take {len(in_modes) - 1} inner ranks")
        bounds = max_ranks(in_modes, out_modes)
        if any(r > b for r, b in zip(ranks[1:-1], bounds, strict=True)):
            fail(f"{rank_key}:", f"TT-ranks {ranks[1:-1]} of {name} exceed the full TT-ranks {bounds} of its shape "
                           f"{out_modes} x {in_modes}; lower them")
        return {"kind": "tt", "in_modes": in_modes, "out_modes": out_modes, "ranks": ranks}

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline, c = model, self.config
        model = copy.deepcopy(baseline).cpu()
        shape = (1, *tuple(ctx.input_shape)[1:])
        chosen = {n: m for n, m in select_layers(model, shape, c.layers).items() if isinstance(m, nn.Linear)}  # check(): linear only
        unknown = sorted(set(c.shapes) - set(chosen))
        if unknown:
            fail("method.shapes", f"names {unknown}, not among the selected linear layers {list(chosen)}")
        generator = torch.Generator().manual_seed(ctx.seed)
        specs, policy = {}, {}
        for name, layer in chosen.items():
            specs[name] = self._spec(name, layer)
            tt = TTLinear(specs[name]["in_modes"], specs[name]["out_modes"], specs[name]["ranks"], layer.bias is not None)
            if c.init == "tt_svd":
                tt_svd(tt, layer.weight)
            else:
                random_cores(tt, generator)
            if layer.bias is not None:
                tt.bias.data.copy_(layer.bias.detach())  # type: ignore[union-attr]
            replace_layer(model, name, tt)
            dense, cores = layer.weight.numel(), sum(core.numel() for core in tt.cores)
            policy[name] = {**specs[name], "weight_params": dense, "core_params": cores,
                            "compression_factor": dense / cores}
        decoded, path, metrics = finetune_and_store(model, baseline, specs, ctx, c.finetune, self.name)
        weights = sum(p["weight_params"] for p in policy.values())
        metrics.update({"layer_compression_factor": weights / sum(p["core_params"] for p in policy.values()),
                        "network_compression_factor": parameter_count(baseline) / parameter_count(decoded)})
        artifacts = [write_json(ctx.workdir / "policy.json", {"method": self.name, "init": c.init, "layers": policy}),
                     *plot_policy({n: p["compression_factor"] for n, p in policy.items()}, "weight / core parameters",
                                  ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=path, metrics=metrics, artifacts=artifacts)
