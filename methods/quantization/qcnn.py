"""Q-CNN: product quantization that minimises each layer's response error (Wu et al. 2016).

Wu, Leng, Wang, Hu & Cheng, "Quantized Convolutional Neural Networks for Mobile Devices" (CVPR 2016),
Sec. 3 (as summarised by Berthelier et al. 2020, Sec. 2.4): the sub-spaces, codebooks and codes are
PQ's (:mod:`methods.quantization.pq`, same storage at the same ``bits`` and ``subvector_length``),
but they are chosen to reproduce the layer's *output* on real inputs rather than its weights:

* the objective of a layer with weight rows ``w_r`` and inputs ``x`` (for a convolution, its im2col
  patches) is ``sum_x ||W x - W_hat x||^2 = sum_r (w_r - w_hat_r)^T S (w_r - w_hat_r)``, ``S`` the
  inputs' second-moment matrix, measured on ``calibration_batches`` training batches
  (:func:`methods.hessian.layer_input_hessians`, L-OBS's layer Hessian, damped by 1e-6 of its mean diagonal);
* starting from PQ, the sub-spaces are refined in turn, ``rounds`` times, with *error correction*:
  sub-space ``i`` absorbs the error the others leave, its target rows being
  ``t_r = w_r^i + S_ii^-1 S_i,rest e_r^rest``; its codebook and codes then minimise
  ``sum_r (t_r - c)^T S_ii (t_r - c)``, which is k-means in the coordinates whitened by ``S_ii``'s
  Cholesky factor, run from the current codebook (Lloyd: the response error never grows).

Departures: a convolution's row is split into consecutive chunks of its flattened (input channel,
kernel row, kernel column) filter, as PQ splits it, not along input channels with codebooks shared
over kernel positions; each layer sees the unquantized model's inputs; grouped convolutions are not
supported (exclude them); ``finetune.epochs`` > 0 trains the codebooks as PQ's do. The per-layer
relative response error before (PQ) and after refinement is recorded (``layer/<name>/response_error``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext, CompressionResult
from methods.config import Layer, option
from methods.hessian import layer_input_hessians
from methods.quantization.pq import PQConfig, ProductQuantization, ProductQuantizedLayer, lloyd
from methods.storage.codebook import reconstruct


def response_error(weight: torch.Tensor, approx: torch.Tensor, moments: torch.Tensor) -> float:
    """``sum_x ||(W - W_hat) x||^2 / sum_x ||W x||^2`` from the inputs' second moments."""
    w, e = weight.double().reshape(weight.shape[0], -1), (weight - approx).double().reshape(weight.shape[0], -1)
    return float(torch.einsum("ri,ij,rj->", e, moments, e) / torch.einsum("ri,ij,rj->", w, moments, w).clamp(min=1e-30))


def refine(layer: ProductQuantizedLayer, weight: torch.Tensor, moments: torch.Tensor, rounds: int,
           iterations: int) -> ProductQuantizedLayer:
    """``layer``'s codebooks and codes refined for the response error, sub-space by sub-space with error correction."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    s, _k, d = layer.codebooks.shape
    codebooks, codes = layer.codebooks.double().clone(), layer.codes.clone()
    for _ in range(rounds):
        for i in range(s):
            cols = slice(i * d, (i + 1) * d)
            rest = w - reconstruct(codebooks, codes)
            rest[:, cols] = 0
            target = w[:, cols] + torch.linalg.solve(moments[cols, cols], moments[cols, :] @ rest.T).T
            chol = torch.linalg.cholesky(moments[cols, cols])  # S_ii = L L^T: (t - c)^T S_ii (t - c) = |(t - c) L|^2
            words, codes[:, i] = lloyd(target @ chol, codebooks[i] @ chol, iterations)
            codebooks[i] = torch.linalg.solve_triangular(chol, words, upper=False, left=False)
    return ProductQuantizedLayer(layer.name, layer.shape, layer.bits, codebooks.float(), codes)


@dataclass
class QCNNConfig(PQConfig):
    """conf/method/qcnn.yaml: PQ's keys, the calibration data and the error-correcting sweeps."""

    calibration_batches: int = option(8, ge=1, why="training batches whose layer inputs define the response error")
    rounds: int = option(3, ge=1, why="error-correcting sweeps over each layer's sub-spaces")


class QCNN(ProductQuantization):
    """Wu et al.'s Q-CNN: PQ codebooks and codes refined for each layer's response on calibration data."""

    name = "qcnn"
    Config = QCNNConfig
    config: QCNNConfig

    def quantize_layers(self, model: nn.Module, ctx: CompressionContext) -> dict[str, ProductQuantizedLayer]:
        layers = super().quantize_layers(model, ctx)
        modules: dict[str, Layer] = {name: model.get_submodule(name) for name in layers}  # type: ignore[misc]
        batches = itertools.islice(ctx.datamodule.train_dataloader(), self.config.calibration_batches)
        moments = {name: h[:modules[name].weight[0].numel(), :modules[name].weight[0].numel()]  # the bias's row out
                   for name, h in layer_input_hessians(model, modules, batches, damping=1e-6).items()}
        self.response_errors: dict[str, float] = {}
        refined = {}
        for name, layer in layers.items():
            weight = modules[name].weight.detach()
            refined[name] = refine(layer, weight, moments[name], self.config.rounds, self.config.max_iterations)
            self.response_errors[f"layer/{name}/response_error_pq"] = response_error(weight, layer.weight(), moments[name])
            self.response_errors[f"layer/{name}/response_error"] = response_error(weight, refined[name].weight(),
                                                                                  moments[name])
        return refined

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        result = super().compress(model, ctx)
        result.metrics.update(self.response_errors)
        return result
