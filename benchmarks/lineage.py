"""What a run consumed and produced, in MLflow's own terms: its dataset input and its logged model.

The dataset is logged as an MLflow dataset input (``mlflow.data`` MetaDataset: our metadata, not
the samples) whose digest is the data module's checksum (its first 36 digits, MLflow's limit) and
whose profile holds the full checksum and the split sizes, so the UI's Dataset column and lineage
fill in and two runs on the same data share one digest.
The compressed model is logged with MLflow's pytorch flavour and its signature, beside our stored
file (``model/<name>.cbm``, the run artifact the size metrics count), so that
``mlflow.pytorch.load_model(f"runs:/{run_id}/model")`` returns it and the model registry can hold it.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag
from mlflow.types import Schema, TensorSpec
from torch import nn

from benchmarks.schema import ConfigError
from benchmarks.tracking import RunRecorder, retry_locked

log = logging.getLogger(__name__)

#: The name the MLflow model has in its run: ``runs:/<run_id>/model``.
MODEL_NAME = "model"
SPLITS = ("train", "val", "test")
#: MLflow's limit on a dataset digest: ours is the checksum's first 36 hex digits (the profile has all of it).
_MAX_DIGEST = 36


class SplitDataset(MetaDataset):
    """A MetaDataset whose profile states the split sizes and the fraction of the training set used."""

    def __init__(self, profile: dict[str, Any], **kwargs: Any) -> None:
        self._profile = profile
        super().__init__(**kwargs)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def split_sizes(datamodule: Any) -> dict[str, int]:
    """Samples in each split the run used (after the subsets of a tiny run)."""
    return {split: len(getattr(datamodule, f"data_{split}")) for split in SPLITS}


def data_fraction(datamodule: Any) -> float:
    """The fraction of the available training samples the run trained on (1.0: all of them)."""
    return split_sizes(datamodule)["train"] / datamodule.available_sizes["train"]


def dataset_of(datamodule: Any) -> SplitDataset:
    """The run's dataset as MLflow sees it: name, digest = our checksum, source folder, schema, split sizes."""
    source = mlflow.data.get_dataset_source_from_json(json.dumps({"uri": str(datamodule.folder)}), source_type="local")
    schema = Schema([TensorSpec(np.dtype("float32"), (-1, *datamodule.input_shape), "image")])
    profile = {"checksum": datamodule.checksum, "splits": split_sizes(datamodule),
               "available": dict(datamodule.available_sizes), "data_fraction": round(data_fraction(datamodule), 6),
               "classes": datamodule.num_classes}
    return SplitDataset(profile, source=source, name=datamodule.name, digest=datamodule.checksum[:_MAX_DIGEST],
                        schema=schema)


def log_dataset(recorder: RunRecorder, dataset: SplitDataset, context: str = "training") -> None:
    """One dataset input of the run, with MLflow's context tag (``training``, ``evaluation``).

    MLflow's store looks the dataset up, then inserts it if absent, without a lock: runs that log
    one new dataset at once on PostgreSQL (the sweep workers' first trials) collide on its key,
    and all but one fail. The dataset then exists, and logging again links it.
    """
    entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    link = partial(recorder.client.log_inputs, recorder.run_id, datasets=[entry])
    try:
        retry_locked(link)
    except mlflow.exceptions.MlflowException as err:
        if not _inserted_meanwhile(err):
            raise
        retry_locked(link)


def _inserted_meanwhile(err: Exception) -> bool:
    """The store refused to insert a dataset that another run inserted since it looked (PostgreSQL, MySQL, sqlite)."""
    message = str(err).lower()
    return ("dataset" in message and
            any(words in message for words in ("duplicate key", "duplicate entry", "unique constraint failed")))


#: How ``logger.log_model`` saves the model: ``pickle`` (any module that pickles), ``pt2`` (torch.export:
#: loading runs no pickled code, but some modules do not export) or ``none``; their cost per run:
#: results/mlflow_model_logging.md. The extra arguments each format needs.
MODEL_FORMATS: dict[str, dict[str, Any]] = {"pickle": {}, "pt2": {"validate_serving_input": False}, "none": {}}


def check_model_format(serialization: str) -> str:
    """``logger.log_model`` checked before the run starts: a typo must not cost a whole run."""
    if serialization not in MODEL_FORMATS:
        raise ConfigError(f"logger.log_model: {serialization!r} is not one of {list(MODEL_FORMATS)}; "
                          "e.g. logger.log_model=pickle")
    return serialization


def log_model(recorder: RunRecorder, model: nn.Module, example: torch.Tensor, tags: dict[str, str],
              serialization: str = "pickle") -> str | None:
    """Log ``model`` into the run (pytorch flavour, signature from ``example``, ``tags``); its model id.

    Requirements are stated (torch's version), not inferred: inference loads the model in a
    subprocess, seconds per run. A model MLflow cannot save (a module that does not pickle or
    export) leaves the run as it is, with the reason in its ``mlflow_model`` tag.
    """
    from mlflow.models import infer_signature

    if check_model_format(serialization) == "none":
        recorder.tags({"mlflow_model": "none (logger.log_model=none)"})
        return None
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    with torch.no_grad():
        output = model.eval()(example.to(device))
    model.train(was_training)
    signature = infer_signature(example.cpu().numpy(), output.cpu().numpy())
    experiment = recorder.client.get_run(recorder.run_id).info.experiment_id  # not MLflow's active (Default) one
    created = retry_locked(lambda: recorder.client.create_logged_model(experiment, name=MODEL_NAME,
                                                                       source_run_id=recorder.run_id, tags=tags))
    example_arg = {"input_example": example.cpu().numpy()} if serialization == "pt2" else {}  # pt2 traces it
    try:
        retry_locked(lambda: mlflow.pytorch.log_model(
            model, name=MODEL_NAME, signature=signature, run_id=recorder.run_id, model_id=created.model_id,
            serialization_format=serialization, pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            **example_arg, **MODEL_FORMATS[serialization]))
    except Exception as err:  # noqa: BLE001  (the run's results stand without the MLflow model)
        log.warning("[mlflow] the compressed model was not logged as an MLflow model: %s: %s", type(err).__name__, err)
        recorder.tags({"mlflow_model": f"not logged ({serialization}): {type(err).__name__}: {err}"[:5000]})
        return None
    recorder.tags({"mlflow_model": f"{serialization} {created.model_id}"})
    return str(created.model_id)
