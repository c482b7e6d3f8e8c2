"""Q-CNN: product quantization that minimises each layer's response error (Wu et al. 2016).

Wu, Leng, Wang, Hu & Cheng, "Quantized Convolutional Neural Networks for Mobile Devices" (CVPR 2016),
Sec. 3 (as summarised by Berthelier et al. 2020, Sec. 2.4): the sub-spaces, codebooks and codes are
PQ's (:mod:`methods.quantization.pq`, same storage at the same ``bits`` and ``subvector_length``),
but they are chosen to reproduce the layer's *output* on real inputs rather than its weights:

* the objective of a layer with weight rows ``w_r`` and inputs ``x`` (for a convolution, its im2col
  patches) is ``sum_x ||W x - W_hat x||^2 = sum_r (w_r - w_hat_r)^T S (w_r - w_hat_r)``, ``S`` the
  inputs' second-moment matrix, measured on ``calibration_batches`` training batches;
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

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import CompressionContext, CompressionResult, MethodConfigError
from methods.config import option
from methods.quantization.pq import PQConfig, ProductQuantization, ProductQuantizedLayer, lloyd
from methods.quantization.ptq import calibration_inputs
from methods.storage.codebook import reconstruct


def _rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as rows its weight rows multiply: features, or a convolution's patches."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or not isinstance(module.padding, tuple):
            raise MethodConfigError(f"method.layers: Q-CNN handles ungrouped convolutions with numeric padding, not "
                                    f"{module}; add it to method.layers.exclude")
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
    elif not isinstance(module, nn.Linear):
        raise MethodConfigError(f"method.layers: Q-CNN handles Linear and Conv2d layers, not {type(module).__name__}; "
                                "exclude it (method.layers.exclude)")
    return x.reshape(-1, x.shape[-1]).double()


def input_moments(model: nn.Module, modules: Mapping[str, nn.Module], batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's input second-moment matrix ``E[x x^T]`` over ``batches`` (the model in eval mode)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        rows = _rows(module, args[0].detach())
        sums[name] = sums.get(name, 0) + rows.T @ rows
        counts[name] = counts.get(name, 0) + rows.shape[0]

    handles = [module.register_forward_pre_hook(partial(record, name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in modules}


def response_error(weight: torch.Tensor, approx: torch.Tensor, moments: torch.Tensor) -> float:
    """``sum_x ||(W - W_hat) x||^2 / sum_x ||W x||^2`` from the inputs' second moments."""
    w, e = weight.double().reshape(weight.shape[0], -1), (weight - approx).double().reshape(weight.shape[0], -1)
    return float(torch.einsum("ri,ij,rj->", e, moments, e) / torch.einsum("ri,ij,rj->", w, moments, w).clamp(min=1e-30))


def refine(layer: ProductQuantizedLayer, weight: torch.Tensor, moments: torch.Tensor, rounds: int,
           iterations: int) -> ProductQuantizedLayer:
    """``layer``'s codebooks and codes refined for the response error, sub-space by sub-space with error correction."""
    w = weight.detach().double().reshape(weight.shape[0], -1)
    s, _k, d = layer.codebooks.shape
    moments = moments + torch.eye(moments.shape[0], dtype=torch.float64) * 1e-6 * float(moments.trace()) / moments.shape[0]
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
        modules = {name: model.get_submodule(name) for name in layers}
        moments = input_moments(model, modules, calibration_inputs(ctx.datamodule, self.config.calibration_batches))
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
