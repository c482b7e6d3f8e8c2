"""Truncated SVD of linear layers, Tucker-2 and CP of convolutions, computed with TensorLy (PyTorch backend).

- ``svd`` (Denton et al. 2014; Xue et al. 2013): W (out x in) ~ U_r (S_r V_r^T), two linear layers
  (in -> r without bias, r -> out with the layer's bias).
- ``tucker2`` (Kim et al. 2016, Sec. 3): a kernel K (out, in, kh, kw) ~ core x_0 U_out x_1 U_in, run as a
  1x1 conv (in -> r_in), the core's kh x kw conv (r_in -> r_out, the layer's stride, padding and
  dilation) and a 1x1 conv (r_out -> out, the layer's bias). Ranks ``[r_out, r_in]``.
- ``cp`` (Lebedev et al. 2015, Sec. 3): K ~ sum_r a_out (x) a_in (x) a_h (x) a_w, run as a 1x1 conv
  (in -> R), a kh x 1 and a 1 x kw depthwise conv (R channels) and a 1x1 conv (R -> out). CP-ALS
  (TensorLy's ``parafac``, SVD initialisation) stands in for the paper's non-linear least squares.

Each kind has a *skeleton* (the factorized module of given ranks, untrained: what a stored file is
loaded into) and a *decomposition* (the skeleton holding the factors of a trained layer). Grouped
convolutions are not factorized (:func:`kind_of` returns None for them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import tensorly as tl
import torch
from tensorly.decomposition import parafac, partial_tucker
from torch import nn

from methods.config import Layer


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, Sequence) else (int(v), int(v))


def _conv(module: nn.Module) -> nn.Conv2d:
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or isinstance(module.padding, str):
        raise TypeError(f"{type(module).__name__} is not a dense (groups=1, numeric padding) Conv2d")
    return module


def _weight(layer: Layer) -> torch.Tensor:
    return layer.weight.detach().double().cpu()


def _load(target: nn.Module, weight: torch.Tensor) -> None:
    param = target.get_parameter("weight")
    with torch.no_grad():
        param.copy_(weight.reshape(param.shape))


def _bias(source: Layer, target: nn.Module) -> None:
    if source.bias is not None:
        with torch.no_grad():
            target.get_parameter("bias").copy_(source.bias.detach())


# -- svd --------------------------------------------------------------------------------------------
def svd_skeleton(layer: nn.Linear, ranks: Sequence[int]) -> nn.Sequential:
    (rank,) = ranks
    return nn.Sequential(nn.Linear(layer.in_features, rank, bias=False),
                         nn.Linear(rank, layer.out_features, bias=layer.bias is not None))


def svd_decompose(layer: nn.Linear, ranks: Sequence[int], **_: Any) -> nn.Sequential:
    module = svd_skeleton(layer, ranks)
    with tl.backend_context("pytorch"):
        u, s, v = tl.svd_interface(_weight(layer), n_eigenvecs=ranks[0])
    _load(module[0], s[:, None] * v)
    _load(module[1], u)
    _bias(layer, module[1])
    return module


# -- tucker2 ----------------------------------------------------------------------------------------
def tucker2_skeleton(layer: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    conv = _conv(layer)
    r_out, r_in = ranks
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, r_in, 1, bias=False),
        nn.Conv2d(r_in, r_out, _pair(conv.kernel_size), stride=_pair(conv.stride), padding=_pair(conv.padding),
                  dilation=_pair(conv.dilation), bias=False, padding_mode=conv.padding_mode),
        nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None))


def tucker2_decompose(layer: nn.Conv2d, ranks: Sequence[int], **_: Any) -> nn.Sequential:
    module = tucker2_skeleton(layer, ranks)
    with tl.backend_context("pytorch"):
        (core, (u_out, u_in)), _errors = partial_tucker(_weight(layer), rank=list(ranks), modes=[0, 1], init="svd")
    _load(module[0], u_in.T)
    _load(module[1], core)
    _load(module[2], u_out)
    _bias(layer, module[2])
    return module


# -- cp ---------------------------------------------------------------------------------------------
def cp_skeleton(layer: nn.Conv2d, ranks: Sequence[int]) -> nn.Sequential:
    conv = _conv(layer)
    (rank,) = ranks
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding),
                                              _pair(conv.dilation))
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank, bias=False,
                  padding_mode=conv.padding_mode),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank, bias=False,
                  padding_mode=conv.padding_mode),
        nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None))


def cp_decompose(layer: nn.Conv2d, ranks: Sequence[int], iterations: int = 100, seed: int = 0) -> nn.Sequential:
    module = cp_skeleton(layer, ranks)
    with tl.backend_context("pytorch"):
        weights, (a_out, a_in, a_h, a_w) = parafac(_weight(layer), ranks[0], n_iter_max=iterations, init="svd",
                                                   tol=1e-10, random_state=seed)
    _load(module[0], a_in.T)
    _load(module[1], a_h.T)
    _load(module[2], a_w.T)
    _load(module[3], a_out * weights)
    _bias(layer, module[3])
    return module


# -- what each kind needs -------------------------------------------------------------------------------
def full_ranks(kind: str, layer: Layer) -> tuple[int, ...]:
    """The largest meaningful ranks: the matrix rank bound (svd), each unfolding's (tucker2), the tensor-rank bound (cp)."""
    shape = tuple(layer.weight.shape)
    if kind == "svd":
        return (min(shape),)
    out, inp = shape[0], shape[1]
    rest = math.prod(shape[2:])
    if kind == "tucker2":
        return (min(out, inp * rest), min(inp, out * rest))
    return (min(math.prod(shape) // d for d in shape),)  # a tensor's rank is at most its smallest slice count


def unfoldings(kind: str, layer: Layer) -> list[torch.Tensor]:
    """The matrices a rank rule reads: the weight (svd), the output and input unfoldings of the kernel (tucker2, cp)."""
    weight = _weight(layer)
    if kind == "svd":
        return [weight]
    return [weight.flatten(1), weight.transpose(0, 1).flatten(1)]


#: kind -> (skeleton, decomposition, number of ranks)
SKELETONS: dict[str, Callable[[Any, Sequence[int]], nn.Module]] = {
    "svd": svd_skeleton, "tucker2": tucker2_skeleton, "cp": cp_skeleton}
DECOMPOSITIONS: dict[str, Callable[..., nn.Module]] = {
    "svd": svd_decompose, "tucker2": tucker2_decompose, "cp": cp_decompose}
RANK_COUNT = {"svd": 1, "tucker2": 2, "cp": 1}
RANK_NAMES = {"svd": "[rank]", "tucker2": "[out_rank, in_rank]", "cp": "[rank]"}


def kind_of(layer: Layer, conv_kind: str) -> str | None:
    """The decomposition of ``layer``: svd for a linear layer, ``conv_kind`` for a dense conv, None otherwise."""
    if isinstance(layer, nn.Linear):
        return "svd"
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and not isinstance(layer.padding, str):
        return conv_kind
    return None


def rule_ranks(kind: str, layer: Layer, rule: Callable[[torch.Tensor, float], int], energy: float) -> tuple[int, ...]:
    """Ranks from a rank rule: per unfolding; CP takes the larger Tucker-2 rank (a CP of rank R has multilinear ranks <= R)."""
    ranks = tuple(rule(m, energy) for m in unfoldings(kind, layer))
    return (max(ranks),) if kind == "cp" else ranks


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
