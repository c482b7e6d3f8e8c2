"""End to end through the CLI, as a user types it: one run, a grid, the leaderboard (Ctrl-C: test_fail_fast.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import FAST_LATENCY, REPO_ROOT, needs_shared_data

pytestmark = [needs_shared_data, pytest.mark.slow, pytest.mark.e2e]

TINY = ["+experiment=tiny", *FAST_LATENCY]
METRICS = {"top1", "top5", "loss", "val_top1", "val_top5", "val_loss", "baseline_val_top1", "params", "nonzero_params",
           "macs", "stored_bytes", "latency_ms", "speedup", "compression", "baseline_top1", "baseline_latency_ms", "baseline_stored_bytes"}
TAGS = {"dataset", "model", "method", "hw", "seed", "git_commit", "git_dirty", "data_checksum",
        "latency_source", "latency_calibration", "baseline_origin"}


def cli(env: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def runs(env: dict[str, str]) -> list:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["compressbench"], output_format="list")


def test_run_grid_and_leaderboard(run_env: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    data = f"paths.data_dir={data_root}"
    cli(run_env, "-m", "benchmarks", *TINY, data)
    (single,) = runs(run_env)
    assert single.info.status == "FINISHED"
    assert METRICS <= set(single.data.metrics), METRICS - set(single.data.metrics)
    assert TAGS <= set(single.data.tags), TAGS - set(single.data.tags)
    assert single.data.params["model.name"] == "lenet5" and single.data.params["method.name"] == "baseline"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(single.info.run_id)}
    assert {"config.yaml", "layers.csv", "latency.json", "model"} <= artifacts
    layers = pd.read_csv(mlflow.artifacts.download_artifacts(f"{single.info.artifact_uri}/layers.csv"))
    assert {"name", "op", "input_shape", "output_shape", "params", "macs", "latency_share"} <= set(layers.columns)
    assert layers["macs"].sum() == single.data.metrics["macs"]

    cli(run_env, "-m", "benchmarks", "-m", "model=lenet5,lenet_300_100", *TINY, data)
    grid = [r for r in runs(run_env) if "multirun" in r.data.tags]
    assert sorted(r.data.tags["model"] for r in grid) == ["lenet5", "lenet_300_100"]
    assert len({r.data.tags["multirun"] for r in grid}) == 1

    results = tmp_path / "results"
    cli(run_env, "-m", "benchmarks.leaderboard", "--kind", "smoke", f"paths.results_dir={results}")  # tiny runs
    table = pd.read_csv(results / "leaderboard.csv")
    assert len(table) == 3 and set(table["model"]) == {"lenet5", "lenet_300_100"}
    assert table["latency_source"].eq("measured").all()
    assert "## mnist on local_cpu" in (results / "leaderboard.md").read_text()
    assert (results / "pareto_mnist_local_cpu.png").stat().st_size > 10_000

