"""The run pipeline's training recipes (conf/recipe/<name>.yaml) for the studies: one source of their values."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, cast

from omegaconf import OmegaConf

from benchmarks.preflight import CONF_DIR
from benchmarks.schema import RecipeConfig


@functools.cache
def _preset(name: str) -> RecipeConfig:
    return RecipeConfig(**cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(CONF_DIR / "recipe" / f"{name}.yaml"))))


def conf_recipe(name: str, epochs: float | None = None, **changes: Any) -> RecipeConfig:
    """conf/recipe/``name``.yaml as a run composes it, at ``epochs`` (None: the yaml's) and with ``changes``."""
    preset = _preset(name)
    return dataclasses.replace(preset, epochs=preset.epochs if epochs is None else epochs, **changes)
