"""The compressed model as an MLflow model: each format loads back, a model MLflow cannot save leaves the run be."""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from benchmarks.lineage import MODEL_NAME, check_model_format, log_model
from benchmarks.models import build_model
from benchmarks.schema import ConfigError
from benchmarks.tracking import RunRecorder, experiment_id


@pytest.fixture
def recorder(tmp_path: Path) -> RunRecorder:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.create_run(experiment_id(uri, "lineage", str(tmp_path / "mlartifacts")))
    return RunRecorder(run.info.run_id, client)


@pytest.mark.parametrize("serialization", ["pickle", "pt2"])
def test_each_format_loads_back_with_the_same_logits_and_batch_size(recorder: RunRecorder, serialization: str) -> None:
    model = build_model("lenet5", 10, 1, None).eval()
    model_id = log_model(recorder, model, torch.randn(2, 1, 28, 28), {"dataset": "mnist"}, serialization)
    loaded = mlflow.pytorch.load_model(f"runs:/{recorder.run_id}/{MODEL_NAME}")
    images = torch.randn(5, 1, 28, 28)  # another batch size than the example's
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    assert recorder.client.get_logged_model(model_id).tags["dataset"] == "mnist"
    assert recorder.client.get_run(recorder.run_id).data.tags["mlflow_model"] == f"{serialization} {model_id}"


class Unpicklable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.lock = threading.Lock()  # a lock pickles with neither pickle nor cloudpickle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_a_model_mlflow_cannot_save_leaves_the_run_with_the_reason(recorder: RunRecorder) -> None:
    assert log_model(recorder, Unpicklable(), torch.randn(2, 4), {}, "pickle") is None
    tags = recorder.client.get_run(recorder.run_id).data.tags
    assert tags["mlflow_model"].startswith("not logged (pickle):")
    assert recorder.client.get_run(recorder.run_id).info.status == "RUNNING"  # the run goes on


def test_log_model_none_and_a_typo() -> None:
    assert check_model_format("none") == "none"
    with pytest.raises(ConfigError, match=r"logger.log_model: 'pikle' is not one of \['pickle', 'pt2', 'none'\]"):
        check_model_format("pikle")


def test_a_search_candidate_is_a_finished_child_run_of_the_derived_nets_run(recorder: RunRecorder) -> None:
    child_id = recorder.child("net-cand3", {"run_kind": "search_candidate"}, {"ops": "k3e6,zero"},
                              {"val_top1": 41.5, "latency_ms": 2.5})
    child = recorder.client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == recorder.run_id  # the UI nests it under the search's run
    assert child.info.run_name == "net-cand3" and child.info.status == "FINISHED"
    assert child.data.params == {"ops": "k3e6,zero"}
    assert child.data.metrics == {"val_top1": 41.5, "latency_ms": 2.5}
