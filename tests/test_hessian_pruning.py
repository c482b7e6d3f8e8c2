"""OBD and L-OBS (methods/pruning/obd.py, obs.py, hessian.py): saliencies against analytic values,
the surgeon's update, the methods end to end, bad requests."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from methods.base import MethodConfigError
from methods.hessian import (
    diagonal_hessian,
    fisher_diagonal,
    hutchinson_diagonal,
    layer_input_hessians,
    obs_update,
)
from methods.pruning.obd import OptimalBrainDamage, obd_saliency
from methods.pruning.obs import LayerwiseOBS
from methods.storage import load_model
from tests.test_pruning_classic import context

torch.set_num_threads(1)


def half_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out.squeeze(-1) - y).square().mean()


def test_obd_saliency_is_the_loss_increase_of_a_quadratic_at_its_minimum() -> None:
    # L(w) = 1/2 mean (x.w - y)^2 with orthogonal inputs: H = diag(mean x_i^2), exactly quadratic
    scales = torch.tensor([3.0, 0.5, 2.0, 0.2], dtype=torch.float64)
    x = torch.diag(scales)
    w_star = torch.tensor([0.5, 4.0, -1.0, 0.7], dtype=torch.float64)
    model = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w_star)
    y = x @ w_star  # the minimum: zero loss, zero gradient
    estimate = functools.partial(hutchinson_diagonal, loss=half_squared_error)
    h = diagonal_hessian(model, {"fc": model}, [(x, y)], estimate)["fc"]
    torch.testing.assert_close(h[0], scales.square() / 4)
    saliency = obd_saliency(model.weight, h)[0]
    torch.testing.assert_close(saliency, scales.square() / 4 * w_star.square() / 2)  # h_ii w_i^2 / 2
    for i in range(4):  # ... which is what deleting w_i costs
        w = w_star.clone()
        w[i] = 0
        torch.testing.assert_close(half_squared_error(x @ w, y), saliency[i])
    # the smallest saliency is not the smallest weight: curvature matters
    assert int(saliency.argmin()) != int(w_star.abs().argmin())


def test_fisher_diagonal_is_the_exact_gauss_newton_diagonal() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    x = torch.randn(5, 3)
    params = dict(model.named_parameters())
    got = fisher_diagonal(model, {"0.weight": params["0.weight"]}, x, torch.zeros(5), torch.Generator())["0.weight"]
    expected = torch.zeros(4, 3)
    for n in range(5):  # J^T (diag p - p p^T) J per sample, its diagonal
        def logits(w: torch.Tensor, n: int = n) -> torch.Tensor:
            return torch.func.functional_call(model, {"0.weight": w}, (x[n:n + 1],))[0]
        jac = torch.autograd.functional.jacobian(logits, params["0.weight"].detach()).reshape(3, -1)
        p = torch.softmax(logits(params["0.weight"].detach()), 0)
        expected += ((jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).diagonal() / 5).reshape(4, 3)
    torch.testing.assert_close(got, expected)


def _layer(out_features: int = 4, in_features: int = 6) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    layer = nn.Linear(in_features, out_features).double()
    x = torch.randn(64, in_features, dtype=torch.float64) @ torch.randn(in_features, in_features, dtype=torch.float64)
    h = layer_input_hessians(layer, {"fc": layer}, [(x, None)], damping=1e-9)["fc"]
    return layer, x, h


def _outputs(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ theta.T


def test_lobs_update_leaves_the_output_unchanged_when_the_pruned_weight_is_zero() -> None:
    layer, x, h = _layer()
    theta = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], 1)
    theta[2, 3] = 0.0
    keep = torch.ones(4, 6, dtype=torch.bool)
    keep[2, 3] = False
    torch.testing.assert_close(_outputs(obs_update(theta, keep, h), x), _outputs(theta, x))


def test_lobs_update_is_the_surgeons_delta_and_beats_no_update() -> None:
    layer, x, h = _layer()
    theta = torch.cat([layer.weight.detach(), layer.bias.detach().unsqueeze(1)], 1)
    keep = torch.ones(4, 6, dtype=torch.bool)
    keep[1, 2] = False
    updated = obs_update(theta, keep, h)
    hinv = torch.linalg.inv(h)
    delta = -theta[1, 2] / hinv[2, 2] * hinv[:, 2]  # Hassibi & Stork: -w_q / [H^-1]_qq H^-1 e_q
    torch.testing.assert_close(updated[1], theta[1] + delta)
    assert updated[1, 2] == 0
    # several weights removed: the compensated layer reconstructs its output better than masking alone
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)) > 0.6
    masked = theta.clone()
    masked[:, :6][~keep] = 0
    updated = obs_update(theta, keep, h)
    assert torch.equal(updated[:, :6] == 0, ~keep | (theta[:, :6] == 0))
    error = (_outputs(updated, x) - _outputs(theta, x)).square().sum()
    assert error < 0.9 * (_outputs(masked, x) - _outputs(theta, x)).square().sum()


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 10))


@pytest.mark.parametrize("method", [OptimalBrainDamage(sparsity=0.75, finetune={"epochs": 1}),
                                    OptimalBrainDamage(sparsity=0.75, hessian="hutchinson", probes=2, scope="layer",
                                                       iterations=2, finetune={"epochs": 1}),
                                    LayerwiseOBS(sparsity=0.75, iterations=2, finetune={"epochs": 1})],
                         ids=["obd-fisher", "obd-hutchinson", "obs"])
def test_methods_reach_the_sparsity_and_their_sparse_file_round_trips(method, tmp_path) -> None:
    ctx = context(tmp_path, shape=(1, 4, 4))
    base = tiny_mlp()
    result = method.compress(base, ctx)
    assert result.metrics["sparsity"] == pytest.approx(0.75, abs=1e-3)
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(load_model(result.stored_file, tiny_mlp())(x), result.model(x))
    assert result.stored_bytes < result.metrics["dense_bytes"]
    assert torch.equal(base[1].weight, tiny_mlp()[1].weight)  # the baseline is untouched


class DeadFirstInput(nn.Module):
    """Zeroes input feature 0: the weights reading it have no curvature, whatever their size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.arange(x.shape[1]) != 0)


@pytest.mark.parametrize("method", [OptimalBrainDamage(sparsity=0.5, finetune={"epochs": 0}),
                                    LayerwiseOBS(sparsity=0.5, damping=1e-6, finetune={"epochs": 0})], ids=["obd", "obs"])
def test_second_order_saliency_removes_large_weights_that_do_not_matter(method, tmp_path) -> None:
    ctx = context(tmp_path, shape=(1, 4, 4))
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), DeadFirstInput(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 10))
    with torch.no_grad():
        base[2].weight[:, 0] = 5.0  # the largest weights of the net: magnitude pruning keeps them all
    result = method.compress(base, ctx)
    assert torch.count_nonzero(result.model[2].weight[:, 0]) == 0


def test_obs_before_finetuning_reconstructs_each_layer_better_than_its_masks_alone(tmp_path) -> None:
    ctx = context(tmp_path, shape=(1, 4, 4))
    base = tiny_mlp()
    result = LayerwiseOBS(sparsity=0.8, finetune={"epochs": 0}).compress(base, ctx)
    x = torch.cat([b[0] for b in ctx.datamodule.train_dataloader()]).flatten(1)
    pruned = result.model[1].weight.detach()
    masked = base[1].weight.detach() * (pruned != 0)
    reference = base[1](x)
    obs_error = (nn.functional.linear(x, pruned, result.model[1].bias) - reference).square().sum()
    mask_error = (nn.functional.linear(x, masked, base[1].bias) - reference).square().sum()
    assert obs_error < 0.9 * mask_error


def test_impossible_requests_name_the_key(tmp_path) -> None:
    for build, key in ((lambda: LayerwiseOBS(sparsity=1.0), "method.sparsity"),
                       (lambda: OptimalBrainDamage(hessian="exact"), "method.hessian"),
                       (lambda: LayerwiseOBS(damping=0.0), "method.damping"),
                       (lambda: OptimalBrainDamage(calibration_batches=0), "method.calibration_batches"),
                       (lambda: LayerwiseOBS(storage_formats=[]), "method.storage_formats")):
        with pytest.raises(MethodConfigError, match=key):
            build()
    grouped = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    ctx = context(tmp_path, shape=(2, 6, 6))
    with pytest.raises(MethodConfigError, match="method.layers.exclude"):
        LayerwiseOBS(finetune={"epochs": 0}).compress(grouped, ctx)
