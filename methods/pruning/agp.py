"""Automated gradual pruning: Zhu & Gupta, "To prune, or not to prune: exploring the
efficacy of pruning for model compression", 2017 (arXiv:1710.01878).

Aswani survey, Sec. II.K, Eq. (1): during training, the sparsity of the masked layers rises
from an initial s_i to a final s_f over n pruning steps, one every Delta t training steps,
starting at step t0:

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Delta t))^3,   t in {t0, t0 + Dt, ..., t0 + n Dt}

At each of those steps the binary masks are recomputed from the current weight magnitudes
(the smallest weights of each layer are masked until the layer reaches s_t); between them
the masks hold the pruned weights at zero. Pruning fast at first and slowly at the end lets
training recover. The schedule actually followed (step, formula sparsity, measured sparsity)
is written as ``agp_schedule.csv`` and plotted in ``agp_schedule.png``.

Config: ``initial_sparsity`` (s_i), ``final_sparsity`` (s_f), ``start_step`` (t0),
``frequency`` (Delta t), ``num_pruning_steps`` (n; null derives it so the schedule ends at
``end_fraction`` of the fine-tuning steps), ``finetune.epochs``; ``layers`` and storage as
in :mod:`methods.pruning.magnitude`. Departure: the paper prunes while training from
scratch or continuing training; here it runs during the method's fine-tuning of the trained
baseline, which is the setting of the paper's pruning of pretrained models.
"""

from __future__ import annotations

import copy
import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.config import FineTuning, LayerSelection, fail, finetune_default, option, select_layers
from methods.hooks import TrainingState
from methods.pruning.magnitude import store_sparse, unstructured_metrics
from methods.pruning.masks import SCOPES, MaskHook, WeightMasks
from methods.reporting import plot_policy, write_json
from methods.storage.sparse import FORMATS

log = logging.getLogger(__name__)


@dataclass
class AGPSchedule:
    """Zhu & Gupta's cubic sparsity schedule."""

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    frequency: int
    num_pruning_steps: int

    @property
    def end_step(self) -> int:
        return self.start_step + self.num_pruning_steps * self.frequency

    def is_update_step(self, step: int) -> bool:
        return self.start_step <= step <= self.end_step and (step - self.start_step) % self.frequency == 0

    def sparsity_at(self, step: int) -> float:
        if step < self.start_step:
            return self.initial_sparsity
        progress = min(1.0, (step - self.start_step) / (self.num_pruning_steps * self.frequency))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def update_steps(self) -> list[int]:
        return [self.start_step + i * self.frequency for i in range(self.num_pruning_steps + 1)]


class AGPHook(MaskHook):
    """Recomputes the masks at every schedule step; holds them in between."""

    def __init__(self, masks: WeightMasks, schedule: AGPSchedule | None, scope: str = "layer",
                 end_fraction: float = 0.75, initial_sparsity: float = 0.0, final_sparsity: float = 0.5,
                 start_step: int = 0, frequency: int = 10) -> None:
        super().__init__(masks)
        self.schedule = schedule
        self.scope = scope
        self._derive = dict(end_fraction=end_fraction, initial_sparsity=initial_sparsity,
                            final_sparsity=final_sparsity, start_step=start_step, frequency=frequency)
        #: rows (optimizer step, formula sparsity, measured sparsity after the mask update)
        self.history: list[tuple[int, float, float]] = []

    def on_train_start(self, state: TrainingState) -> None:
        total = state.total_steps
        if self.schedule is None:
            d = self._derive
            span = int(d["end_fraction"] * total) - d["start_step"]
            n = int(span // d["frequency"])
            if n < 1:
                raise MethodConfigError(
                    f"AGP: {total} fine-tuning steps leave no room for a pruning step every {d['frequency']} steps "
                    f"after step {d['start_step']}; lower method.frequency or method.start_step, or raise "
                    "method.finetune.epochs")
            self.schedule = AGPSchedule(float(d["initial_sparsity"]), float(d["final_sparsity"]), int(d["start_step"]),
                                        int(d["frequency"]), n)
        if self.schedule.end_step >= total:
            raise MethodConfigError(
                f"AGP schedule ends at step {self.schedule.end_step} but fine-tuning has only {total} steps; "
                "lower method.num_pruning_steps or method.frequency, or raise method.finetune.epochs")
        super().on_train_start(state)

    def on_train_batch_start(self, state: TrainingState) -> None:
        step = state.step  # optimizer steps taken so far
        if self.schedule is not None and self.schedule.is_update_step(step) and (not self.history or self.history[-1][0] != step):
            target = self.schedule.sparsity_at(step)
            self.masks.update(target, self.scope)
            self.history.append((step, target, self.masks.sparsity()))


def write_schedule(history: Sequence[tuple[int, float, float]], schedule: AGPSchedule, workdir: Path) -> list[Path]:
    csv_path = workdir / "agp_schedule.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "target_sparsity", "measured_sparsity"])
        writer.writerows(history)
    paths = [csv_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        dense = list(range(0, schedule.end_step + schedule.frequency + 1))
        ax.plot(dense, [schedule.sparsity_at(t) for t in dense], lw=1, label="Zhu & Gupta schedule")
        ax.plot([h[0] for h in history], [h[2] for h in history], "o", ms=3, label="measured after mask update")
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("sparsity")
        ax.legend(loc="lower right")
        fig.tight_layout()
        png = workdir / "agp_schedule.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
        paths.append(png)
    except Exception as err:  # noqa: BLE001 - the CSV is the record; the plot is a convenience
        log.warning("AGP: schedule plot skipped (%s)", err)
    return paths


@dataclass
class AGPConfig:
    """conf/method/agp.yaml."""

    final_sparsity: float = option(0.8, ge=0, lt=1, why="s_f, the fraction of weights set to zero")
    initial_sparsity: float = option(0.0, ge=0, lt=1, why="s_i")
    start_step: int = option(0, ge=0, why="t0, in optimizer steps")
    frequency: int = option(10, ge=1, why="Delta t, steps between mask updates")
    num_pruning_steps: int | None = option(None, ge=1, why="n; null: derived from end_fraction")
    end_fraction: float = option(0.75, gt=0, le=1)
    scope: str = option("layer", choices=SCOPES)
    finetune: FineTuning = option(factory=finetune_default(2.0))
    layers: LayerSelection = option(factory=LayerSelection)
    storage_formats: list[str] = option(factory=lambda: list(FORMATS), choices=FORMATS)

    def check(self, key: str) -> None:
        if self.initial_sparsity > self.final_sparsity:
            fail(f"{key}.initial_sparsity", f"({self.initial_sparsity}) must not exceed {key}.final_sparsity "
                                            f"({self.final_sparsity})")
        if self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", f"must be > 0: AGP prunes during training, got {self.finetune.epochs}")
        if not self.storage_formats:
            fail(f"{key}.storage_formats", f"is empty; choose among {list(FORMATS)}")


class AutomatedGradualPruning(CompressionMethod):
    """Zhu & Gupta 2017: masks updated every ``frequency`` steps along the cubic schedule."""

    name = "agp"
    Config = AGPConfig
    config: AGPConfig

    def schedule(self) -> AGPSchedule | None:
        """The schedule when n is given; None when it is derived from the number of steps."""
        c = self.config
        if c.num_pruning_steps is None:
            return None
        return AGPSchedule(c.initial_sparsity, c.final_sparsity, c.start_step, c.frequency, c.num_pruning_steps)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline = model
        model = copy.deepcopy(baseline)
        input_shape = tuple(ctx.input_shape)
        c = self.config
        layers = select_layers(model, input_shape, c.layers)
        masks = WeightMasks(layers)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        # accuracy of the final sparsity applied at once, without training: AGP's "before fine-tuning"
        one_shot = copy.deepcopy(model)
        one_shot_masks = WeightMasks(select_layers(one_shot, input_shape, c.layers))
        one_shot_masks.update(c.final_sparsity, c.scope)
        metrics["top1_before_finetune"] = ctx.evaluate(one_shot, "val")["top1"]
        del one_shot, one_shot_masks

        hook = AGPHook(masks, self.schedule(), c.scope, c.end_fraction, c.initial_sparsity,
                       c.final_sparsity, c.start_step, c.frequency)
        ctx.finetune(model, c.finetune.epochs, lr=c.finetune.lr, hooks=[hook])
        masks.apply()
        schedule = hook.schedule
        assert schedule is not None  # set at the start of training
        if not hook.history or hook.history[-1][0] != schedule.end_step:
            raise RuntimeError(f"AGP: training stopped before the schedule's last step {schedule.end_step} "
                               f"(last update at {hook.history[-1][0] if hook.history else None})")

        stored = ctx.workdir / "model.sparse.cbm"
        decoded, report = store_sparse(model, baseline, stored, c.storage_formats)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(unstructured_metrics(decoded, baseline, list(layers), input_shape, stored, report))
        metrics.update({"agp_start_step": float(schedule.start_step), "agp_frequency": float(schedule.frequency),
                        "agp_num_pruning_steps": float(schedule.num_pruning_steps)})
        achieved = {n: metrics[f"sparsity/{n}"] for n in layers}
        policy = {
            "method": self.name, "scope": c.scope,
            "schedule": {"initial_sparsity": schedule.initial_sparsity, "final_sparsity": schedule.final_sparsity,
                         "start_step": schedule.start_step, "frequency": schedule.frequency,
                         "num_pruning_steps": schedule.num_pruning_steps},
            "achieved": achieved,
        }
        artifacts = [write_json(ctx.workdir / "policy.json", policy), write_json(ctx.workdir / "storage.json", report),
                     *write_schedule(hook.history, schedule, ctx.workdir),
                     *plot_policy(achieved, "sparsity", ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
