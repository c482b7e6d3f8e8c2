"""MLflow tracking of runs: tags, the resolved config as params, metrics, artifacts.

One MLflow run per pipeline run. The run ends FINISHED, FAILED (the traceback is
logged as an artifact) or KILLED (Ctrl-C, SIGTERM, a sweep pruner); whatever was logged before the
end stays. Writes to the embedded sqlite store are retried when another process
holds its lock, so concurrent runs do not lose records.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import optuna
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from benchmarks.runs import Interrupted, mark_orphans, process_tags
from benchmarks.schema import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: MLflow's limit on the length of one param value.
_MAX_PARAM_LENGTH = 6000


class TrackingServerError(ConfigError):
    """The tracking server stopped answering during a run; each call waited ``logger.timeout_s``, tried 3 times."""


def server_gone(error: BaseException) -> bool:
    """An MLflow call failed because the server did not answer (MLflow's REST client words it so)."""
    return isinstance(error, TrackingServerError) or (
        isinstance(error, MlflowException) and str(error).startswith("API request to"))


def _server_error(error: BaseException) -> TrackingServerError:
    reason = " ".join(str(error).split())[:300]
    return TrackingServerError(f"logger.tracking_uri: the tracking server stopped answering ({reason}); restart it, "
                               "or raise logger.timeout_s if it is only slow, and run again")


def retry_locked(fn: Callable[[], T], attempts: int = 30, wait_s: float = 0.2) -> T:
    """Call ``fn``, retrying while the sqlite store reports that it is locked; a silent server is an error."""
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as err:  # sqlite3 and SQLAlchemy wrap the lock error differently
            if server_gone(err):
                raise _server_error(err) from None
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(wait_s * (1 + attempt))
    raise AssertionError("unreachable")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": value}, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


#: What a run's code version is made of: a change elsewhere (results/, docs, tests) does not make it dirty.
SOURCE_PATHS = ("benchmarks", "methods", "hardware", "hydra_plugins", "conf", "scripts", "pyproject.toml", "dvc.yaml")
#: How many changed paths the ``git_dirty_paths`` tag names before it says how many more there are.
_MAX_DIRTY_PATHS = 20


def git_state(root: Path) -> dict[str, str]:
    """The code version a run used: commit, whether its source or configs had uncommitted changes, and which."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PATHS],
                                cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    state = {"git_commit": commit, "git_dirty": str(bool(changed)).lower()}
    if changed:
        shown = changed[:_MAX_DIRTY_PATHS]
        more = f" (+{len(changed) - len(shown)} more)" if len(changed) > len(shown) else ""
        state["git_dirty_paths"] = (" ".join(shown) + more)[:5000]
    return state


#: The experiment's kind for MLflow clients that read it. MLflow 3.17's UI does not: its view follows
#: its GenAI / Model training toggle (the ``workflowType`` URL parameter, else the browser's last choice,
#: else GenAI), so the page we print names the view (``ui_page``).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(tracking_uri: str, experiment_name: str, artifact_location: str | None) -> str:
    """Point MLflow at the store and return the experiment's id, creating it if needed."""
    mlflow.set_tracking_uri(tracking_uri)

    def get_or_create() -> str:
        client = MlflowClient(tracking_uri)  # its constructor opens (and on first use migrates) the store
        existing = client.get_experiment_by_name(experiment_name)
        if existing is not None:
            for key, value in EXPERIMENT_TAGS.items():  # an experiment made before the tag was set
                if existing.tags.get(key) != value:
                    client.set_experiment_tag(existing.experiment_id, key, value)
            return existing.experiment_id
        location = Path(artifact_location).resolve().as_uri() if artifact_location else None
        try:
            return client.create_experiment(experiment_name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except Exception:  # another process created it between our two calls
            found = client.get_experiment_by_name(experiment_name)
            if found is None:
                raise
            return found.experiment_id

    with _sqlite_init_lock(tracking_uri):  # the first access creates the schema: one process at a time
        return retry_locked(get_or_create)


@contextmanager
def _sqlite_init_lock(tracking_uri: str) -> Iterator[None]:
    """Serialize MLflow's first access to an sqlite store across processes (a file lock beside it).

    MLflow creates and migrates the schema on first access; processes doing it at once on a new
    store fail ("table ... already exists", alembic "expected to match one row").
    """
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(tracking_uri.removeprefix("sqlite:///") + ".init.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class RunRecorder:
    """What the pipeline logs into its active MLflow run, each write retried on lock."""

    def __init__(self, run_id: str, client: MlflowClient) -> None:
        self.run_id = run_id
        self.client = client

    def tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            retry_locked(partial(self.client.set_tag, self.run_id, key, str(value)))

    def params(self, params: Mapping[str, Any]) -> None:
        items = [(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            chunk = [mlflow.entities.Param(k, v) for k, v in items[start : start + 100]]
            retry_locked(partial(self.client.log_batch, self.run_id, params=chunk))

    def metrics(self, metrics: Mapping[str, float | int | None], step: int = 0) -> None:
        now = int(time.time() * 1000)
        values = [mlflow.entities.Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for start in range(0, len(values), 200):
            retry_locked(partial(self.client.log_batch, self.run_id, metrics=values[start : start + 200]))

    def artifact(self, path: Path, folder: str | None = None) -> None:
        retry_locked(lambda: self.client.log_artifact(self.run_id, str(path), folder))

    def text(self, text: str, name: str) -> None:
        retry_locked(lambda: self.client.log_text(self.run_id, text, name))

    def child(self, name: str, tags: Mapping[str, Any], params: Mapping[str, Any],
              metrics: Mapping[str, float | int | None]) -> str:
        """A finished run nested under this one (a search's candidate: the UI groups it under its parent)."""
        experiment = self.client.get_run(self.run_id).info.experiment_id
        run = retry_locked(partial(self.client.create_run, experiment, run_name=name,
                                   tags={"mlflow.parentRunId": self.run_id, **{k: str(v) for k, v in tags.items()}}))
        child = RunRecorder(run.info.run_id, self.client)
        child.params(params)
        child.metrics(metrics)
        retry_locked(partial(self.client.set_terminated, child.run_id, "FINISHED"))
        return child.run_id


@contextmanager
def mlflow_run(
    tracking_uri: str,
    experiment_name: str,
    artifact_location: str | None,
    run_name: str | None,
    tags: Mapping[str, Any],
) -> Iterator[RunRecorder]:
    """Open a run; end it FINISHED, FAILED (with the traceback) or KILLED; say where it is.

    The run carries its host and process (benchmarks.runs), and this host's RUNNING runs whose
    process is gone are marked KILLED first. SIGINT and SIGTERM stop the run as Ctrl-C does
    (Lightning shuts a fit down on KeyboardInterrupt), it is marked KILLED, and
    :class:`~benchmarks.runs.Interrupted` says which run; a signal the process ignores (a
    background job's SIGINT) stays ignored.
    """
    exp_id = experiment_id(tracking_uri, experiment_name, artifact_location)
    client = MlflowClient(tracking_uri)
    for orphan, reason in retry_locked(lambda: mark_orphans(client, [exp_id])):
        log.warning("[mlflow] run %s marked KILLED: %s", orphan, reason)
    all_tags = {**process_tags(), **{k: str(v) for k, v in tags.items()}}
    run = retry_locked(lambda: client.create_run(exp_id, run_name=run_name, tags=all_tags))
    recorder = RunRecorder(run.info.run_id, client)
    log.info("[mlflow] run %s (%s) in experiment %r at %s", run.info.run_name, run.info.run_id, experiment_name,
             tracking_uri)

    received: list[int] = []
    stoppable = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        for other in previous:  # a second Ctrl-C while the run is being marked would lose the mark
            signal.signal(other, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in stoppable} if _in_main_thread() else {}
    status = RunStatus.to_string(RunStatus.FINISHED)
    ending: BaseException | None = None  # what stops the run early carries the closing line to the console
    try:
        yield recorder
    except (KeyboardInterrupt, SystemExit) as stop:  # Lightning turns Ctrl-C into sys.exit(1)
        status = RunStatus.to_string(RunStatus.KILLED)
        why = signal.Signals(received[0]).name if received else type(stop).__name__
        recorder.tags({"end_reason": "interrupted", "killed_reason": why})
        if received:
            ending = Interrupted(received[0], run.info.run_name, run.info.run_id)
            raise ending from None
        ending = stop
        raise
    except optuna.TrialPruned as pruned:  # a sweep's pruner stopped it early (benchmarks/trial_pruning.py)
        status = RunStatus.to_string(RunStatus.KILLED)
        recorder.tags({"end_reason": "pruned", "pruned": str(pruned)[:5000]})
        ending = pruned
        raise
    except BaseException as err:
        status = RunStatus.to_string(RunStatus.FAILED)
        if server_gone(err):  # nothing more can be written: say so at once
            ending = _server_error(err)
            raise ending from None
        recorder.text("".join(traceback.format_exception(err)), "error.txt")
        recorder.tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        ending = err
        raise
    finally:
        for signum in previous:  # the run's end is written whole, then signals act again
            signal.signal(signum, signal.SIG_IGN)
        if not isinstance(ending, TrackingServerError):
            retry_locked(lambda: client.set_terminated(run.info.run_id, status=status))
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        closing = f"[mlflow] {where(run.info, status, tracking_uri)}"
        if isinstance(ending, TrackingServerError):
            closing = (f"[mlflow] run {run.info.run_name} ({run.info.run_id}) stays RUNNING in {tracking_uri}: once the "
                       f"server answers, `python -m benchmarks.runs cleanup --tracking-uri {tracking_uri}` marks it KILLED")
        if ending is None:
            log.info("%s", closing)
        else:  # printed after the error (benchmarks.__main__, a traceback's last line, the sweeper's log)
            ending.add_note(closing)


def where(info: Any, status: str, tracking_uri: str) -> str:
    """The console's last line about a run: its name and id, status, store, artifact folder and how to open it."""
    artifacts = info.artifact_uri.removeprefix("file://")
    page = ui_page(info.experiment_id)
    if tracking_uri.startswith(("http://", "https://")):
        open_it = f"open {tracking_uri.rstrip('/')}/{page}"
    else:
        open_it = f"open it with: mlflow ui --backend-store-uri {tracking_uri}, then http://127.0.0.1:5000/{page}"
    return f"run {info.run_name} ({info.run_id}) {status}: store {tracking_uri}, artifacts {artifacts}; {open_it}"


def ui_page(experiment_id: str) -> str:
    """The MLflow UI's address of an experiment's runs table (newest run first): in its Model training view
    (``workflowType=machine_learning``) an experiment opens on the runs table, in its GenAI view on traces."""
    return f"#/experiments/{experiment_id}?workflowType=machine_learning"


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
