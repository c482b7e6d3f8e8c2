"""Regularized (aging) evolution over the NAS space, each child starting from its parent's weights by network morphism.

Real, Aggarwal, Huang and Le, "Regularized Evolution for Image Classifier Architecture Search" (AAAI
2019), Alg. 1: a population of P trained individuals; every cycle draws S of them (with replacement),
the fittest of the sample is the parent, its mutated child is trained and joins, and the OLDEST member
dies, not the worst, so every individual lives P cycles and a lucky evaluation cannot rule for ever.
A mutation changes one block's op (:mod:`.morphism`: the type uniformly among those that apply, then
the block); the child is built from its parent's weights (Net2Net / network morphism, the survey's
morphism methods): exactly its parent's function after grow_kernel, widen and deepen, the weights that
fit after shrink_kernel, narrow and remove. It trains ``child_epochs`` from there (Real et al. train
every child from scratch, ``children: scratch``, the ablation; inheriting is what makes a CPU search
affordable, as in EAS and NASH).
Fitness is val top-1, times MnasNet's latency factor (Tan et al., CVPR 2019, Eq. 2) (LAT/T)^w, w =
``alpha`` where LAT <= T and ``beta`` above, when ``reward.target`` (T) is set; LAT is the cost table's
price of the architecture (each candidate asked of the run's target once, :mod:`.costs`).

The initial population (``initial``): ``smallest`` is the smallest network (every block the smallest op,
or zero where the block may be skipped) trained ``seed_epochs``, with P - 1 one-mutation children of
it; ``random`` is P random architectures trained ``seed_epochs`` from scratch (Real et al.'s). The result
is the fittest individual ever evaluated (on val, never test): trained from scratch with the run's
recipe (``final: scratch``, as Real et al. retrain their best) or trained on from the weights the search
gave it (``inherit``).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.nas.costs import COST_KINDS, CostTable, mnasnet_reward, run_cost_table
from methods.nas.morphism import MUTATIONS, applicable, morph, mutate
from methods.nas.searched import record_search, store_searched
from methods.nas.space import ZERO, Architecture, SearchedNet, SearchSpace, SpaceConfig, op_name
from methods.reporting import save_figure, write_json

INITIAL = ("smallest", "random")
CHILDREN = ("morphism", "scratch")
FINAL = ("scratch", "inherit")
T = TypeVar("T")


@dataclass
class RewardConfig:
    """``reward``: MnasNet's ACC x (LAT/T)^w; soft constraint alpha = beta = -0.07, hard alpha = 0, beta = -1."""

    target: float | None = option(None, gt=0, why="T in the cost's unit (ms or MACs); null: fitness is accuracy alone")
    alpha: float = option(-0.07, le=0, why="w where the cost is within T")
    beta: float = option(-0.07, le=0, why="w where the cost exceeds T")


@dataclass
class EvolutionConfig:
    space: SpaceConfig = option(factory=SpaceConfig)
    cost: str = option("latency", choices=COST_KINDS, why="latency on the run's target, or MACs")
    reward: RewardConfig = option(factory=RewardConfig)
    population: int = option(8, ge=2, why="P: individuals alive at once (each lives P cycles)")
    sample: int = option(3, ge=1, why="S: individuals drawn per cycle; the fittest is the parent")
    cycles: int = option(16, ge=0, why="C: children bred, trained and evaluated")
    initial: str = option("smallest", choices=INITIAL)
    mutations: list[str] = option(factory=lambda: list(MUTATIONS), choices=tuple(MUTATIONS))
    children: str = option("morphism", choices=CHILDREN,
                           why="a child starts from its parent's weights, or from scratch (Real et al.'s; the ablation)")
    noise: float = option(0.0, ge=0, why="deepen: std of the new block's projection BN scale (0: exactly preserving)")
    seed_epochs: float = option(1.0, gt=0, why="training of each individual of the initial population built from scratch")
    child_epochs: float = option(0.25, gt=0, why="training of each child from its inherited weights")
    eval_batches: int | None = option(None, ge=1, why="val batches per fitness (null: the whole val split)")
    final: str = option("scratch", choices=FINAL, why="the best trained from scratch, or on from its search weights")
    drop_rate: float = option(0.0, ge=0, lt=1, why="dropout before the classifier")
    finetune: FineTuning = option(factory=finetune_default(3.0))

    def check(self, key: str) -> None:
        if not self.mutations:
            fail(f"{key}.mutations", f"is empty: give at least one of {list(MUTATIONS)}")
        if self.sample > self.population:
            fail(f"{key}.sample", f"is {self.sample}, more than the population ({self.population}): lower it")
        if self.final == "scratch" and self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", "must be > 0 with final: scratch (the best is trained from scratch)")


def fitness_of(accuracy: float, cost: float, reward: RewardConfig) -> float:
    """Val top-1 times MnasNet's latency factor; accuracy alone without a target."""
    if reward.target is None:
        return accuracy
    return mnasnet_reward(accuracy, cost, reward.target, reward.alpha, reward.beta)


def aging_evolution(population: Sequence[T], cycles: int, sample: int, fitness: Callable[[T], float],
                    breed: Callable[[T, int], T], died: Callable[[T, int], None], rng: random.Random) -> list[T]:
    """Real et al.'s Alg. 1 from a trained ``population`` (oldest first); returns the children in birth order."""
    alive = deque(population)
    children = []
    for cycle in range(1, cycles + 1):
        parent = max((rng.choice(alive) for _ in range(sample)), key=fitness)
        child = breed(parent, cycle)
        alive.append(child)
        children.append(child)
        died(alive.popleft(), cycle)
    return children


@dataclass
class Individual:
    """An architecture, its trained network (while it may still be needed) and what the search learnt of it."""

    id: int
    arch: Architecture
    born: int
    net: SearchedNet | None = field(default=None, repr=False)
    parent: int | None = None
    mutation: str | None = None
    block: int | None = None
    preserving: bool | None = None
    birth_top1: float | None = None  # the child's weights (inherited or fresh) on val, before its training
    top1: float = 0.0
    cost: float = 0.0
    fitness: float = 0.0
    died: int | None = None

    def record(self, cycles: int) -> dict[str, Any]:
        return {"id": self.id, "ops": list(self.arch.ops), "parent": self.parent, "mutation": self.mutation,
                "block": self.block, "preserving": self.preserving, "born": self.born, "died": self.died,
                "age": (cycles if self.died is None else self.died) - self.born, "birth_top1": self.birth_top1,
                "val_top1": self.top1, "cost": self.cost, "fitness": self.fitness}


def smallest(space: SearchSpace) -> Architecture:
    """Every block the smallest op, or skipped where it may be."""
    small = op_name(min(space.kernels), min(space.expansions))
    return Architecture(space, tuple(ZERO if ZERO in s.candidates else small for s in space.slots()))


class Search:
    """One evolution: trains and scores individuals, breeds children by morphism, keeps the fittest."""

    def __init__(self, config: EvolutionConfig, ctx: CompressionContext, table: CostTable, rng: random.Random) -> None:
        self.config, self.ctx, self.table, self.rng = config, ctx, table, rng
        self.generator = torch.Generator().manual_seed(ctx.seed)
        self.individuals: list[Individual] = []
        self.best: Individual | None = None
        self.epochs = 0.0

    def fresh(self, arch: Architecture) -> SearchedNet:
        return SearchedNet(arch, int(self.ctx.datamodule.num_classes), int(self.ctx.input_shape[1]),
                           self.config.drop_rate)

    def top1(self, net: nn.Module) -> float:
        return float(self.ctx.evaluate(net, "val", max_batches=self.config.eval_batches)["top1"])

    def train(self, individual: Individual, net: SearchedNet, epochs: float) -> Individual:
        self.ctx.finetune(net, epochs)
        self.epochs += epochs
        individual.net, individual.top1 = net, self.top1(net)
        individual.cost = self.table.of(individual.arch)
        individual.fitness = fitness_of(individual.top1, individual.cost, self.config.reward)
        self.individuals.append(individual)
        if self.best is None or individual.fitness > self.best.fitness:
            if self.best is not None and self.best.died is not None:
                self.best.net = None
            self.best = individual
        return individual

    def initial(self, space: SearchSpace) -> list[Individual]:
        c = self.config
        if c.initial == "random":
            archs = [Architecture(space, tuple(self.rng.choice(s.candidates) for s in space.slots()))
                     for _ in range(c.population)]
            return [self.train(Individual(i, arch, 0), self.fresh(arch), c.seed_epochs) for i, arch in enumerate(archs)]
        seed = smallest(space)
        founder = self.train(Individual(0, seed, 0), self.fresh(seed), c.seed_epochs)
        return [founder, *(self.breed(founder, 0) for _ in range(c.population - 1))]

    def breed(self, parent: Individual, cycle: int) -> Individual:
        """A child of ``parent`` by one random mutation, built from its weights, trained ``child_epochs``."""
        assert parent.net is not None
        choices = applicable(parent.arch, self.config.mutations)
        if not choices:
            fail("method.mutations", f"{self.config.mutations} cannot change {list(parent.arch.ops)}: "
                                     f"allow more of {list(MUTATIONS)}")
        name = self.rng.choice(sorted(choices))
        block = self.rng.choice(choices[name])
        arch = mutate(parent.arch, name, block)
        preserving = None
        if self.config.children == "scratch":
            net = self.fresh(arch)
        else:
            net, transfers = morph(parent.net, arch, self.config.noise, self.generator)
            preserving = all(t.preserving for t in transfers)
        child = Individual(len(self.individuals), arch, cycle, parent=parent.id, mutation=name, block=block,
                           preserving=preserving, birth_top1=self.top1(net))
        return self.train(child, net, self.config.child_epochs)

    def died(self, individual: Individual, cycle: int) -> None:
        individual.died = cycle
        if individual is not self.best:
            individual.net = None  # its weights are no longer anyone's parent

    def metrics(self) -> dict[str, float]:
        """Search cost, and how much val top-1 children lost at birth (0 where the morphism preserves; all of it from scratch)."""
        assert self.best is not None
        out = {"individuals_trained": float(len(self.individuals)), "search_epochs": self.epochs,
               "best_fitness": self.best.fitness, "best_val_top1": self.best.top1, "best_born": float(self.best.born)}
        by_id = {i.id: i for i in self.individuals}
        for kind, preserving in (("preserving", True), ("lossy", False), ("scratch", None)):
            drops = [by_id[i.parent].top1 - i.birth_top1 for i in self.individuals
                     if i.preserving is preserving and i.parent is not None and i.birth_top1 is not None]
            if drops:
                out[f"birth_drop_{kind}"] = sum(drops) / len(drops)
        return out


def candidate(row: dict[str, Any]) -> dict[str, Any]:
    """One individual as a child run of the search's run: its ops and lineage as params, its scores as metrics."""
    params = {"ops": " ".join(row["ops"]), **{k: row[k] for k in ("parent", "mutation", "block", "preserving",
                                                                      "born", "died") if row[k] is not None}}
    scores = {"val_top1": row["val_top1"], "cost": row["cost"], "fitness": row["fitness"], "age": row["age"],
              "birth_top1": row["birth_top1"]}
    return {"name": f"evolution-individual{row['id']}", "params": params,
            "metrics": {k: float(v) for k, v in scores.items() if v is not None}}


def plot_fitness(history: list[dict[str, Any]], path: Path) -> list[Path]:
    """Fitness of every individual at its birth cycle, by kind of mutation, and the best so far."""
    best, running = [], float("-inf")
    for row in history:
        running = max(running, row["fitness"])
        best.append(running)

    def draw(ax: Any) -> None:
        for label, pick, marker in (("initial", lambda r: r["born"] == 0, "s"),
                                    ("preserving child", lambda r: r["born"] > 0 and r["preserving"], "o"),
                                    ("lossy child", lambda r: r["born"] > 0 and r["preserving"] is False, "x"),
                                    ("child from scratch", lambda r: r["born"] > 0 and r["preserving"] is None, "^")):
            rows = [r for r in history if pick(r)]
            ax.scatter([r["born"] for r in rows], [r["fitness"] for r in rows], marker=marker, label=label, s=22)
        ax.step([r["born"] for r in history], best, where="post", color="k", lw=1, label="best so far")
        ax.set_xlabel("cycle (birth)")
        ax.set_ylabel("fitness (val top-1, x latency factor)")
        ax.set_title("aging evolution", fontsize=9)
        ax.legend(fontsize=7)

    return save_figure(path, (6.0, 3.6), draw, what="fitness")


class Evolution(CompressionMethod):
    """Aging evolution with network-morphism children; the fittest architecture trained and stored."""

    name = "evolution"
    Config = EvolutionConfig
    config: EvolutionConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        c = self.config
        space = c.space.resolved()
        table = run_cost_table(space, c.cost, ctx)
        if c.reward.target is not None:
            table.reachable(c.reward.target, "method.reward.target")
        rng = random.Random(ctx.seed)
        search = Search(c, ctx, table, rng)
        started = time.perf_counter()
        torch.manual_seed(ctx.seed)
        population = search.initial(space)
        aging_evolution(population, c.cycles, c.sample, lambda i: i.fitness, search.breed, search.died, rng)
        seconds = time.perf_counter() - started
        best = search.best
        assert best is not None
        history = [i.record(c.cycles) for i in search.individuals]
        artifacts = [write_json(ctx.workdir / "evolution_history.json", history),
                     *plot_fitness(history, ctx.workdir / "evolution_fitness.png"),
                     *record_search(ctx.workdir, best.arch, table)]
        metrics = {"search_wall_s": seconds, "cycles": float(c.cycles), **search.metrics()}
        if c.reward.target is not None:
            metrics["reward_target"] = c.reward.target
        net = best.net if c.final == "inherit" else None
        result = store_searched(best.arch, model, ctx, c.finetune, c.drop_rate, table, metrics, artifacts, net=net)
        result.candidates = [candidate(row) for row in history]
        return result
