"""Training and evaluation loops shared by baselines and by every method's fine-tuning.

Lightning runs the loops (`Classifier` + `lightning.Trainer`); the recipe (optimizer,
schedule, epochs) is one validated dataclass from `conf/config.yaml`'s ``recipe`` node.
Methods receive :func:`finetune` and :func:`evaluate` through their context, so they
never build trainers of their own.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.schema import RecipeConfig, TrainerConfig
from methods.hooks import TrainingHook
from methods.losses import CrossEntropy, LossTerm, TrainingStep

log = logging.getLogger(__name__)

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, r: torch.optim.SGD(
        params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=r.nesterov and r.momentum > 0
    ),
    "adam": lambda params, r: torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay),
    "adamw": lambda params, r: torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay),
}

_SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, RecipeConfig, int], Any]] = {
    "none": lambda opt, r, steps: None,
    "cosine": lambda opt, r, steps: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1)),
    "multistep": lambda opt, r, steps: torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[int(m * steps) for m in r.milestones], gamma=r.gamma
    ),
}


def top_k_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> int:
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite: stop at once instead of training a model of NaNs."""


class Classifier(L.LightningModule):
    """Classification of any ``nn.Module`` under a recipe, with the loss a method shapes.

    The loss of a step is ``task_loss(step) + sum(term(step) for term in loss_terms)``
    (methods.losses); the task loss defaults to the recipe's cross-entropy. A ``teacher``
    is frozen: kept in eval mode, run under no_grad, its logits handed to the terms, and
    never part of the trained module's parameters or state.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: RecipeConfig,
        loss_terms: Sequence[LossTerm] = (),
        task_loss: LossTerm | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.task_loss = task_loss if task_loss is not None else CrossEntropy(recipe.label_smoothing)
        self.loss_terms = list(loss_terms)
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None else []  # a list: not a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        if not self._teacher:
            return None
        teacher = self._teacher[0].to(x.device).eval()
        with torch.no_grad():
            return teacher(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        step = TrainingStep(inputs=x, targets=y, logits=logits, model=self.model, teacher_logits=self._teacher_logits(x))
        loss = self.task_loss(step)
        for term in self.loss_terms:
            loss = loss + term(step)
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the training loss is {float(loss)} at step {self.global_step} (epoch {self.current_epoch}): training "
                f"diverged at learning rate {self.recipe.lr:g}; lower it (recipe.lr, or the method's finetune.lr)")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/top1", 100.0 * (logits.argmax(1) == y).float().mean(), prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val/top1", 100.0 * (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = _OPTIMIZERS[self.recipe.optimizer](params, self.recipe)
        steps = int(self.trainer.estimated_stepping_batches)
        scheduler = _SCHEDULERS[self.recipe.scheduler](optimizer, self.recipe, steps)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class LoopState:
    """Where Lightning's loop stands, as a method's hook sees it (methods.hooks.TrainingState)."""

    def __init__(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._trainer, self._module = trainer, module

    @property
    def step(self) -> int:
        return int(self._trainer.global_step)

    @property
    def total_steps(self) -> int:
        return int(self._trainer.estimated_stepping_batches)

    @property
    def device(self) -> torch.device:
        return self._module.device


class HookCallback(L.Callback):
    """Runs a method's training hook at the matching points of Lightning's loop (methods stay Lightning-free)."""

    def __init__(self, hook: TrainingHook) -> None:
        self.hook = hook

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hook.on_train_start(LoopState(trainer, pl_module))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.hook.on_train_batch_start(LoopState(trainer, pl_module))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.hook.on_before_optimizer_step(LoopState(trainer, pl_module))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.hook.on_train_batch_end(LoopState(trainer, pl_module))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hook.on_train_epoch_end(LoopState(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.hook.on_train_end(LoopState(trainer, pl_module))


def fit(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    recipe: RecipeConfig,
    trainer_cfg: TrainerConfig,
    *,
    seed: int,
    callbacks: list[L.Callback] | None = None,
    loss_terms: Sequence[LossTerm] = (),
    task_loss: LossTerm | None = None,
    teacher: nn.Module | None = None,
    logger: Any = False,
) -> nn.Module:
    """Train ``model`` in place for ``recipe.epochs`` (fractions of an epoch allowed).

    ``loss_terms``, ``task_loss`` and ``teacher`` shape the loss (see :class:`Classifier`).
    """
    if recipe.epochs <= 0:
        return model
    L.seed_everything(seed, workers=True, verbose=False)
    whole_epochs = max(1, math.ceil(recipe.epochs))
    limit_train = trainer_cfg.limit_train_batches
    if recipe.epochs < 1:  # a fraction of one epoch: stop early in the only epoch
        limit_train = recipe.epochs * (limit_train if isinstance(limit_train, float) else 1.0)
    trainer = L.Trainer(
        accelerator=trainer_cfg.accelerator,
        devices=trainer_cfg.devices,
        max_epochs=whole_epochs,
        limit_train_batches=limit_train,
        limit_val_batches=trainer_cfg.limit_val_batches,
        fast_dev_run=trainer_cfg.fast_dev_run,
        deterministic=trainer_cfg.deterministic,
        enable_progress_bar=trainer_cfg.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=trainer_cfg.check_val_every_n_epoch,
        gradient_clip_val=trainer_cfg.gradient_clip_val,
        log_every_n_steps=trainer_cfg.log_every_n_steps,
        logger=logger,
        callbacks=callbacks or [],
    )
    was_training = model.training
    model.train()  # Lightning keeps the mode it is given: a model in eval mode would train with frozen BN statistics
    trainer.fit(Classifier(model, recipe, loss_terms, task_loss, teacher), datamodule=datamodule)
    model.train(was_training)
    return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    split: str = "test",
    max_batches: int | None = None,
) -> dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``model`` on ``split``."""
    loaders = {"train": datamodule.train_dataloader, "val": datamodule.val_dataloader, "test": datamodule.test_dataloader}
    if split not in loaders:
        raise ValueError(f"split must be one of {sorted(loaders)}, got {split!r}")
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seen = correct1 = correct5 = 0
    loss_sum = 0.0
    for i, (x, y) in enumerate(loaders[split]()):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct1 += top_k_correct(logits, y, 1)
        correct5 += top_k_correct(logits, y, 5)
        seen += len(y)
    model.train(was_training)
    if seen == 0:
        raise ValueError(f"the {split} split is empty: check the dataset's subset sizes")
    return {"top1": 100.0 * correct1 / seen, "top5": 100.0 * correct5 / seen, "loss": loss_sum / seen, "samples": seen}


def with_epochs(recipe: RecipeConfig, epochs: float, lr: float | None = None) -> RecipeConfig:
    """The same recipe, shortened (fine-tuning) and optionally at another learning rate."""
    return dataclasses.replace(recipe, epochs=epochs, lr=recipe.lr if lr is None else lr)
