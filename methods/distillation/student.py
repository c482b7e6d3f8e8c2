"""What the distillation methods share: the teacher, the student built by name, training it, storing it.

The teacher is the run's baseline (the model ``compress`` receives) unless ``teacher.name`` and
``teacher.weights`` name another (a state dict read with ``torch.load(weights_only=True)``). It
is handed to ``ctx.finetune(..., teacher=...)``, which keeps it frozen, in eval mode and under
no_grad. The student is ``timm.create_model(student.name, num_classes=<the data's>,
in_chans=<the data's>, **student.kwargs)`` (any timm model, and CompressBench's zoo, which the run
pipeline registers into timm), trained from scratch, and stored alone: its file holds its own
tensors and the name and arguments that rebuild it (architecture ``student``), never the teacher's.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from methods.base import CompressionContext, CompressionMethod, CompressionResult
from methods.config import FineTuning, fail, finetune_default, option
from methods.losses import LossTerm
from methods.storage import StoredState, load_model, load_state_into, register_architecture, save_model, size_metrics
from methods.storage.codecs import dense_entries

STUDENT_ARCHITECTURE = "student"


@dataclass
class StudentConfig:
    """``student``: a registered (timm or CompressBench zoo) model name and its factory's arguments."""

    name: str = "lenet_300_100"
    kwargs: dict[str, Any] = option(factory=dict)


@dataclass
class TeacherConfig:
    """``teacher``: null name (the default) is the run's baseline; otherwise a model name and its weights file."""

    name: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = option(factory=dict)

    def check(self, key: str) -> None:
        if (self.name is None) != (self.weights is None):
            fail(key, "needs both name and weights (a model and its trained state dict), or neither (the run's baseline)")


@dataclass
class DistillationConfig:
    """The keys every distillation method has: the student, the teacher, the student's training from scratch."""

    student: StudentConfig = option(factory=StudentConfig)
    teacher: TeacherConfig = option(factory=TeacherConfig)
    finetune: FineTuning = option(factory=finetune_default(3.0))

    def check(self, key: str) -> None:
        if self.finetune.epochs <= 0:
            fail(f"{key}.finetune.epochs", f"is {self.finetune.epochs}: the student is trained from scratch, it needs epochs > 0")


def create(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any], key: str) -> nn.Module:
    """``timm.create_model`` with the data's classes and channels (``kwargs`` may override them)."""
    import timm  # here: checking a distillation config needs no timm

    if not timm.is_model(name):
        fail(f"{key}.name", f"{name!r} is not a registered model (timm's, or CompressBench's zoo once benchmarks.models "
                            "is imported, as runs do); list them with timm.list_models('<pattern>')")
    try:
        return timm.create_model(name, pretrained=False, **{"num_classes": num_classes, "in_chans": in_chans, **kwargs})
    except TypeError as err:
        fail(f"{key}.kwargs", f"{kwargs} were refused by {name}'s factory: {err}")


def _data_shape(ctx: CompressionContext) -> tuple[int, int]:
    return int(ctx.datamodule.num_classes), int(ctx.input_shape[1])


def load_teacher(config: TeacherConfig, baseline: nn.Module, ctx: CompressionContext, key: str) -> nn.Module:
    """The teacher: ``baseline`` itself, or ``config.name`` with the state dict at ``config.weights``."""
    if config.name is None:
        return baseline
    teacher = create(config.name, *_data_shape(ctx), config.kwargs, key)
    path = Path(str(config.weights))
    if not path.is_file():
        fail(f"{key}.weights", f"{path} is not a file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    try:
        teacher.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        fail(f"{key}.weights", f"{path} does not fit {key}.name={config.name!r}: {str(err).splitlines()[0]} "
                               f"(is it that model's state dict, for this data's classes and channels?)")
    return teacher


def class_count(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """The number of logits ``model`` returns for one input of ``input_shape`` (batch dim included)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.no_grad():
        logits = model(torch.zeros((1, *input_shape[1:]), device=device))
    model.train(was_training)
    return int(logits.shape[-1])


def save_student(student: nn.Module, path: Path, config: StudentConfig, ctx: CompressionContext) -> dict[str, int]:
    """The student's own tensors (fp32, as the baseline is stored) and what rebuilds it."""
    num_classes, in_chans = _data_shape(ctx)
    meta = {"model": config.name, "kwargs": {"num_classes": num_classes, "in_chans": in_chans, **config.kwargs}}
    return save_model(path, dense_entries(student.state_dict()), meta, architecture=STUDENT_ARCHITECTURE)


@register_architecture(STUDENT_ARCHITECTURE)
def _student(template: nn.Module, state: StoredState) -> nn.Module:
    """The stored student, rebuilt by name: it does not share the template's (the teacher's) architecture."""
    import timm

    model = timm.create_model(state.meta["model"], pretrained=False, **state.meta["kwargs"])
    return load_state_into(model, state).eval()


class Distillation(CompressionMethod):
    """A student trained from scratch against a frozen teacher; subclasses give the loss (or the stages)."""

    config: DistillationConfig

    @abstractmethod
    def task_loss(self) -> LossTerm:
        """The loss the student is trained with (it reads ``step.teacher_logits``)."""

    def uses_teacher(self) -> bool:
        """Whether the loss reads the teacher's logits; when not, the teacher does not run at all."""
        return True

    def train(self, student: nn.Module, teacher: nn.Module, ctx: CompressionContext) -> dict[str, float]:
        """Train ``student`` in place; return the method's metrics."""
        ctx.finetune(student, self.config.finetune.epochs, lr=self.config.finetune.lr,
                     task_loss=self.task_loss(), teacher=teacher if self.uses_teacher() else None)
        return {}

    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        teacher = load_teacher(self.config.teacher, model, ctx, "method.teacher")
        torch.manual_seed(ctx.seed)  # the same initial student for the same seed
        student = create(self.config.student.name, *_data_shape(ctx), self.config.student.kwargs, "method.student")
        classes = {"teacher": class_count(teacher, ctx.input_shape), "student": class_count(student, ctx.input_shape)}
        if classes["teacher"] != classes["student"]:
            fail("method.student", f"has {classes['student']} classes and the teacher {classes['teacher']}: "
                                   "distillation needs the same classes (check method.student.kwargs / method.teacher)")
        metrics = self.train(student, teacher, ctx)
        path = ctx.workdir / "student.cbm"
        sizes = save_student(student, path, self.config.student, ctx)
        params = {f"{role}_params": float(sum(p.numel() for p in m.parameters()))
                  for role, m in (("teacher", teacher), ("student", student))}
        return CompressionResult(model=load_model(path, model), stored_file=path,
                                 metrics={**params, **metrics, **size_metrics(sizes)})
