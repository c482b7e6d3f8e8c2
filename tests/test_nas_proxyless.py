"""NAS foundation and ProxylessNAS (methods/nas): space, binarized supernet, cost table, derived nets, the method."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.context import make_context
from benchmarks.models.zoo import register_zoo
from benchmarks.schema import RecipeConfig, TrainerConfig
from hardware import registry
from hardware.layers import count_macs
from methods import create_method
from methods.base import MethodConfigError
from methods.nas.costs import build_cost_table
from methods.nas.space import Architecture, SearchedNet, Slot, SpaceConfig
from methods.nas.supernet import MixedOp, SuperNet

ROOT = Path(__file__).resolve().parents[1]
#: a space small enough for tests: 3 searched blocks, the last two may be skipped
TINY = {"preset": "cifar_small", "widths": [8, 16], "depths": [1, 2], "strides": [1, 2], "first_channels": 8,
        "stem_channels": 8, "head_channels": 32, "input_size": 16}


def tiny_space() -> Any:
    return SpaceConfig(**TINY).resolved()


def roofline() -> Any:
    """An analytical target: deterministic and additive over layers."""
    return instantiate(OmegaConf.load(ROOT / "conf" / "hw" / "v100.yaml"))


def test_zero_is_a_candidate_only_where_the_block_keeps_its_shape() -> None:
    slots = tiny_space().slots()
    assert [("zero" in s.candidates) for s in slots] == [True, False, True]  # 8->8 s1; 8->16 s2; 16->16 s1
    assert [s.input_size for s in slots] == [16, 16, 8]
    assert len(slots[1].candidates) == 6  # {3,5,7} x {3,6}


def test_the_binarized_forward_runs_one_candidate_per_block_and_two_in_an_architecture_step() -> None:
    net = SuperNet(tiny_space())
    calls: dict[tuple[int, int], int] = {}
    for b, op in enumerate(net.mixed_ops()):
        for c, candidate in enumerate(op.candidates):
            candidate.register_forward_hook(lambda *_, key=(b, c): calls.__setitem__(key, calls.get(key, 0) + 1))
    x = torch.randn(2, 3, 16, 16)
    for _ in range(5):
        calls.clear()
        net.sample()
        net(x)
        ran = [sum(1 for (b, _c) in calls if b == block) for block in range(3)]
        expected = [0 if op.names[op.active] == "zero" else 1 for op in net.mixed_ops()]
        assert ran == expected
    net.sample_two(torch.Generator().manual_seed(3))
    calls.clear()
    net(x)
    for b, op in enumerate(net.mixed_ops()):
        runs = {c for (block, c) in calls if block == b}
        if op.names[op.active] != "zero":
            assert runs == {i for i in op.pair if op.names[i] != "zero"}


def test_the_architecture_gradient_matches_a_finite_difference_of_the_expected_loss() -> None:
    """Two candidates (both always sampled) and a loss linear in the output: the binary-gate gradient is exact."""
    torch.manual_seed(0)
    op = MixedOp(Slot(0, 4, 4, 1, 6, ("k3e3", "k5e6")))
    op.eval()  # fixed BN statistics: each path is a fixed function
    with torch.no_grad():
        op.alpha.copy_(torch.tensor([0.3, -0.2]))
    x, w = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)

    def loss_of(index: int) -> float:
        op.fix(index)
        with torch.no_grad():
            return float((w * op(x)).sum())

    losses = torch.tensor([loss_of(0), loss_of(1)])

    def expected(alpha: torch.Tensor) -> float:
        return float((torch.softmax(alpha, 0) * losses).sum())

    eps = 1e-4
    numeric = torch.tensor([(expected(op.alpha.detach() + eps * e) - expected(op.alpha.detach() - eps * e)) / (2 * eps)
                            for e in torch.eye(2)])
    for seed in range(3):  # whichever path is active, the estimate is the same here
        op.sample_two(torch.Generator().manual_seed(seed))
        op.alpha.grad = None
        (w * op(x)).sum().backward()
        assert torch.allclose(op.alpha.grad, numeric, rtol=1e-3, atol=1e-4)


def test_rebalancing_keeps_the_unsampled_paths_probabilities() -> None:
    net = SuperNet(tiny_space())
    net.sample_two(torch.Generator().manual_seed(0))
    op = net.mixed_ops()[1]
    before = [a.detach().clone() for a in net.arch_parameters()]
    p_before = op.probabilities().detach()
    with torch.no_grad():
        op.alpha[list(op.pair)] += torch.tensor([0.7, -0.1])
    net.rebalance(before)
    p_after = op.probabilities().detach()
    others = [i for i in range(len(op.names)) if i not in op.pair]
    assert torch.allclose(p_after[others], p_before[others], atol=1e-6)
    assert not torch.allclose(p_after[list(op.pair)], p_before[list(op.pair)])


def test_expected_latency_is_the_sum_of_the_targets_per_candidate_latencies() -> None:
    space, target = tiny_space(), roofline()
    table = build_cost_table(space, "latency", target, 1, 3, 10)
    net = SuperNet(space)
    uniform = float(table.expected([op.probabilities().detach() for op in net.mixed_ops()]))
    by_hand = table.fixed + sum(sum(costs.values()) / len(costs) for costs in table.blocks)
    assert uniform == pytest.approx(by_hand, rel=1e-3)  # alphas start at N(0, 1e-3): p is uniform to 1e-3
    with torch.no_grad():  # one-hot probabilities: the expectation is the derived net's latency
        for op in net.mixed_ops():
            op.alpha.zero_()
            op.alpha[0] = 50.0
    arch = net.derive()
    onehot = float(table.expected([op.probabilities().detach() for op in net.mixed_ops()]))
    whole = target.latency(SearchedNet(arch).eval(), (1, 3, 16, 16)).latency_ms
    assert onehot == pytest.approx(table.of(arch), rel=1e-6)
    assert table.of(arch) == pytest.approx(whole, rel=1e-6)


#: every device but cuda (no GPU here), the measured CPUs with a short protocol
DEVICES = {p.stem: {"warmup": 1, "repeats": 3, "min_time_s": 0.0, "threads": 1, "per_layer": False}
           if OmegaConf.load(p).get("source") == "measured" else None
           for p in sorted((ROOT / "conf" / "hw").glob("*.yaml")) if p.stem != "cuda"}


@pytest.mark.parametrize("device", DEVICES)
def test_every_device_prices_every_candidate_of_the_space(device: str) -> None:
    """'+method=proxylessnas +hw=<any device>': each candidate of each block gets a positive latency."""
    target = registry.instantiate(device, DEVICES[device])
    table = build_cost_table(SpaceConfig(preset="cifar_small").resolved(), "latency", target, 1, 3, 10)
    assert table.unit == "ms" and table.fixed > 0 and len(table.blocks) == 10
    assert all(cost > 0 for block in table.blocks for op, cost in block.items() if op != "zero")


def test_the_flops_table_counts_what_the_flop_counter_counts_on_the_whole_net() -> None:
    space = tiny_space()
    table = build_cost_table(space, "flops", roofline(), 1, 3, 10)
    arch = Architecture(space, ("k5e3", "k7e6", "zero"))
    assert table.of(arch) == count_macs(SearchedNet(arch), (1, 3, 16, 16))


def test_a_derived_net_builds_from_its_file_through_the_zoo_and_the_target_prices_it_as_the_table(tmp_path: Path) -> None:
    space, target = tiny_space(), roofline()
    arch = Architecture(space, ("zero", "k3e6", "k5e3"))
    path = arch.save(tmp_path / "arch.json")
    register_zoo()
    net = timm.create_model("searched", arch=str(path), num_classes=10).eval()
    assert len(net.blocks) == 2  # the skipped block is not built
    assert net(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    table = build_cost_table(space, "latency", target, 1, 3, 10)
    assert target.latency(net, (1, 3, 16, 16)).latency_ms == pytest.approx(table.of(arch), rel=1e-6)


@pytest.mark.parametrize("overrides, match", [
    ({"kernels": []}, "empty candidate set"),
    ({"widths": [8], "depths": [1, 2]}, "one value per stage"),
    ({"strides": [1, 3]}, "method.space.strides"),
])
def test_an_impossible_space_is_refused_naming_the_key(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(MethodConfigError, match=match):
        create_method("proxylessnas", space={**TINY, **overrides})


@pytest.mark.parametrize("ops, match", [
    (["k3e3", "k4e6", "zero"], "not an op"),
    (["k3e3", "zero", "zero"], r"arch.ops\[1\].*not a candidate of block 1"),
    (["k3e3", "k3e3"], "has 2 ops but the space has 3"),
    (["k3e3", "conv9", "zero"], "not an op"),
])
def test_an_architecture_file_with_an_unknown_or_misplaced_op_is_refused(ops: list[str], match: str,
                                                                         tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps({"space": tiny_space().as_dict(), "ops": ops}))
    with pytest.raises(MethodConfigError, match=match):
        Architecture.load(path)


class TinyImages(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(64, 3, 16, 16, generator=g), torch.arange(64) % 4)
        self.num_classes, self.input_shape = 4, (3, 16, 16)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)

    val_dataloader = test_dataloader = train_dataloader


def tiny_context(tmp_path: Path) -> Any:
    recipe = RecipeConfig(epochs=1, lr=0.05, scheduler="none", weight_decay=0.0)
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0, deterministic=True)
    return make_context(TinyImages(), roofline(), recipe, trainer, seed=0, workdir=tmp_path)


def test_a_latency_target_below_the_fastest_network_is_refused(tmp_path: Path) -> None:
    method = create_method("proxylessnas", space=TINY, reference=1e-6, warmup_epochs=0, search_epochs=1)
    with pytest.raises(MethodConfigError, match=r"method.reference .* below the cheapest network"):
        method.compress(nn.Identity(), tiny_context(tmp_path))


def test_a_proxylessnas_run_searches_records_and_stores_the_derived_net(tmp_path: Path) -> None:
    method = create_method("proxylessnas", space=TINY, warmup_epochs=1, search_epochs=2, arch={"every": 1},
                           weight=5.0, loss="add_linear", finetune={"epochs": 1})
    ctx = tiny_context(tmp_path)
    result = method.compress(nn.Identity(), ctx)
    history = json.loads((tmp_path / "arch_history.json").read_text())
    assert [h["phase"] for h in history] == ["warmup", "warmup", "search", "search"]
    assert history[-1]["arch_steps"] == result.metrics["arch_steps"] == 16  # 8 batches x 2 epochs, every step
    assert history[1]["probabilities"] == history[0]["probabilities"]  # warm-up leaves the architecture alone
    assert history[-1]["probabilities"] != history[1]["probabilities"]
    # a heavy latency weight moves probability towards cheaper ops: expected latency falls during the search
    assert history[-1]["expected_cost"] < history[1]["expected_cost"]
    arch = Architecture.load(tmp_path / "arch.json")
    assert result.metrics["cost_table_error_pct"] == pytest.approx(0.0, abs=1e-6)  # analytical target: additive
    assert isinstance(result.model, SearchedNet) and result.model.arch == arch
    assert result.model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
    assert {p.name for p in result.artifacts} >= {"arch.json", "cost_table.json", "arch_history.json"}
