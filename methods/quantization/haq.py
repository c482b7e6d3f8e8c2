"""HAQ: Hardware-Aware Automated Quantization with mixed precision (Wang, Liu, Lin, Lin, Han; CVPR 2019).

Also section 4 of Han et al., "Design Automation for Efficient Deep Learning Computing"
(../shared/papers/han2019-design-automation-amc-haq-proxylessnas.md); details from the
authors' code as summarised in ../shared/reference/method-notes/haq.md.

- Agent (Sec. 3.1-3.2): DDPG, shared with AMC (:mod:`methods.search.ddpg`); it acts in [0, 1]
  and the action maps onto bits as the reference does, ``round((b_max - b_min + 1) a + b_min - 0.5)``.
  Warm-up episodes act uniformly at random; exploration is a truncated normal whose sigma
  decays per episode (``ddpg.sigma_decay``, the reference's 0.99).
- State (Sec. 3.1): per step ``(k, c_in, c_out, s_kernel, s_stride, s_feat, n_params, i_dw,
  i_w/a, a_{k-1})``, the first eight min-max normalised across layers, the flag 1 for a
  weight step, the previous action in [0, 1].
- Modes (Sec. 3.3, 4): ``linear``: two steps per layer, weight bits then activation bits,
  fake-quantized layers of the quantizer registry as QAT uses them (:mod:`.qat`); ``kmeans``:
  one step per layer, weight-only k-means weight sharing (:mod:`.kmeans`'s codebooks).
- Constraint (Sec. 3.3): the run's hardware target through :mod:`methods.search.resource`:
  ``latency`` or ``energy`` of the policy on a target that costs per-layer bits (the
  rooflines: ``bitfusion``, ``zynq7020``, ``vu9p``), or ``size`` (bytes of the weights).
  The budget is ``target_ratio`` x the cost of the reference model: every searched layer at
  ``bits``/``act_bits`` in linear mode (the reference's ``float_bit`` 8), the float32 model
  in k-means mode (its preserve ratio is against fp32). After each episode the bits are
  lowered from the last layer backwards, activation then weight, one bit at a time, until the
  budget holds (the reference's ``_final_action_wall``): every evaluated policy meets it.
- Reward (Sec. 3.4): ``reward_scale x (top-1 - top-1 of the float model)`` in percent points
  (the reference's 0.1), after a short fine-tuning (``reward_finetune``) on validation
  batches (``reward_batches``); the best policy is fine-tuned with the run's recipe
  (``finetune``: QAT in linear mode, centroid fine-tuning in k-means mode), stored, decoded.

Departures: the reward is validation top-1 (the reference rewards running *training*
accuracy, pitfalls in the notes); the first and last layers are searched like the others
unless ``layer_bits`` pins them (the reference re-pins them to 8 bits inside the wall);
``layer_bits`` holds any layer at fixed widths outside the search. A policy already scored is
not fine-tuned again (its reward is reused), which changes nothing but the time.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, fail, finetune_default, option, select_layers
from methods.quantization.kmeans import INITS, KMeansQuantization, SharingConfig, share_weights
from methods.quantization.ptq import (
    calibration_inputs,
    check_bits,
    check_quantizer,
    quantize_for_inference,
    store_and_decode,
)
from methods.quantization.qat import QATConfig
from methods.reporting import plot_layer_bits, write_json
from methods.search.ddpg import DDPGAgent, DDPGConfig, Policy, Transition
from methods.search.resource import Resource, make_resource
from methods.search.threads import search_threads

log = logging.getLogger(__name__)

MODES = ("linear", "kmeans")
#: the costs that depend on bit-widths (MACs do not)
BIT_RESOURCES = ("latency", "energy", "size")
#: layer name -> [weight bits, activation bits]; 32 = float
Bits = dict[str, list[int]]


def haq_ddpg() -> DDPGConfig:
    """The reference's agent: AMC's, with sigma x 0.99 per episode and 128 transitions per step in memory."""
    return DDPGConfig(sigma_decay=0.99, replay_per_layer=128, reward_baseline_decay=0.5)


@dataclass
class HAQConfig(QATConfig):
    """conf/method/haq.yaml: QAT's keys (the final fine-tuning, the quantizers; ``bits``/``act_bits`` the
    reference precision of the budget, ``layer_bits`` the layers held outside the search) and the search's."""

    mode: str = option("linear", choices=MODES)
    resource: str = option("latency", choices=BIT_RESOURCES)
    target_ratio: float = option(0.6, gt=0, le=1, why="a fraction of the reference model's cost")
    b_min: int = option(2, ge=1, le=8, why="bit-widths the agent chooses from")
    b_max: int = option(8, ge=1, le=8, why="bit-widths the agent chooses from")
    episodes: int = option(60, ge=0)
    warmup_episodes: int = option(20, ge=0)
    reward_finetune: FineTuning = option(factory=finetune_default(0.1, 0.001))
    reward_batches: int | None = option(4, ge=1, why="null: the whole validation split")
    reward_scale: float = option(0.1, gt=0)
    kmeans_init: str = option("linear", choices=INITS)
    kmeans_iterations: int = option(300, ge=1)
    search_threads: int | None = option(1, ge=1, why="null: torch's threads unchanged")
    ddpg: DDPGConfig = option(factory=haq_ddpg)

    def check(self, key: str) -> None:
        super().check(key)
        if self.b_min > self.b_max:
            fail(f"{key}.b_min", f"({self.b_min}) must not exceed {key}.b_max ({self.b_max})")
        if self.episodes + self.warmup_episodes < 1:
            fail(f"{key}.episodes", "plus warmup_episodes must be >= 1: the search needs one episode")
        if self.mode == "linear":
            weights = check_quantizer(self.weight_quantizer, "weight", f"{key}.weight_quantizer")
            acts = check_quantizer(self.act_quantizer, "act", f"{key}.act_quantizer")
            for name in ("b_min", "b_max"):
                check_bits(getattr(self, name), f"{key}.{name}", weights, self.symmetric)
                check_bits(getattr(self, name), f"{key}.{name}", acts, self.act_symmetric)

    def to_bits(self, action: float) -> int:
        """The reference's mapping of an action in [0, 1] onto [b_min, b_max]."""
        bits = int(np.round((self.b_max - self.b_min + 1) * action + self.b_min - 0.5))
        return int(np.clip(bits, self.b_min, self.b_max))


@dataclass
class Episode:
    """One walk over the layers: its policy after the wall, cost and reward."""

    index: int
    warmup: bool
    bits: Bits
    cost: float
    cost_ratio: float
    top1: float
    reward: float


class HAQEnvironment:
    """Chooses per-layer bits layer by layer; lowers them into the budget; scores a policy."""

    def __init__(self, model: nn.Module, ctx: CompressionContext, config: HAQConfig, resource: Resource) -> None:
        self.model, self.ctx, self.config, self.resource = model, ctx, config, resource
        linear = config.mode == "linear"
        self.roles = ("weight", "act") if linear else ("weight",)
        selected = list(select_layers(model, (1, *tuple(ctx.input_shape)[1:]), config.layers))
        unknown = sorted(set(config.layer_bits) - set(selected))
        if unknown:
            raise MethodConfigError(f"method.layer_bits names {unknown}, which are not quantized layers; "
                                    f"those are {selected}")
        self.pinned: Bits = {n: [int(w), int(a) if linear else 32] for n, (w, a) in config.layer_bits.items()}
        self.layers = [n for n in selected if n not in self.pinned]
        if not self.layers:
            raise MethodConfigError("method.layer_bits pins every quantized layer: nothing is left to search")
        specs = {spec.name: spec for spec in resource.layers(model)}
        self.static = self._static_features([specs[n] for n in self.layers])
        self.calibration = calibration_inputs(ctx.datamodule, config.calibration_batches) if linear else []
        if linear:
            self.reference = resource(model, self.full({n: [config.bits, config.act_width] for n in self.layers}))
        else:
            self.reference = resource(model)
        self.budget = config.target_ratio * self.reference
        self._check_budget()
        self.base_top1 = float(ctx.evaluate(model, "val", config.reward_batches)["top1"])
        self._scores: dict[tuple, tuple[float, float]] = {}

    # -- policies and their cost -------------------------------------------------------------
    def uniform(self, bits: int) -> Bits:
        return {n: [bits, bits if len(self.roles) == 2 else 32] for n in self.layers}

    def full(self, bits: Bits) -> dict[str, tuple[int, int]]:
        """The searched layers' bits with the pinned layers': what the stored model will have."""
        return {n: (int(w), int(a)) for n, (w, a) in {**bits, **self.pinned}.items()}

    def cost(self, bits: Bits) -> float:
        return self.resource(self.model, self.full(bits))

    def _check_budget(self) -> None:
        c, unit, kind = self.config, self.resource.unit, self.resource.kind
        target = getattr(self.resource, "target", None)
        if target is not None and target.source == "measured":
            raise MethodConfigError(
                f"method.resource={kind}: hw {target.name!r} is measured and runs the float kernels whatever the "
                "bit-widths; use a target that costs per-layer bits (+hw=bitfusion, zynq7020, vu9p) or "
                "method.resource=size")
        floor, top = self.cost(self.uniform(c.b_min)), self.cost(self.uniform(c.b_max))
        if kind != "size" and not floor < top:
            name = target.name if target is not None else "?"
            raise MethodConfigError(
                f"method.resource={kind}: hw {name!r} does not model bit-widths ({floor:.4g} {unit} at "
                f"method.b_min={c.b_min} bits, {top:.4g} at b_max={c.b_max}); use a target that does "
                "(+hw=bitfusion, zynq7020, vu9p) or method.resource=size")
        if floor > self.budget:
            raise MethodConfigError(
                f"method.target_ratio={c.target_ratio}: unreachable. Every searched layer at method.b_min={c.b_min} "
                f"bits still costs {floor:.4g} {unit} = {floor / self.reference:.3f} of the reference "
                f"{self.reference:.4g} ({kind}); raise target_ratio or lower b_min")

    def wall(self, bits: Bits) -> Bits:
        """Lower bits from the last layer backwards (activation, then weight) until the budget holds."""
        bits = {n: list(v) for n, v in bits.items()}
        b_min = self.config.b_min
        while self.cost(bits) > self.budget:
            for name in reversed(self.layers):
                for role in reversed(range(len(self.roles))):
                    if bits[name][role] > b_min:
                        bits[name][role] -= 1
                        if self.cost(bits) <= self.budget:
                            return bits
        return bits

    # -- the state (Sec. 3.1) ------------------------------------------------------------------
    @staticmethod
    def _static_features(specs: list) -> np.ndarray:
        rows = [[k, s.in_channels, s.out_channels, s.kernel[0], s.stride[0],
                 int(np.prod(s.input_shape[2:])) if len(s.input_shape) > 2 else 1, s.params, float(s.op == "dwconv")]
                for k, s in enumerate(specs)]
        feats = np.asarray(rows, dtype=np.float64)
        low, high = feats.min(axis=0), feats.max(axis=0)
        return ((feats - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)

    @property
    def state_dim(self) -> int:
        return self.static.shape[1] + 2

    @property
    def steps(self) -> int:
        return len(self.layers) * len(self.roles)

    def state(self, step: int, previous: float) -> np.ndarray:
        layer, role = divmod(step, len(self.roles))
        return np.concatenate([self.static[layer], np.asarray([float(role == 0), previous], dtype=np.float32)])

    def run_episode(self, choose: Policy) -> tuple[Bits, list[Transition]]:
        """Walk the steps; ``choose(state) -> action in [0, 1]``; the policy is walled into the budget."""
        chosen: list[int] = []
        transitions: list[Transition] = []
        state = self.state(0, 1.0)
        for step in range(self.steps):
            action = float(np.clip(choose(state), 0.0, 1.0))
            chosen.append(self.config.to_bits(action))
            last = step == self.steps - 1
            next_state = state if last else self.state(step + 1, action)
            transitions.append((state, action, next_state, last))
            state = next_state
        per_layer = np.asarray(chosen).reshape(len(self.layers), len(self.roles)).tolist()
        bits = {n: (b if len(b) == 2 else [b[0], 32]) for n, b in zip(self.layers, per_layer, strict=True)}
        return self.wall(bits), transitions

    # -- the reward (Sec. 3.4) -----------------------------------------------------------------
    def score(self, bits: Bits) -> tuple[float, float]:
        """(reward, top-1) of a policy after the short fine-tuning, on ``reward_batches`` validation batches."""
        key = tuple(sorted((n, tuple(b)) for n, b in bits.items()))
        if key not in self._scores:
            quantized = self.quantized(bits, self.config.reward_finetune)
            top1 = float(self.ctx.evaluate(quantized, "val", self.config.reward_batches)["top1"])
            self._scores[key] = (self.config.reward_scale * (top1 - self.base_top1), top1)
        return self._scores[key]

    def quantized(self, bits: Bits, training: FineTuning) -> nn.Module:
        """The model at ``bits`` (fake-quantized or weight-shared), fine-tuned by ``training``."""
        c = self.config
        if c.mode == "kmeans":
            shared = copy.deepcopy(self.model)
            share_weights(shared, self.sharing(bits, training), self.ctx)
            return shared.eval()
        model, _, _ = quantize_for_inference(self.model, dataclasses.replace(c, layer_bits=self.full(bits)),
                                             self.calibration, ema=c.ema)
        if training.epochs > 0:
            self.ctx.finetune(model, training.epochs, lr=training.lr)
        return model.eval()  # fixed activation ranges for the reward, as the stored model has

    def sharing(self, bits: Bits, training: FineTuning) -> SharingConfig:
        c = self.config
        return SharingConfig(bits=c.b_max, bits_per_layer={n: w for n, (w, _) in self.full(bits).items()},
                             init=c.kmeans_init, max_iterations=c.kmeans_iterations, finetune=training, layers=c.layers)

    def kinds(self) -> dict[str, str]:
        """Each layer of the policy, in forward order, with its kind for the chart (depthwise, pointwise, ...)."""
        specs = self.resource.layers(self.model)
        return {s.name: layer_kind(s) for s in specs if s.name in self.pinned or s.name in self.layers}


def layer_kind(spec: Any) -> str:
    """``depthwise``, ``pointwise`` (1x1 conv), ``conv`` or ``linear``: the kinds the paper's charts tell apart."""
    if spec.op == "dwconv":
        return "depthwise"
    return "pointwise" if spec.op == "conv" and tuple(spec.kernel) == (1, 1) else spec.op


class HAQ(CompressionMethod):
    """HAQ: DDPG-searched per-layer bit-widths under the hardware target's latency, energy or size budget."""

    name = "haq"
    Config = HAQConfig
    config: HAQConfig

    def environment(self, model: nn.Module, ctx: CompressionContext) -> HAQEnvironment:
        return HAQEnvironment(model, ctx, self.config, make_resource(self.config.resource, ctx.target, ctx.input_shape))

    def search_policy(self, env: HAQEnvironment, seed: int) -> list[Episode]:
        """Play ``warmup_episodes`` random and ``episodes`` learning episodes; every episode, in order."""
        agent = DDPGAgent(env.state_dim, env.steps, 0.0, 1.0, self.config.ddpg, seed=seed)
        history: list[Episode] = []

        def play(choose: Policy, index: int, warmup: bool) -> tuple[list[Transition], float]:
            bits, transitions = env.run_episode(choose)
            reward, top1 = env.score(bits)
            cost = env.cost(bits)
            history.append(Episode(index, warmup, bits, cost, cost / env.reference, top1, reward))
            log.debug("[haq] episode %d%s: reward %.4f top-1 %.2f %s %.3f of the reference", index,
                      " (warm-up)" if warmup else "", reward, top1, env.resource.kind, cost / env.reference)
            return transitions, reward

        agent.search(play, self.config.episodes, self.config.warmup_episodes)
        return history

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        start = time.perf_counter()
        with search_threads(self.config.search_threads):
            env = self.environment(model, ctx)
            history = self.search_policy(env, ctx.seed)
        search_seconds = time.perf_counter() - start
        best = max(history, key=lambda e: e.reward)
        result = self._final(model, ctx, env, best)
        final_cost = env.resource(result.model, result.layer_bits)
        budget_met = final_cost <= env.budget * (1 + 1e-9)
        if not budget_met:  # the stored widths are the policy's: a target whose answer changed between queries
            log.warning("[haq] final %s %.4g exceeds the budget %.4g", env.resource.kind, final_cost, env.budget)
        policy = {
            "method": self.name, "mode": self.config.mode, "resource": env.resource.describe(),
            "target_ratio": self.config.target_ratio, "reference_cost": env.reference, "budget": env.budget,
            "final_cost": final_cost, "final_cost_ratio": final_cost / env.reference, "budget_met": budget_met,
            "b_min": self.config.b_min, "b_max": self.config.b_max, "float_top1": env.base_top1,
            "best_episode": best.index, "best_reward": best.reward, "search_top1": best.top1,
            "layer_bits": {n: list(b) for n, b in result.layer_bits.items()}, "kinds": env.kinds(),
            "pinned": list(env.pinned), "history": [dataclasses.asdict(e) for e in history],
        }
        result.artifacts.append(write_json(ctx.workdir / "haq_policy.json", policy))
        title = (f"HAQ ({self.config.mode}) on {env.resource.describe().get('hw', '')}: {env.resource.kind} "
                 f"{final_cost / env.reference:.2f}x of the reference")
        shown = {n: result.layer_bits[n] for n in env.kinds()}
        result.artifacts += plot_layer_bits(shown, env.kinds(), ctx.workdir / "haq_policy.png", title)
        result.metrics.update({
            "search_seconds": search_seconds, "search_episodes": float(len(history)), "best_reward": best.reward,
            "search_top1": best.top1, f"{env.resource.kind}_ratio": final_cost / env.reference,
            "budget_met": float(budget_met), "resource_queries": float(env.resource.queries),
        })
        return result

    def _final(self, model: nn.Module, ctx: CompressionContext, env: HAQEnvironment, best: Episode) -> CompressionResult:
        """The best policy fine-tuned with the run's recipe, stored and decoded (QAT's or k-means' file)."""
        c = self.config
        if c.mode == "kmeans":
            sharing = env.sharing(best.bits, c.finetune)
            options: dict[str, Any] = {**dataclasses.asdict(sharing), "layers": dataclasses.asdict(c.layers)}
            return KMeansQuantization(**options).compress(model, ctx)
        config = dataclasses.replace(c, layer_bits=env.full(best.bits))
        quantized, plan, folded = quantize_for_inference(model, config, env.calibration, ema=c.ema)
        before = ctx.evaluate(quantized, "val")
        ctx.finetune(quantized, c.finetune.epochs, lr=c.finetune.lr)
        quantized.eval()
        return store_and_decode(self.name, quantized, model, plan, folded, config, ctx, env.calibration,
                                {"val_top1_before_finetune": before["top1"]})
