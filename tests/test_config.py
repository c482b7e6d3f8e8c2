"""Every config group and option composes; bad values are refused with the key named."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmarks.pipeline import CONF_DIR, with_defaults
from benchmarks.schema import ConfigError, RecipeConfig, TrainerConfig, validated

GROUPS_IN_DEFAULTS = ["dataset", "model", "recipe", "trainer", "logger", "paths"]
GROUPS_ADDED = ["method", "hw", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_defaults_list_leaves_method_and_hw_to_the_user() -> None:
    defaults = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    named = {next(iter(d)) if isinstance(d, dict) else d for d in defaults}
    assert "method" not in named and "hw" not in named
    assert {"dataset", "model", "trainer", "logger", "paths"} <= named


@pytest.mark.parametrize("group", GROUPS_IN_DEFAULTS)
def test_every_option_of_default_groups_composes(group: str, compose_cfg: Callable[..., DictConfig]) -> None:
    for option in options(group):
        cfg = compose_cfg(f"{group}={option}")
        assert cfg[group] is not None, option


@pytest.mark.parametrize("group", GROUPS_ADDED)
def test_every_option_of_added_groups_composes(group: str, compose_cfg: Callable[..., DictConfig]) -> None:
    assert options(group), f"conf/{group} has no options"
    for option in options(group):
        compose_cfg(f"+{group}={option}")


def test_method_and_hw_compose_with_plus(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("+method=baseline", "+hw=local_cpu")
    assert cfg.method.name == "baseline" and cfg.hw.name == "local_cpu"


def test_absent_method_and_hw_default_to_baseline_on_local_cpu(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = with_defaults(compose_cfg("+hw.threads=2"))
    assert cfg.method.name == "baseline"
    assert cfg.hw.name == "local_cpu" and cfg.hw.threads == 2  # a key set alone overrides the default option


def test_unknown_option_lists_the_choices(compose_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        compose_cfg("+method=no_such_method")
    assert "no_such_method" in str(err.value) and "baseline" in str(err.value)


@pytest.mark.parametrize(
    ("schema", "values", "key"),
    [
        (RecipeConfig, {"epochs": -1}, "recipe.epochs"),
        (RecipeConfig, {"epochs": "many"}, "recipe.epochs"),
        (RecipeConfig, {"optimizer": "lion"}, "recipe.optimizer"),
        (RecipeConfig, {"lr": 0}, "recipe.lr"),
        (RecipeConfig, {"learning_rate": 0.1}, "recipe"),
        (TrainerConfig, {"devices": 0}, "trainer.devices"),
    ],
)
def test_schema_errors_name_the_key(schema: type, values: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validated(schema, values, key.split(".")[0])


def test_dataset_batch_size_zero_is_refused(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("dataset.batch_size=0")
    with pytest.raises(Exception, match="batch_size"):
        instantiate(cfg.dataset)


def test_unknown_model_name_suggests_matches(compose_cfg: Callable[..., DictConfig]) -> None:
    from benchmarks.models import build_model

    with pytest.raises(ValueError, match="lenet5"):
        build_model("lenet_5", 10, 1)
