"""A small DDPG agent for layer-by-layer searches: one continuous action per layer.

Implements the agent of He et al., "AMC: AutoML for Model Compression and Acceleration
on Mobile Devices" (ECCV 2018), section 3.2, with the hyper-parameters of the authors'
public code (../shared/reference/method-notes/amc.md). HAQ (Wang et al., CVPR 2019,
section 3) uses the same agent for per-layer bit-widths: the family gives the state
size and the action bounds (AMC: a preserve ratio in [lbound, rbound]; HAQ: a value it
maps onto bits) and plays the episodes; nothing here knows what an action means.

- actor mu(s) and critic Q(s, a), each with two hidden layers of 300 units; the actor
  ends in a sigmoid that is mapped onto the action range [low, high];
- Adam with lr 1e-4 (actor) and 1e-3 (critic); soft target updates with tau = 0.01;
- discount 1: the one reward of an episode, given at its end, is the return of every
  transition of that episode (the Bellman target still bootstraps from the next state);
- replay memory of ``replay_per_layer`` transitions per layer (step of an episode), batches of 64;
- exploration by a normal distribution around mu(s), truncated to [low, high],
  whose sigma starts at 0.5 and is multiplied by 0.95 after every training episode;
- a moving-average baseline subtracted from the rewards before they enter the memory
  (variance reduction).

Why our own agent rather than an RL library: AMC's and HAQ's loop is not a Gym environment with
per-step rewards. Its reward arrives once per episode, is shared by all the episode's
transitions, is baseline-corrected, and exploration uses a decaying truncated normal.
Stable-Baselines3's DDPG would need gymnasium plus wrappers that rewrite its buffer and
noise, which is more code than this module and hides the paper's choices.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


@dataclass
class DDPGConfig:
    """The agent's hyper-parameters (defaults: the AMC authors' values)."""

    hidden: int = 300
    lr_actor: float = 1e-4
    lr_critic: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    replay_per_layer: int = 100
    init_sigma: float = 0.5
    sigma_decay: float = 0.95
    reward_baseline_decay: float = 0.95

    def __post_init__(self) -> None:
        for key in ("hidden", "batch_size", "replay_per_layer"):
            if getattr(self, key) < 1:
                raise ValueError(f"method.ddpg.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr_actor", "lr_critic", "init_sigma"):
            if getattr(self, key) <= 0:
                raise ValueError(f"method.ddpg.{key} must be > 0, got {getattr(self, key)}")
        for key in ("tau", "sigma_decay", "reward_baseline_decay"):
            if not 0 < getattr(self, key) <= 1:
                raise ValueError(f"method.ddpg.{key} must be in (0, 1], got {getattr(self, key)}")
        if not 0 <= self.discount <= 1:
            raise ValueError(f"method.ddpg.discount must be in [0, 1], got {self.discount}")


class Actor(nn.Module):
    """mu(s): state -> an action in (0, 1), later mapped onto [low, high]."""

    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1), nn.Sigmoid(),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class Critic(nn.Module):
    """Q(s, a): the state and the action enter through their own first layers, summed."""

    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.state_in = nn.Linear(state_dim, hidden)
        self.action_in = nn.Linear(1, hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.head(self.state_in(state) + self.action_in(action))


class ReplayMemory:
    """A ring buffer of (state, action, reward, next_state, terminal) transitions."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity = capacity
        self.states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, 1), dtype=np.float32)
        self.rewards = np.zeros((capacity, 1), dtype=np.float32)
        self.next_states = np.zeros((capacity, state_dim), dtype=np.float32)
        self.terminals = np.zeros((capacity, 1), dtype=np.float32)
        self.size = 0
        self._next = 0

    def append(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, terminal: bool) -> None:
        i = self._next
        self.states[i], self.actions[i, 0], self.rewards[i, 0] = state, action, reward
        self.next_states[i], self.terminals[i, 0] = next_state, float(terminal)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, size=min(batch_size, self.size))
        return tuple(torch.from_numpy(a[idx]) for a in
                     (self.states, self.actions, self.rewards, self.next_states, self.terminals))


#: One step of an episode: (state, action taken, next state, whether it was the last step).
Transition = tuple[np.ndarray, float, np.ndarray, bool]
#: How an episode picks its action from a state.
Policy = Callable[[np.ndarray], float]
#: A family's episode: ``play(policy, index, warmup) -> (transitions, reward)``.
Play = Callable[[Policy, int, bool], tuple[list[Transition], float]]


class DDPGAgent:
    """Actor-critic agent acting in [low, high], one action per layer of an episode of ``n_layers``.

    ``state_dim`` is the size of the family's state vector; ``n_layers`` sizes the replay
    memory (``config.replay_per_layer`` transitions per layer).
    """

    def __init__(self, state_dim: int, n_layers: int, low: float, high: float, config: DDPGConfig,
                 seed: int = 0) -> None:
        if not (np.isfinite(low) and np.isfinite(high) and low <= high):
            raise ValueError(f"the DDPG action bounds need low <= high (both finite), got low={low}, high={high}")
        if state_dim < 1 or n_layers < 1:
            raise ValueError(f"the DDPG agent needs state_dim >= 1 and n_layers >= 1, got {state_dim} and {n_layers}")
        self.config = config
        self.low, self.high = float(low), float(high)
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        self.actor, self.actor_target = Actor(state_dim, config.hidden), Actor(state_dim, config.hidden)
        self.critic, self.critic_target = Critic(state_dim, config.hidden), Critic(state_dim, config.hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_optim = torch.optim.Adam(self.actor.parameters(), lr=config.lr_actor)
        self.critic_optim = torch.optim.Adam(self.critic.parameters(), lr=config.lr_critic)
        self.memory = ReplayMemory(config.replay_per_layer * n_layers, state_dim)
        self.sigma = config.init_sigma
        self.reward_baseline: float | None = None

    # -- acting ---------------------------------------------------------------------------
    def _to_range(self, unit_action: float) -> float:
        return self.low + (self.high - self.low) * unit_action

    def _to_unit(self, action: float) -> float:
        span = self.high - self.low
        return 0.0 if span == 0 else (action - self.low) / span

    def greedy_action(self, state: np.ndarray) -> float:
        with torch.no_grad():
            return self._to_range(float(self.actor(torch.from_numpy(state[None].astype(np.float32)))[0, 0]))

    def random_action(self) -> float:
        """Warm-up: a uniform action over the whole range."""
        return float(self.rng.uniform(self.low, self.high))

    def explore_action(self, state: np.ndarray) -> float:
        """A sample of N(mu(s), sigma^2) truncated to [low, high]."""
        from scipy.stats import truncnorm  # here: building AMC/HAQ (and checking their config) needs no scipy

        mean = self.greedy_action(state)
        scale = max(self.sigma * (self.high - self.low), 1e-6)
        a, b = (self.low - mean) / scale, (self.high - mean) / scale
        return float(truncnorm.rvs(a, b, loc=mean, scale=scale, random_state=self.rng))

    def end_episode(self) -> None:
        """After a training (non warm-up) episode, exploration narrows."""
        self.sigma *= self.config.sigma_decay

    # -- learning ---------------------------------------------------------------------------
    def observe_episode(self, transitions: list[Transition], reward: float) -> float:
        """Store an episode's transitions, each with the episode's baseline-corrected reward."""
        if self.reward_baseline is None:
            self.reward_baseline = reward
        else:
            d = self.config.reward_baseline_decay
            self.reward_baseline = d * self.reward_baseline + (1 - d) * reward
        advantage = reward - self.reward_baseline
        for state, action, next_state, terminal in transitions:
            self.memory.append(state, self._to_unit(action), advantage, next_state, terminal)
        return advantage

    def update(self) -> tuple[float, float]:
        """One gradient step on critic and actor from a replay batch; soft target update."""
        cfg = self.config
        states, actions, rewards, next_states, terminals = self.memory.sample(cfg.batch_size, self.rng)
        with torch.no_grad():
            next_q = self.critic_target(next_states, self.actor_target(next_states))
            target_q = rewards + cfg.discount * (1.0 - terminals) * next_q
        critic_loss = nn.functional.mse_loss(self.critic(states, actions), target_q)
        self.critic_optim.zero_grad()
        critic_loss.backward()
        self.critic_optim.step()

        actor_loss = -self.critic(states, self.actor(states)).mean()
        self.actor_optim.zero_grad()
        actor_loss.backward()
        self.actor_optim.step()

        for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
            for p, tp_ in zip(net.parameters(), target.parameters(), strict=False):
                tp_.data.mul_(1 - cfg.tau).add_(cfg.tau * p.data)
        return critic_loss.item(), actor_loss.item()

    # -- the search loop ----------------------------------------------------------------------
    def search(self, play: Play, episodes: int, warmup_episodes: int) -> list[float]:
        """``warmup_episodes`` of uniform random actions, then ``episodes`` that explore and learn.

        After each learning episode the agent takes one update per transition and its
        exploration narrows (AMC's schedule). Returns every episode's reward; with
        ``episodes=0`` this is random search with the same evaluation.
        """
        if episodes < 0 or warmup_episodes < 0:
            raise ValueError(f"episodes and warm-up episodes must be >= 0, got {episodes} and {warmup_episodes}")
        rewards: list[float] = []
        # one bar instead of a line per episode (the per-episode line is the caller's, at debug level)
        progress = tqdm(range(warmup_episodes + episodes), desc="DDPG search", unit="episode", disable=None,
                        dynamic_ncols=True)
        for index in progress:
            warmup = index < warmup_episodes
            choose: Policy = (lambda _state: self.random_action()) if warmup else self.explore_action
            transitions, reward = play(choose, index, warmup)
            self.observe_episode(transitions, reward)
            if not warmup:
                for _ in transitions:
                    self.update()
                self.end_episode()
            rewards.append(reward)
            progress.set_postfix(best_reward=f"{max(rewards):.4f}", phase="warm-up" if warmup else "learning")
        progress.close()
        if rewards:
            best = int(np.argmax(rewards))
            log.info("[ddpg] %d episodes (%d warm-up): best reward %.4f at episode %d", len(rewards),
                     warmup_episodes, rewards[best], best)
        return rewards
