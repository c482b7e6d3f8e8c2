"""Entropy-constrained scalar quantization of the network's weights, then Huffman coding (Choi et al. 2017).

Choi, El-Khamy & Lee, "Towards the Limit of Network Quantization" (ICLR 2017): when the cluster
indices are entropy-coded, the size that matters is their entropy, not ``log2`` of the number of
clusters, so the clusters should minimise the distortion under a constraint on the entropy (ECSQ):

* ``scheme: uniform``: uniform quantization (``2**bits`` bins of equal width between the smallest
  and the largest weight), each bin's shared value the (Hessian-weighted) mean of its weights; with
  Huffman coding of the indices this is close to optimal ECSQ at high rates (Gish & Pierce), the
  paper's simple solution;
* ``scheme: lagrangian``: the paper's iterative ECSQ (Chou, Lookabaugh & Gray's entropy-constrained
  Lloyd algorithm): from Hessian-weighted k-means with ``2**bits`` clusters, each weight goes to the
  cluster minimising ``h_i (w_i - c_j)^2 / s^2 + lambda * (-log2 p_j)`` (``p_j`` the share of weights
  in cluster ``j``, ``s^2`` the importance-weighted variance of the weights, so ``lagrange_multiplier``
  is distortion, relative to the weights' variance, per bit), then each centroid becomes its cluster's
  weighted mean and each ``p_j`` its new share, until no weight moves; clusters may empty out.

Importance (``hessian``, ``adam``, ``none``), the ``scope`` (network or layer), fine-tuning of the
shared values and the Huffman-coded file are those of :mod:`methods.quantization.hessian_kmeans`.
Departures: the same as that module's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import CompressionContext, MethodConfigError
from methods.config import option
from methods.quantization.hessian_kmeans import HessianKMeans, HessianKMeansConfig, ScalarQuantizer
from methods.quantization.kmeans import assign, kmeans_1d

SCHEMES = ("uniform", "lagrangian")


def _weighted_means(values: torch.Tensor, codes: torch.Tensor, importance: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Each cluster's importance-weighted mean; ``fallback`` where a cluster has no weight (or no importance)."""
    k = fallback.numel()
    mass = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, importance.double())
    sums = torch.zeros(k, dtype=torch.float64).index_add_(0, codes, importance.double() * values.double())
    return torch.where(mass > 0, sums / torch.where(mass > 0, mass, 1.0), fallback.double()).float()


def uniform_quantize(values: torch.Tensor, k: int, importance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` bins of equal width over [min, max]; a bin's value is its weighted mean (its centre when empty)."""
    low, high = float(values.min()), float(values.max())
    width = (high - low) / k
    centres = low + width * (torch.arange(k, dtype=torch.float64) + 0.5)
    codes = ((values.double() - low) / width).floor().clamp(0, k - 1).long() if width > 0 else torch.zeros_like(values, dtype=torch.long)
    return _weighted_means(values, codes, importance, centres.float()), codes


def entropy_constrained_lloyd(values: torch.Tensor, importance: torch.Tensor, centroids: torch.Tensor, lagrange: float,
                              max_iterations: int, chunk: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Chou et al.'s ECSQ iterations from ``centroids``: (centroids, codes) minimising weighted distortion
    plus ``lagrange`` times the code length in bits; ``lagrange`` = 0 is weighted k-means."""
    v = values.double()
    h = (importance.double() / float(importance.double().mean().clamp(min=1e-30))).clamp(min=1e-6)  # ties: nearest
    mean = float((h * v).sum() / h.sum().clamp(min=1e-30))
    scale = float((h * (v - mean) ** 2).mean().clamp(min=1e-30))
    c = centroids.double().clone()
    codes = assign(values, centroids.sort().values).clamp(max=c.numel() - 1)
    c = c.sort().values
    for _ in range(max_iterations):
        counts = torch.bincount(codes, minlength=c.numel()).double()
        length = torch.where(counts > 0, -torch.log2(counts / counts.sum()), torch.inf)
        new_codes = torch.cat([
            (h[i:i + chunk, None] * (v[i:i + chunk, None] - c[None, :]) ** 2 / scale + lagrange * length[None, :]).argmin(1)
            for i in range(0, v.numel(), chunk)])
        c = _weighted_means(values, new_codes, importance, c.float()).double()
        if torch.equal(new_codes, codes):
            break
        codes = new_codes
    return c.float(), codes


@dataclass
class ECSQConfig(HessianKMeansConfig):
    """conf/method/ecsq.yaml: hessian_kmeans's keys, the scheme and the Lagrange multiplier."""

    scheme: str = option("uniform", choices=SCHEMES)
    lagrange_multiplier: float = option(0.0, ge=0.0, why="relative distortion per bit (scheme: lagrangian)")


class ECSQ(HessianKMeans):
    """Choi et al.'s entropy-constrained scalar quantization (uniform or iterative), shared values fine-tuned, Huffman-coded."""

    name = "ecsq"
    Config = ECSQConfig
    config: ECSQConfig

    def quantizer(self, ctx: CompressionContext) -> ScalarQuantizer:
        c = self.config
        if c.scheme == "uniform":
            if c.lagrange_multiplier:
                raise MethodConfigError(f"method.lagrange_multiplier: {c.lagrange_multiplier} needs scheme: lagrangian "
                                        "(uniform quantization has none); set it to 0 or use scheme: lagrangian")
            return uniform_quantize
        generator = torch.Generator().manual_seed(ctx.seed)

        def lagrangian(values: torch.Tensor, k: int, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            start, _codes = kmeans_1d(values, k, c.init, c.max_iterations, generator, weights)
            return entropy_constrained_lloyd(values, weights, start, c.lagrange_multiplier, c.max_iterations)
        return lagrangian
