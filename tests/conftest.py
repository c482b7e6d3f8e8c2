"""Shared test fixtures: configs composed with Hydra's compose API, isolated run roots."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import benchmarks  # noqa: F401  (config resolvers)
from benchmarks.pipeline import CONF_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The read-only datasets and weights beside the checkout (absent: data tests skip).
SHARED_DATA = (REPO_ROOT.parent / "shared" / "data").resolve()

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

needs_shared_data = pytest.mark.skipif(not (SHARED_DATA / "mnist").is_dir(), reason=f"no shared data at {SHARED_DATA}")


def tiny_mnist(folder: Path, val_size: int, val_subset: int) -> Any:
    """The real MNIST from the shared data, cut to 256 training and 128 test images (seed 0), set up for fitting."""
    from benchmarks.data import MNISTDataModule

    dm = MNISTDataModule(data_dir=folder, source_dir=SHARED_DATA, batch_size=64, eval_batch_size=128,
                         val_size=val_size, seed=0, train_subset=256, val_subset=val_subset, test_subset=128)
    dm.prepare_data()
    dm.setup("fit")
    return dm

#: Latency protocol for tests: correct but short (timing is not what tests check).
FAST_LATENCY = ["+hw=local_cpu", "hw.warmup=2", "hw.repeats=5", "hw.min_time_s=0", "hw.per_layer=false"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One prepared-data folder for the whole session (datasets are copied from shared once)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def run_env(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of an isolated project root: its own MLflow store, caches and outputs."""
    env = {
        "COMPRESSBENCH_ROOT": str(tmp_path),
        "COMPRESSBENCH_SOURCE_DATA": str(SHARED_DATA),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture
def compose_cfg(run_env: dict[str, str], data_root: Path) -> Callable[..., DictConfig]:
    """Compose the real config tree with overrides, rooted in the test's own folder."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[f"paths.data_dir={data_root}", *overrides])

    return _compose
