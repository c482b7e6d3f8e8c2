"""Hessian-weighted k-means and ECSQ (Choi et al. 2017), residual quantization, Q-CNN (issue 16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.context import make_context
from hardware.measured import LocalCPU
from methods.base import MethodConfigError
from methods.quantization.ecsq import ECSQ, entropy_constrained_lloyd, uniform_quantize
from methods.quantization.hessian_kmeans import HessianKMeans, adam_second_moment, weight_importance
from methods.quantization.kmeans import attach_shared, kmeans_1d, share_layer
from methods.quantization.pq import ProductQuantization, product_quantize
from methods.quantization.ptq import calibration_inputs
from methods.quantization.qcnn import QCNN
from methods.quantization.rq import ResidualQuantization
from methods.storage import load_model, read_entries, read_state
from tests.test_quantization_codebook import blob_task


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(288, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return blob_task(_net, tmp_path_factory)


def _ctx(task, name: str):
    data, recipe, trainer, _model, factory = task
    return make_context(data, LocalCPU(), recipe, trainer, 0, factory.mktemp(name))


def _round_trips(result, model: nn.Module) -> None:
    """The evaluated model is the stored file decoded, and decoding again gives the same tensors."""
    again = load_model(result.stored_file, model)
    for key, tensor in result.model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[key]), key


def _entropy(codes: torch.Tensor) -> float:
    p = torch.bincount(codes).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


# ------------------------------------------------------------------------------ Hessian-weighted k-means
def test_weighted_kmeans_with_uniform_importance_is_plain_kmeans():
    values = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    plain = kmeans_1d(values, 8)
    weighted = kmeans_1d(values, 8, importance=torch.full((5000,), 3.7))
    assert torch.allclose(plain[0], weighted[0], atol=1e-6) and torch.equal(plain[1], weighted[1])


def test_skewed_importance_pulls_centroids_toward_the_important_weights():
    values = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    importance = torch.tensor([1.0, 1.0, 100.0, 100.0, 1.0, 1.0])
    plain, codes = kmeans_1d(values, 2)
    weighted, weighted_codes = kmeans_1d(values, 2, importance=importance)
    assert torch.equal(codes, weighted_codes)  # assignment is still by nearest centroid
    assert plain.tolist() == [1.0, 11.0]
    assert weighted[0] == pytest.approx(201 / 102) and weighted[1] == pytest.approx(1023 / 102)


def test_adam_importance_is_the_root_of_the_bias_corrected_second_moment():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4))
    batches = [(torch.randn(32, 3), torch.randint(0, 4, (32,))) for _ in range(2)]
    grads = [torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0] for x, y in batches]
    v = 0.999 * 0.001 * grads[0] ** 2 + 0.001 * grads[1] ** 2
    moment = adam_second_moment(model, {"0": model[0]}, batches)["0"]
    assert torch.allclose(moment, (v / (1 - 0.999**2)).sqrt())


def test_hessian_importance_pulls_the_shared_values_toward_high_curvature_weights(task):
    """Fisher-weighted clustering has a lower Fisher-weighted distortion than plain k-means' clusters."""
    _data, _recipe, _trainer, model, _factory = task
    fisher = HessianKMeans(bits=2, scope="layer", calibration_batches=2, finetune={"epochs": 0})
    plain = HessianKMeans(bits=2, scope="layer", importance="none", finetune={"epochs": 0})
    modules = {"0": model[0], "3": model[3], "5": model[5]}
    h = weight_importance(model, modules, "fisher", 2, 1, _ctx(task, "h"))
    distortion = {}
    for name, method in (("fisher", fisher), ("plain", plain)):
        shared = method.compress(model, _ctx(task, name)).model
        distortion[name] = sum(float((h[n] * (shared.get_submodule(n).weight - modules[n].weight) ** 2).sum())
                               for n in modules)
    assert distortion["fisher"] < 0.9 * distortion["plain"]


def test_average_shared_gradient_is_the_cluster_mean():
    """Choi et al. fine-tune a shared value with its cluster's mean gradient, Deep Compression with the sum."""
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.05, 0.1, 0.2, 5.0], [0.3, 0.1, 5.1, 0.2]]))
    grads = {}
    for average in (False, True):
        shared = share_layer("weight", layer.weight, 1, "linear", 50, None)
        module = nn.Linear(4, 2, bias=False)
        attach_shared(module, shared, average)
        module(torch.ones(3, 4)).sum().backward()
        grads[average] = module.parametrizations.weight.original.grad
    assert torch.allclose(grads[False], torch.tensor([18.0, 6.0]))  # 6 and 2 weights, each d/dw = 3
    assert torch.allclose(grads[True], torch.tensor([3.0, 3.0]))


def test_hessian_kmeans_shares_one_codebook_across_the_network_and_round_trips(task):
    _data, _recipe, _trainer, model, _factory = task
    result = HessianKMeans(bits=3, calibration_batches=2, finetune={"epochs": 0.5}).compress(model, _ctx(task, "hkm"))
    _round_trips(result, model)
    _header, entries = read_entries(result.stored_file)
    codebooks = {bytes(e.data("codebook")) for e in entries if e.codec == "codebook"}
    assert len([e for e in entries if e.codec == "codebook"]) == 3 and len(codebooks) == 3  # each fine-tuned
    state = read_state(result.stored_file).tensors
    before = HessianKMeans(bits=3, calibration_batches=2, finetune={"epochs": 0}).compress(model, _ctx(task, "hkm0"))
    shared = torch.cat([before.model.state_dict()[f"{m}.weight"].flatten() for m in ("0", "3", "5")]).unique()
    assert len(shared) <= 8  # one network-wide codebook of 2**3 values
    assert result.metrics["size_total_bytes"] < result.metrics["size_fixed_length_bytes"]  # Huffman coded
    assert set(state) == set(model.state_dict())


# ------------------------------------------------------------------------------ ECSQ
def test_uniform_quantization_bins_have_equal_width_and_weighted_means():
    values = torch.tensor([0.0, 0.1, 0.9, 0.95, 3.9, 4.0])
    centroids, codes = uniform_quantize(values, 4, torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0, 1.0]))
    assert codes.tolist() == [0, 0, 0, 0, 3, 3]
    assert centroids[0] == pytest.approx((0.3 + 0.9 + 0.95) / 6) and centroids[3] == pytest.approx(3.95)
    assert centroids[1] == pytest.approx(1.5)  # an empty bin keeps its centre


def test_entropy_constrained_lloyd_trades_distortion_for_rate():
    values = torch.randn(5000, generator=torch.Generator().manual_seed(1))
    ones = torch.ones_like(values)
    start, kmeans_codes = kmeans_1d(values, 16)
    rates = []
    for lagrange in (0.0, 0.02, 0.1):
        centroids, codes = entropy_constrained_lloyd(values, ones, start, lagrange, 300)
        rates.append(_entropy(codes))
        if lagrange == 0.0:  # k-means' fixed point
            assert torch.equal(codes, kmeans_codes)
    assert rates[0] > rates[1] > rates[2]


def test_ecsq_stores_huffman_codes_and_round_trips(task):
    _data, _recipe, _trainer, model, _factory = task
    result = ECSQ(bits=4, importance="adam", calibration_batches=2, finetune={"epochs": 0}).compress(model, _ctx(task, "ecsq"))
    _round_trips(result, model)
    assert result.metrics["bits_per_weight"] < 4  # uniform bins are uneven in use: Huffman codes are shorter
    bits = []
    for lagrange in (0.0, 0.05):
        lagr = ECSQ(bits=4, scheme="lagrangian", lagrange_multiplier=lagrange, importance="none",
                    finetune={"epochs": 0}).compress(model, _ctx(task, "ecsq_l"))
        _round_trips(lagr, model)
        bits.append(lagr.metrics["bits_per_weight"])
    assert bits[1] < bits[0]


# ------------------------------------------------------------------------------ residual quantization
def test_residual_quantization_error_falls_with_stages_and_one_stage_is_pq():
    weight = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    errors = []
    for stages in (1, 2, 3):
        layer = product_quantize("w", weight, 3, 8, 50, torch.Generator().manual_seed(0), "method.bits", stages)
        errors.append(float(((layer.weight() - weight) ** 2).sum()))
    assert errors[0] > errors[1] > errors[2]
    pq = product_quantize("w", weight, 3, 8, 50, torch.Generator().manual_seed(0), "method.bits")
    rq1 = product_quantize("w", weight, 3, 8, 50, torch.Generator().manual_seed(0), "method.bits", 1)
    assert torch.equal(pq.weight(), rq1.weight())


def test_rq_round_trips_and_stores_its_stages(task):
    _data, _recipe, _trainer, model, _factory = task
    result = ResidualQuantization(bits=3, stages=3, subvector_length=4, subvector_length_per_layer={"0": 9}).compress(
        model, _ctx(task, "rq"))
    _round_trips(result, model)
    _header, entries = read_entries(result.stored_file)
    assert {e.fields.get("stages") for e in entries if e.codec == "pq"} == {3}


# ------------------------------------------------------------------------------ Q-CNN
def _response_error(original: nn.Module, quantized: nn.Module, batches: list[torch.Tensor]) -> float:
    """Sum over layers of the squared output error of each quantized layer on the original model's inputs."""
    inputs: dict[str, list[torch.Tensor]] = {}
    layers = {n: m for n, m in original.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: inputs.setdefault(n, []).append(a[0])) for n, m in layers.items()]
    with torch.no_grad():
        for x in batches:
            original(x)
        for hook in hooks:
            hook.remove()
        q = dict(quantized.named_modules())
        return sum(float(((layers[n](x) - q[n](x)) ** 2).sum()) for n in layers for x in inputs[n])


def test_qcnn_response_error_is_below_pq_at_equal_size(task):
    data, _recipe, _trainer, model, _factory = task
    settings = {"bits": 3, "subvector_length": 4, "subvector_length_per_layer": {"0": 3}}
    pq = ProductQuantization(**settings).compress(model, _ctx(task, "pq"))
    qcnn = QCNN(**settings, calibration_batches=4).compress(model, _ctx(task, "qcnn"))
    _round_trips(qcnn, model)
    assert all(qcnn.metrics[f"size_{kind}_bytes"] == pq.metrics[f"size_{kind}_bytes"] for kind in ("weights", "codebook"))
    batches = calibration_inputs(data, 4)
    assert _response_error(model, qcnn.model, batches) < 0.9 * _response_error(model, pq.model, batches)
    assert all(qcnn.metrics[f"layer/{n}/response_error"] <= qcnn.metrics[f"layer/{n}/response_error_pq"]
               for n in ("0", "3", "5"))


# ------------------------------------------------------------------------------ impossible requests
@pytest.mark.parametrize(("method", "key"), [
    (lambda: HessianKMeans(bits=8, importance="none", scope="layer"), "method.bits"),
    (lambda: ECSQ(lagrange_multiplier=0.1), "method.lagrange_multiplier"),
    (lambda: ResidualQuantization(bits=4, subvector_length=4, subvector_length_per_layer={"0": 9}), "method.bits"),
    (lambda: QCNN(bits=2, subvector_length=5), "method.subvector_length"),
])
def test_impossible_requests_name_the_key(task, method, key):
    _data, _recipe, _trainer, model, _factory = task
    with pytest.raises(MethodConfigError, match=key.replace(".", r"\.")):
        method().compress(model, _ctx(task, "bad"))


def test_qcnn_refuses_grouped_convolutions(task):
    data, recipe, trainer, _model, factory = task
    grouped = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    ctx = make_context(data, LocalCPU(), recipe, trainer, 0, factory.mktemp("grouped"))
    with pytest.raises(MethodConfigError, match=r"method\.layers.*exclude"):
        QCNN(bits=1, subvector_length=1).compress(grouped, ctx)
