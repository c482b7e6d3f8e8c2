"""Everything a run is built from, checked before its MLflow run exists (issue 11, fail fast).

A configuration that cannot run fails here with one line naming the key and the fix, and
leaves no FAILED run behind. Two stages:

* :func:`check_settings`: recipe, trainer, seed, objectives, the writable folders and the
  tracking store. It imports neither torch nor Lightning nor MLflow, so ``python -m benchmarks``
  answers a wrong value in about a second (``python -m benchmarks.studies.fail_fast``);
* :func:`prepare`: what the run would build (the method from its schema, the hardware target,
  the data, the model) and one tiny batch through the model, so that LeNet-5 on CIFAR-10 is
  refused before any training. The CLI calls it before importing the pipeline (Lightning's
  trainer, MLflow), and hands what it built to ``pipeline.run``.

Every refusal is a :class:`~benchmarks.schema.ConfigError`; :func:`user_errors` lists the
errors the CLI prints as one line (``error: ...``) instead of a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf

from benchmarks.schema import ConfigError, RecipeConfig, TrainerConfig, validated
from benchmarks.splits import check_objectives

#: conf/ of this checkout
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: Where the groups a user adds with ``+group=`` come from when they are absent.
DEFAULT_OPTIONS = {"method": "baseline", "hw": "local_cpu"}
#: Folders a run writes into, besides the data folder (checked when the data is prepared).
WRITTEN_FOLDERS = ("paths.cache_dir", "paths.output_root")


@dataclass(frozen=True)
class Settings:
    """The run's own keys, typed."""

    recipe: RecipeConfig
    trainer: TrainerConfig
    seed: int


@dataclass
class Prepared:
    """What a run is built from, every piece already built once: the pipeline uses these."""

    settings: Settings
    method: Any  # methods.base.CompressionMethod
    target: Any  # hardware.target.HardwareTarget
    datamodule: Any  # a prepared, set-up LightningDataModule
    model: Any  # the model, built for the data with the seed's initial weights (torch.nn.Module)


#: The errors caused by what a user asked for, by module: the CLI prints their message alone, on one line.
USER_ERRORS = {
    "benchmarks.schema": ("ConfigError",),
    "benchmarks.splits": ("TestSplitObjectiveError",),
    "benchmarks.data.errors": ("DataNotFoundError", "DataChecksumError", "DataFormatError"),
    "methods.config": ("MethodConfigError",),
    "hardware.target": ("HardwareError",),
}


def user_errors() -> tuple[type[BaseException], ...]:
    """The classes of :data:`USER_ERRORS` whose module is loaded.

    An error of a class whose module was never imported cannot have been raised, and importing
    them all would cost a failing typo the seconds of torch and Lightning.
    """
    return tuple(getattr(sys.modules[module], name) for module, names in USER_ERRORS.items()
                 if module in sys.modules for name in names)


def with_defaults(cfg: DictConfig) -> DictConfig:
    """Fill ``method`` and ``hw`` from their default options when the user chose none.

    They cannot sit in config.yaml's defaults list: ``+method=amc`` must append to it.
    Keys set without choosing an option (``hw.threads=1``) override the default option.
    """
    OmegaConf.set_struct(cfg, False)
    for group, option in DEFAULT_OPTIONS.items():
        node = cfg.get(group)
        if node is None or "_target_" not in node:
            cfg[group] = OmegaConf.merge(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"), node or {})
    return cfg


def check_settings(cfg: DictConfig) -> Settings:
    """The checks that need no heavy import: a typo answers at once."""
    check_objectives(cfg.get("objectives") or [])
    recipe = validated(RecipeConfig, cfg.recipe, "recipe")
    trainer = validated(TrainerConfig, cfg.trainer, "trainer")
    seed = _seed(cfg.get("seed"))
    for key in WRITTEN_FOLDERS:
        folder = OmegaConf.select(cfg, key)
        ensure_writable(Path(folder), key, f"set {key}=<a writable folder> (or COMPRESSBENCH_ROOT for every folder)")
    check_tracking_store(cfg.logger)
    return Settings(recipe, trainer, seed)


def prepare(cfg: DictConfig) -> Prepared:
    """Build the method, the target and the data, and pass one batch through the model; refuse what fails.

    ``cfg`` has its method and hardware (:func:`with_defaults`). Each step imports only what it
    needs, cheapest first: the model's name (nothing, once its list is cached), the method (torch),
    the target, the data (Lightning), the model against the data (timm).
    """
    from hydra.utils import instantiate

    settings = check_settings(cfg)
    with refused("model"):
        check_model_name(cfg.model.name, Path(cfg.paths.cache_dir))
    with refused("method"):
        method = instantiate(cfg.method, _convert_="all")
    with refused("hw"):
        target = instantiate(cfg.hw)
    with refused("dataset", data_dir=Path(cfg.paths.data_dir)):
        datamodule = instantiate(cfg.dataset)
        datamodule.prepare_data()
        datamodule.setup("fit")
    model = check_model_fits(cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True)), datamodule,
                             settings.seed)
    return Prepared(settings, method, target, datamodule, model)


def check_model_name(name: Any, cache_dir: Path) -> None:
    """Refuse an unknown ``model.name`` from the names cached for this timm and zoo (no timm import); without
    that cache, from timm's registry, whose names are then cached for the next run."""
    from benchmarks.model_names import ModelNames

    names = ModelNames.cached(cache_dir)
    if names is None:
        from benchmarks.models.zoo import model_names

        names = model_names()
        names.save(cache_dir)
    names.check(name)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"seed: must be an integer, got {value!r}; e.g. seed=42")
    return value


@contextmanager
def refused(key: str, data_dir: Path | None = None) -> Iterator[None]:
    """Turn whatever building ``key`` raises into a ConfigError naming ``key`` (the cause stays chained)."""
    from hydra.errors import InstantiationException

    try:
        yield
    except Exception as err:
        cause = err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err
        if data_dir is not None and isinstance(cause, OSError) and str(data_dir) in str(cause.filename or ""):
            raise ConfigError(f"paths.data_dir: cannot write {data_dir} ({cause.strerror}); "
                              "set paths.data_dir=<a writable folder>") from cause
        message = one_line(cause)
        raise ConfigError(message if key in message else f"{key}: {message}") from cause


def one_line(error: BaseException) -> str:
    """An error's message on one line (a data error lists the places it tried, one a line)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def check_model_fits(model_cfg: dict[str, Any], datamodule: Any, seed: int) -> Any:
    """Build the model for the dataset (initial weights from ``seed``), pass two zero images through it in eval
    mode (nothing in it changes), and return it: the run trains this model, built once."""
    import torch

    from benchmarks.models import build_model

    name, shape, classes = model_cfg["name"], tuple(datamodule.input_shape), datamodule.num_classes
    torch.manual_seed(seed)  # the same initial weights for the same seed
    with refused("model"):
        model = build_model(name, classes, shape[0], model_cfg.get("pretrained"), **(model_cfg.get("kwargs") or {}))
    fix = (f"choose a model made for {'x'.join(map(str, shape))} images and {classes} classes "
           f"(model=<name>, model.kwargs=...) or another dataset")
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(2, *shape))
    except RuntimeError as err:
        problem = str(err).strip().splitlines()[0]
        raise ConfigError(f"model.name={name} does not fit dataset.name={datamodule.name}: its forward pass fails "
                          f"on {'x'.join(map(str, shape))} images ({problem}); {fix}") from err
    if tuple(logits.shape) != (2, classes):
        raise ConfigError(f"model.name={name} does not fit dataset.name={datamodule.name}: it gives outputs of shape "
                          f"{tuple(logits.shape)} for 2 images, not (2, {classes}); {fix}")
    return model.train()


def ensure_writable(folder: Path, key: str, fix: str) -> None:
    """Create ``folder`` if needed and write a scratch file in it; refuse with ``key`` and ``fix`` if that fails."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocking} is a file, not a folder" if blocking else err.strerror or str(err)
        raise ConfigError(f"{key}: cannot write {folder} ({reason}); {fix}") from None


def check_tracking_store(logger_cfg: DictConfig) -> None:
    """A sqlite store and the artifact folder must be writable; a tracking server must answer in time."""
    uri = str(logger_cfg.tracking_uri)
    fix = "point logger.tracking_uri (or MLFLOW_TRACKING_URI) at a writable store, e.g. sqlite:////tmp/mlflow.db"
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        ensure_writable(database.parent, "logger.tracking_uri", f"the MLflow store {uri} lives there; {fix}")
        if database.exists():
            try:
                with open(database, "ab"):
                    pass
            except OSError as err:
                raise ConfigError(f"logger.tracking_uri: the MLflow store {database} is not writable "
                                  f"({err.strerror}); {fix}") from None
    elif uri.startswith(("http://", "https://")):
        check_server(uri, float(logger_cfg.get("timeout_s", 10)))
        bound_server_calls(float(logger_cfg.get("timeout_s", 10)))
    if logger_cfg.get("artifact_location"):
        ensure_writable(Path(logger_cfg.artifact_location), "logger.artifact_location",
                        "set logger.artifact_location=<a writable folder>")


def default_logger() -> DictConfig:
    """The ``logger`` node (store, artifacts, timeout) that ``python -m benchmarks`` would use, resolved."""
    from hydra import compose, initialize_config_dir

    import benchmarks  # noqa: F401  (the config resolvers)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config")
    return cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg.logger, resolve=True)))  # a mapping node


#: MLflow's REST client waits 120 s a call and retries 7 times with doubling pauses (minutes on a
#: silent server); a run's calls wait logger.timeout_s each, in 3 tries 1 s and 2 s apart
SERVER_CALLS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def bound_server_calls(timeout_s: float) -> None:
    """Bound the wait of the run's MLflow calls on a server that stops answering (an explicit env setting wins)."""
    for variable, value in {**SERVER_CALLS, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, round(timeout_s)))}.items():
        os.environ.setdefault(variable, value)


def check_server(uri: str, timeout_s: float) -> None:
    """Ask the tracking server's /health once: it must answer within ``timeout_s`` (logger.timeout_s)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:  # it answered, if not with 200: the server is there
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"logger.tracking_uri: the tracking server {uri} does not answer within logger.timeout_s={timeout_s:g} s "
            f"({reason}); start it (mlflow server --host 127.0.0.1 --port <port> --backend-store-uri sqlite:///mlflow.db) "
            "or use a local store: logger.tracking_uri=sqlite:///<folder>/mlflow.db") from None
