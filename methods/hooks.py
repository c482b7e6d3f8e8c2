"""What a method does around the steps of a fine-tuning, written without Lightning.

A method hands :class:`TrainingHook` objects to ``ctx.finetune(..., hooks=[...])``; the run's
training loop (``benchmarks.training.HookCallback``) calls them at the matching points of its
loop. Methods thus import torch but never Lightning, so building a method, and refusing a bad
method config, costs a run seconds less before any training (issue 11: a typo answers at once).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class TrainingState(Protocol):
    """Where the training loop stands when it calls a hook."""

    @property
    def step(self) -> int:
        """Optimizer steps taken so far in this fine-tuning."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps this fine-tuning takes in all."""

    @property
    def device(self) -> torch.device:
        """Where the trained model lives."""


class TrainingHook:
    """No-op at every point of the loop; a method overrides the points it needs."""

    def on_train_start(self, state: TrainingState) -> None:
        """Before the first step."""

    def on_train_batch_start(self, state: TrainingState) -> None:
        """Before each batch's forward pass."""

    def on_before_optimizer_step(self, state: TrainingState) -> None:
        """After the backward pass, before the optimizer changes the weights."""

    def on_train_batch_end(self, state: TrainingState) -> None:
        """After each optimizer step."""

    def on_train_epoch_end(self, state: TrainingState) -> None:
        """After each epoch."""

    def on_train_end(self, state: TrainingState) -> None:
        """After the last step."""
