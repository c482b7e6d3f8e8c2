"""Second-order information: the diagonal of the loss Hessian (OBD; Choi et al.'s Hessian-weighted
quantization) and each layer's input Hessian (L-OBS's update; Q-CNN's response error).

* :data:`HESSIAN_DIAGONALS` estimate h_ii of the training loss for the weights of some layers, from
  training batches, the model in eval mode:

  - ``fisher``: the Gauss-Newton diagonal, computed exactly. For softmax cross-entropy it is the
    Fisher information, E_x sum_k p_k(x) (d(-log p_k(x))/dw_i)^2: per-sample gradients
    (``torch.func.vmap``) for every class k, weighted by the model's own probabilities. This is
    LeCun, Denker & Solla's (NIPS 1989, Sec. 3) Levenberg-Marquardt approximation of the
    diagonal: the second derivatives of the non-linearities are dropped, so h_ii >= 0.
  - ``hutchinson``: the diagonal of the true Hessian, estimated as E[z * (H z)] with Rademacher z
    (Hutchinson 1990; Bekas et al. 2007) by Hessian-vector products (double backward). Unbiased
    but noisy, and may be negative away from a minimum.

* :func:`layer_input_hessians` give L-OBS's H = (1/n) sum x x^T of each layer's inputs (a conv's
  unfolded patches; a 1 appended for the bias), the Hessian of the layer's reconstruction error
  ||(W' - W) x||^2 / (2n) (Dong, Chen & Pan, "Learning to Prune Deep Neural Networks via
  Layer-wise Optimal Brain Surgeon", NeurIPS 2017, Sec. 3.1); :func:`obs_saliency` is their
  L_q = w_q^2 / (2 [H^-1]_qq) and :func:`obs_update` the surgeon's compensation of the
  surviving weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from methods.base import MethodConfigError

#: (model, {parameter name: weight}, inputs, targets, generator) -> {parameter name: diagonal}
DiagonalEstimator = Callable[[nn.Module, Mapping[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Generator],
                             dict[str, torch.Tensor]]
#: (logits, targets) -> scalar loss; the training loss whose curvature ``hutchinson`` estimates
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fisher_diagonal(model: nn.Module, weights: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                    targets: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Exact Gauss-Newton (= Fisher) diagonal of softmax cross-entropy, averaged over the batch."""
    params = {name: w.detach() for name, w in weights.items()}
    with torch.no_grad():
        probs = torch.softmax(model(inputs), dim=-1)

    def nll(p: dict[str, torch.Tensor], x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return -torch.log_softmax(functional_call(model, p, (x.unsqueeze(0),)), dim=-1)[0, k]

    per_sample = vmap(grad(nll), in_dims=(None, 0, None))
    total = {name: torch.zeros_like(w) for name, w in params.items()}
    for k in range(probs.shape[-1]):
        with torch.no_grad():  # grad() still differentiates; the outer graph (to the biases) is not kept: GBs a batch
            grads = per_sample(params, inputs, torch.tensor(k))
        for name, g in grads.items():
            total[name] += torch.einsum("n,n...->...", probs[:, k], g.square())
    return {name: t / inputs.shape[0] for name, t in total.items()}


def hutchinson_diagonal(model: nn.Module, weights: Mapping[str, torch.Tensor], inputs: torch.Tensor,
                        targets: torch.Tensor, generator: torch.Generator, probes: int = 1,
                        loss: Loss = F.cross_entropy) -> dict[str, torch.Tensor]:
    """E[z * Hz] over ``probes`` Rademacher vectors z: an unbiased estimate of the Hessian's diagonal."""
    params = list(weights.values())
    grads = torch.autograd.grad(loss(model(inputs), targets), params, create_graph=True)
    total = [torch.zeros_like(p) for p in params]
    for _ in range(probes):
        zs = [torch.randint(0, 2, p.shape, generator=generator).to(p) * 2 - 1 for p in params]
        hz = torch.autograd.grad(grads, params, grad_outputs=zs, retain_graph=True)
        for t, z, h in zip(total, zs, hz, strict=True):
            t += z * h
    return {name: t.detach() / probes for name, t in zip(weights, total, strict=True)}


HESSIAN_DIAGONALS: dict[str, DiagonalEstimator] = {"fisher": fisher_diagonal, "hutchinson": hutchinson_diagonal}


def diagonal_hessian(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any],
                     estimate: DiagonalEstimator = fisher_diagonal, seed: int = 0) -> dict[str, torch.Tensor]:
    """h_ii of each layer's weight, averaged over ``batches`` of (inputs, targets), the model in eval mode."""
    weights = {f"{name}.weight": _weight(m) for name, m in layers.items()}
    generator = torch.Generator().manual_seed(seed)
    total: dict[str, torch.Tensor] = {}
    count = 0
    was_training = model.training
    model.eval()
    try:
        for inputs, targets in batches:
            for name, diag in estimate(model, weights, inputs, targets, generator).items():
                total[name] = total.get(name, 0) + diag
            count += 1
    finally:
        model.train(was_training)
    if not count:
        raise MethodConfigError("method.calibration_batches: the training split gave no batches for the Hessian")
    return {name: total[f"{name}.weight"] / count for name in layers}


def _layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rows of what the weight multiplies: a linear layer's inputs, a conv's unfolded patches (+ 1 for the bias)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or not isinstance(module.padding, tuple):
            raise MethodConfigError(f"method.layers: layer inputs are taken of dense convolutions (L-OBS, Q-CNN); {module} "
                                    "is grouped or uses string padding: leave it out with method.layers.exclude")
        x = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride).transpose(1, 2)
    rows = x.reshape(-1, x.shape[-1]).double()
    if getattr(module, "bias", None) is not None:
        rows = torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], dim=1)
    return rows


def layer_input_hessians(model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any],
                         damping: float) -> dict[str, torch.Tensor]:
    """H = (1/n) sum x x^T of each layer's inputs over ``batches`` (float64), plus ``damping`` x mean(diag) I."""
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(layers, 0)

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple[torch.Tensor, ...], _output: Any) -> None:
            rows = _layer_inputs(module, args[0].detach())
            sums[name] = sums.get(name, 0) + rows.T @ rows
            counts[name] += rows.shape[0]
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs, _targets in batches:
                model(inputs)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    if not sums:
        raise MethodConfigError("method.calibration_batches: the training split gave no batches for the Hessian")
    hessians = {}
    for name, total in sums.items():
        h = total / counts[name]
        hessians[name] = h + damping * h.diagonal().mean().clamp_min(1e-12) * torch.eye(h.shape[0], dtype=h.dtype)
    return hessians


def _weight(module: nn.Module) -> torch.Tensor:
    return cast(torch.Tensor, module.weight)


def _matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a float64 matrix [out, in (x kh x kw)]."""
    weight = _weight(module).detach()
    return weight.reshape(weight.shape[0], -1).double()


def augmented(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a matrix [out, in (x kh x kw)], its bias appended as the last column (float64)."""
    w = _matrix(module)
    bias = getattr(module, "bias", None)
    return torch.cat([w, bias.detach().double().unsqueeze(1)], dim=1) if bias is not None else w


def obs_saliency(module: nn.Module, hessian: torch.Tensor) -> torch.Tensor:
    """L-OBS's L_q = w_q^2 / (2 [H^-1]_qq), shaped like the weight: the error removing w_q alone adds."""
    w = _matrix(module)
    hinv_diag = torch.linalg.inv(hessian).diagonal()[:w.shape[1]]
    return (w.square() / (2 * hinv_diag)).reshape(_weight(module).shape).float()


def obs_update(theta: torch.Tensor, keep: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Rows of ``theta`` with the weights outside ``keep`` removed and the kept ones compensated.

    For each row: minimise (w' - w)^T H (w' - w) subject to w'_Q = 0 (Q: removed). The solution
    w'_S = w_S + H_SS^-1 H_SQ w_Q equals Hassibi & Stork's delta w = -w_q / [H^-1]_qq H^-1 e_q when
    Q is one weight, and their joint removal of several (Sec. 3) otherwise; solving in the kept set
    is cheap at high sparsity. ``keep`` covers the weight columns; a bias column is always kept.
    """
    out = theta.clone()
    keep_all = torch.ones_like(theta, dtype=torch.bool)
    keep_all[:, :keep.shape[1]] = keep
    for row in range(theta.shape[0]):
        s, q = keep_all[row], ~keep_all[row]
        if not bool(q.any()):
            continue
        w = theta[row]
        out[row, q] = 0
        if bool(s.any()):
            out[row, s] = w[s] + torch.linalg.solve(hessian[s][:, s], hessian[s][:, q] @ w[q])
    return out
