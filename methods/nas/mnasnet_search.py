"""MnasNet-style search: sampled architectures scored by accuracy x (latency / T)^w, by REINFORCE, TPE or NSGA-II.

Tan et al., "MnasNet: Platform-Aware Neural Architecture Search for Mobile" (CVPR 2019), Sec. 3:
a controller samples architectures of the space (:mod:`.space`) and is steered by the reward
R = ACC x (LAT / T)^w, w = alpha if LAT <= T else beta; the soft constraint alpha = beta = -0.07
(twice the latency is worth about 5 % relative accuracy), the hard one alpha = 0, beta = -1.
LAT comes from the run's own target through the cost table (:mod:`.costs`: each candidate asked
once); ``target`` (T) defaults to halfway between the cheapest and the dearest network of the space.
Controllers (``controller``): ``reinforce``, a per-block categorical policy trained by REINFORCE
with a moving-average baseline (ProxylessNAS-RL's form of MnasNet's controller); ``tpe``, Optuna's
TPE maximising R; ``nsga2``, Optuna's NSGA-II on (val accuracy max, cost min), whose Pareto front
(``study.best_trials``) is drawn. Every controller runs as an Optuna study in ``storage``, so a
search killed midway resumes where it stopped: finished candidates are kept and not re-evaluated
(the REINFORCE policy is rebuilt by replaying them in order). Records: every candidate
(``candidates.json``, and one child run each), the settings and the rerank (``search.json``), accuracy
against cost with the front and T (``search_candidates.png``), the search cost (``search_wall_s`` this
run, ``study_wall_s`` over every run of the study, ``candidates_evaluated``).

Departures, all said in the run (``search.json``): candidate accuracy is one-shot (ENAS, OFA), not
a proxy training per candidate: a supernet (:mod:`.supernet`) is trained once with one uniformly
sampled path per block and step, and each candidate runs its path on those shared weights with its
batch-norm statistics recomputed on a few training batches (OFA's recalibration); the ``top_k``
candidates by reward are then fine-tuned briefly from the supernet weights and the one with the best
reward after that fine-tuning is trained from scratch with the run's recipe. REINFORCE's baseline
is an explicit EMA, b <- decay b + (1 - decay) mean(R of the batch), started at the first batch's
mean (the authors' ``b += 0.99 (avg - b)`` barely smooths, method notes). PPO (MnasNet's) is not
used: plain REINFORCE over batches of ``reinforce.batch`` candidates.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.nas.costs import COST_KINDS, CostTable, mnasnet_reward, run_cost_table
from methods.nas.searched import record_search, store_searched
from methods.nas.space import Architecture, SearchSpace, Slot, SpaceConfig
from methods.nas.supernet import SampledPaths, SuperNet
from methods.reporting import save_figure, write_json

#: (alpha, beta) of the reward's exponent: soft and hard latency constraints (MnasNet Sec. 3)
CONSTRAINTS: dict[str, tuple[float, float]] = {"soft": (-0.07, -0.07), "hard": (0.0, -1.0)}
CONTROLLERS = ("reinforce", "tpe", "nsga2")
#: the trial user attribute each cost kind is logged under (with ``acc``, val top-1 in percent, and ``reward``)
COST_ATTR = {"latency": "lat", "flops": "flops"}


def reward(accuracy: float, cost: float, target: float, constraint: str) -> float:
    """MnasNet's R = ACC x (LAT/T)^w under the ``soft`` or ``hard`` constraint; ``accuracy`` as a fraction."""
    return mnasnet_reward(accuracy, cost, target, *CONSTRAINTS[constraint])


def block_param(slot: Slot) -> str:
    return f"block{slot.index}"


@dataclass
class ReinforceConfig:
    """``reinforce``: the policy's optimiser, batch and baseline."""

    lr: float = option(0.05, gt=0, why="Adam learning rate of the per-block logits")
    batch: int = option(5, ge=1, why="candidates per policy update (ProxylessNAS-RL: 10)")
    decay: float = option(0.95, ge=0, lt=1, why="baseline EMA: b <- decay*b + (1-decay)*mean reward of the batch")


@dataclass
class MnasSearchConfig:
    space: SpaceConfig = option(factory=SpaceConfig)
    cost: str = option("latency", choices=COST_KINDS, why="latency on the run's target, or MACs")
    constraint: str = option("soft", choices=tuple(CONSTRAINTS), why="soft: w=-0.07 both sides; hard: 0 below T, -1 above")
    target: float | None = option(None, gt=0, why="T in the cost's unit; null: halfway between the cheapest and dearest net")
    controller: str = option("reinforce", choices=CONTROLLERS)
    candidates: int = option(40, ge=1, why="finished candidates the study holds at the end (a rerun tops it up)")
    reinforce: ReinforceConfig = option(factory=ReinforceConfig)
    tpe_startup: int = option(10, ge=1, why="TPE's random candidates before it models")
    population: int = option(10, ge=2, why="NSGA-II's population size")
    supernet_epochs: float = option(2.0, gt=0, why="shared weights, one uniform path per block per step")
    calibration_batches: int = option(4, ge=0, why="training batches recomputing BN statistics per candidate "
                                                   "(0: the supernet's running statistics)")
    eval_batches: int | None = option(4, ge=1, why="val batches per candidate (null: the whole val split)")
    top_k: int = option(3, ge=0, why="best candidates by reward fine-tuned briefly before the choice (0: none)")
    rerank: FineTuning = option(factory=finetune_default(0.25))
    storage: str | None = option(None, why="an Optuna storage URL; null: sqlite beside the run folders")
    study_name: str | None = option(None, why="null: named after the search's settings, so the same search resumes")
    drop_rate: float = option(0.0, ge=0, lt=1, why="dropout before the derived net's classifier")
    finetune: FineTuning = option(factory=finetune_default(3.0))

    def check(self, key: str) -> None:
        if self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", "must be > 0: the derived network is trained from scratch")


class ReinforceSampler(optuna.samplers.BaseSampler):
    """A per-block categorical policy (one logit per op), trained by REINFORCE on the study's finished candidates.

    The policy is a function of the finished trials alone: before sampling, every complete batch of
    finished trials (by trial number) not yet learnt from updates it, so a resumed study rebuilds
    the same policy by replay. Sampling is seeded per trial number.
    """

    def __init__(self, slots: Sequence[Slot], config: ReinforceConfig, seed: int = 0) -> None:
        self.choices = {block_param(slot): slot.candidates for slot in slots}
        self.logits = {name: torch.zeros(len(ops), requires_grad=True) for name, ops in self.choices.items()}
        self.optimizer = torch.optim.Adam(list(self.logits.values()), lr=config.lr)
        self.config, self.seed = config, seed
        self.baseline: float | None = None
        self.learnt = 0
        self.history: list[dict[str, Any]] = []

    def probabilities(self) -> list[list[float]]:
        return [torch.softmax(logits.detach(), 0).tolist() for logits in self.logits.values()]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name not in self.logits or not isinstance(param_distribution, CategoricalDistribution):
            raise ValueError(f"ReinforceSampler samples the blocks {list(self.logits)}, not {param_name!r}")
        self.catch_up(study)
        p = torch.softmax(self.logits[param_name].detach(), 0).double().numpy()
        rng = np.random.default_rng([self.seed, trial.number, list(self.logits).index(param_name)])
        return self.choices[param_name][int(rng.choice(len(p), p=p / p.sum()))]

    def catch_up(self, study: optuna.Study) -> None:
        """Learn from every complete batch of finished trials not yet learnt from."""
        finished = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
        batch = self.config.batch
        while len(finished) - self.learnt >= batch:
            trials = finished[self.learnt:self.learnt + batch]
            self.update([{name: t.params[name] for name in self.logits} for t in trials],
                        [float(t.user_attrs["reward"]) for t in trials])
            self.learnt += batch

    def update(self, samples: Sequence[dict[str, str]], rewards: Sequence[float]) -> None:
        """One REINFORCE step: minimise -mean((R - b) log pi(arch)), then b <- decay b + (1 - decay) mean(R)."""
        mean = float(np.mean(rewards))
        baseline = mean if self.baseline is None else self.baseline
        loss = torch.zeros(())
        for sample, r in zip(samples, rewards, strict=True):
            log_pi = sum(torch.log_softmax(self.logits[name], 0)[self.choices[name].index(op)]
                         for name, op in sample.items())
            loss = loss - (r - baseline) * log_pi
        self.optimizer.zero_grad()
        (loss / len(samples)).backward()
        self.optimizer.step()
        self.baseline = self.config.decay * baseline + (1 - self.config.decay) * mean
        self.history.append({"update": len(self.history) + 1, "candidates": self.learnt + len(samples),
                             "mean_reward": mean, "baseline": self.baseline, "probabilities": self.probabilities()})


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """BN running statistics recomputed as the plain average over ``batches`` (OFA's ``set_running_statistics``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for inputs in batches:
        model(inputs.to(device))
    model.train(was_training)
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum


class OneShotEvaluator:
    """Val top-1 of a candidate on the supernet's shared weights: its path fixed, BN recalibrated."""

    def __init__(self, supernet: SuperNet, ctx: CompressionContext, calibration: list[torch.Tensor],
                 eval_batches: int | None) -> None:
        self.supernet, self.ctx, self.calibration, self.eval_batches = supernet, ctx, calibration, eval_batches
        self.evaluated = 0

    def __call__(self, arch: Architecture) -> float:
        self.evaluated += 1
        return self.score(self.supernet, arch)

    def score(self, net: SuperNet, arch: Architecture) -> float:
        """``arch``'s val top-1 on ``net`` (the supernet, or a copy of it fine-tuned on that path)."""
        net.fix(arch)
        if self.calibration:
            recalibrate_batch_norm(net, self.calibration)
        return float(self.ctx.evaluate(net, "val", max_batches=self.eval_batches)["top1"])


def _fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def fail_stale_trials(study: optuna.Study) -> int:
    """Trials left running by a killed search are marked failed (never counted, never learnt from).

    A study is searched by one process at a time: a second one would see the first's trial as stale.
    """
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
    return len(stale)


def plot_candidates(trials: list[FrozenTrial], front: list[FrozenTrial], chosen: FrozenTrial, cost_attr: str,
                    unit: str, target: float, path: Path) -> list[Path]:
    """Every candidate's one-shot accuracy against its cost, the Pareto front (NSGA-II), T and the choice."""

    def draw(ax: Any) -> None:
        points = ax.scatter([t.user_attrs[cost_attr] for t in trials], [t.user_attrs["acc"] for t in trials],
                            c=[t.number for t in trials], cmap="viridis", s=14)
        ax.figure.colorbar(points, ax=ax, label="trial")
        if front:
            ordered = sorted(front, key=lambda t: t.user_attrs[cost_attr])
            ax.plot([t.user_attrs[cost_attr] for t in ordered], [t.user_attrs["acc"] for t in ordered],
                    "r.-", label="Pareto front")
        ax.axvline(target, color="grey", ls="--", label=f"T = {target:.4g} {unit}")
        ax.scatter([chosen.user_attrs[cost_attr]], [chosen.user_attrs["acc"]], marker="*", s=160, c="red",
                   edgecolors="k", label="chosen", zorder=3)
        ax.set_xlabel(f"{cost_attr} ({unit}, cost table)")
        ax.set_ylabel("val top-1 (%, one-shot)")
        ax.legend(fontsize=7)

    return save_figure(path, (6.0, 4.0), draw, what="search")


class MnasNetSearch(CompressionMethod):
    """Sampled architectures scored by MnasNet's latency-aware reward on one-shot accuracies; the best trained."""

    name = "mnasnet_search"
    Config = MnasSearchConfig
    config: MnasSearchConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        c = self.config
        space = c.space.resolved()
        num_classes, in_chans = int(ctx.datamodule.num_classes), int(ctx.input_shape[1])
        started = time.perf_counter()
        study, table, target = self._open(space, num_classes, in_chans, ctx)
        sampler = study.sampler
        supernet = self._supernet(space, num_classes, in_chans, study, ctx)
        calibration = [x for x, _ in itertools.islice(ctx.datamodule.train_dataloader(), c.calibration_batches)]
        evaluate = OneShotEvaluator(supernet, ctx, calibration, c.eval_batches)
        before = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
        stale = fail_stale_trials(study)
        study.optimize(self._objective(space, table, target, evaluate, study), n_trials=max(c.candidates - before, 0))
        if isinstance(sampler, ReinforceSampler):
            sampler.catch_up(study)  # the policy after every finished batch, also when nothing was left to sample
        search_seconds = time.perf_counter() - started
        finished = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
        front = list(study.best_trials) if c.controller == "nsga2" else []
        reranking = time.perf_counter()
        reranked = self._rerank(front or finished, supernet, evaluate, table, target, space, ctx)
        rerank_seconds = time.perf_counter() - reranking
        chosen_trial, chosen = max(reranked, key=lambda pair: pair[1]["reward"])
        arch = _arch_of(space, chosen_trial)
        cost_attr, on_front = COST_ATTR[table.kind], {t.number for t in front}
        history = sampler.history if isinstance(sampler, ReinforceSampler) else None
        artifacts = record_search(ctx.workdir, arch, table, history)
        rows = [{"trial": t.number, "ops": list(_arch_of(space, t).ops), "acc": t.user_attrs["acc"],
                 cost_attr: t.user_attrs[cost_attr], "reward": t.user_attrs["reward"],
                 "pareto": t.number in on_front} for t in finished]
        artifacts.append(write_json(ctx.workdir / "candidates.json", rows))
        artifacts.append(write_json(ctx.workdir / "search.json", {
            "controller": c.controller, "constraint": c.constraint, "alpha_beta": CONSTRAINTS[c.constraint],
            "target": target, "unit": table.unit, "study": study.study_name, "storage": self._storage(ctx),
            "accuracy": (f"one-shot on shared supernet weights ({c.supernet_epochs} epochs, uniform single paths), "
                         f"BN recalibrated on {c.calibration_batches} training batches per candidate, "
                         f"val top-1 on {c.eval_batches or 'all'} batches"),
            "rerank": (f"top {c.top_k} by reward fine-tuned {c.rerank.epochs} epochs from the supernet weights, "
                       "chosen by reward with the fine-tuned accuracy; the chosen net trained from scratch "
                       f"({c.finetune.epochs} epochs, the run's recipe)"),
            "reranked": [{"trial": t.number, **r} for t, r in reranked], "chosen_trial": chosen_trial.number,
            "stale_trials_failed": stale}))
        artifacts += plot_candidates(finished, front, chosen_trial, cost_attr, table.unit, target,
                                     ctx.workdir / "search_candidates.png")
        metrics = {"search_wall_s": search_seconds, "study_wall_s": _study_seconds(study, finished),
                   "rerank_wall_s": rerank_seconds,
                   "candidates_evaluated": float(evaluate.evaluated),
                   "candidates_total": float(len(finished)), "candidates_resumed": float(before),
                   "target_cost": target, "pareto_size": float(len(front)),
                   "derived_oneshot_top1": chosen_trial.user_attrs["acc"], "derived_rerank_top1": chosen["acc"],
                   "derived_reward": chosen["reward"]}
        result = store_searched(arch, model, ctx, c.finetune, c.drop_rate, table, metrics, artifacts)
        result.candidates = [{"name": f"{study.study_name}-trial{row['trial']}",
                              "params": {"trial": row["trial"], "ops": " ".join(row["ops"]), "study": study.study_name},
                              "metrics": {"val_top1_oneshot": row["acc"], cost_attr: row[cost_attr],
                                          "reward": row["reward"], "pareto": float(row["pareto"])}} for row in rows]
        return result

    def _target(self, table: CostTable) -> float:
        if self.config.target is None:
            return sum(table.bounds()) / 2
        return table.reachable(self.config.target, "method.target")

    def _storage(self, ctx: CompressionContext) -> str:
        return self.config.storage or f"sqlite:///{ctx.workdir.parent.resolve() / 'nas_studies.db'}"

    def _settings(self, space: SearchSpace, ctx: CompressionContext) -> dict[str, Any]:
        """What the study's candidates depend on: a rerun resumes a study only with the same settings."""
        c = self.config
        return {"method": self.name, "space": space.as_dict(), "cost": c.cost, "hw": ctx.target.name,
                "data": getattr(ctx.datamodule, "checksum", "") or type(ctx.datamodule).__name__,
                "input_shape": list(ctx.input_shape), "seed": ctx.seed, "constraint": c.constraint, "target": c.target,
                "controller": c.controller, "supernet_epochs": c.supernet_epochs,
                "calibration_batches": c.calibration_batches, "eval_batches": c.eval_batches,
                "controller_settings": {"reinforce": asdict(c.reinforce), "tpe": {"startup": c.tpe_startup},
                                        "nsga2": {"population": c.population}}[c.controller]}

    def _open(self, space: SearchSpace, num_classes: int, in_chans: int,
              ctx: CompressionContext) -> tuple[optuna.Study, CostTable, float]:
        """The search's study (resumed when the storage holds it), the cost table it priced with, and T.

        A new study asks the target for the table and keeps it, so a resumed search (a measured
        target too) prices and resolves T exactly as before; an impossible T is refused before any
        study is written.
        """
        c = self.config
        settings = json.loads(json.dumps(self._settings(space, ctx), default=str))
        name = c.study_name or f"{self.name}-{c.controller}-{_fingerprint(settings)}"
        try:
            study: optuna.Study | None = optuna.load_study(study_name=name, storage=self._storage(ctx),
                                                           sampler=optuna.samplers.RandomSampler())
        except KeyError:
            study = None
        held = study.user_attrs if study is not None else {}
        if "settings" in held and _fingerprint(held["settings"]) != _fingerprint(settings):
            changed = sorted(k for k in settings | held["settings"]
                             if json.dumps(settings.get(k)) != json.dumps(held["settings"].get(k)))
            fail("method.study_name", f"{name!r} holds a search with other settings (differing: {changed}); "
                                      "choose another study_name (or null) to start a new search")
        table = (CostTable(**held["cost_table"]) if "cost_table" in held else
                 run_cost_table(space, c.cost, ctx))
        target = self._target(table)
        if study is None:
            directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] if c.controller == "nsga2" \
                else [StudyDirection.MAXIMIZE]
            study = optuna.create_study(storage=self._storage(ctx), study_name=name, directions=directions,
                                        sampler=optuna.samplers.RandomSampler(), load_if_exists=True)
        if "cost_table" not in held:
            study.set_user_attr("settings", settings)
            study.set_user_attr("cost_table", asdict(table))
        # a resumed search continues with fresh random numbers (not the first run's proposals again)
        seed = ctx.seed + len(study.get_trials(deepcopy=False))
        if c.controller == "reinforce":
            study.sampler = ReinforceSampler(space.slots(), c.reinforce, ctx.seed)  # seeded per trial number
        elif c.controller == "tpe":
            study.sampler = optuna.samplers.TPESampler(n_startup_trials=c.tpe_startup, seed=seed)
        else:
            study.sampler = optuna.samplers.NSGAIISampler(population_size=c.population, seed=seed)
        return study, table, target

    def _supernet(self, space: SearchSpace, num_classes: int, in_chans: int, study: optuna.Study,
                  ctx: CompressionContext) -> SuperNet:
        """The shared weights: trained once per study, reloaded from the study's file when it resumes."""
        torch.manual_seed(ctx.seed)
        supernet = SuperNet(space, num_classes, in_chans)
        with torch.no_grad():
            for alpha in supernet.arch_parameters():
                alpha.zero_().requires_grad_(False)  # uniform p, and the weight optimiser never sees them
        saved = Path(study.user_attrs.get("supernet_file", ""))
        if saved.is_file():
            supernet.load_state_dict(torch.load(saved, weights_only=True))
            return supernet
        started = time.perf_counter()
        ctx.finetune(supernet, self.config.supernet_epochs,
                     hooks=[SampledPaths(supernet, torch.Generator().manual_seed(ctx.seed))])
        path = ctx.workdir / "supernet.pt"
        torch.save(supernet.state_dict(), path)
        study.set_user_attr("supernet_file", str(path.resolve()))
        study.set_user_attr("supernet_wall_s", time.perf_counter() - started)
        return supernet

    def _objective(self, space: SearchSpace, table: CostTable, target: float, evaluate: OneShotEvaluator,
                   study: optuna.Study) -> Callable[[optuna.Trial], float | tuple[float, float]]:
        """One candidate: its ops from the controller, its one-shot accuracy (reused for a repeat), cost and reward."""
        c, slots, cost_attr = self.config, space.slots(), COST_ATTR[table.kind]
        known = {tuple(_arch_of(space, t).ops): t.user_attrs["acc"]
                 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

        def objective(trial: optuna.Trial) -> float | tuple[float, float]:
            arch = Architecture(space, tuple(trial.suggest_categorical(block_param(s), s.candidates) for s in slots))
            if arch.ops not in known:
                known[arch.ops] = evaluate(arch)
            acc, cost = known[arch.ops], table.of(arch)
            r = reward(acc / 100, cost, target, c.constraint)
            for key, value in (("acc", acc), (cost_attr, cost), ("reward", r)):
                trial.set_user_attr(key, value)
            return (acc, cost) if c.controller == "nsga2" else r

        return objective

    def _rerank(self, pool: list[FrozenTrial], supernet: SuperNet, evaluate: OneShotEvaluator, table: CostTable,
                target: float, space: SearchSpace, ctx: CompressionContext) -> list[tuple[FrozenTrial, dict[str, float]]]:
        """The ``top_k`` of ``pool`` by reward, each fine-tuned briefly from the supernet weights and rescored."""
        c = self.config
        ranked = sorted(pool, key=lambda t: t.user_attrs["reward"], reverse=True)
        if c.top_k == 0:
            return [(ranked[0], {"acc": ranked[0].user_attrs["acc"], "reward": ranked[0].user_attrs["reward"]})]
        rescored = []
        for trial in ranked[:c.top_k]:
            arch = _arch_of(space, trial)
            net = copy.deepcopy(supernet)
            net.fix(arch)
            ctx.finetune(net, c.rerank.epochs, lr=c.rerank.lr)
            acc = evaluate.score(net, arch)
            rescored.append((trial, {"acc": acc, "reward": reward(acc / 100, table.of(arch), target, c.constraint)}))
        return rescored


def _study_seconds(study: optuna.Study, finished: list[FrozenTrial]) -> float:
    """The search cost over every run of the study: the supernet's training plus each finished candidate."""
    candidates = sum(t.duration.total_seconds() for t in finished if t.duration is not None)
    return float(study.user_attrs.get("supernet_wall_s", 0.0)) + candidates


def _arch_of(space: SearchSpace, trial: FrozenTrial) -> Architecture:
    return Architecture(space, tuple(trial.params[block_param(slot)] for slot in space.slots()))

