"""What every compression method implements, and what it is given to work with.

A method receives the trained baseline and a context (data, the run's hardware
target, a fine-tuning loop, an evaluator, a work folder) and returns the compressed
model *decoded from the file it wrote*, so that the stored size and the accuracy of a
run both come from that one file (docs/ARCHITECTURE.md, Contracts). A method never measures latency
itself: it asks ``ctx.target``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from torch import nn

from hardware.target import HardwareTarget
from methods.config import MethodConfigError as MethodConfigError  # raised by methods, defined with the schemas
from methods.config import parse_config
from methods.hooks import TrainingHook
from methods.losses import LossTerm


class FineTune(Protocol):
    def __call__(self, model: nn.Module, epochs: float, *, lr: float | None = None, hooks: Sequence[TrainingHook] = (),
                 loss_terms: Sequence[LossTerm] = (), task_loss: LossTerm | None = None,
                 teacher: nn.Module | None = None) -> nn.Module:
        """Train ``model`` in place on the training split with the run's recipe; return it.

        The loss is ``task_loss`` (default: the recipe's cross-entropy) plus every term of
        ``loss_terms`` (methods.losses); ``teacher``, when given, is frozen and its logits
        reach the terms as ``step.teacher_logits``. ``hooks`` (methods.hooks) run at their points
        of the training loop.
        """


class Evaluate(Protocol):
    def __call__(self, model: nn.Module, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        """Return at least {"top1": percent, "loss": mean cross-entropy} on ``split``."""


@dataclass
class CompressionContext:
    """Everything a method may use; built by the run pipeline (benchmarks.pipeline)."""

    datamodule: Any  # a LightningDataModule, already set up
    target: HardwareTarget
    input_shape: tuple[int, ...]  # one batch for latency queries, batch dim included
    workdir: Path
    seed: int
    finetune: FineTune
    evaluate: Evaluate


@dataclass
class CompressionResult:
    """A compressed model, decoded from ``stored_file``, with what the method wants recorded."""

    model: nn.Module
    stored_file: Path
    #: per-layer (weight_bits, activation_bits), for emulated targets and the report
    layer_bits: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: method-specific numbers: accuracy before fine-tuning, achieved sparsity, ...
    metrics: dict[str, float] = field(default_factory=dict)
    #: extra files worth keeping with the run (policy.json, schedules, plots)
    artifacts: list[Path] = field(default_factory=list)
    #: deployable files of the model by runtime format (``{"onnx": int8 QDQ model}``): a target
    #: whose ``executes`` names one of them runs that file instead of the PyTorch model
    deployables: dict[str, Path] = field(default_factory=dict)
    #: the candidates a search evaluated, one ``{"name", "params", "metrics"}`` each: the run pipeline records
    #: each as a child MLflow run of this one, so a search's runs are grouped under the derived net's run
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stored_bytes(self) -> int:
        return self.stored_file.stat().st_size


class CompressionMethod(ABC):
    """A compression method configured by conf/method/<name>.yaml (Hydra ``_target_``).

    The yaml's keys (all but ``name``) are parsed once, here, into the method's typed schema
    ``Config`` (methods.config), so every method refuses a bad key or value the same way.
    """

    #: the method's name (its conf/method yaml) when the yaml gives none
    name: str = ""
    #: the typed schema of the method's keys: a dataclass declared with methods.config
    Config: ClassVar[type[Any]]
    config: Any

    def __init__(self, name: str | None = None, **options: Any) -> None:
        if name is not None:
            self.name = name
        self.config = parse_config(self.Config, options)

    @abstractmethod
    def compress(self, model: nn.Module, ctx: CompressionContext) -> CompressionResult:
        """Compress a copy of ``model`` (the trained baseline must stay untouched)."""
