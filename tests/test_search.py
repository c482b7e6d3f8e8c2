"""The search and cost shared by method families (methods/search/): the DDPG agent and the resources.

The agent is checked on a synthetic task with a known optimum, against random search
with the same number of episodes and the same evaluation; the costs on LeNet-5 and the
real target configs of conf/hw (a bit-aware roofline device, a measured CPU).
"""

from __future__ import annotations

import io
import logging
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import benchmarks.models  # noqa: F401  (registers the zoo into timm)
from benchmarks.models import build_model
from hardware.target import HardwareTarget
from methods.base import MethodConfigError
from methods.search.ddpg import DDPGAgent, DDPGConfig, Policy, Transition
from methods.search.resource import make_resource
from methods.search.threads import search_threads
from tests.conftest import REPO_ROOT

INPUT = (1, 1, 28, 28)

# -- the agent -----------------------------------------------------------------------------

#: The best action of each layer; the reward is minus the squared distance to it. Kept away
#: from 0.5 (where an untrained actor's sigmoid starts), so only a learning agent gets close.
OPTIMUM = np.array([0.15, 0.85, 0.3, 0.9, 0.2, 0.7, 0.1, 0.8])


def _state(t: int, previous_action: float) -> np.ndarray:
    """Which layer (one-hot) and the previous action, like AMC's and HAQ's layer embeddings."""
    state = np.zeros(len(OPTIMUM) + 1, dtype=np.float32)
    state[t], state[-1] = 1.0, previous_action
    return state


def _play(choose: Policy, index: int, warmup: bool) -> tuple[list[Transition], float]:
    """One episode over the layers; one reward at its end, as in AMC and HAQ."""
    transitions: list[Transition] = []
    actions = []
    state = _state(0, 1.0)
    for t in range(len(OPTIMUM)):
        action = choose(state)
        actions.append(action)
        last = t == len(OPTIMUM) - 1
        next_state = state if last else _state(t + 1, action)
        transitions.append((state, action, next_state, last))
        state = next_state
    return transitions, -float(np.sum((np.asarray(actions) - OPTIMUM) ** 2))


def _agent(seed: int) -> DDPGAgent:
    return DDPGAgent(len(OPTIMUM) + 1, len(OPTIMUM), 0.0, 1.0, DDPGConfig(), seed=seed)


def test_search_shows_one_progress_bar_with_the_best_reward(monkeypatch, caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:  # tqdm draws its bar on a terminal only
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    with caplog.at_level(logging.INFO, logger="methods.search"):
        rewards = _agent(0).search(_play, 3, 2)
    bar = sys.stderr.getvalue()
    assert "DDPG search" in bar and "5/5" in bar and f"best_reward={max(rewards):.4f}" in bar
    (summary,) = [r.getMessage() for r in caplog.records]
    assert summary == f"[ddpg] 5 episodes (2 warm-up): best reward {max(rewards):.4f} at episode {int(np.argmax(rewards))}"


def test_ddpg_beats_random_search_with_the_same_budget():
    """AMC's agent and schedule (the authors' hyper-parameters), 10 warm-up + 50 learning episodes, 3 seeds.

    Random search is the same loop with every episode a warm-up (uniform random actions).
    Averaged over the seeds, the agent's best must beat random search's best, and so must
    its last ten episodes, each on its own: the agent has learned where the optimum is, it
    was not one lucky draw. An agent that does not learn (no updates) plays near its
    initial actor, about -0.85 per episode here, below random search's best (about -0.26);
    the learning agent's last episodes average about -0.13. (Over ten seeds, two leave
    the agent stuck near random search's level: why seeds are pooled.)
    """
    warmup, episodes, seeds = 10, 50, (0, 1, 2)
    with search_threads(1):
        learned = [_agent(seed).search(_play, episodes, warmup) for seed in seeds]
        random_search = [_agent(seed).search(_play, 0, warmup + episodes) for seed in seeds]
    assert {len(rewards) for rewards in learned + random_search} == {warmup + episodes}
    random_best = np.mean([max(rewards) for rewards in random_search])
    assert np.mean([max(rewards) for rewards in learned]) > random_best
    assert np.mean([np.mean(rewards[-10:]) for rewards in learned]) > random_best


def test_ddpg_gives_the_same_actions_for_the_same_seed():
    with search_threads(1):
        first, second, other = (_agent(seed).search(_play, 3, 2) for seed in (0, 0, 1))
    assert first == second and first != other


def test_ddpg_acts_in_any_bounds_it_is_given():
    """HAQ maps its action onto bits: bounds outside [0, 1] are the family's choice."""
    agent = DDPGAgent(3, 2, 2.0, 8.0, DDPGConfig(), seed=0)
    state = np.zeros(3, dtype=np.float32)
    actions = [agent.explore_action(state) for _ in range(50)] + [agent.random_action() for _ in range(50)]
    assert 2.0 <= min(actions) and max(actions) <= 8.0 and max(actions) - min(actions) > 3
    with pytest.raises(ValueError, match="low <= high"):
        DDPGAgent(3, 2, 8.0, 2.0, DDPGConfig())


# -- the costs -------------------------------------------------------------------------------

def _hw(name: str, **overrides) -> HardwareTarget:
    cfg = OmegaConf.load(REPO_ROOT / "conf" / "hw" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, overrides))


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_chans=1).eval()


@pytest.fixture(scope="module")
def bitfusion() -> HardwareTarget:
    return _hw("bitfusion")


def _bits(model: nn.Module, bits: int) -> dict[str, tuple[int, int]]:
    return {name: (bits, bits) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_bit_widths_reach_the_device_model(lenet, bitfusion):
    """Latency, energy and size of the same model fall from 8 to 4 bits on Bit Fusion; MACs do not."""
    costs = {kind: make_resource(kind, bitfusion, INPUT) for kind in ("latency", "energy", "size", "flops")}
    at8, at4 = _bits(lenet, 8), _bits(lenet, 4)
    for kind in ("latency", "energy", "size"):
        assert costs[kind](lenet, at4) < costs[kind](lenet, at8) < costs[kind](lenet), kind
        assert sum(costs[kind].per_layer(lenet, at4).values()) < sum(costs[kind].per_layer(lenet, at8).values()), kind
    assert costs["flops"](lenet, at4) == costs["flops"](lenet, at8) == costs["flops"](lenet)
    assert costs["size"](lenet, at4) == pytest.approx(costs["size"](lenet, at8) / 2, abs=8)
    # without bits the cost is the target's own answer, as before bits were passed
    assert costs["latency"](lenet) == bitfusion.latency(lenet, INPUT).latency_ms
    # bits are part of the cache key: one layer changed is a new query
    queries = costs["latency"].queries
    assert costs["latency"](lenet, {**at8, "conv1": (4, 4)}) < costs["latency"](lenet, at8)
    assert costs["latency"].queries == queries + 1


def test_costs_refuse_what_they_cannot_answer(lenet, bitfusion):
    with pytest.raises(MethodConfigError, match=r"layer_bits names \['conv9'\]"):
        make_resource("latency", bitfusion, INPUT)(lenet, {"conv9": (4, 4)})
    with pytest.raises(MethodConfigError, match="method.resource='power'"):
        make_resource("power", bitfusion, INPUT)
    cpu = _hw("local_cpu", threads=1, warmup=1, repeats=3, min_time_s=0.0, per_layer=False)
    with pytest.raises(MethodConfigError, match="method.resource=energy: hw 'local_cpu' does not model energy"):
        make_resource("energy", cpu, INPUT)(lenet)
