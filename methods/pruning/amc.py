"""AMC: AutoML for Model Compression (He, Lin, Liu, Wang, Li, Han; ECCV 2018).

Also section 3 of Han et al., "Design Automation for Efficient Deep Learning Computing"
(../shared/papers/han2019-design-automation-amc-haq-proxylessnas.md). Hyper-parameters
and details follow the authors' public code as summarised in
../shared/reference/method-notes/amc.md.

What is implemented (paper section in brackets):

- The environment walks the prunable layers in execution order (3.1). A "layer" is one
  group of coupled channels (:class:`methods.pruning.channel_space.ChannelSpace`); AMC's
  layer t is the group's first dense *consumer*, whose input channels the action prunes.
- State (3.2): the 10-feature layer embedding (index, type, in/out channels, stride,
  kernel, weights, resource reduced so far, resource of the layers still to come,
  previous action), each feature min-max normalised across layers.
- Action (3.2): the preserve ratio of the layer's input channels in [lbound, rbound],
  rounded up to a multiple of ``channel_round``.
- Resource-constrained compression (3.3): the *action wall*. Before a layer's action is
  executed it is capped so that, if every later layer kept only ``lbound``, the budget
  ``target_ratio x cost(original)`` could still be met. The cost is the resource of
  :mod:`methods.search.resource`: MACs, or the latency the run's hardware target reports
  for the trimmed model (``+hw=pixel1`` steers by pixel1's latency). The cap is found by
  bisection over channel counts on real, physically pruned candidates. The agent learns from the
  action it requested, as the authors' ``amc_search.py`` stores it; the next state's previous-action
  feature is the ratio the wall let through (their ``strategy``).
- Reward (3.3): ``acc`` = accuracy x 0.01 (the authors' default with the action wall) or
  ``acc_flops`` = -(1 - accuracy) x log(MACs); accuracy is top-1 on a few validation
  batches, without fine-tuning, as in the paper's fast search.
- Agent (3.2): DDPG, :mod:`methods.search.ddpg` (300-300, lr 1e-4/1e-3, tau 0.01,
  discount 1, batch 64, warm-up episodes of random actions, truncated-normal exploration
  with sigma 0.5 x 0.95 per episode, moving-average reward baseline).
- Channel selection (3.4): input channels ranked by the summed magnitude of the
  consumer's weights on them; with ``channel_selection: lstsq`` the kept weights of
  every consumer are refitted by least squares to reproduce the original layer's output
  on calibration features (``points_per_layer`` sampled positions per image).
- The best policy found is applied, the model fine-tuned (``ctx.finetune``), stored and
  decoded again; the policy (per-layer preserve ratios), the search history and a
  per-layer bar chart are artifacts. The file is :mod:`methods.pruning.structured`'s
  (pruning history + state dict) and the returned model is decoded from it.

Departures: the reward uses top-1 (our data sets have 10 classes; the paper's ImageNet
runs use top-5). The least-squares refit is applied to every dense consumer, any kernel
size (the public code does it for 1x1 convolutions and linear layers); it is solved from
the Gram matrix of the calibration features so that a refit costs one small solve per
episode. ``search: uniform`` replaces the agent by one preserve ratio for all layers,
the largest that meets the budget: the rule-based width-scaling baseline of the paper's
Table 4, pruned and fine-tuned the same way.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hardware.layers import conv_padding, count_macs
from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, excluded_layers, fail, finetune_default, option
from methods.pruning.channel_space import ChannelSpace, PrunableUnit
from methods.pruning.structured import save_pruned
from methods.search.ddpg import DDPGAgent, DDPGConfig, Policy, Transition
from methods.search.resource import RESOURCES, Resource, make_resource
from methods.search.threads import search_threads
from methods.storage import load_model

log = logging.getLogger(__name__)

REWARDS = ("acc", "acc_flops")
SELECTIONS = ("magnitude", "lstsq")
SEARCHES = ("ddpg", "uniform")


# -- rewards (AMC section 3.3) -------------------------------------------------------------

def acc_reward(top1: float, macs: float) -> float:
    """The authors' default under the action wall: accuracy (a fraction) x 1."""
    return top1 * 0.01


def acc_flops_reward(top1: float, macs: float) -> float:
    """-(error) x log(FLOPs): trades accuracy for computation without a hard budget."""
    return -(1.0 - top1 / 100.0) * math.log(max(macs, 1.0))


REWARD_FUNCTIONS = {"acc": acc_reward, "acc_flops": acc_flops_reward}


# -- channel selection (AMC section 3.4) ---------------------------------------------------

def _input_features_per_channel(module: nn.Conv2d | nn.Linear, channels: int) -> int:
    """How many weight columns one input channel of ``module`` owns (k*k, or a flatten's H*W)."""
    if isinstance(module, nn.Conv2d):
        return module.weight.shape[2] * module.weight.shape[3]
    in_features = module.in_features
    if in_features % channels:
        raise MethodConfigError(f"method: cannot map {channels} channels onto {in_features} input features")
    return in_features // channels


def _weight_matrix(module: nn.Conv2d | nn.Linear) -> torch.Tensor:
    """(out, features) view of a dense conv or linear weight, features channel-major."""
    return module.weight.detach().reshape(module.weight.shape[0], -1)


def _feature_columns(kept: torch.Tensor, per_channel: int) -> torch.Tensor:
    return (kept[:, None] * per_channel + torch.arange(per_channel)[None, :]).reshape(-1)


class ChannelSelector:
    """Ranks a unit's channels by its consumers' weight magnitudes; refits by least squares."""

    def __init__(self, model: nn.Module, space: ChannelSpace, least_squares: bool, calibration: list[torch.Tensor],
                 points_per_layer: int, seed: int) -> None:
        self.space = space
        # the consumers of the channel space's units: conv and linear layers
        self.modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        self.importance: dict[int, torch.Tensor] = {}
        for unit in space.units:
            score = torch.zeros(unit.channels)
            for name in unit.consumers:
                module = self.modules[name]
                per = _input_features_per_channel(module, unit.channels)
                w = _weight_matrix(module).abs()
                score += w.reshape(w.shape[0], unit.channels, per).sum(dim=(0, 2))
            self.importance[unit.index] = score
        self.gram: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if least_squares:
            self.gram = self._gram_matrices(model, calibration, points_per_layer, seed)

    def kept_channels(self, unit: PrunableUnit, count: int) -> list[int]:
        order = torch.argsort(self.importance[unit.index], descending=True, stable=True)
        return sorted(order[:count].tolist())

    def _gram_matrices(self, model: nn.Module, calibration: list[torch.Tensor], points: int,
                       seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """X^T X and X^T Y of every consumer on calibration features of the original model."""
        consumers = sorted({c for u in self.space.units for c in u.consumers})
        sums: dict[str, list[torch.Tensor]] = {}
        generator = torch.Generator().manual_seed(seed)
        handles = []

        def hook(name: str, module: nn.Conv2d | nn.Linear):
            def _pre(_m: nn.Module, inputs: tuple) -> None:
                x = inputs[0].detach()
                if isinstance(module, nn.Conv2d):
                    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=conv_padding(module),
                                    stride=module.stride)  # (N, C*k*k, L)
                    n, _, length = cols.shape
                    pick = torch.randint(0, length, (n, min(points, length)), generator=generator)
                    rows = cols.gather(2, pick[:, None, :].expand(-1, cols.shape[1], -1))
                    rows = rows.permute(0, 2, 1).reshape(-1, cols.shape[1])
                else:
                    rows = x.reshape(x.shape[0], -1)
                rows = rows.double()
                target = rows @ _weight_matrix(module).double().T
                g, b = rows.T @ rows, rows.T @ target
                if name in sums:
                    sums[name][0] += g
                    sums[name][1] += b
                else:
                    sums[name] = [g, b]
            return _pre

        for name in consumers:
            handles.append(self.modules[name].register_forward_pre_hook(hook(name, self.modules[name])))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for x in calibration:
                    model(x)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        return {name: (g, b) for name, (g, b) in sums.items()}

    def refit(self, pruned: nn.Module, kept: Mapping[int, list[int]]) -> None:
        """Least-squares weights for every consumer of ``pruned`` on its kept input channels."""
        modules = dict(pruned.named_modules())
        for name, (gram, cross) in self.gram.items():
            unit_index = self.space.in_unit.get(name)
            if unit_index is None or unit_index not in kept:
                continue
            unit = self.space.units[unit_index]
            original = self.modules[name]
            per = _input_features_per_channel(original, unit.channels)
            cols = _feature_columns(torch.tensor(kept[unit_index]), per)
            g = gram[cols][:, cols]
            ridge = 1e-6 * float(torch.diagonal(g).mean().clamp_min(1e-12))
            solution = torch.linalg.solve(g + ridge * torch.eye(len(cols), dtype=g.dtype), cross[cols])  # (F', out)
            weight = solution.T
            out_unit = self.space.out_unit.get(name)
            if out_unit is not None and out_unit in kept:
                weight = weight[torch.tensor(kept[out_unit])]
            module = modules[name]
            with torch.no_grad():
                module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))


# -- the environment (AMC sections 3.1-3.3) ------------------------------------------------

@dataclass
class Episode:
    """One walk over the layers: its actions, cost and reward."""

    index: int
    warmup: bool
    preserve_ratios: list[float]
    kept: list[int]
    cost: float
    cost_ratio: float
    macs: float
    top1: float
    reward: float


@dataclass
class SearchOutcome:
    best: Episode
    history: list[Episode] = field(default_factory=list)


class AMCEnvironment:
    """Prunes a model layer by layer under a resource budget; scores a finished policy."""

    def __init__(self, model: nn.Module, space: ChannelSpace, resource: Resource, selector: ChannelSelector,
                 target_ratio: float, lbound: float, rbound: float, channel_round: int, reward: str,
                 evaluate, reward_batches: int) -> None:
        self.model, self.space, self.resource, self.selector = model, space, resource, selector
        self.lbound, self.rbound, self.channel_round = lbound, rbound, channel_round
        self.reward_fn = REWARD_FUNCTIONS[reward]
        self.evaluate, self.reward_batches = evaluate, reward_batches
        self.units = space.units
        self.full = [u.channels for u in self.units]
        self.min_kept = [space.min_keep(u, lbound, channel_round) for u in self.units]
        self.base_cost = resource(model)
        self.budget = target_ratio * self.base_cost
        floor = self.cost(self.min_kept)
        if floor > self.budget:
            raise MethodConfigError(
                f"method.target_ratio={target_ratio}: unreachable. Keeping only method.lbound={lbound} of every "
                f"layer still costs {floor:.4g} {resource.unit} = {floor / self.base_cost:.3f} of the original "
                f"{self.base_cost:.4g} ({resource.kind}); raise target_ratio or lower lbound")
        self.static = self._static_features()
        consumer_cost = self._consumer_costs()
        total = sum(consumer_cost) or 1.0
        self.rest_share = [sum(consumer_cost[t + 1:]) / total for t in range(len(self.units))]

    # costs of channel plans (a kept count per unit)
    def cost(self, kept: list[int]) -> float:
        return self.resource(self.space.shrink({i: n for i, n in enumerate(kept) if n < self.full[i]}))

    def _static_features(self) -> np.ndarray:
        rows = []
        for unit in self.units:
            spec = self.space.layer_specs[unit.consumers[0]]
            is_linear = spec.op == "linear"
            rows.append([unit.index, float(is_linear), spec.in_channels, spec.out_channels, spec.stride[0],
                         spec.kernel[0], spec.params])
        feats = np.asarray(rows, dtype=np.float64)
        low, high = feats.min(axis=0), feats.max(axis=0)
        span = np.where(high > low, high - low, 1.0)
        return ((feats - low) / span).astype(np.float32)

    def _consumer_costs(self) -> list[float]:
        per_layer = self.resource.per_layer(self.model)
        return [sum(per_layer.get(c, 0.0) for c in u.consumers) for u in self.units]

    def state(self, t: int, reduced: float, prev_action: float) -> np.ndarray:
        dynamic = np.asarray([reduced, self.rest_share[t], prev_action], dtype=np.float32)
        return np.concatenate([self.static[t], dynamic])

    @property
    def state_dim(self) -> int:
        return self.static.shape[1] + 3

    def wall(self, t: int, kept_prefix: list[int], proposed: int) -> int:
        """The largest count <= ``proposed`` that keeps the budget reachable (the action wall)."""
        def fits(n: int) -> bool:
            return self.cost(kept_prefix + [n] + self.min_kept[t + 1:]) <= self.budget

        low, high = self.min_kept[t], proposed
        if high <= low or fits(high):
            return max(high, low)
        step = self.channel_round
        grid = list(range(low, high, step)) if low % step == 0 else [low] + list(
            range(math.ceil(low / step) * step, high, step))
        lo, hi = 0, len(grid) - 1  # grid[lo] fits (the floor is feasible by induction)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(grid[mid]):
                lo = mid
            else:
                hi = mid - 1
        return grid[lo]

    def selected_channels(self, kept: list[int]) -> dict[int, list[int]]:
        """Which channels a policy keeps in each pruned unit (the selector's ranking)."""
        return {i: self.selector.kept_channels(u, n) for i, (u, n) in enumerate(zip(self.units, kept, strict=False))
                if n < self.full[i]}

    def pruned_model(self, kept: list[int]) -> nn.Module:
        """Apply a policy: select channels, shrink physically, refit by least squares."""
        chosen = self.selected_channels(kept)
        pruned = self.space.shrink(chosen)
        if self.selector.gram:
            self.selector.refit(pruned, chosen)
        return pruned

    def score(self, kept: list[int]) -> tuple[float, float, float]:
        """(reward, top-1, MACs) of a policy on a few validation batches, no fine-tuning."""
        pruned = self.pruned_model(kept)
        top1 = float(self.evaluate(pruned, "val", self.reward_batches)["top1"])
        macs = float(count_macs(pruned, self.resource.input_shape))
        return self.reward_fn(top1, macs), top1, macs

    def run_episode(self, choose: Policy) -> tuple[list[int], list[Transition]]:
        """Walk the layers; ``choose(state) -> preserve ratio``; returns kept counts and transitions."""
        kept: list[int] = []
        transitions = []
        state = self.state(0, 0.0, 1.0)  # nothing reduced yet; "previous action": keep everything
        for t, unit in enumerate(self.units):
            ratio = float(np.clip(choose(state), self.lbound, self.rbound))
            proposed = self.space.min_keep(unit, ratio, self.channel_round)
            n = self.wall(t, kept, proposed)
            kept.append(n)
            applied = n / unit.channels
            reduced = 1.0 - self.cost(kept + self.full[t + 1:]) / self.base_cost
            last = t == len(self.units) - 1
            next_state = state if last else self.state(t + 1, reduced, applied)
            transitions.append((state, ratio, next_state, last))
            state = next_state
        return kept, transitions


def uniform_policy(env: AMCEnvironment) -> list[int]:
    """The largest single preserve ratio that meets the budget (width-multiplier baseline)."""
    def kept_at(ratio: float) -> list[int]:
        return [max(env.min_kept[i], env.space.min_keep(u, ratio, env.channel_round)) for i, u in enumerate(env.units)]

    low, high = env.lbound, env.rbound
    if env.cost(kept_at(high)) <= env.budget:
        return kept_at(high)
    for _ in range(20):
        mid = (low + high) / 2
        if env.cost(kept_at(mid)) <= env.budget:
            low = mid
        else:
            high = mid
    return kept_at(low)


# -- the method ------------------------------------------------------------------------------

def _plot_policy(path: Path, units: list[PrunableUnit], kept: list[int], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(units) + 2), 3.6))
    x = np.arange(len(units))
    ax.bar(x, [u.channels for u in units], color="#cccccc", label="original")
    ax.bar(x, kept, color="#1f77b4", label="kept")
    ax.set_xticks(x, [u.consumers[0] for u in units], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("input channels")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_rewards(path: Path, history: list[Episode]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([e.index for e in history], [e.reward for e in history], ".", ms=3, label="episode reward")
    best = np.maximum.accumulate([e.reward for e in history])
    ax.plot([e.index for e in history], best, "-", label="best so far")
    warm = sum(e.warmup for e in history)
    if warm:
        ax.axvline(warm - 0.5, color="gray", ls="--", lw=0.8, label="end of warm-up")
    ax.set_xlabel("episode")
    ax.set_ylabel("reward")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class AMCConfig:
    """conf/method/amc.yaml (the agent's keys: methods.search.ddpg.DDPGConfig)."""

    resource: str = option("latency", choices=tuple(sorted(RESOURCES)))
    target_ratio: float = option(0.5, gt=0, le=1, why="a fraction of the original resource")
    lbound: float = option(0.2, gt=0, le=1, why="each layer keeps at least this fraction")
    rbound: float = option(1.0, gt=0, le=1)
    reward: str = option("acc", choices=REWARDS)
    search: str = option("ddpg", choices=SEARCHES)
    episodes: int = option(100, ge=0, why="0 with warm-up episodes: random search, the same evaluation")
    warmup_episodes: int = option(25, ge=0)
    channel_selection: str = option("lstsq", choices=SELECTIONS)
    channel_round: int = option(1, ge=1)
    calibration_batches: int = option(4, ge=1)
    points_per_layer: int = option(10, ge=1)
    reward_batches: int = option(4, ge=1)
    finetune: FineTuning = option(factory=finetune_default(1.0))
    layers: LayerSelection = option(factory=LayerSelection)
    search_threads: int | None = option(1, ge=1, why="null: torch's threads unchanged")
    ddpg: DDPGConfig = option(factory=DDPGConfig)

    def check(self, key: str) -> None:
        if self.lbound > self.rbound:
            fail(f"{key}.lbound", f"({self.lbound}) must not exceed {key}.rbound ({self.rbound})")
        if self.search == "ddpg" and self.episodes + self.warmup_episodes < 1:
            fail(f"{key}.episodes", "plus warmup_episodes must be >= 1: the search needs one episode")


class AMC(CompressionMethod):
    """AMC channel pruning: DDPG-searched per-layer preserve ratios under a resource budget."""

    name = "amc"
    Config = AMCConfig
    config: AMCConfig

    # the parts, usable on their own (tests, notebooks)
    def environment(self, model: nn.Module, ctx: CompressionContext) -> AMCEnvironment:
        space = ChannelSpace(model, ctx.input_shape, ignored=excluded_layers(model, ctx.input_shape, self.config.layers))
        resource = make_resource(self.config.resource, ctx.target, ctx.input_shape)
        calibration = []
        if self.config.channel_selection == "lstsq":
            for i, (x, _) in enumerate(ctx.datamodule.train_dataloader()):
                if i >= self.config.calibration_batches:
                    break
                calibration.append(x)
        selector = ChannelSelector(model, space, self.config.channel_selection == "lstsq", calibration,
                                   self.config.points_per_layer, ctx.seed)
        return AMCEnvironment(model, space, resource, selector, self.config.target_ratio, self.config.lbound, self.config.rbound,
                              self.config.channel_round, self.config.reward, ctx.evaluate, self.config.reward_batches)

    def search_policy(self, env: AMCEnvironment, seed: int) -> SearchOutcome:
        if self.config.search == "uniform":
            kept = uniform_policy(env)
            return SearchOutcome(self._episode(env, 0, False, kept))
        agent = DDPGAgent(env.state_dim, len(env.units), self.config.lbound, self.config.rbound, self.config.ddpg, seed=seed)
        history: list[Episode] = []

        def play(choose: Policy, index: int, warmup: bool) -> tuple[list[Transition], float]:
            kept, transitions = env.run_episode(choose)
            episode = self._episode(env, index, warmup, kept)
            history.append(episode)
            log.debug("[amc] episode %d%s: reward %.4f top-1 %.2f %s %.3f of original, best %.4f",
                     index, " (warm-up)" if warmup else "", episode.reward, episode.top1, env.resource.kind,
                     episode.cost_ratio, max(e.reward for e in history))
            return transitions, episode.reward

        agent.search(play, self.config.episodes, self.config.warmup_episodes)
        return SearchOutcome(max(history, key=lambda e: e.reward), history)

    @staticmethod
    def _episode(env: AMCEnvironment, index: int, warmup: bool, kept: list[int]) -> Episode:
        reward, top1, macs = env.score(kept)
        cost = env.cost(kept)
        return Episode(index, warmup, [n / u.channels for n, u in zip(kept, env.units, strict=False)], kept, cost,
                       cost / env.base_cost, macs, top1, reward)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        start = time.perf_counter()
        with search_threads(self.config.search_threads):
            env = self.environment(model, ctx)
            outcome = self.search_policy(env, ctx.seed)
            pruned = env.pruned_model(best_kept := outcome.best.kept)
            before = ctx.evaluate(pruned, "val")
        search_seconds = time.perf_counter() - start
        best = outcome.best
        assert best.kept == best_kept
        if self.config.finetune.epochs > 0:
            pruned.train()  # Lightning keeps the modes it is given; batch norm must train
            ctx.finetune(pruned, self.config.finetune.epochs, lr=self.config.finetune.lr)
        path = ctx.workdir / "model.pruned.cbm"
        save_pruned(pruned, env.space.history(env.selected_channels(best.kept)), ctx.input_shape, path,
                    extra={"method": self.name, "policy": [n / u.channels for n, u in zip(best.kept, env.units, strict=False)]})
        decoded = load_model(path, model)
        final_cost = env.resource(decoded)
        budget_met = final_cost <= env.budget * (1 + 1e-9)

        policy = {
            "method": self.name, "search": self.config.search, "resource": env.resource.describe(),
            "target_ratio": self.config.target_ratio, "budget": env.budget, "base_cost": env.base_cost,
            "final_cost": final_cost, "final_cost_ratio": final_cost / env.base_cost,
            "budget_met": budget_met,
            "lbound": self.config.lbound, "rbound": self.config.rbound, "reward": self.config.reward,
            "best_episode": best.index, "best_reward": best.reward,
            "layers": [{"unit": u.producer, "layer": u.consumers[0], "consumers": list(u.consumers),
                        "channels": u.channels, "kept": n, "preserve_ratio": n / u.channels}
                       for u, n in zip(env.units, best.kept, strict=False)],
            "history": [asdict(e) for e in outcome.history],
        }
        policy_file = ctx.workdir / "amc_policy.json"
        policy_file.write_text(json.dumps(policy, indent=1))
        artifacts = [policy_file]
        bars = ctx.workdir / "amc_policy.png"
        _plot_policy(bars, env.units, best.kept,
                     f"AMC ({self.config.search}) policy: {env.resource.kind} {final_cost / env.base_cost:.2f}x of original")
        artifacts.append(bars)
        if outcome.history:
            curve = ctx.workdir / "amc_rewards.png"
            _plot_rewards(curve, outcome.history)
            artifacts.append(curve)
        if not budget_met:
            log.warning("[amc] final %s %.4g exceeds the budget %.4g (a measured target's noise?)",
                        env.resource.kind, final_cost, env.budget)
        metrics = {
            "search_seconds": search_seconds,
            "search_episodes": float(len(outcome.history)),
            "best_reward": best.reward,
            "search_top1": best.top1,
            "top1_before_finetune": float(before["top1"]),
            f"{env.resource.kind}_ratio": final_cost / env.base_cost,
            "budget_met": float(budget_met),
            "macs_ratio": count_macs(decoded, ctx.input_shape) / count_macs(model, ctx.input_shape),
            "resource_queries": float(env.resource.queries),
        }
        return CompressionResult(model=decoded, stored_file=path, metrics=metrics, artifacts=artifacts)
