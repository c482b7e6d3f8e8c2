"""HashedNets (methods/hashing/hashednets.py): the hash, the bucket gradients, the stored file, bad requests."""

from __future__ import annotations

import copy
import io

import torch
from torch import nn

from methods.base import MethodConfigError
from methods.hashing.hashednets import HashedNets, hash_layers, hash_positions, project
from methods.storage import load_model, part_sizes, read_entries
from tests.test_pruning_classic import context

torch.set_num_threads(1)


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 10))


def hashed_linear(in_features: int, out_features: int, buckets: int, name: str, seed: int) -> nn.Module:
    """A linear layer called ``name``, hashed into ``buckets``."""
    return hash_layers(nn.ModuleDict({name: nn.Linear(in_features, out_features)}), {name: buckets}, seed)[name]


def test_the_same_hash_gives_the_same_virtual_matrix_and_another_seed_another() -> None:
    buckets = torch.randn(20)

    def virtual(name: str, seed: int) -> torch.Tensor:
        layer = hashed_linear(16, 12, 20, name, seed)
        with torch.no_grad():
            layer.buckets.copy_(buckets)
        return layer.weight

    first = virtual("fc1", 3)
    assert torch.equal(first, virtual("fc1", 3))
    for other in (virtual("fc1", 4), virtual("fc2", 3)):
        assert not torch.equal(first, other)  # seed and layer both key the hash
    index, sign = hash_positions(12 * 16, 20, "fc1", 3)
    assert set(sign.tolist()) == {-1.0, 1.0} and int(index.min()) >= 0 and int(index.max()) < 20
    # every virtual weight is one bucket's value up to its sign
    assert torch.equal(first.abs().flatten(), buckets[index].abs())


def test_the_gradient_of_a_bucket_is_the_signed_sum_over_its_positions() -> None:
    layer = hashed_linear(6, 5, 7, "0", seed=1)
    x = torch.randn(4, 6)
    layer(x).pow(2).sum().backward()
    virtual = layer.weight.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x, virtual, layer.bias.detach()).pow(2).sum().backward()
    index, sign = hash_positions(30, 7, "0", 1)
    expected = torch.zeros(7)
    for position in range(30):  # the paper's sum, written out
        expected[index[position]] += sign[position] * virtual.grad.flatten()[position]
    torch.testing.assert_close(layer.buckets.grad, expected)


def test_projection_onto_the_buckets_recovers_buckets_that_made_the_matrix() -> None:
    layer = hashed_linear(10, 10, 8, "fc", seed=0)  # 100 positions, every bucket used
    buckets = torch.randn(8)
    with torch.no_grad():
        layer.buckets.copy_(buckets)
    torch.testing.assert_close(project(layer.weight, layer.index, layer.sign, 8), buckets)


def test_a_hashed_model_pickles_and_deep_copies() -> None:
    model = hash_layers(tiny_mlp(), {"1": 50, "3": 30}, seed=2)
    x = torch.randn(3, 1, 4, 4)
    buffer = io.BytesIO()
    torch.save(model, buffer)  # what MLflow's pickle format does
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), model(x))
    torch.testing.assert_close(copy.deepcopy(model)(x), model(x))


def test_hashednets_stores_buckets_and_seed_only_and_the_file_round_trips(tmp_path) -> None:
    ctx = context(tmp_path, shape=(1, 4, 4))
    base = tiny_mlp()
    result = HashedNets(compression=0.25, seed=11, init="scratch", finetune={"epochs": 5}).compress(base, ctx)
    header, entries = read_entries(result.stored_file)
    assert header["architecture"] == "hashednets" and header["meta"]["seed"] == 11
    assert header["meta"]["buckets"] == {"1": 96, "3": 60}  # 0.25 x (24 x 16) and 0.25 x (10 x 24)
    assert sorted(e.name for e in entries) == ["1.bias", "1.buckets", "3.bias", "3.buckets"]
    assert part_sizes(result.stored_file)["weights"] == 4 * (96 + 60)
    reloaded = load_model(result.stored_file, tiny_mlp())
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(reloaded(x), result.model(x))
    # the random buckets trained (10 classes)
    assert result.metrics["top1_after_finetune"] > result.metrics["top1_before_finetune"] + 20
    assert result.metrics["real_weights"] == 156 and result.metrics["compression_ratio"] > 2


def test_hashednets_from_the_baseline_projects_its_weights(tmp_path) -> None:
    ctx = context(tmp_path, shape=(1, 4, 4))
    base = tiny_mlp()
    result = HashedNets(compression=1.0, finetune={"epochs": 0}).compress(base, ctx)
    # at compression 1 most positions have a bucket of their own: the projection keeps most of the weights
    close = (result.model[1].weight - base[1].weight).abs() < 1e-6
    assert close.float().mean() > 0.3
    assert result.metrics["top1_before_finetune"] == result.metrics["top1_after_finetune"]


def test_impossible_requests_name_the_key() -> None:
    for options, key in (({"compression": 0.0}, "method.compression"), ({"compression": 1.5}, "method.compression"),
                         ({"init": "scratch", "finetune": {"epochs": 0}}, "method.finetune.epochs"),
                         ({"init": "pretrained"}, "method.init"), ({"seed": -1}, "method.seed")):
        try:
            HashedNets(**options)
        except MethodConfigError as err:
            assert key in str(err), (options, err)
        else:
            raise AssertionError(f"{options} was accepted")
    subclass = nn.ModuleDict({"proj": nn.modules.linear.NonDynamicallyQuantizableLinear(4, 4)})  # its own class
    try:
        hash_layers(subclass, {"proj": 4}, seed=0)
    except MethodConfigError as err:
        assert "method.layers.exclude" in str(err) and "'proj'" in str(err)
    else:
        raise AssertionError("a Linear subclass was hashed as a plain Linear")
