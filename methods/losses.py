"""The loss hook of training: what a method may add to (or put in place of) cross-entropy.

The run pipeline owns the one training loop (benchmarks.training); a method shapes the
loss through terms it hands to ``ctx.finetune``. Each term sees one :class:`TrainingStep`
(the batch, the logits, the model being trained and, when the fine-tuning was given a
teacher, the frozen teacher's logits for the same batch), so group lasso (SSL), PACT's
clipping penalty, distillation losses, binary training and NAS supernets all plug in
without a loop of their own (docs/ARCHITECTURE.md, "Training loss and teacher").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainingStep:
    """What one training step exposes to loss terms."""

    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    model: nn.Module
    #: the teacher's logits for ``inputs`` (computed in eval mode under no_grad), or None
    teacher_logits: torch.Tensor | None = None


class LossTerm(Protocol):
    """One term of the training loss: a scalar tensor for a step."""

    def __call__(self, step: TrainingStep) -> torch.Tensor: ...


@dataclass(frozen=True)
class CrossEntropy:
    """The task loss every training starts from: cross-entropy with the recipe's label smoothing."""

    label_smoothing: float = 0.0

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        return F.cross_entropy(step.logits, step.targets, label_smoothing=self.label_smoothing)
