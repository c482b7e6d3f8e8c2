"""SSL with the defaults of conf/method/ssl.yaml removes channels of a real network on real data."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from benchmarks.context import make_context
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig, validated
from benchmarks.training import fit
from hardware.measured import LocalCPU
from tests.conftest import needs_shared_data


@needs_shared_data
@pytest.mark.slow
def test_ssl_with_its_defaults_removes_channels_of_lenet5_on_mnist(compose_cfg: Callable[..., DictConfig],
                                                                   tmp_path) -> None:
    # every group-lasso setting is the yaml's; a third of MNIST in batches of 64 keeps the number of steps
    cfg = compose_cfg("+method=ssl", "method.finetune.epochs=0", "dataset.train_subset=16384", "dataset.batch_size=64")
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    recipe = validated(RecipeConfig, cfg.recipe, "recipe")
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0)
    torch.manual_seed(0)
    baseline = fit(build_model("lenet5", 10, 1), datamodule, RecipeConfig(**{**vars(recipe), "epochs": 1}),
                   trainer, seed=0)
    target = LocalCPU(warmup=1, repeats=3, min_time_s=0.0, max_time_s=2.0, threads=1)
    ctx = make_context(datamodule, target, recipe, trainer, seed=0, workdir=tmp_path)
    result = instantiate(cfg.method).compress(baseline, ctx)
    assert result.metrics["channels_removed"] > 0, result.metrics
    assert result.metrics["group_lasso_after"] < result.metrics["group_lasso_before"]
    assert result.metrics["params_after"] < result.metrics["params_before"]
