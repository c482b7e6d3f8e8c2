"""Distillation losses on the training loop's hook (methods.losses): the teacher's logits are ``step.teacher_logits``.

* :class:`HintonKD` (Hinton, Vinyals, Dean 2015): ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T))
  + (1 - alpha) * CE(y, z_s)``, KL averaged over the batch (distiller's ``batchmean``). The soft
  targets' gradient scales as ``1/T^2``, so the ``T^2`` factor keeps its size as ``T`` changes.
* :class:`LogitMimic` (Ba & Caruana 2014): ``1/2 * ||z_s - z_t||^2`` per example, averaged: a
  regression of the logits, no softmax, no temperature, no labels.
* :class:`HintLoss` (Romero et al. 2015, FitNets' stage 1): ``1/2 * ||hint - regressor(guided)||^2``
  per example, averaged, on features recorded by :class:`FeatureTap`.

:data:`RECOVERY_LOSSES` is what ``recipe.distill`` names (the fine-tuning the pipeline gives every method).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from methods.losses import LossTerm, TrainingStep


def _teacher_logits(step: TrainingStep, loss: str) -> torch.Tensor:
    if step.teacher_logits is None:
        raise ValueError(f"{loss} needs the teacher's logits: fine-tune with ctx.finetune(..., teacher=<model>)")
    if step.teacher_logits.shape != step.logits.shape:
        raise ValueError(f"{loss}: the teacher's logits have shape {tuple(step.teacher_logits.shape)}, the student's "
                         f"{tuple(step.logits.shape)}: teacher and student must have the same classes")
    return step.teacher_logits


def soft_target_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    log_student = F.log_softmax(logits / T, dim=1)
    log_teacher = F.log_softmax(teacher_logits / T, dim=1)
    return T * T * F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)


@dataclass(frozen=True)
class HintonKD:
    """Hinton's knowledge distillation, a task loss: soft targets at temperature ``T`` weighted ``alpha``, labels ``1 - alpha``."""

    T: float = 4.0
    alpha: float = 0.9
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not self.T > 0:
            raise ValueError(f"the distillation temperature T must be > 0, got {self.T}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"the distillation weight alpha must be in [0, 1], got {self.alpha}")

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        hard = F.cross_entropy(step.logits, step.targets, label_smoothing=self.label_smoothing)
        if self.alpha == 0:  # the labels alone: the student trained without its teacher, who need not run
            return hard
        soft = soft_target_loss(step.logits, _teacher_logits(step, "KD"), self.T)
        return self.alpha * soft + (1 - self.alpha) * hard


@dataclass(frozen=True)
class LogitMimic:
    """Ba & Caruana's mimic learning, a task loss: L2 regression of the student's logits on the teacher's."""

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        return 0.5 * (step.logits - _teacher_logits(step, "mimic")).pow(2).sum(dim=1).mean()


class FeatureTap:
    """Keeps the last output of ``module`` (a forward hook) until :meth:`close`; a copy, so in-place ops after it don't alter it."""

    def __init__(self, module: nn.Module) -> None:
        self.output: torch.Tensor | None = None
        self._handle = module.register_forward_hook(self._keep)

    def _keep(self, _module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        self.output = output.clone()

    def close(self) -> None:
        self._handle.remove()


@dataclass(frozen=True)
class HintLoss:
    """FitNets' hint loss, a task loss: the regressed guided features of the student against the teacher's hint."""

    guided: FeatureTap
    hint: FeatureTap
    regressor: nn.Module

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        if self.guided.output is None or self.hint.output is None:
            raise ValueError("the hint loss saw no features: the guided and hint layers were not run by the forward pass")
        diff = self.hint.output - self.regressor(self.guided.output)
        return 0.5 * diff.pow(2).flatten(1).sum(dim=1).mean()


#: ``recipe.distill`` -> the task loss of a recovery fine-tuning, from (T, alpha, label_smoothing)
RECOVERY_LOSSES: dict[str, Callable[[float, float, float], LossTerm]] = {
    "kd": lambda T, alpha, smoothing: HintonKD(T, alpha, smoothing),
    "mimic": lambda T, alpha, smoothing: LogitMimic(),
}
