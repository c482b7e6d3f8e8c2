"""Optimal Brain Surgeon, layer-wise (L-OBS): Dong, Chen & Pan, "Learning to Prune Deep Neural
Networks via Layer-wise Optimal Brain Surgeon", NeurIPS 2017; after Hassibi & Stork, NIPS 1992.

OBS removes the weight q of least saliency L_q = w_q^2 / (2 [H^-1]_qq) and corrects all others by
delta w = -w_q / [H^-1]_qq H^-1 e_q, the second-order optimum with w_q forced to zero. The full
network's inverse Hessian is out of reach; L-OBS (Sec. 3) takes, for each layer, the Hessian of
that layer's reconstruction error ||(W' - W) x||^2 / 2n instead: H = (1/n) sum x x^T of the
layer's inputs (block-diagonal, the same block for every output unit), from
``calibration_batches`` training batches (:mod:`methods.hessian`).

* The weights of least L_q are removed per layer (``scope: layer``, the paper's setting; ``global``
  compares L_q across layers, whose errors are in different units) and the survivors of each output
  unit get the joint OBS correction for all its removed weights (Hassibi & Stork, Sec. 3: the exact
  optimum with those weights at zero, the paper's per-weight update applied together). The bias
  is compensated too (the input's appended 1).
* Departure: the paper removes one weight at a time and updates with the fixed H^-1; the joint
  correction is what that sequence aims at, without the drift of a stale H^-1 (a later update
  could revive a removed weight). ``damping`` x mean(diag H) is added to H (always-zero MNIST
  border pixels make it singular otherwise).
* Convolutions: their unfolded patches are the inputs (grouped convolutions are refused).
* Iterations, fine-tuning with masks and the sparse file: :mod:`methods.pruning.saliency`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext
from methods.config import option
from methods.hessian import augmented, layer_input_hessians, obs_saliency, obs_update
from methods.pruning.filter import calibration_batches
from methods.pruning.masks import WeightMasks, saliency_masks, weight_of
from methods.pruning.saliency import SaliencyConfig, SaliencyPruning


@dataclass
class OBSConfig(SaliencyConfig):
    """conf/method/obs.yaml."""

    damping: float = option(0.01, gt=0, why="added to H, relative to its mean diagonal, to invert it")


class LayerwiseOBS(SaliencyPruning):
    """Dong et al. 2017: per layer, prune by w_q^2 / (2 [H^-1]_qq) and correct the surviving weights."""

    name = "obs"
    Config = OBSConfig
    config: OBSConfig

    @torch.no_grad()
    def prune_to(self, model: nn.Module, masks: WeightMasks, sparsity: float, ctx: CompressionContext) -> None:
        c = self.config
        hessians = layer_input_hessians(model, masks.layers, calibration_batches(ctx, c.calibration_batches), c.damping)
        scores = {name: obs_saliency(m, hessians[name]) for name, m in masks.layers.items()}
        masks.masks = saliency_masks(scores, sparsity, c.scope)
        for name, module in masks.layers.items():
            weight, bias = weight_of(module), module.bias
            keep = masks.masks[name].reshape(weight.shape[0], -1).cpu()
            theta = obs_update(augmented(module), keep, hessians[name])
            weight.copy_(theta[:, :keep.shape[1]].reshape(weight.shape))
            if isinstance(bias, torch.Tensor):
                bias.copy_(theta[:, -1])
        masks.apply()
