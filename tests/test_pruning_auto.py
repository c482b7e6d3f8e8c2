"""Automated, hardware-aware pruning: AMC, CompactNet, NetAdapt and their shared pieces.

Real pieces throughout: LeNet-5 from the model zoo, the MNIST datamodule on a few hundred
samples of the shared data, the emulated ``pixel1`` target (calibrated on the real
Pixel-1 profiles) and PyTorch's MAC counter. What is checked is what the papers promise:
AMC's action wall keeps every episode's model within its FLOPs / latency budget,
CompactNet meets every sub-target and the final target, impossible requests are refused
with the key to change.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_pruning as tp

import benchmarks.models  # noqa: F401  (registers the zoo into timm)
from benchmarks.context import make_context
from benchmarks.data import MNISTDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from hardware import registry
from hardware.layers import count_macs
from hardware.opcost import OpProfileTarget
from methods.base import MethodConfigError
from methods.pruning.amc import AMC, ChannelSelector, _feature_columns, _weight_matrix
from methods.pruning.channel_space import ChannelSpace
from methods.pruning.compactnet import CompactNet, compactnet_sub_targets
from methods.pruning.netadapt import NetAdapt
from methods.search.ddpg import DDPGAgent, DDPGConfig
from methods.search.resource import LatencyResource, MacsResource
from methods.search.threads import search_threads
from methods.storage import load_model
from tests.conftest import SHARED_DATA, needs_shared_data, tiny_mnist

PIXEL1_PROFILES = SHARED_DATA.parent / "reference" / "pixel1-amc-tflite"
INPUT = (1, 1, 28, 28)

pytestmark = needs_shared_data


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MNISTDataModule:
    return tiny_mnist(tmp_path_factory.mktemp("mnist"), val_size=1000, val_subset=256)


@pytest.fixture(scope="module")
def pixel1() -> OpProfileTarget:
    if not PIXEL1_PROFILES.is_dir():
        pytest.skip(f"no Pixel-1 profiles at {PIXEL1_PROFILES}")
    return registry.instantiate("pixel1", {"reference_dir": str(PIXEL1_PROFILES)})


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_chans=1).eval()


@pytest.fixture
def one_thread():
    """What AMC's compress does for its search: tiny forward passes, one thread."""
    with search_threads(1):
        yield


def _ctx(mnist, target, tmp_path: Path):
    recipe = RecipeConfig(epochs=1, lr=0.01)
    return make_context(mnist, target, recipe, TrainerConfig(progress_bar=False), seed=0, workdir=tmp_path / "work")


# -- the channel space ---------------------------------------------------------------------

def test_shrink_matches_torch_pruning_in_place_removal(lenet):
    space = ChannelSpace(lenet, INPUT)
    assert [u.consumers[0] for u in space.units] == ["conv2", "fc1", "fc2"]  # execution order
    keep = {u.index: list(range(0, u.channels, 3)) for u in space.units}
    fast = space.shrink(keep)
    reference = copy.deepcopy(lenet)
    graph = tp.DependencyGraph().build_dependency(reference, example_inputs=torch.zeros(INPUT))
    modules = dict(reference.named_modules())
    for unit in space.units:
        removed = sorted(set(range(unit.channels)) - set(keep[unit.index]))
        module = modules[unit.producer]
        graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, removed).prune()
    for (k, a), (_, b) in zip(fast.state_dict().items(), reference.state_dict().items(), strict=False):
        assert a.shape == b.shape and torch.equal(a, b), k
    assert lenet.conv1.out_channels == 20  # the original is untouched


# -- AMC ------------------------------------------------------------------------------------

def test_least_squares_refit_reconstructs_better_than_magnitude_alone(lenet, mnist):
    space = ChannelSpace(lenet, INPUT)
    batches = [x for i, (x, _) in zip(range(2), mnist.train_dataloader(), strict=False)]
    selector = ChannelSelector(lenet, space, True, batches, points_per_layer=10, seed=0)
    unit = space.units[0]  # conv1 -> conv2
    kept = selector.kept_channels(unit, 6)
    plain = space.shrink({unit.index: kept})
    refit = space.shrink({unit.index: kept})
    selector.refit(refit, {unit.index: kept})
    gram, cross = selector.gram["conv2"]
    cols = _feature_columns(torch.tensor(kept), 25)
    target = cross[cols]  # X_k^T Y: the least-squares normal equations' right side

    def residual(model) -> float:
        w = _weight_matrix(model.conv2).double()  # (out, kept features)
        # ||X_k W^T - Y||^2 up to the constant ||Y||^2: w G w^T - 2 w B
        return float(torch.einsum("of,fg,og->", w, gram[cols][:, cols], w) - 2 * torch.einsum("of,fo->", w, target))

    assert residual(refit) < residual(plain)


@pytest.mark.parametrize("resource_kind", ["flops", "latency"])
def test_action_wall_keeps_every_episode_within_budget(lenet, mnist, pixel1, tmp_path, resource_kind, one_thread):
    amc = AMC(resource=resource_kind, target_ratio=0.45, channel_selection="magnitude", reward_batches=1)
    env = amc.environment(lenet, _ctx(mnist, pixel1, tmp_path))
    rng = np.random.default_rng(0)
    policies = [lambda s: 1.0, lambda s: 0.9, lambda s: float(rng.uniform(0.2, 1.0))]
    for choose in policies + policies[2:]:
        kept, transitions = env.run_episode(choose)
        pruned = env.pruned_model(kept)
        fresh = MacsResource(INPUT) if resource_kind == "flops" else LatencyResource(pixel1, INPUT)
        assert fresh(pruned) <= env.budget + 1e-9
        assert len(transitions) == len(env.units) and transitions[-1][3]
        assert all(env.lbound - 1e-9 <= a <= env.rbound + 1e-9 for _, a, _, _ in transitions)
    # keeping everything is over budget, so the wall must have cut the greedy policy, but no
    # further than needed: adding one channel to the last layer that the wall cut breaks the budget
    kept, transitions = env.run_episode(lambda s: 1.0)
    assert kept != env.full
    # the agent learns from what it asked for (the authors' amc_search.py), not from what the wall let through
    assert [a for _, a, _, _ in transitions] == [1.0] * len(env.units)
    last_cut = max(i for i, (n, full) in enumerate(zip(kept, env.full, strict=False)) if n < full)
    if kept[last_cut] > env.min_kept[last_cut]:
        more = list(kept)
        more[last_cut] += 1
        assert env.cost(more) > env.budget


def test_short_amc_search_gives_a_runnable_model_within_budget(lenet, mnist, pixel1, tmp_path, caplog):
    amc = AMC(resource="latency", target_ratio=0.5, episodes=3, warmup_episodes=2, reward_batches=1,
              calibration_batches=1, finetune={"epochs": 0.25}, ddpg={"batch_size": 4})
    ctx = _ctx(mnist, pixel1, tmp_path)
    with caplog.at_level(logging.DEBUG, logger="methods"):
        result = amc.compress(copy.deepcopy(lenet), ctx)
    episode_lines = [r for r in caplog.records if r.getMessage().startswith("[amc] episode")]
    assert len(episode_lines) == 5 and {r.levelno for r in episode_lines} == {logging.DEBUG}  # not 5 INFO lines
    assert result.model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    base = pixel1.latency(lenet, INPUT).latency_ms
    assert pixel1.latency(result.model, INPUT).latency_ms <= 0.5 * base + 1e-9
    assert result.metrics["budget_met"] == 1.0
    # the model returned is the one decoded from the stored file
    decoded = load_model(result.stored_file, lenet)
    for a, b in zip(decoded.state_dict().values(), result.model.state_dict().values(), strict=False):
        assert torch.equal(a, b)
    policy = json.loads((ctx.workdir / "amc_policy.json").read_text())
    assert len(policy["history"]) == 5 and sum(e["warmup"] for e in policy["history"]) == 2
    assert [layer["layer"] for layer in policy["layers"]] == ["conv2", "fc1", "fc2"]
    assert all(0.2 <= layer["preserve_ratio"] <= 1.0 for layer in policy["layers"])
    assert any(p.suffix == ".png" for p in result.artifacts)


def test_uniform_policy_is_one_ratio_at_the_budget(lenet, mnist, pixel1, tmp_path, one_thread):
    amc = AMC(resource="flops", target_ratio=0.5, search="uniform", channel_selection="magnitude", reward_batches=1)
    env = amc.environment(lenet, _ctx(mnist, pixel1, tmp_path))
    outcome = amc.search_policy(env, seed=0)
    ratios = outcome.best.preserve_ratios
    assert max(ratios) - min(ratios) < 0.06  # one ratio, up to channel rounding
    assert outcome.best.cost <= env.budget
    assert env.cost([min(n + 2, f) for n, f in zip(outcome.best.kept, env.full, strict=False)]) > env.budget


def test_amc_without_learning_episodes_is_random_search(lenet, mnist, pixel1, tmp_path, one_thread):
    """episodes=0: every episode a warm-up of uniform random actions (issue 15's random-search arm)."""
    amc = AMC(resource="flops", target_ratio=0.5, episodes=0, warmup_episodes=3, channel_selection="magnitude",
              reward_batches=1)
    outcome = amc.search_policy(amc.environment(lenet, _ctx(mnist, pixel1, tmp_path)), seed=0)
    assert [e.warmup for e in outcome.history] == [True] * 3
    assert len({tuple(e.kept) for e in outcome.history}) == 3 and outcome.best.reward == max(
        e.reward for e in outcome.history)


def test_amc_refuses_impossible_requests(lenet, mnist, pixel1, tmp_path):
    with pytest.raises(MethodConfigError, match="method.target_ratio"):
        AMC(target_ratio=1.5)
    with pytest.raises(MethodConfigError, match="method.target_ratio"):
        AMC(target_ratio=0.0)
    with pytest.raises(MethodConfigError, match="method.reward"):
        AMC(reward="top5")
    with pytest.raises(MethodConfigError, match="method.episodes plus warmup_episodes"):
        AMC(episodes=0, warmup_episodes=0)
    amc = AMC(resource="latency", target_ratio=0.02, lbound=0.2, channel_selection="magnitude")
    with pytest.raises(MethodConfigError, match=r"method.target_ratio=0.02: unreachable.*method.lbound"):
        amc.environment(lenet, _ctx(mnist, pixel1, tmp_path))


def test_ddpg_explores_inside_the_bounds_and_narrows(one_thread):
    agent = DDPGAgent(state_dim=10, n_layers=3, low=0.2, high=0.8, config=DDPGConfig(batch_size=8), seed=0)
    state = np.zeros(10, dtype=np.float32)
    actions = [agent.explore_action(state) for _ in range(200)]
    assert 0.2 <= min(actions) and max(actions) <= 0.8
    spread = np.std(actions)
    for _ in range(30):
        agent.end_episode()
    assert agent.sigma == pytest.approx(0.5 * 0.95 ** 30)
    assert np.std([agent.explore_action(state) for _ in range(200)]) < spread / 2
    # the critic learns a constant reward
    for _ in range(4):
        agent.observe_episode([(state, 0.5, state, False), (state, 0.5, state, True)], reward=1.0)
    losses = [agent.update()[0] for _ in range(50)]
    assert losses[-1] < losses[0]


# -- CompactNet and NetAdapt ------------------------------------------------------------------

def test_compactnet_sub_targets_follow_eqs_1_and_2():
    t_init, subs = compactnet_sub_targets(1.5, 24, 0.96)
    assert sum(subs) == pytest.approx(1.5)
    assert subs[0] == pytest.approx(t_init / 24)
    assert all(b / a == pytest.approx(0.96) for a, b in zip(subs, subs[1:], strict=False))
    assert CompactNet(t_init=2.0, target_speedup=None, iterations=24, decay=0.96).config.speedup == pytest.approx(
        2.0 / 24 * sum(0.96 ** i for i in range(24)))
    with pytest.raises(MethodConfigError, match="t_init"):
        CompactNet(t_init=2.0, target_speedup=2.0)


def test_compactnet_meets_every_sub_target_and_the_final_target(lenet, mnist, pixel1, tmp_path):
    method = CompactNet(resource="latency", target_speedup=1.6, iterations=3, decay=0.9, eval_batches=1,
                        finetune={"epochs": 0}, retrain={"epochs": 0})
    ctx = _ctx(mnist, pixel1, tmp_path)
    result = method.compress(copy.deepcopy(lenet), ctx)
    base = pixel1.latency(lenet, INPUT).latency_ms
    assert pixel1.latency(result.model, INPUT).latency_ms <= base / 1.6 + 1e-9
    record = json.loads((ctx.workdir / "compactnet_policy.json").read_text())
    constraints = [it["constraint"] for it in record["iterations"]]
    assert constraints == sorted(constraints, reverse=True)
    assert constraints[-1] == pytest.approx(base / 1.6)
    for it in record["iterations"]:
        assert it["cost"] <= it["constraint"] + 1e-9
        assert it["channels_after"] < it["channels_before"]
        assert it["top1"] == max(c["top1"] for c in it["candidates"])  # the most accurate candidate is kept
    assert result.model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_netadapt_reaches_its_budget_by_decaying_reductions(lenet, mnist, pixel1, tmp_path):
    method = NetAdapt(resource="flops", target_speedup=1.5, initial_reduction=0.15, decay=0.9, eval_batches=1,
                      finetune={"epochs": 0}, retrain={"epochs": 0})
    result = method.compress(copy.deepcopy(lenet), _ctx(mnist, pixel1, tmp_path))
    assert count_macs(result.model, INPUT) <= count_macs(lenet, INPUT) / 1.5


def test_trimming_refuses_an_unreachable_speedup(lenet, mnist, pixel1, tmp_path):
    method = CompactNet(resource="latency", target_speedup=50.0, iterations=2, finetune={"epochs": 0},
                        retrain={"epochs": 0})
    with pytest.raises(MethodConfigError, match=r"method.target_speedup=50.0: unreachable"):
        method.compress(copy.deepcopy(lenet), _ctx(mnist, pixel1, tmp_path))
    with pytest.raises(MethodConfigError, match="method.target_speedup"):
        CompactNet(target_speedup=0.5)


# -- configs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, cls, model", [
    (["+method=amc", "+hw=pixel1"], AMC, "lenet5"),
    (["+method=compactnet", "+hw=pixel1"], CompactNet, "lenet5"),
    (["+method=netadapt", "+hw=pixel1"], NetAdapt, "lenet5"),
    (["+experiment=amc_mobilenet", "+hw=pixel1"], AMC, "mobilenetv1"),
    (["+experiment=amc_mobilenetv2", "+hw=pixel1", "method.search=uniform"], AMC, "mobilenetv2_cifar"),
])
def test_method_configs_compose_and_instantiate(compose_cfg, overrides, cls, model):
    from hydra.utils import instantiate

    cfg = compose_cfg(*overrides)
    method = instantiate(cfg.method, _convert_="all")
    assert isinstance(method, cls) and cfg.model.name == model


def test_platform_exchange_rows_divide_by_the_same_baseline(lenet, pixel1):
    """Table 7's rows: each trimmed model on each target, its speedup against the baseline on that target."""
    from benchmarks.models.lenet import LeNet5
    from benchmarks.platform_exchange import exchange_rows

    trimmed = {"narrow": LeNet5(conv_channels=(9, 5), hidden_features=500).eval(),
               "thin_fc": LeNet5(conv_channels=(20, 50), hidden_features=100).eval()}
    rows = exchange_rows(lenet, trimmed, {"pixel1": pixel1}, INPUT)
    base = pixel1.latency(lenet, INPUT).latency_ms
    assert [(r["evaluated_on"], r["trimmed_for"]) for r in rows] == [("pixel1", "narrow"), ("pixel1", "thin_fc")]
    for row, model in zip(rows, trimmed.values(), strict=True):
        assert row["baseline_ms"] == base and row["rounds"] == 0 and row["verdict"] == "predicted"
        own = pixel1.latency(model, INPUT)  # an emulator is deterministic
        assert row["latency_ms"] == own.latency_ms < base and row["spread_ms"] == own.spread_ms  # its stated error
        assert row["speedup"] == base / row["latency_ms"]
        assert row["speedup_low"] == row["speedup"] == row["speedup_high"]
