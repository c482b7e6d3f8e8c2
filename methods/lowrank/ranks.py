"""Rank rules for a low-rank approximation: an energy threshold, or VBMF (Kim et al. 2016, Sec. 3.1).

``energy``: the smallest rank whose singular values hold ``energy`` of the squared Frobenius norm.
``vbmf``: the rank empirical variational Bayesian matrix factorization selects (Nakajima,
Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational Bayesian
matrix factorization", JMLR 2013): the noise variance is the minimiser of the free energy
(a one-dimensional bounded search), and the components whose singular values exceed the
EVB threshold at that variance are kept. Kim et al. apply it to the two unfoldings of a
kernel to obtain Tucker-2's ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import minimize_scalar


def singular_values(matrix: torch.Tensor) -> np.ndarray:
    return torch.linalg.svdvals(matrix.detach().double().cpu()).numpy()


def energy_rank(matrix: torch.Tensor, energy: float) -> int:
    """The smallest rank keeping ``energy`` (in (0, 1]) of the sum of squared singular values."""
    power = singular_values(matrix) ** 2
    share = np.cumsum(power) / power.sum()
    return min(int(np.searchsorted(share, energy - 1e-12)) + 1, len(power))


def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    """The EVB shrinkage's tau(x) (Nakajima et al. 2013): the larger root of tau^2 - (x - 1 - alpha) tau + alpha."""
    b = x - (1 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4 * alpha, 0.0)))


def vbmf_rank(matrix: torch.Tensor) -> int:
    """The rank EVBMF keeps for ``matrix`` with the noise variance estimated from it (at least 1)."""
    s = singular_values(matrix)
    short, long = sorted(matrix.shape)
    alpha = short / long
    tau_low = 2.5129 * math.sqrt(alpha)  # the threshold's tau (Nakajima et al. 2013, its numerical value)
    x_low = (1 + tau_low) * (1 + alpha / tau_low)

    def free_energy(sigma2: float) -> float:
        x = s ** 2 / (long * sigma2)
        kept, dropped = x[x > x_low], x[x <= x_low]
        tau = _tau(kept, alpha)
        return float(np.sum(dropped - np.log(dropped)) + np.sum(kept - tau) + np.sum(np.log((tau + 1) / kept))
                     + alpha * np.sum(np.log(tau / alpha + 1)))

    most = max(0, min(math.ceil(short / (1 + alpha)) - 1, len(s)) - 1)  # the most components EVB may keep
    upper = float(np.sum(s ** 2) / (short * long))
    lower = float(max(s[most + 1] ** 2 / (long * x_low) if most + 1 < len(s) else 0.0,
                      np.mean(s[most + 1:] ** 2) / long if most + 1 < len(s) else 0.0))
    lower = min(max(lower, upper * 1e-12), upper)
    sigma2 = minimize_scalar(free_energy, bounds=(lower, upper), method="bounded").x if lower < upper else upper
    threshold = math.sqrt(long * sigma2 * x_low)
    return max(1, int(np.sum(s > threshold)))


#: rank rule name -> rank(matrix, energy)
RULES: dict[str, Callable[[torch.Tensor, float], int]] = {
    "energy": energy_rank,
    "vbmf": lambda matrix, _energy: vbmf_rank(matrix),
}
