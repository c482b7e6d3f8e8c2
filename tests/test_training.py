"""The training loop's loss hook: terms see the step, a teacher is frozen and kept out of the model."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import Classifier, TrainingDivergedError, fit
from methods.losses import TrainingStep


class TinyData(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(32, 4, generator=g), torch.arange(32) % 3)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)

    val_dataloader = train_dataloader


def small_net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


RECIPE = RecipeConfig(epochs=1, lr=0.1, scheduler="none", weight_decay=0.0)
TRAINER = TrainerConfig(progress_bar=False, limit_val_batches=0, deterministic=True)


class Recorder:
    """A loss term that adds nothing and keeps what it was shown."""

    def __init__(self) -> None:
        self.steps: list[TrainingStep] = []

    def __call__(self, step: TrainingStep) -> torch.Tensor:
        self.steps.append(step)
        return 0.0 * step.logits.sum()


def test_a_teacher_is_frozen_in_eval_mode_and_its_logits_reach_the_terms() -> None:
    torch.manual_seed(0)
    student, teacher = small_net(), small_net()
    teacher.train()  # the loop must put it in eval mode itself
    before = copy.deepcopy(teacher.state_dict())
    recorder = Recorder()
    fit(student, TinyData(), RECIPE, TRAINER, seed=0, loss_terms=[recorder], teacher=teacher)
    assert len(recorder.steps) == 4
    step = recorder.steps[0]
    assert step.teacher_logits is not None and not step.teacher_logits.requires_grad
    with torch.no_grad():
        assert torch.allclose(step.teacher_logits, teacher.eval()(step.inputs))
    for key, value in teacher.state_dict().items():  # weights and BN statistics untouched
        assert torch.equal(value, before[key]), key
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(key.startswith("_teacher") for key in Classifier(student, RECIPE, teacher=teacher).state_dict())


def test_loss_terms_are_added_to_the_task_loss() -> None:
    def weight_norm(step: TrainingStep) -> torch.Tensor:
        return 10.0 * sum(p.pow(2).sum() for p in step.model.parameters())

    torch.manual_seed(0)
    plain, penalised = small_net(), small_net()
    penalised.load_state_dict(plain.state_dict())
    fit(plain, TinyData(), RECIPE, TRAINER, seed=0)
    fit(penalised, TinyData(), RECIPE, TRAINER, seed=0, loss_terms=[weight_norm])
    norm = lambda m: float(sum(p.pow(2).sum() for p in m.parameters()))  # noqa: E731
    assert norm(penalised) < 0.5 * norm(plain)


def test_a_task_loss_replaces_cross_entropy() -> None:
    recorder = Recorder()
    torch.manual_seed(0)
    model = small_net()
    start = copy.deepcopy(model.state_dict())
    fit(model, TinyData(), RECIPE, TRAINER, seed=0, task_loss=recorder)  # a zero loss: nothing moves
    assert len(recorder.steps) == 4
    for key, value in model.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, start[key]), key


def test_a_diverging_training_stops_at_once_naming_the_learning_rate() -> None:
    torch.manual_seed(0)
    model = small_net()
    exploding = RecipeConfig(epochs=1, lr=1e30, scheduler="none", weight_decay=0.0)
    with pytest.raises(TrainingDivergedError, match=r"diverged at learning rate 1e\+30; lower it"):
        fit(model, TinyData(), exploding, TRAINER, seed=0)


def test_a_model_handed_over_in_eval_mode_trains_in_train_mode() -> None:
    """Lightning 2.6 keeps the modes it is given: a compressed model decoded from its file (or checked in
    eval mode before the run) would fine-tune with frozen batch-norm statistics and no dropout."""
    torch.manual_seed(0)
    model = small_net().eval()
    modes: list[bool] = []

    def mode(step: TrainingStep) -> torch.Tensor:
        modes.append(step.model.training)
        return 0.0 * step.logits.sum()

    fit(model, TinyData(), RECIPE, TRAINER, seed=0, loss_terms=[mode])
    assert modes and all(modes)
    assert not torch.equal(model[1].running_mean, torch.zeros(8))  # the statistics followed the batches
    assert not model.training  # handed back in the mode it came in
