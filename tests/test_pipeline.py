"""The run pipeline in-process: baseline cache, determinism, failures recorded in MLflow."""

from __future__ import annotations

from collections.abc import Callable

import mlflow
import pytest
from omegaconf import DictConfig

from benchmarks.pipeline import run
from benchmarks.schema import ConfigError
from methods.config import MethodConfigError
from tests.conftest import FAST_LATENCY, needs_shared_data

pytestmark = [needs_shared_data, pytest.mark.slow]

TINY = ["+experiment=tiny", *FAST_LATENCY, "evaluation.per_layer_table=false"]


def finished_runs(cfg: DictConfig) -> list:
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    return mlflow.search_runs(experiment_names=[cfg.logger.experiment_name], output_format="list",
                              order_by=["attributes.start_time ASC"])


def test_baseline_cache_reuse_and_retrain_on_recipe_change(compose_cfg: Callable[..., DictConfig]) -> None:
    first_cfg = compose_cfg(*TINY)
    first = run(first_cfg)
    second = run(compose_cfg(*TINY))
    run(compose_cfg(*TINY, "recipe.lr=0.02"))
    origins = [r.data.tags["baseline_origin"] for r in finished_runs(first_cfg)]
    assert origins == ["trained", "cache", "trained"]
    assert first == second  # the cached baseline is the trained one


def test_same_seed_gives_same_accuracy(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(*TINY, "baseline.cache=false")
    assert run(cfg) == run(compose_cfg(*TINY, "baseline.cache=false"))
    keys = {r.data.tags["baseline_key"] for r in finished_runs(cfg)}
    assert len(keys) == 1


def test_failing_run_ends_failed_with_the_error(compose_cfg: Callable[..., DictConfig]) -> None:
    # a layer name is checked against the model at compress time, after the run exists
    cfg = compose_cfg(*TINY, "+method=magnitude", "+method.layer_sparsity.nosuch=0.5", "method.finetune.epochs=0")
    with pytest.raises(MethodConfigError):
        run(cfg)
    (failed,) = finished_runs(cfg)
    assert failed.info.status == "FAILED"
    assert "method.layer_sparsity" in failed.data.tags["error"]
    error_text = mlflow.artifacts.load_text(f"{failed.info.artifact_uri}/error.txt")
    assert "MethodConfigError" in error_text


def test_a_config_that_cannot_run_leaves_no_run(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg(*TINY, "model.pretrained=/nonexistent/checkpoint.pt")
    with pytest.raises(ConfigError, match="model.pretrained"):
        run(cfg)
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    assert mlflow.get_experiment_by_name(cfg.logger.experiment_name) is None
