"""Builds the context a compression method works in (methods.base.CompressionContext)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import evaluate, fit, with_epochs
from hardware.target import HardwareTarget
from methods.base import CompressionContext
from methods.losses import LossTerm


def make_context(
    datamodule: Any,
    target: HardwareTarget,
    recipe: RecipeConfig,
    trainer_cfg: TrainerConfig,
    seed: int,
    workdir: Path,
    logger: Any = False,
    callbacks: list[Any] | None = None,
) -> CompressionContext:
    """A context whose fine-tuning uses the run's recipe, shortened to what the method asks.

    ``logger`` (a Lightning logger, or False) records the fine-tuning curves; ``callbacks``
    join every fine-tuning's own (a sweep trial's pruning callback, say).
    """

    run_callbacks = list(callbacks or [])

    def finetune(
        model: nn.Module,
        epochs: float,
        *,
        lr: float | None = None,
        callbacks: list[Any] | None = None,
        loss_terms: Sequence[LossTerm] = (),
        task_loss: LossTerm | None = None,
        teacher: nn.Module | None = None,
    ) -> nn.Module:
        return fit(model, datamodule, with_epochs(recipe, epochs, lr), trainer_cfg, seed=seed,
                   callbacks=[*run_callbacks, *(callbacks or [])], loss_terms=loss_terms, task_loss=task_loss,
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
