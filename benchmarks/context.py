"""Builds the context a compression method works in (methods.base.CompressionContext).

Its fine-tuning is where ``recipe.distill`` acts: with ``kd`` or ``mimic`` every method's
fine-tuning learns from the run's baseline (a frozen copy) instead of the labels alone, one
switch for every family, unless the method brings its own task loss or teacher.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.schema import ConfigError, RecipeConfig, TrainerConfig
from benchmarks.training import HookCallback, evaluate, fit, with_epochs
from hardware.target import HardwareTarget
from methods.base import CompressionContext
from methods.distillation.losses import RECOVERY_LOSSES
from methods.hooks import TrainingHook
from methods.losses import CrossEntropy, LossTerm


def recovery_loss(recipe: RecipeConfig) -> LossTerm | None:
    """The task loss ``recipe.distill`` gives every fine-tuning (None: the recipe's cross-entropy)."""
    if recipe.distill == "none":
        return None
    return RECOVERY_LOSSES[recipe.distill](recipe.distill_T, recipe.distill_alpha, recipe.label_smoothing)


def describe_loss(task_loss: LossTerm, loss_terms: Sequence[LossTerm] = ()) -> str:
    """``HintonKD(T=4.0, alpha=0.9, label_smoothing=0.0) + GroupLasso``: what a fine-tuning minimised, for the run's tags."""

    def name(loss: LossTerm) -> str:
        if not dataclasses.is_dataclass(loss):
            return type(loss).__name__
        values = {f.name: getattr(loss, f.name) for f in dataclasses.fields(loss)}
        scalars = ", ".join(f"{k}={v}" for k, v in values.items() if isinstance(v, (int, float, str, bool)))
        return f"{type(loss).__name__}({scalars})"

    return " + ".join(name(loss) for loss in (task_loss, *loss_terms))


def make_context(
    datamodule: Any,
    target: HardwareTarget,
    recipe: RecipeConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
    workdir: Path,
    logger: Any = False,
    callbacks: list[Any] | None = None,
    baseline: nn.Module | None = None,
    on_finetune: Callable[[str], None] | None = None,
) -> CompressionContext:
    """A context whose fine-tuning uses the run's recipe, shortened to what the method asks.

    ``logger`` (a Lightning logger, or False) records the fine-tuning curves; ``callbacks``
    join every fine-tuning's own (a sweep trial's pruning callback, say). ``baseline`` is the
    uncompressed model, the teacher when ``recipe.distill`` is set; ``on_finetune`` hears the
    loss of each fine-tuning (:func:`describe_loss`).
    """
    distill = recovery_loss(recipe)
    if distill is not None and baseline is None:
        raise ConfigError(f"recipe.distill: {recipe.distill!r} distils from the baseline, but the context was given none "
                          "(make_context(..., baseline=<the uncompressed model>)); or set recipe.distill=none")
    teachers: list[nn.Module] = []  # the baseline's frozen copy, made at the first fine-tuning that needs it

    def recovery_teacher() -> nn.Module:
        if not teachers:
            assert baseline is not None  # refused above: recipe.distill without a baseline
            teachers.append(copy.deepcopy(baseline).eval().requires_grad_(False))
        return teachers[0]

    run_callbacks = list(callbacks or [])

    def finetune(
        model: nn.Module,
        epochs: float,
        *,
        lr: float | None = None,
        hooks: Sequence[TrainingHook] = (),
        loss_terms: Sequence[LossTerm] = (),
        task_loss: LossTerm | None = None,
        teacher: nn.Module | None = None,
    ) -> nn.Module:
        if distill is not None and task_loss is None and teacher is None:  # the method's own loss or teacher wins
            task_loss, teacher = distill, recovery_teacher()
        if on_finetune is not None:
            on_finetune(describe_loss(task_loss if task_loss is not None else CrossEntropy(recipe.label_smoothing), loss_terms))
        return fit(model, datamodule, with_epochs(recipe, epochs, lr), trainer_cfg, seed=seed,
                   callbacks=[*run_callbacks, *map(HookCallback, hooks)], loss_terms=loss_terms, task_loss=task_loss,
                   teacher=teacher, logger=logger)

    def evaluate_on(model: nn.Module, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        return evaluate(model, datamodule, split, max_batches)

    workdir.mkdir(parents=True, exist_ok=True)
    return CompressionContext(
        datamodule=datamodule,
        target=target,
        input_shape=(target.batch_size, *datamodule.input_shape),
        workdir=workdir,
        seed=seed,
        finetune=finetune,
        evaluate=evaluate_on,
    )
