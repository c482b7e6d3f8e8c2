"""ProxylessNAS: architecture search on the target data and the target device, with its latency in the loss.

Cai, Zhu and Han, "ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware"
(ICLR 2019), Sec. 3. A supernet holding every candidate of every block (:mod:`.supernet`) is
trained by alternating (Sec. 3.2) weight steps on the training split (one path per block sampled
from p: binarized paths) and architecture steps on held-out data (two paths per block, the binary
gate gradient), after warm-up epochs on the weights only. The architecture loss adds the
expected latency on the run's own target (Sec. 3.3: a sum over blocks of p_j x latency of
candidate j, :mod:`.costs`), in one of the authors' two forms (their ``nas_manager.py``):
``mul_log``: alpha CE (log E[lat] / log T)^beta (the default there: alpha 0.2, beta 0.3), or
``add_linear``: CE + lambda (E[lat] - T) / T (lambda 0.1); ``cost: flops`` regularises MACs instead
(the paper's comparison). The derived network (argmax of p per block) is then trained from scratch
with the run's recipe and stored as a ``searched`` architecture.

Departures, all said in the run: architecture steps read the run's ``val`` split (a held-out part
of the training data, Contracts 3) instead of a second cut of the training split; ``mul_log`` is
evaluated at the paper's scale, log(80 E/T) / log 80 (80 ms is the authors' mobile reference), so
its strength does not depend on the unit the target reports in (with raw ms, a sub-millisecond GPU
target makes both logs negative and inverts the penalty); ``reference`` (T) defaults to the expected
cost of the supernet at initialisation (uniform p).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.hooks import TrainingState
from methods.nas.costs import COST_KINDS, CostTable, run_cost_table
from methods.nas.searched import record_search, store_searched
from methods.nas.space import SpaceConfig
from methods.nas.supernet import SampledPaths, SuperNet

#: the authors' mobile reference latency (ms): the scale at which ``mul_log`` is evaluated
PAPER_REFERENCE_MS = 80.0
LOSS_FORMS = ("mul_log", "add_linear")


@dataclass
class ArchitectureStepConfig:
    """``arch``: the optimiser of the architecture parameters (the authors' defaults)."""

    lr: float = option(1e-3, gt=0, why="Adam learning rate of the alphas")
    beta1: float = option(0.0, ge=0, lt=1, why="0: no momentum, so unsampled alphas stay put")
    beta2: float = option(0.999, ge=0, lt=1)
    every: int = option(5, ge=1, why="weight steps per architecture step")


@dataclass
class ProxylessConfig:
    space: SpaceConfig = option(factory=SpaceConfig)
    cost: str = option("latency", choices=COST_KINDS, why="latency on the run's target, or MACs")
    loss: str = option("mul_log", choices=LOSS_FORMS)
    scale: float = option(0.2, gt=0, why="mul_log's alpha")
    exponent: float = option(0.3, ge=0, why="mul_log's beta")
    weight: float = option(0.1, ge=0, why="add_linear's lambda")
    reference: float | None = option(None, gt=0, why="T, in the cost's unit; null: E[cost] at uniform p")
    warmup_epochs: float = option(1.0, ge=0, why="weights only, random paths")
    search_epochs: float = option(2.0, gt=0, why="alternating weight and architecture steps")
    arch: ArchitectureStepConfig = option(factory=ArchitectureStepConfig)
    drop_rate: float = option(0.0, ge=0, lt=1, why="dropout before the derived net's classifier")
    finetune: FineTuning = option(factory=finetune_default(3.0))

    def check(self, key: str) -> None:
        if self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", "must be > 0: the derived network is trained from scratch")


def architecture_loss(ce: torch.Tensor, cost: torch.Tensor, reference: float, config: ProxylessConfig) -> torch.Tensor:
    """CE combined with the expected cost in the configured form."""
    if config.loss == "add_linear":
        return ce + config.weight * (cost - reference) / reference
    ratio = torch.log(PAPER_REFERENCE_MS * cost / reference) / math.log(PAPER_REFERENCE_MS)
    return config.scale * ce * ratio.clamp_min(1e-6) ** config.exponent


def cycle(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


class ArchitectureSearch(SampledPaths):
    """Inside the one training loop: a path per block before every weight step, an architecture step every k."""

    def __init__(self, supernet: SuperNet, table: CostTable, reference: float, config: ProxylessConfig,
                 held_out: Any, generator: torch.Generator) -> None:
        super().__init__(supernet, generator)
        self.table, self.reference, self.config, self.held_out = table, reference, config, held_out
        self.optimizer = torch.optim.Adam(supernet.arch_parameters(), lr=config.arch.lr,
                                          betas=(config.arch.beta1, config.arch.beta2), weight_decay=0.0)
        self.searching = False
        self.weight_steps = self.arch_steps = 0
        self.history: list[dict[str, Any]] = []
        self.phase = "warmup"

    def on_train_batch_end(self, state: TrainingState) -> None:
        self.weight_steps += 1
        if self.searching and self.weight_steps % self.config.arch.every == 0:
            self.architecture_step(state.device)

    def architecture_step(self, device: torch.device) -> None:
        inputs, labels = next(self.held_out)
        alphas = self.supernet.arch_parameters()
        before = [a.detach().clone() for a in alphas]
        self.supernet.sample_two(self.generator)
        ops = self.supernet.mixed_ops()
        with torch.enable_grad():
            for alpha in alphas:
                alpha.requires_grad_(True)
            ce = F.cross_entropy(self.supernet(inputs.to(device)), labels.to(device))
            cost = self.table.expected_sampled(alphas, [op.pair for op in ops])
            loss = architecture_loss(ce, cost, self.reference, self.config)
            grads = torch.autograd.grad(loss, alphas, allow_unused=True)
            for alpha in alphas:
                alpha.requires_grad_(False)
        for alpha, grad, op in zip(alphas, grads, ops, strict=True):
            # an edge whose active path is zero gets no gradient at all (the authors' code)
            alpha.grad = None if op.names[op.active] == "zero" or grad is None else grad
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.supernet.rebalance(before)
        self.arch_steps += 1

    def on_train_epoch_end(self, state: TrainingState) -> None:
        self.record()

    def record(self) -> None:
        with torch.no_grad():
            probabilities = [op.probabilities() for op in self.supernet.mixed_ops()]
            expected = float(self.table.expected(probabilities))
        self.history.append({"phase": self.phase, "weight_steps": self.weight_steps, "arch_steps": self.arch_steps,
                             "expected_cost": expected, "derived_cost": self.table.of(self.supernet.derive()),
                             "probabilities": [p.tolist() for p in probabilities]})


class ProxylessNAS(CompressionMethod):
    """Gradient-based search with binarized paths and the target's latency in the loss; the derived net trained."""

    name = "proxylessnas"
    Config = ProxylessConfig
    config: ProxylessConfig

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        c = self.config
        space = c.space.resolved()
        num_classes, in_chans = int(ctx.datamodule.num_classes), int(ctx.input_shape[1])
        table = run_cost_table(space, c.cost, ctx)
        torch.manual_seed(ctx.seed)
        supernet = SuperNet(space, num_classes, in_chans)
        for alpha in supernet.arch_parameters():
            alpha.requires_grad_(False)  # the weight optimiser never sees them
        with torch.no_grad():
            uniform = float(table.expected([op.probabilities() for op in supernet.mixed_ops()]))
        reference = table.reachable(uniform if c.reference is None else c.reference, "method.reference")
        search = ArchitectureSearch(supernet, table, reference, c, cycle(ctx.datamodule.val_dataloader()),
                                    torch.Generator().manual_seed(ctx.seed))
        started = time.perf_counter()
        search.record()
        if c.warmup_epochs > 0:
            ctx.finetune(supernet, c.warmup_epochs, hooks=[search])
        search.searching, search.phase = True, "search"
        ctx.finetune(supernet, c.search_epochs, hooks=[search])
        search_seconds = time.perf_counter() - started
        arch = supernet.derive()
        metrics = {"search_wall_s": search_seconds, "search_epochs": c.warmup_epochs + c.search_epochs,
                   "arch_steps": float(search.arch_steps), "weight_steps": float(search.weight_steps),
                   "reference_cost": reference, "uniform_expected_cost": uniform,
                   "expected_cost": search.history[-1]["expected_cost"]}
        artifacts = record_search(ctx.workdir, arch, table, search.history)
        return store_searched(arch, model, ctx, c.finetune, c.drop_rate, table, metrics, artifacts)
