"""The TT-matrix linear layer (Novikov, Podoprikhin, Osokin, Vetrov, "Tensorizing Neural Networks", NIPS 2015).

A weight W (out x in) with out = m_1...m_d and in = n_1...n_d is held as d cores G_k of shape
(r_{k-1}, m_k, n_k, r_k), r_0 = r_d = 1 (TensorLy's TT-matrix layout): W[(i_1..i_d), (j_1..j_d)] =
G_1[:, i_1, j_1, :] ... G_d[:, i_d, j_d, :]. The forward pass contracts the input with one core after
the other (the paper's Sec. 4), never forming W: d small matrix products of cost
O(d r^2 max(m, n) max(out, in)) instead of out x in. Cores start from the TT-SVD of a trained layer
(TensorLy's ``tensor_train_matrix``) or at random (``random_cores``); either way all cores train end to end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorly as tl
import torch
from tensorly.decomposition import tensor_train_matrix
from tensorly.tt_matrix import tt_matrix_to_matrix
from torch import nn


def bond_ranks(in_modes: Sequence[int], out_modes: Sequence[int], rank: int | Sequence[int]) -> list[int]:
    """The full rank list [1, r_1, ..., r_{d-1}, 1] from one inner rank or the d - 1 inner ranks."""
    inner = [int(rank)] * (len(in_modes) - 1) if isinstance(rank, int) else [int(r) for r in rank]
    return [1, *inner, 1]


def max_ranks(in_modes: Sequence[int], out_modes: Sequence[int]) -> list[int]:
    """The largest useful inner ranks: r_k <= min(prod_{j<=k} m_j n_j, prod_{j>k} m_j n_j)."""
    sizes = [m * n for m, n in zip(out_modes, in_modes, strict=True)]
    return [min(math.prod(sizes[:k]), math.prod(sizes[k:])) for k in range(1, len(sizes))]


def factor_modes(size: int, count: int) -> list[int]:
    """``size`` as ``count`` near-equal factors (prime factors, largest first, each to the smallest bin), ascending."""
    primes, n, p = [], size, 2
    while p * p <= n:
        while n % p == 0:
            primes.append(p)
            n //= p
        p += 1
    if n > 1:
        primes.append(n)
    bins = [1] * count
    for prime in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= prime
    return sorted(bins)


class TTLinear(nn.Module):
    """y = W x + b with W in TT-matrix format; ``cores[k]`` has shape (r_{k-1}, m_k, n_k, r_k)."""

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int], bias: bool = True) -> None:
        super().__init__()
        self.in_modes, self.out_modes, self.ranks = list(in_modes), list(out_modes), list(ranks)
        self.in_features, self.out_features = math.prod(self.in_modes), math.prod(self.out_modes)
        self.cores = nn.ParameterList([nn.Parameter(torch.zeros(r0, m, n, r1)) for r0, m, n, r1
                                       in zip(self.ranks[:-1], self.out_modes, self.in_modes, self.ranks[1:], strict=True)])
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        state = x.reshape(-1, 1, 1, self.in_features)  # (batch, out modes so far, bond, input modes left)
        for core, n in zip(self.cores, self.in_modes, strict=True):
            b, p, r, q = state.shape
            state = torch.einsum("bprnq,rmns->bpmsq", state.reshape(b, p, r, n, q // n), core)
            state = state.reshape(b, p * core.shape[1], core.shape[3], q // n)
        y = state.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def weight(self) -> torch.Tensor:
        """The dense W (out x in) the cores represent (TensorLy's ``tt_matrix_to_matrix``): for checks, not inference."""
        with tl.backend_context("pytorch"):
            return tt_matrix_to_matrix([c for c in self.cores])

    def extra_repr(self) -> str:
        return f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, bias={self.bias is not None}"


def tt_svd(layer: TTLinear, weight: torch.Tensor) -> None:
    """Set ``layer``'s cores to the TT-SVD of ``weight`` (out x in) at the layer's ranks (TensorLy)."""
    tensor = weight.detach().double().cpu().reshape(*layer.out_modes, *layer.in_modes)
    with tl.backend_context("pytorch"):
        cores = tensor_train_matrix(tensor, layer.ranks)
    with torch.no_grad():
        for param, core in zip(layer.cores, cores, strict=True):
            param.copy_(core)


def random_cores(layer: TTLinear, generator: torch.Generator | None = None) -> None:
    """Gaussian cores whose product W has entries of variance 1 / (3 in), nn.Linear's default initialisation:
    var(W_ij) = prod_k var(G_k) * prod_k r_k, so each core gets the d-th root of that share."""
    paths = math.prod(layer.ranks[1:-1])
    std = (1.0 / (3 * layer.in_features * paths)) ** (0.5 / len(layer.cores))
    with torch.no_grad():
        for core in layer.cores:
            core.copy_(torch.randn(core.shape, generator=generator) * std)
