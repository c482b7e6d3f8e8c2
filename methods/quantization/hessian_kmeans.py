"""Hessian-weighted k-means weight sharing of the whole network, then Huffman coding (Choi et al. 2017).

Choi, El-Khamy & Lee, "Towards the Limit of Network Quantization" (ICLR 2017), as summarised by
Berthelier et al. (2020, Sec. 2.4):

* the loss increase of quantizing weight ``w_i`` to ``c`` is, at a trained minimum, about
  ``h_ii (w_i - c)^2 / 2`` (second-order Taylor, diagonal Hessian), so the clusters minimise the
  Hessian-weighted distortion ``sum_i h_ii (w_i - c_j(i))^2``: k-means whose centroids are the
  Hessian-weighted means of their clusters (nearest-centroid assignment is unchanged);
* because the Hessian weights make the layers' distortions comparable, all layers are clustered
  together at once (``scope: network``); ``scope: layer`` clusters each layer alone;
* the importance of each weight comes from ``calibration_batches`` training batches
  (:mod:`methods.hessian`): ``fisher`` (default) is the exact Gauss-Newton diagonal, LeCun et al.'s
  approximation of the diagonal Hessian that the paper uses; ``hutchinson`` estimates the true
  diagonal (``probes`` Rademacher vectors per batch); ``adam`` is the square root of Adam's
  bias-corrected second moment of the gradients (``sqrt(v_hat)``), the paper's cheap alternative;
  ``none`` is plain k-means;
* the cluster indices are then Huffman-coded (Deep Compression's last stage,
  :func:`methods.quantization.huffman.huffman_result`), and the shared values are fine-tuned
  (``finetune``) with the mean gradient of their cluster, as the paper does (``shared_gradient: mean``;
  ``sum`` is Deep Compression's, which diverged at lr 1e-4 with network-wide clusters on LeNet-5).

Departures: the Gauss-Newton diagonal is computed exactly from per-sample gradients rather than
back-propagated layer by layer (negative Hutchinson estimates are clipped at 0); Adam's moment is
accumulated over the ``calibration_batches`` gradients at the trained weights (the weights are not updated), not
taken from the training run's optimizer; with ``scope: network`` each layer's entry stores the
(shared) codebook, and its codes are Huffman-coded per layer, and fine-tuning trains each layer's
copy of the codebook on its own.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, Layer, LayerSelection, finetune_default, option, select_layers
from methods.hessian import HESSIAN_DIAGONALS, diagonal_hessian, hutchinson_diagonal
from methods.quantization.huffman import huffman_result
from methods.quantization.kmeans import INITS, SharedLayer, finetune_shared, kmeans_1d, share_values

Batches = list[tuple[torch.Tensor, torch.Tensor]]


# ------------------------------------------------------------------------------ importance of each weight
def hessian_importance(estimator: str) -> Callable[..., dict[str, torch.Tensor]]:
    """The diagonal Hessian by :mod:`methods.hessian`'s ``estimator``, negative estimates clipped at 0."""
    def importance(model: nn.Module, modules: Mapping[str, Layer], batches: Batches, probes: int,
                   seed: int) -> dict[str, torch.Tensor]:
        estimate = HESSIAN_DIAGONALS[estimator]
        if estimator == "hutchinson":
            estimate = partial(hutchinson_diagonal, probes=probes)
        return {name: h.clamp(min=0) for name, h in diagonal_hessian(model, modules, batches, estimate, seed).items()}
    return importance


def adam_second_moment(model: nn.Module, modules: Mapping[str, Layer], batches: Batches, probes: int = 1,
                       seed: int = 0, beta2: float = 0.999) -> dict[str, torch.Tensor]:
    """``sqrt(v_hat)``: Adam's bias-corrected moving average of squared gradients, one step per batch."""
    params = [module.weight for module in modules.values()]
    moments = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
        for v, g in zip(moments, grads, strict=True):
            v.mul_(beta2).add_((1 - beta2) * g.detach() ** 2)
    return {name: (v / (1 - beta2 ** len(batches))).sqrt() for name, v in zip(modules, moments, strict=True)}


def uniform_importance(model: nn.Module, modules: Mapping[str, Layer], batches: Batches, probes: int,
                       seed: int) -> dict[str, torch.Tensor]:
    """Every weight alike: plain k-means."""
    return {name: torch.ones_like(module.weight) for name, module in modules.items()}


IMPORTANCE: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "fisher": hessian_importance("fisher"), "hutchinson": hessian_importance("hutchinson"),
    "adam": adam_second_moment, "none": uniform_importance}


def weight_importance(model: nn.Module, modules: Mapping[str, Layer], kind: str, batches: int, probes: int,
                      ctx: CompressionContext) -> dict[str, torch.Tensor]:
    """The importance of each weight of ``modules`` (by module name) from ``batches`` training batches,
    the model in eval mode."""
    data = list(itertools.islice(ctx.datamodule.train_dataloader(), batches)) if kind != "none" else []
    if kind != "none" and not data:
        raise MethodConfigError("method.calibration_batches: the training split gave no batches to estimate "
                                "the importance on")
    was_training = model.training
    model.eval()
    try:
        values = IMPORTANCE[kind](model, modules, data, probes, ctx.seed)
    finally:
        model.train(was_training)
    return {name: value.detach().float() for name, value in values.items()}


# ------------------------------------------------------------------------------ clustering
#: ``cluster(values, k, importance)``: (centroids, codes)
ScalarQuantizer = Callable[[torch.Tensor, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _weighted(quantize: ScalarQuantizer, importance: torch.Tensor, values: torch.Tensor, k: int,
              mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize(values, k, importance[mask])


def share_groups(modules: Mapping[str, Layer], importance: Mapping[str, torch.Tensor], bits: int, scope: str,
                 quantize: ScalarQuantizer) -> dict[str, SharedLayer]:
    """Shared layers of ``modules``: one codebook of ``2**bits`` values for all of them (``scope: network``)
    or one each (``layer``); a group with zeros reserves code 0 for them (pruned weights stay pruned)."""
    groups = [list(modules)] if scope == "network" else [[name] for name in modules]
    layers: dict[str, SharedLayer] = {}
    for group in groups:
        values = torch.cat([modules[name].weight.detach().float().flatten() for name in group])
        weights = torch.cat([importance[name].flatten() for name in group])
        k = 2**bits
        if k > values.numel():
            raise MethodConfigError(f"method.bits: {bits} bits ask for {k} clusters but {group} hold only "
                                    f"{values.numel()} weights; use at most {int(np.log2(values.numel()))} bits")
        centroids, codes, zero_code = share_values(values, k, partial(_weighted, quantize, weights))
        for name, part in zip(group, codes.split([modules[name].weight.numel() for name in group]), strict=True):
            weight = modules[name].weight
            layers[name] = SharedLayer(f"{name}.weight", tuple(weight.shape), bits, centroids.clone(), part, zero_code)
    return layers


# ------------------------------------------------------------------------------ the method
@dataclass
class HessianKMeansConfig:
    """conf/method/hessian_kmeans.yaml."""

    bits: int = option(4, ge=1, le=8, why="2**bits shared values (codes then Huffman-coded)")
    scope: str = option("network", choices=("network", "layer"))
    importance: str = option("fisher", choices=tuple(IMPORTANCE))
    calibration_batches: int = option(8, ge=1, why="training batches the Hessian or Adam's moment is estimated on")
    probes: int = option(4, ge=1, why="Hutchinson probes per batch (importance: hutchinson)")
    init: str = option("linear", choices=INITS)
    max_iterations: int = option(300, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    shared_gradient: str = option("mean", choices=("mean", "sum"))
    layers: LayerSelection = option(factory=LayerSelection)
    index_bits: int = option(5, ge=1, le=8, why="relative indices of layers with zeros (stored sparsely)")


class HessianKMeans(CompressionMethod):
    """Choi et al.'s Hessian-weighted k-means of all layers together, shared values fine-tuned, codes Huffman-coded."""

    name = "hessian_kmeans"
    Config = HessianKMeansConfig
    config: HessianKMeansConfig

    def quantizer(self, ctx: CompressionContext) -> ScalarQuantizer:
        """Importance-weighted 1-D k-means."""
        generator = torch.Generator().manual_seed(ctx.seed)
        return lambda values, k, weights: kmeans_1d(values, k, self.config.init, self.config.max_iterations,
                                                    generator, weights)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        c = self.config
        shared = copy.deepcopy(model)
        modules = select_layers(shared, (1, *tuple(ctx.input_shape)[1:]), c.layers)
        quantizer = self.quantizer(ctx)
        importance = weight_importance(shared, modules, c.importance, c.calibration_batches, c.probes, ctx)
        layers = share_groups(modules, importance, c.bits, c.scope, quantizer)
        distortion = sum(float((importance[n] * (layer.weight() - modules[n].weight.detach()) ** 2).sum())
                         for n, layer in layers.items())
        finetune_shared(shared, modules, layers, c.finetune, ctx, average=c.shared_gradient == "mean")
        result = huffman_result(self.name, model, shared, layers, Path(ctx.workdir), c.index_bits)
        result.metrics["weighted_distortion"] = distortion  # before fine-tuning, in the importance's units
        return result
