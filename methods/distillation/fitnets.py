"""Romero et al., "FitNets: Hints for Thin Deep Nets" (2015): the student first learns the teacher's intermediate features.

Stage 1 trains the student up to its *guided* layer (the layers after it get no gradient) so that a
learned regressor maps its output onto the teacher's *hint* layer's output:
``1/2 * ||hint - regressor(guided)||^2`` (:class:`methods.distillation.losses.HintLoss`). The
regressor is, as in the authors' code, a convolution without padding whose kernel is
``student_HW - teacher_HW + 1`` (1x1 when the spatial shapes agree), or a linear layer between flat
features. Stage 2 trains the whole student with Hinton's KD; the regressor is dropped. Both layers
are module names (``named_modules``), given in the config.

Departures: the regressor has no nonlinearity (the authors' matches the hint layer's); stage 2 is
our KD with its ``T^2`` factor and a fixed ``alpha``, where the authors weigh the teacher's
cross-entropy by a factor decaying from 4 to 1 (../shared/reference/method-notes/distillation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import CompressionContext
from methods.config import FineTuning, fail, finetune_default, option
from methods.distillation.kd import KDConfig, KnowledgeDistillation
from methods.distillation.losses import FeatureTap, HintLoss


@dataclass
class FitNetsConfig(KDConfig):
    """conf/method/fitnets.yaml: KD's keys, the two layers, stage 1's training (``hint``)."""

    hint_layer: str = "relu1"
    guided_layer: str = "relu2"
    hint: FineTuning = option(factory=finetune_default(1.0))


def module(model: nn.Module, name: str, key: str, role: str) -> nn.Module:
    """``model``'s module ``name``; an unknown name lists the available ones."""
    modules = dict(model.named_modules())
    if name not in modules or not name:
        fail(key, f"{name!r} is not a module of the {role}; its modules: {', '.join(n for n in modules if n)}")
    return modules[name]


def make_regressor(guided: torch.Size, hint: torch.Size, key: str) -> nn.Module:
    """A map from the guided layer's output shape onto the hint layer's (batch dimension included in both)."""
    if len(guided) == len(hint) == 2:
        return nn.Linear(guided[1], hint[1])
    if len(guided) == len(hint) == 4:
        kernel = (guided[2] - hint[2] + 1, guided[3] - hint[3] + 1)
        if min(kernel) < 1:
            fail(key, f"the guided layer's output {tuple(guided[1:])} is spatially smaller than the hint's "
                      f"{tuple(hint[1:])}: choose a guided layer at least as large")
        return nn.Conv2d(guided[1], hint[1], kernel_size=kernel)
    fail(key, f"the guided layer's output {tuple(guided[1:])} and the hint's {tuple(hint[1:])} must both be "
              "feature maps (C, H, W) or both flat features (C)")


def output_shape(model: nn.Module, layer: nn.Module, input_shape: tuple[int, ...]) -> torch.Size:
    """The shape of ``layer``'s output for one input (eval mode, no gradient)."""
    tap = FeatureTap(layer)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape[1:]), device=next(model.parameters()).device))
    finally:
        tap.close()
        model.train(was_training)
    if tap.output is None:
        fail("method.guided_layer", "the layer was not run by the forward pass")
    return tap.output.shape


class HintTraining(nn.Module):
    """The student and the regressor trained together in stage 1 (the regressor's parameters join the optimizer)."""

    def __init__(self, student: nn.Module, regressor: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


class FitNets(KnowledgeDistillation):
    """``fitnets``: hints from the teacher's ``hint_layer`` to the student's ``guided_layer``, then KD."""

    name = "fitnets"
    Config = FitNetsConfig
    config: FitNetsConfig

    def regressor(self, student: nn.Module, teacher: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
        """The regressor from the student's guided layer to the teacher's hint layer, shaped by their outputs."""
        guided = module(student, self.config.guided_layer, "method.guided_layer", "student")
        hint = module(teacher, self.config.hint_layer, "method.hint_layer", "teacher")
        return make_regressor(output_shape(student, guided, input_shape), output_shape(teacher, hint, input_shape),
                              "method.guided_layer")

    def train(self, student: nn.Module, teacher: nn.Module, ctx: CompressionContext) -> dict[str, float]:
        regressor = self.regressor(student, teacher, ctx.input_shape)
        guided = FeatureTap(module(student, self.config.guided_layer, "method.guided_layer", "student"))
        hint = FeatureTap(module(teacher, self.config.hint_layer, "method.hint_layer", "teacher"))
        try:
            ctx.finetune(HintTraining(student, regressor), self.config.hint.epochs, lr=self.config.hint.lr,
                         task_loss=HintLoss(guided, hint, regressor), teacher=teacher)
        finally:
            guided.close()
            hint.close()
        return {"regressor_params": float(sum(p.numel() for p in regressor.parameters())),
                **super().train(student, teacher, ctx)}
