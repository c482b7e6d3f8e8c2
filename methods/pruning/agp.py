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
``end_fraction`` of the fine-tuning steps), ``finetune_epochs``; layer choice and storage as
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
from typing import Any

import lightning as L
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult, MethodConfigError
from methods.pruning.magnitude import check_formats, store_sparse, unstructured_metrics
from methods.pruning.masks import SCOPES, MaskCallback, WeightMasks, check_sparsity, prunable_layers
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


class AGPCallback(MaskCallback):
    """Recomputes the masks at every schedule step; holds them in between (Lightning callback)."""

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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = int(trainer.estimated_stepping_batches)
        if self.schedule is None:
            d = self._derive
            span = int(d["end_fraction"] * total) - d["start_step"]
            n = int(span // d["frequency"])
            if n < 1:
                raise MethodConfigError(
                    f"AGP: {total} fine-tuning steps leave no room for a pruning step every {d['frequency']} steps "
                    f"after step {d['start_step']}; lower method.frequency or method.start_step, or raise "
                    "method.finetune_epochs")
            self.schedule = AGPSchedule(float(d["initial_sparsity"]), float(d["final_sparsity"]), int(d["start_step"]),
                                        int(d["frequency"]), n)
        if self.schedule.end_step >= total:
            raise MethodConfigError(
                f"AGP schedule ends at step {self.schedule.end_step} but fine-tuning has only {total} steps; "
                "lower method.num_pruning_steps or method.frequency, or raise method.finetune_epochs")
        super().on_train_start(trainer, pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)  # optimizer steps taken so far
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


class AutomatedGradualPruning(CompressionMethod):
    """Zhu & Gupta 2017: masks updated every ``frequency`` steps along the cubic schedule."""

    def __init__(
        self,
        name: str = "agp",
        final_sparsity: float = 0.8,
        initial_sparsity: float = 0.0,
        start_step: int = 0,
        frequency: int = 10,
        num_pruning_steps: int | None = None,
        end_fraction: float = 0.75,
        scope: str = "layer",
        finetune_epochs: float = 2.0,
        lr: float | None = None,
        include_first: bool = True,
        include_last: bool = True,
        exclude: Sequence[str] = (),
        storage_formats: Sequence[str] = FORMATS,
    ) -> None:
        super().__init__(name)
        self.final_sparsity = check_sparsity(final_sparsity, "method.final_sparsity")
        self.initial_sparsity = check_sparsity(initial_sparsity, "method.initial_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise MethodConfigError(f"method.initial_sparsity ({initial_sparsity}) must not exceed "
                                    f"method.final_sparsity ({final_sparsity})")
        if int(start_step) != start_step or start_step < 0:
            raise MethodConfigError(f"method.start_step must be an integer >= 0, got {start_step}")
        if int(frequency) != frequency or frequency < 1:
            raise MethodConfigError(f"method.frequency (Delta t) must be an integer >= 1, got {frequency}")
        if num_pruning_steps is not None and (int(num_pruning_steps) != num_pruning_steps or num_pruning_steps < 1):
            raise MethodConfigError(f"method.num_pruning_steps (n) must be an integer >= 1 or null, got {num_pruning_steps}")
        if not 0.0 < end_fraction <= 1.0:
            raise MethodConfigError(f"method.end_fraction must be in (0, 1], got {end_fraction}")
        if scope not in SCOPES:
            raise MethodConfigError(f"method.scope must be one of {SCOPES}, got {scope!r}")
        if finetune_epochs <= 0:
            raise MethodConfigError(f"method.finetune_epochs must be > 0: AGP prunes during training, got {finetune_epochs}")
        if lr is not None and lr <= 0:
            raise MethodConfigError(f"method.lr must be > 0 (or null for the recipe's), got {lr}")
        self.start_step, self.frequency = int(start_step), int(frequency)
        self.num_pruning_steps = None if num_pruning_steps is None else int(num_pruning_steps)
        self.end_fraction, self.scope = float(end_fraction), scope
        self.finetune_epochs, self.lr = float(finetune_epochs), lr
        self.include_first, self.include_last, self.exclude = include_first, include_last, list(exclude)
        self.storage_formats = check_formats(storage_formats)

    def schedule(self) -> AGPSchedule | None:
        """The schedule when n is given; None when it is derived from the number of steps."""
        if self.num_pruning_steps is None:
            return None
        return AGPSchedule(self.initial_sparsity, self.final_sparsity, self.start_step, self.frequency, self.num_pruning_steps)

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        baseline = model
        model = copy.deepcopy(baseline)
        input_shape = tuple(ctx.input_shape)
        layers = prunable_layers(model, input_shape, self.include_first, self.include_last, self.exclude)
        masks = WeightMasks(layers)
        metrics: dict[str, float] = {"top1_baseline": ctx.evaluate(model, "val")["top1"]}
        # accuracy of the final sparsity applied at once, without training: AGP's "before fine-tuning"
        one_shot = copy.deepcopy(model)
        one_shot_masks = WeightMasks(prunable_layers(one_shot, input_shape, self.include_first, self.include_last, self.exclude))
        one_shot_masks.update(self.final_sparsity, self.scope)
        metrics["top1_before_finetune"] = ctx.evaluate(one_shot, "val")["top1"]
        del one_shot, one_shot_masks

        callback = AGPCallback(masks, self.schedule(), self.scope, self.end_fraction, self.initial_sparsity,
                               self.final_sparsity, self.start_step, self.frequency)
        ctx.finetune(model, self.finetune_epochs, lr=self.lr, callbacks=[callback])
        masks.apply()
        schedule = callback.schedule
        assert schedule is not None  # set at the start of training
        if not callback.history or callback.history[-1][0] != schedule.end_step:
            raise RuntimeError(f"AGP: training stopped before the schedule's last step {schedule.end_step} "
                               f"(last update at {callback.history[-1][0] if callback.history else None})")

        stored = ctx.workdir / "model.sparse.cbm"
        decoded, report = store_sparse(model, baseline, stored, self.storage_formats)
        metrics["top1_after_finetune"] = ctx.evaluate(decoded, "val")["top1"]
        metrics.update(unstructured_metrics(decoded, baseline, list(layers), input_shape, stored, report))
        metrics.update({"agp_start_step": float(schedule.start_step), "agp_frequency": float(schedule.frequency),
                        "agp_num_pruning_steps": float(schedule.num_pruning_steps)})
        achieved = {n: metrics[f"sparsity/{n}"] for n in layers}
        policy = {
            "method": self.name, "scope": self.scope,
            "schedule": {"initial_sparsity": schedule.initial_sparsity, "final_sparsity": schedule.final_sparsity,
                         "start_step": schedule.start_step, "frequency": schedule.frequency,
                         "num_pruning_steps": schedule.num_pruning_steps},
            "achieved": achieved,
        }
        artifacts = [write_json(ctx.workdir / "policy.json", policy), write_json(ctx.workdir / "storage.json", report),
                     *write_schedule(callback.history, schedule, ctx.workdir),
                     *plot_policy(achieved, "sparsity", ctx.workdir / "policy.png")]
        return CompressionResult(model=decoded, stored_file=stored, metrics=metrics, artifacts=artifacts)
