"""The Pareto-front models in MLflow's model registry (`python -m benchmarks.leaderboard --register`).

Each front run's logged model (``runs:/<id>/model``, benchmarks.lineage) becomes a version of the
registered model ``<dataset>-<hw>-<model>-<method>``, tagged with the dataset and the device, so a
deployment can ask the registry for "the front on pixel1". Registering again adds no second
version of the same run. Baseline rows (figures measured inside another run) and runs without an
MLflow model are named and left out.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from benchmarks.lineage import MODEL_NAME
from benchmarks.tracking import retry_locked

#: The run's figures that go onto the model version as tags.
VERSION_TAGS = ("test_top1", "latency_ms", "latency_source", "stored_bytes", "run_name", "run_kind")


def registered_name(row: pd.Series) -> str:
    return f"{row['dataset']}-{row['hw']}-{row['model']}-{row['method']}"


def register_front(ranked: pd.DataFrame, tracking_uri: str) -> list[str]:
    """Register the front's runs (``ranked`` from benchmarks.leaderboard.rank); one line per front row."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    lines = []
    for _, row in ranked[ranked["on_front"]].iterrows():
        name = registered_name(row)
        if row["row"] != "run":
            lines.append(f"{name}: a baseline row (measured in run {row['run_id']}), no model of its own to register")
            continue
        if not str(row.get("mlflow_model") or "").startswith(("pickle", "pt2")):
            lines.append(f"{name}: run {row['run_id']} has no MLflow model ({row.get('mlflow_model') or 'logged before models were'}); rerun it")
            continue
        lines.append(_register(client, row, name))
    return lines


def _register(client: MlflowClient, row: pd.Series, name: str) -> str:
    if not retry_locked(lambda: client.search_registered_models(f"name = '{name}'")):
        retry_locked(lambda: client.create_registered_model(name, tags={"dataset": row["dataset"], "device": row["hw"]},
                                                            description=f"Pareto front of {row['dataset']} on {row['hw']}"))
    existing = retry_locked(lambda: client.search_model_versions(f"name = '{name}' and run_id = '{row['run_id']}'"))
    if existing:
        return f"{name}: version {existing[0].version} already holds run {row['run_id']}"
    tags = {"dataset": str(row["dataset"]), "device": str(row["hw"]),
            **{key: str(row[key]) for key in VERSION_TAGS if key in row and pd.notna(row[key])}}
    version = retry_locked(lambda: mlflow.register_model(f"runs:/{row['run_id']}/{MODEL_NAME}", name, tags=tags))
    return f"{name}: registered version {version.version} (run {row['run_id']})"
