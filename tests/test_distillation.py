"""Distillation (methods/distillation): the losses, the kd / mimic / fitnets methods, and recipe.distill's recovery."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import mlflow
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from timm.models import register_model
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.context import make_context
from benchmarks.models._entrypoint import architecture_args
from benchmarks.pipeline import run
from benchmarks.schema import ConfigError, RecipeConfig, TrainerConfig
from hardware.measured import LocalCPU
from methods import create_method
from methods.base import CompressionContext, MethodConfigError
from methods.distillation.fitnets import make_regressor, output_shape
from methods.distillation.losses import HintonKD, LogitMimic, soft_target_loss
from methods.losses import CrossEntropy, TrainingStep
from methods.storage import read_entries, read_state
from tests.conftest import FAST_LATENCY, needs_shared_data
from tests.test_training import Recorder

CLASSES, SHAPE = 3, (1, 8, 8)


class TinyCNN(nn.Module):
    """conv1 (padded) -> relu1 -> conv2 (``pad2``) -> relu2 -> flatten -> fc1 -> relu3 -> fc2."""

    def __init__(self, width: int = 8, hidden: int = 12, pad2: int = 0, num_classes: int = CLASSES,
                 in_chans: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, padding=pad2)
        self.relu2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten()
        side = SHAPE[1] - 2 + 2 * pad2
        self.fc1 = nn.Linear(width * side * side, hidden)
        self.relu3 = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


@register_model
def distill_test_cnn(pretrained: bool = False, **kwargs: Any) -> TinyCNN:
    """A registered model for these tests: students are built by name through timm."""
    return TinyCNN(**architecture_args("distill_test_cnn", pretrained, kwargs))


class TinyImages(L.LightningDataModule):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(32, *SHAPE, generator=g), torch.arange(32) % CLASSES)
        self.num_classes, self.input_shape = CLASSES, SHAPE

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=8)

    val_dataloader = test_dataloader = train_dataloader


RECIPE = RecipeConfig(epochs=1, lr=0.05, scheduler="none", weight_decay=0.0)
TRAINER = TrainerConfig(progress_bar=False, limit_val_batches=0, deterministic=True)
STUDENT = {"name": "distill_test_cnn", "kwargs": {"width": 4, "hidden": 6}}


def context(tmp_path: Path, recipe: RecipeConfig = RECIPE, **kwargs: Any) -> CompressionContext:
    target = LocalCPU(warmup=1, repeats=3, min_time_s=0.0, max_time_s=2.0, threads=1)
    return make_context(TinyImages(), target, recipe, TRAINER, seed=0, workdir=tmp_path, **kwargs)


def teacher_net() -> nn.Module:
    torch.manual_seed(1)
    return TinyCNN()


def step_of(logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> TrainingStep:
    return TrainingStep(inputs=torch.zeros(len(targets)), targets=targets, logits=logits, model=nn.Identity(),
                        teacher_logits=teacher_logits)


class LossCapture(L.Callback):
    """The loss each training step returned."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


# --- the losses ---------------------------------------------------------------------------------------------------

def test_kd_is_cross_entropy_when_alpha_is_zero_and_soft_targets_only_when_one() -> None:
    g = torch.Generator().manual_seed(0)
    logits, teacher, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), torch.arange(6) % 5
    step = step_of(logits, teacher, y)
    assert torch.equal(HintonKD(T=4.0, alpha=0.0)(step), F.cross_entropy(logits, y))
    assert torch.allclose(HintonKD(T=4.0, alpha=1.0)(step), soft_target_loss(logits, teacher, 4.0))
    assert float(HintonKD(T=4.0, alpha=1.0)(step_of(teacher, teacher, y))) == pytest.approx(0.0, abs=1e-6)


def test_the_t_squared_factor_keeps_the_soft_target_gradient_independent_of_t() -> None:
    """Hinton et al., Sec. 2.1: for zero-mean logits and high T, dKL/dz_i ~ (z_i - v_i) / (K T^2)."""
    g = torch.Generator().manual_seed(0)
    batch, classes = 4, 10
    teacher = torch.randn(batch, classes, generator=g)
    student = torch.randn(batch, classes, generator=g)
    teacher, student = teacher - teacher.mean(1, keepdim=True), student - student.mean(1, keepdim=True)

    def gradient(T: float, squared: bool) -> torch.Tensor:
        z = student.clone().requires_grad_(True)
        loss = soft_target_loss(z, teacher, T) / (1.0 if squared else T * T)
        loss.backward()
        return z.grad  # type: ignore[return-value]

    limit = (student - teacher) / (classes * batch)  # batchmean divides by the batch
    errors = [float((gradient(T, squared=True) - limit).norm() / limit.norm()) for T in (10.0, 20.0, 40.0)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.02, errors  # the approximation's O(1/T)
    raw_ratio = float(gradient(10.0, False).norm() / gradient(20.0, False).norm())
    scaled_ratio = float(gradient(10.0, True).norm() / gradient(20.0, True).norm())
    assert raw_ratio == pytest.approx(4.0, rel=0.05)  # without T^2 the soft targets fade as 1/T^2
    assert scaled_ratio == pytest.approx(1.0, rel=0.05)


def test_mimic_is_half_the_squared_logit_distance_per_example() -> None:
    logits, teacher = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert float(LogitMimic()(step_of(logits, teacher, torch.tensor([0, 1])))) == pytest.approx((5 / 2 + 25 / 2) / 2)


def test_kd_without_a_teacher_says_how_to_give_one() -> None:
    step = TrainingStep(inputs=torch.zeros(2), targets=torch.tensor([0, 1]), logits=torch.zeros(2, 3), model=nn.Identity())
    with pytest.raises(ValueError, match="teacher="):
        HintonKD()(step)


# --- the methods ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["kd", "mimic", "fitnets"])
def test_a_distillation_run_leaves_the_teacher_bit_identical_and_stores_only_the_student(name: str, tmp_path: Path) -> None:
    teacher = teacher_net()
    before = copy.deepcopy(teacher.state_dict())
    layers = {"hint_layer": "relu3", "guided_layer": "relu3", "hint": {"epochs": 1.0}} if name == "fitnets" else {}
    method = create_method(name, student=STUDENT, finetune={"epochs": 1.0}, **layers)
    result = method.compress(teacher, context(tmp_path))

    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in teacher.parameters())

    student_keys = set(TinyCNN(width=4, hidden=6).state_dict())
    _header, entries = read_entries(result.stored_file)
    assert {e.name for e in entries} == student_keys
    stored = read_state(result.stored_file).tensors
    for value in teacher.state_dict().values():
        assert not any(t.shape == value.shape and torch.equal(t, value) for t in stored.values())
    assert sum(p.numel() for p in result.model.parameters()) == result.metrics["student_params"]
    assert result.metrics["student_params"] < result.metrics["teacher_params"]
    x = torch.randn(2, *SHAPE)
    assert result.model(x).shape == (2, CLASSES)


@pytest.mark.parametrize(("alpha", "teacher_runs"), [(0.0, False), (0.5, True)])
def test_kd_with_alpha_zero_trains_the_student_alone_without_running_the_teacher(
        alpha: float, teacher_runs: bool, tmp_path: Path) -> None:
    teacher = teacher_net()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    create_method("kd", student=STUDENT, finetune={"epochs": 1.0}, alpha=alpha).compress(teacher, context(tmp_path))
    # the class-count check runs the teacher once on one input; training runs it on every batch
    assert (len(calls) > 1) is teacher_runs, len(calls)


def test_fitnets_regressor_follows_the_named_layers() -> None:
    teacher = TinyCNN(width=8, hidden=12)  # relu2: 8 x 6 x 6, relu3: 12
    student = TinyCNN(width=4, hidden=6, pad2=1)  # relu2: 4 x 8 x 8, relu3: 6
    shape = (1, *SHAPE)
    conv = make_regressor(output_shape(student, student.relu2, shape), output_shape(teacher, teacher.relu2, shape), "k")
    assert isinstance(conv, nn.Conv2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (4, 8, (3, 3))  # 8 - 6 + 1
    same = make_regressor(output_shape(teacher, teacher.relu2, shape), output_shape(teacher, teacher.relu2, shape), "k")
    assert same.kernel_size == (1, 1)  # type: ignore[union-attr]
    linear = make_regressor(output_shape(student, student.relu3, shape), output_shape(teacher, teacher.relu3, shape), "k")
    assert isinstance(linear, nn.Linear) and (linear.in_features, linear.out_features) == (6, 12)
    with pytest.raises(MethodConfigError, match="method.guided_layer.*spatially smaller"):
        make_regressor(output_shape(teacher, teacher.relu2, shape), output_shape(student, student.relu2, shape),
                       "method.guided_layer")
    with pytest.raises(MethodConfigError, match="both be feature maps"):
        make_regressor(output_shape(student, student.relu3, shape), output_shape(teacher, teacher.relu2, shape), "k")


def test_fitnets_stage_one_trains_the_student_up_to_its_guided_layer(tmp_path: Path) -> None:
    method = create_method("fitnets", student={**STUDENT, "kwargs": {"width": 4, "hidden": 6, "pad2": 1}},
                           hint_layer="relu2", guided_layer="relu2", hint={"epochs": 1.0}, finetune={"epochs": 0.25})
    ctx = context(tmp_path)
    stages: list[dict[str, torch.Tensor]] = []

    def finetune(model: nn.Module, epochs: float, **kwargs: Any) -> nn.Module:
        student = getattr(model, "student", model)  # stage 1 trains the student with the regressor
        stages.append(copy.deepcopy(student.state_dict()))
        ctx_finetune(model, epochs, **kwargs)
        stages.append(copy.deepcopy(student.state_dict()))
        return model

    ctx_finetune, ctx.finetune = ctx.finetune, finetune
    result = method.compress(teacher_net(), ctx)
    assert result.metrics["regressor_params"] == 4 * 8 * 3 * 3 + 8  # a 3x3 conv: 8 - 6 + 1
    before, after_hints = stages[0], stages[1]
    for key in before:  # conv1, conv2 learn the hint; fc1, fc2 (after the guided layer) are left for stage 2
        assert torch.equal(before[key], after_hints[key]) == key.startswith("fc"), key
    assert not torch.equal(stages[2]["fc2.weight"], stages[3]["fc2.weight"])  # stage 2 trains the whole student


# --- recovery: recipe.distill --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kd", "mimic"])
def test_a_recovery_fine_tuning_minimises_the_distillation_loss_from_the_baseline(kind: str, tmp_path: Path) -> None:
    baseline = teacher_net()
    reference = copy.deepcopy(baseline).eval()
    recipe = RecipeConfig(**{**vars(RECIPE), "distill": kind, "distill_T": 2.0, "distill_alpha": 0.7})
    heard: list[str] = []
    capture = LossCapture()  # a run's callback (as a sweep trial's pruning): it hears every fine-tuning
    ctx = context(tmp_path, recipe, baseline=baseline, on_finetune=heard.append, callbacks=[capture])
    torch.manual_seed(2)
    model = TinyCNN()
    recorder = Recorder()
    ctx.finetune(model, 1.0, loss_terms=[recorder])
    expected = HintonKD(2.0, 0.7) if kind == "kd" else LogitMimic()
    assert len(capture.losses) == len(recorder.steps) == 4
    for step, loss in zip(recorder.steps, capture.losses, strict=True):
        with torch.no_grad():
            assert torch.allclose(step.teacher_logits, reference(step.inputs))  # type: ignore[arg-type]
            assert loss == pytest.approx(float(expected(step)), rel=1e-5)
            assert loss != pytest.approx(float(F.cross_entropy(step.logits, step.targets)), rel=1e-3)
    assert heard == [f"{type(expected).__name__}({'T=2.0, alpha=0.7, label_smoothing=0.0' if kind == 'kd' else ''}) "
                     "+ Recorder"]
    assert baseline.training and all(p.requires_grad for p in baseline.parameters())  # a frozen copy taught


def test_a_methods_own_task_loss_is_kept_under_recipe_distill(tmp_path: Path) -> None:
    recipe = RecipeConfig(**{**vars(RECIPE), "distill": "kd"})
    ctx = context(tmp_path, recipe, baseline=teacher_net())
    recorder = Recorder()
    ctx.finetune(TinyCNN(), 0.25, task_loss=CrossEntropy(), loss_terms=[recorder])
    assert recorder.steps and all(step.teacher_logits is None for step in recorder.steps)


# --- bad configs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("overrides", "key"), [
    ({"T": 0.0}, "method.T"), ({"T": -1.0}, "method.T"), ({"alpha": 1.5}, "method.alpha"), ({"alpha": -0.1}, "method.alpha"),
    ({"teacher": {"name": "distill_test_cnn"}}, "method.teacher"),
    ({"finetune": {"epochs": 0.0}}, "method.finetune.epochs"),
])
def test_bad_kd_settings_are_refused_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(MethodConfigError, match=rf"^{key}\b"):
        create_method("kd", **overrides)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"distill": "hinton"}, "recipe.distill"), ({"distill_T": 0.0}, "recipe.distill_T"),
    ({"distill_alpha": 1.5}, "recipe.distill_alpha"),
])
def test_bad_recipe_distill_settings_are_refused_naming_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        RecipeConfig(**overrides)


def test_recipe_distill_without_a_baseline_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="recipe.distill.*baseline="):
        context(tmp_path, RecipeConfig(**{**vars(RECIPE), "distill": "mimic"}))


def test_teacher_and_student_with_different_classes_are_refused(tmp_path: Path) -> None:
    method = create_method("kd", student={**STUDENT, "kwargs": {"num_classes": 5}})
    with pytest.raises(MethodConfigError, match=r"^method\.student has 5 classes and the teacher 3"):
        method.compress(teacher_net(), context(tmp_path))


def test_an_unknown_hint_layer_lists_the_teachers_layers(tmp_path: Path) -> None:
    method = create_method("fitnets", student=STUDENT, hint_layer="block9", guided_layer="relu3")
    with pytest.raises(MethodConfigError, match=r"^method\.hint_layer 'block9' is not a module of the teacher; "
                                                r"its modules: conv1, relu1, conv2"):
        method.compress(teacher_net(), context(tmp_path))


def test_a_named_teacher_loads_its_weights_and_refuses_weights_that_do_not_fit(tmp_path: Path) -> None:
    trained = teacher_net()
    good, bad = tmp_path / "teacher.pt", tmp_path / "other.pt"
    torch.save(trained.state_dict(), good)
    torch.save(TinyCNN(width=5).state_dict(), bad)
    student_run = {"student": STUDENT, "finetune": {"epochs": 0.25}}
    unrelated = TinyCNN(width=2)  # the run's baseline, not the teacher here
    teacher = {"name": "distill_test_cnn", "weights": str(good)}
    result = create_method("kd", teacher=teacher, **student_run).compress(unrelated, context(tmp_path / "good"))
    assert result.metrics["teacher_params"] == sum(p.numel() for p in trained.parameters())
    with pytest.raises(MethodConfigError, match=r"^method\.teacher\.weights .*other\.pt does not fit "
                                                r"method\.teacher\.name='distill_test_cnn'"):
        create_method("kd", teacher={**teacher, "weights": str(bad)}, **student_run).compress(unrelated,
                                                                                              context(tmp_path / "bad"))


def test_an_unknown_student_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MethodConfigError, match=r"^method\.student\.name 'no_such_net' is not a registered model"):
        create_method("mimic", student={"name": "no_such_net"}).compress(teacher_net(), context(tmp_path))


# --- the pipeline --------------------------------------------------------------------------------------------------

TINY = ["+experiment=tiny", *FAST_LATENCY, "evaluation.per_layer_table=false"]


@needs_shared_data
@pytest.mark.slow
def test_the_run_records_the_fine_tuning_loss_and_distilling_keeps_the_baseline(
        compose_cfg: Callable[..., DictConfig]) -> None:
    first = compose_cfg(*TINY)
    run(first)
    run(compose_cfg(*TINY, "+method=magnitude", "method.finetune.epochs=0.25", "recipe.distill=kd"))
    run(compose_cfg(*TINY, "+method=kd", "method.finetune.epochs=2"))
    run(compose_cfg(*TINY, "+method=mimic", "method.finetune.epochs=0.25"))  # the yamls' defaults fit LeNet-5
    run(compose_cfg(*TINY, "+method=fitnets", "method.hint.epochs=0.25", "method.finetune.epochs=0.25"))
    mlflow.set_tracking_uri(first.logger.tracking_uri)
    runs = mlflow.search_runs(experiment_names=[first.logger.experiment_name], output_format="list",
                              order_by=["attributes.start_time ASC"])
    tags = [r.data.tags for r in runs]
    assert [t["baseline_origin"] for t in tags] == ["trained", *["cache"] * 4]  # distilling retrains no baseline
    assert len({t["baseline_key"] for t in tags}) == 1
    assert tags[0]["finetune_loss"] == "none (no fine-tuning)"
    assert tags[1]["finetune_loss"] == "HintonKD(T=4.0, alpha=0.9, label_smoothing=0.0)"
    assert tags[2]["finetune_loss"] == "HintonKD(T=4.0, alpha=0.9, label_smoothing=0.0)"
    assert tags[3]["finetune_loss"] == "LogitMimic()"
    assert tags[4]["finetune_loss"] == "HintLoss() | HintonKD(T=4.0, alpha=0.9, label_smoothing=0.0)"
    student = runs[2].data.metrics  # the stored student (lenet_300_100), decoded and evaluated
    assert student["params"] == student["method_student_params"] == 266_610
    assert 4 * 266_610 < student["stored_bytes"] < 4 * 266_610 + 1024  # fp32 tensors and a header, no teacher
    assert student["top1"] > 15.0  # above chance (10%) after two epochs of 512 images
