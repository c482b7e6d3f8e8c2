"""Low-rank factorization: truncated SVD of linear layers, Tucker-2 or CP of convolutions, then fine-tuning.

Linear layers: truncated SVD (Denton et al. 2014, Sec. 3.2; Xue et al. 2013), two linear layers.
Convolutions (``conv_decomposition``): Tucker-2 (Kim et al., "Compression of Deep Convolutional
Neural Networks for Fast and Low Power Mobile Applications", ICLR 2016, Sec. 3: 1x1 -> core -> 1x1)
or CP (Lebedev et al., "Speeding-up Convolutional Neural Networks Using Fine-tuned CP-Decomposition",
ICLR 2015, Sec. 3: 1x1 -> kh x 1 -> 1 x kw -> 1x1). Decompositions by TensorLy (:mod:`.decompose`).
Then the whole network is fine-tuned (Kim et al. Sec. 3.2; Lebedev et al. Sec. 3.2).

Ranks: ``ranks`` per layer, else ``rank_rule``: ``vbmf`` (Kim et al.'s choice, on the kernel's two
unfoldings) or ``energy`` (the share of squared singular values kept, per unfolding). CP takes the
larger of the two Tucker-2 ranks (Lebedev et al. choose CP ranks by hand: a departure). A layer
whose rule-given factorization has no fewer parameters than the layer stays dense (the distiller
notebook's k = 800 FC has more parameters than the layer it replaces); ``ranks`` are kept as given.
The stored file holds the factors (:mod:`.factorized`); the returned model is decoded from it.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, Layer, LayerSelection, fail, finetune_default, option, select_layers
from methods.lowrank.decompose import (
    DECOMPOSITIONS,
    RANK_COUNT,
    RANK_NAMES,
    full_ranks,
    kind_of,
    parameter_count,
    rule_ranks,
)
from methods.lowrank.factorized import finetune_and_store, replace_layer
from methods.lowrank.ranks import RULES
from methods.reporting import plot_policy, write_json

log = logging.getLogger(__name__)


@dataclass
class LowRankConfig:
    """conf/method/lowrank.yaml."""

    conv_decomposition: str = option("tucker2", choices=("tucker2", "cp"))
    rank_rule: str = option("vbmf", choices=tuple(RULES))
    energy: float = option(0.9, gt=0, le=1, why="the share of squared singular values the ranks keep (rank_rule: energy)")
    ranks: dict[str, list[int]] = option(factory=dict, ge=1, why="a rank of 0 leaves the layer nothing")
    cp_iterations: int = option(100, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=lambda: LayerSelection(first=False))


class LowRank(CompressionMethod):
    """``lowrank``: SVD / Tucker-2 / CP factorization with rule-given or fixed ranks, then fine-tuning."""

    name = "lowrank"
    Config = LowRankConfig
    config: LowRankConfig

    def _ranks(self, name: str, kind: str, layer: Layer) -> tuple[tuple[int, ...], bool]:
        """The layer's ranks and whether they were given (``ranks``) rather than found by the rule."""
        c, full = self.config, full_ranks(kind, layer)
        given = c.ranks.get(name)
        if given is None:
            ranks = rule_ranks(kind, layer, RULES[c.rank_rule], c.energy)
            return tuple(min(r, f) for r, f in zip(ranks, full, strict=True)), False
        key = f"method.ranks.{name}"
        if len(given) != RANK_COUNT[kind]:
            fail(f"{key}={given}:", f"a {kind} layer takes {RANK_NAMES[kind]}")
        for rank, bound in zip(given, full, strict=True):
            if rank > bound:
                fail(f"{key}={given}", f"exceeds the full rank {list(full)} of {name} (weight {list(layer.weight.shape)}): "
                          "a larger rank adds parameters and nothing else; lower it")
        return tuple(given), True

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline, c = model, self.config
        model = copy.deepcopy(baseline).cpu()
        shape = (1, *tuple(ctx.input_shape)[1:])
        chosen = select_layers(model, shape, c.layers)
        kinds = {name: kind_of(layer, c.conv_decomposition) for name, layer in chosen.items()}
        unknown = sorted(set(c.ranks) - {n for n, k in kinds.items() if k})
        if unknown:
            fail("method.ranks", f"names {unknown}, not among the factorizable selected layers "
                                 f"{[n for n, k in kinds.items() if k]} (method.layers selects them)")
        policy: dict[str, dict[str, Any]] = {}
        specs: dict[str, dict[str, Any]] = {}
        for name, layer in chosen.items():
            kind = kinds[name]
            if kind is None:
                policy[name] = {"kind": "dense", "reason": "grouped conv"}
                continue
            ranks, given = self._ranks(name, kind, layer)
            factored = DECOMPOSITIONS[kind](layer, ranks, iterations=c.cp_iterations, seed=ctx.seed)
            before, after = parameter_count(layer), parameter_count(factored)
            if after >= before and not given:
                policy[name] = {"kind": "dense", "ranks": list(ranks), "reason": f"{kind} at {list(ranks)} has "
                                f"{after} parameters, the layer {before}"}
                continue
            replace_layer(model, name, factored.to(layer.weight.dtype))
            specs[name] = {"kind": kind, "ranks": list(ranks)}
            policy[name] = {**specs[name], "params_before": before, "params_after": after,
                            "param_ratio": after / before}
            log.info("lowrank: %s %s ranks %s, parameters %d -> %d", name, kind, list(ranks), before, after)
        decoded, path, metrics = finetune_and_store(model, baseline, specs, ctx, c.finetune, self.name)
        artifacts = [write_json(ctx.workdir / "policy.json", {"method": self.name, "config": {
            "conv_decomposition": c.conv_decomposition, "rank_rule": c.rank_rule, "energy": c.energy}, "layers": policy}),
            *plot_policy({n: p.get("param_ratio", 1.0) for n, p in policy.items()}, "parameters after / before",
                         ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=path, metrics=metrics, artifacts=artifacts)
