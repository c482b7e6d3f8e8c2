"""Typed schemas for the config nodes the pipeline itself owns.

Hydra composes plain YAML; these dataclasses give the training recipe, the trainer and
the run's top-level keys a type and a range, so that ``recipe.epochs=-1`` or
``trainer.devices=0`` is refused with a message naming the key before any work starts.
Method and hardware nodes are validated by their own classes' constructors.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "multistep")


def distill_losses() -> tuple[str, ...]:
    """``recipe.distill``: the loss of every method's fine-tuning, distilled from the baseline (or none: cross-entropy)."""
    from methods.distillation.losses import RECOVERY_LOSSES  # torch: only a recipe that distils pays for it

    return ("none", *RECOVERY_LOSSES)


class ConfigError(ValueError):
    """A config value has the wrong type or an impossible value; the message names the key."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


@dataclass
class RecipeConfig:
    """How a baseline is trained (and, shortened, how methods fine-tune)."""

    epochs: float = 10
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    scheduler: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])
    gamma: float = 0.1
    label_smoothing: float = 0.0
    #: fine-tunings (never the baseline's training) distil from the baseline: none, kd or mimic
    distill: str = "none"
    distill_T: float = 4.0
    distill_alpha: float = 0.9

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, "recipe.epochs", f"must be >= 0, got {self.epochs}")
        _require(self.optimizer in OPTIMIZERS, "recipe.optimizer", f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        _require(self.scheduler in SCHEDULERS, "recipe.scheduler", f"unknown scheduler {self.scheduler!r}; choose one of {SCHEDULERS}")
        _require(self.lr > 0, "recipe.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "recipe.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "recipe.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(all(0 < m < 1 for m in self.milestones), "recipe.milestones", "are fractions of training, each in (0, 1)")
        _require(0 <= self.label_smoothing < 1, "recipe.label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.distill != "none":  # the message's list imports torch: build it only for a recipe that distils
            _require(self.distill in distill_losses(), "recipe.distill",
                     f"unknown loss {self.distill!r}; choose one of {distill_losses()}")
        _require(self.distill_T > 0, "recipe.distill_T", f"the temperature must be > 0, got {self.distill_T}")
        _require(0 <= self.distill_alpha <= 1, "recipe.distill_alpha", f"must be in [0, 1], got {self.distill_alpha}")


@dataclass
class TrainerConfig:
    """The Lightning Trainer arguments a run may set (conf/trainer/*.yaml)."""

    accelerator: str = "cpu"
    devices: int = 1
    deterministic: bool = True
    fast_dev_run: bool = False
    limit_train_batches: float = 1.0
    limit_val_batches: float = 1.0
    check_val_every_n_epoch: int = 1
    gradient_clip_val: float | None = None
    log_every_n_steps: int = 20
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _require(self.accelerator in ("cpu", "gpu", "cuda", "auto"), "trainer.accelerator", f"unknown accelerator {self.accelerator!r}")
        _require(self.devices >= 1, "trainer.devices", f"must be >= 1, got {self.devices}")
        _require(self.limit_train_batches > 0, "trainer.limit_train_batches", "must be > 0 (a fraction or a batch count)")
        _require(self.limit_val_batches >= 0, "trainer.limit_val_batches", "must be >= 0")
        _require(self.check_val_every_n_epoch >= 1, "trainer.check_val_every_n_epoch", "must be >= 1")
        _require(self.log_every_n_steps >= 1, "trainer.log_every_n_steps", "must be >= 1")


S = TypeVar("S", bound="DataclassInstance")


def validated(schema: type[S], node: DictConfig | dict[str, Any] | None, key: str) -> S:
    """Merge ``node`` onto ``schema``'s defaults and build it; errors name ``key.<field>``."""
    known = {f.name for f in fields(schema)}
    values: dict[str, Any] = (
        cast(dict[str, Any], OmegaConf.to_container(node, resolve=True)) if isinstance(node, DictConfig) else dict(node or {})
    )
    unknown = sorted(set(values) - known)
    _require(not unknown, key, f"unknown key(s) {unknown}; allowed: {sorted(known)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return cast(S, OmegaConf.to_object(merged))  # a structured config of ``schema`` becomes a ``schema``
    except OmegaConfBaseException as err:
        full_key = f"{key}.{err.full_key}" if getattr(err, "full_key", None) else key
        raise ConfigError(f"{full_key}: {str(err).splitlines()[0]}") from None
