"""Optuna studies as Hydra multiruns: each trial one job of Hydra's launcher (basic, Ray, submitit).

Why our own plugin: ``hydra-optuna-sweeper`` 1.3.0 pins ``optuna<3``, so a project that
pins a current Optuna cannot list it as a dependency (pip refuses the conflict, or
downgrades Optuna to one whose sqlite storage breaks under SQLAlchemy 2). This sweeper
uses Optuna's ask-and-tell interface and keeps the `-m` interface and config layout of
that plugin (``hydra.sweeper.params`` with Hydra's sweep grammar), and adds what the
benchmark needs:

- Resumable studies: any SQLAlchemy URL; a study of the same name is continued. A trial
  whose worker died (SIGKILL, a lost node) is failed and retried with the same parameters
  (Optuna's heartbeat and ``RetryHeartbeatStaleTrialCallback``; a worker on this host
  that no longer exists is recognised at once, without waiting for the grace period; a
  trial asked for but never claimed, its sweeper killed in between, after the grace period).
  ``n_trials`` counts the trials the study holds, so a restarted sweep only runs what is
  missing and never reruns a finished trial.
- Tags: every trial's MLflow run carries ``optuna_study``, ``optuna_trial`` and
  ``optuna_storage`` (``++tags.*`` overrides), and the trial records its MLflow run id.
- Multi-objective studies (``direction`` a list): ``objectives`` names the metrics the run
  returns (``pipeline.run`` returns them when ``objectives`` is in the config); the Pareto
  front goes to ``<results_dir>/pareto.{md,csv,png}``; single-objective studies write
  their best trials to ``<results_dir>/best_trials.md``.
- Early errors: an empty search space, an unknown config key or a bad expression stops the
  sweep before any trial is created, naming the key.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from benchmarks.splits import TestSplitObjectiveError, check_objectives
from hydra_plugins.compressbench_optuna_sweeper.sampler import STUDY_SEEDED, TrialSeededSampler

log = logging.getLogger(__name__)

#: System attribute naming the process that runs a trial: "<host>:<pid>:<process start time>".
WORKER_ATTR = "compressbench_worker"


class SweepSpecError(ValueError):
    """A search space or sweeper setting that cannot run; the message names the key and the fix."""


# -- the search space -----------------------------------------------------------------------
def categorical(key: str, choices: list[Any]) -> CategoricalDistribution:
    """Optuna's categorical distribution over ``choices``, which must be None, bool, int, float or str
    (what Optuna stores and compares; it only warns about the rest)."""
    plain: list[CategoricalChoiceType] = [c for c in choices if c is None or isinstance(c, (bool, int, float, str))]
    if len(plain) != len(choices):
        raise SweepSpecError(f"sweep param {key!r}: the options {choices} are not all plain values (None, bool, int, "
                             "float or str); search a list or mapping through a config group instead")
    return CategoricalDistribution(plain)


def distribution_of(override: Override) -> BaseDistribution | None:
    """Hydra sweep expression -> Optuna distribution (None: a fixed value, not searched)."""
    key = override.get_key_element()
    value = override.value()
    if isinstance(value, ChoiceSweep):
        choices = [v for v in override.sweep_iterator(transformer=lambda v: v)]
        if not choices:
            raise SweepSpecError(f"sweep param {key!r}: choice() needs at least one option")
        return categorical(key, choices)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator(transformer=lambda v: v))
        if not values:
            raise SweepSpecError(f"sweep param {key!r}: {override.input_line} is an empty range")
        ints = [v for v in values if isinstance(v, int)]
        if len(ints) == len(values):
            step = int(value.step or 1)
            return IntDistribution(min(ints), max(ints), step=abs(step))
        return categorical(key, values)
    if isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if low is None or high is None or not low < high:
            raise SweepSpecError(f"sweep param {key!r}: interval({low}, {high}) needs low < high")
        log_scale = "log" in value.tags
        if isinstance(low, int) and isinstance(high, int):
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    if override.is_sweep_override():
        raise SweepSpecError(f"sweep param {key!r}: {override.input_line!r} is not choice(), range() or interval()")
    return None


def parse_space(params: dict[str, Any], arguments: Sequence[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Search space from ``hydra.sweeper.params`` and the command line; fixed overrides besides."""
    parser = OverridesParser.create()
    lines = [f"{key}={value}" for key, value in (params or {}).items()]
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in parser.parse_overrides(lines) + parser.parse_overrides(list(arguments)):
        key = override.get_key_element()
        distribution = distribution_of(override)
        if distribution is None:
            assert override.input_line is not None  # the parser keeps every override's text
            fixed[key] = override.input_line
            space.pop(key, None)
        else:
            space[key] = distribution
            fixed.pop(key, None)
    if not space:
        raise SweepSpecError(
            "the search space is empty: set hydra.sweeper.params in the sweep preset (e.g. "
            "'method.sparsity: interval(0.5, 0.95)') or pass 'key=choice(a,b)' / 'key=interval(lo,hi)' "
            "on the command line"
        )
    return space, list(fixed.values())


def override_value(value: Any) -> str:
    """A trial's value in Hydra's override grammar."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def sample_value(distribution: BaseDistribution) -> Any:
    """A value inside the distribution, to check an override composes before any trial runs."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[0]
    if isinstance(distribution, (IntDistribution, FloatDistribution)):
        return distribution.low
    raise SweepSpecError(f"no sample value for a {type(distribution).__name__}: parse_space builds categorical, "
                         "int and float distributions only")


# -- worker liveness ------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def worker_is_dead(worker: str | None) -> bool:
    """True only when ``worker`` ran on this host and that process is gone (or its pid reused)."""
    if not worker:
        return False
    host, _, rest = worker.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _process_start(int(pid)) != started


# -- the sweeper ----------------------------------------------------------------------------
Direction = Literal["maximize", "minimize"]


def _direction(value: Any) -> Direction:
    """One entry of ``hydra.sweeper.direction``."""
    if str(value) == "maximize":
        return "maximize"
    if str(value) == "minimize":
        return "minimize"
    raise SweepSpecError(f"hydra.sweeper.direction: {str(value)!r} is neither 'maximize' nor 'minimize'")


class OptunaSweeper(Sweeper):
    def __init__(self, study_name: str, storage: Any, direction: Any, objectives: Any, n_trials: int, n_jobs: int,
                 max_retry: int, heartbeat_interval_s: int, grace_period_s: int, sampler: Any, pruner: Any,
                 prune_monitor: str, params: Any, results_dir: Any) -> None:
        self.study_name = str(study_name)
        self.storage_url = None if storage is None else str(storage)
        self.directions = [_direction(d) for d in (direction if isinstance(direction, (list, ListConfig)) else [direction])]
        self.objectives = [str(o) for o in objectives] if isinstance(objectives, (list, ListConfig)) else [str(objectives)]
        self.n_trials = int(n_trials)
        self.n_jobs = int(n_jobs)
        self.max_retry = int(max_retry)
        self.heartbeat_interval_s = int(heartbeat_interval_s)
        self.grace_period_s = int(grace_period_s)
        self.sampler_cfg = sampler
        self.pruner_cfg = pruner
        self.prune_monitor = str(prune_monitor)
        # a mapping node's container is a dict with the yaml's string keys
        self.params = (cast(dict[str, Any], OmegaConf.to_container(params, resolve=False)) if isinstance(params, DictConfig)
                       else dict(params or {}))
        self.results_dir = None if results_dir is None else Path(str(results_dir))
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.launcher: Any = None
        self.job_idx = 0
        self._check_settings()

    def _check_settings(self) -> None:
        if len(self.objectives) != len(self.directions):
            raise SweepSpecError(f"hydra.sweeper.objectives {self.objectives} needs one entry per direction "
                                 f"{self.directions}")
        try:
            check_objectives(self.objectives, "hydra.sweeper.objectives")
        except TestSplitObjectiveError as error:
            raise SweepSpecError(str(error)) from None
        if self.n_trials < 1 or self.n_jobs < 1:
            raise SweepSpecError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        if _given(self.pruner_cfg):
            if self.storage_url is None:
                raise SweepSpecError("hydra.sweeper.pruner needs hydra.sweeper.storage: the trials report to the "
                                     "study through it (a sqlite:/// or postgresql:// URL)")
            if len(self.directions) > 1:
                raise SweepSpecError("hydra.sweeper.pruner: Optuna cannot prune multi-objective trials; set it to null")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context,
                                                                task_function=task_function, config=config)

    # -- the study ---------------------------------------------------------------------------
    def _storage(self) -> Any:
        if self.storage_url is None:
            return None
        if self.storage_url.startswith("sqlite:///"):
            Path(self.storage_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        import sqlalchemy.exc

        attempts = 5
        for attempt in range(attempts):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # heartbeat options are "experimental"
                    return optuna.storages.RDBStorage(
                        self.storage_url,
                        engine_kwargs={"connect_args": {"timeout": 60}} if self.storage_url.startswith("sqlite")
                        else None,
                        heartbeat_interval=self.heartbeat_interval_s,
                        grace_period=self.grace_period_s,
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                            max_retry=self.max_retry),
                    )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # Workers started at once on a new database all create Optuna's schema; PostgreSQL
                # lets one win and refuses the others' CREATE TYPE / TABLE. The schema is then there.
                if attempt == attempts - 1:
                    raise
                log.info("Optuna schema being created by another worker; retrying (%d/%d)", attempt + 1, attempts)
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    def create_study(self) -> optuna.Study:
        sampler, pruner = _sampler(self.sampler_cfg), _built(self.pruner_cfg)
        multi = len(self.directions) > 1
        return optuna.create_study(study_name=self.study_name, storage=self._storage(), sampler=sampler,
                                   pruner=pruner, load_if_exists=True,
                                   directions=self.directions if multi else None,
                                   direction=None if multi else self.directions[0])

    def _is_orphan(self, trial: optuna.trial.FrozenTrial) -> bool:
        """A trial asked for but never claimed: its sweeper died between ``ask()`` and the claim.

        No worker and no heartbeat name it, so nothing else would ever fail it. The claim
        follows the ask within milliseconds; one unclaimed for the grace period is an orphan.
        """
        if WORKER_ATTR in trial.system_attrs or trial.datetime_start is None:
            return False
        started = trial.datetime_start.timestamp()  # Optuna stores naive local times
        return time.time() - started > self.grace_period_s

    def recover(self, study: optuna.Study) -> None:
        """Fail the running trials whose worker is gone (here: at once; elsewhere: by heartbeat)
        and those no worker ever claimed; each is queued again with its parameters."""
        storage = study._storage
        callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not (worker_is_dead(trial.system_attrs.get(WORKER_ATTR)) or self._is_orphan(trial)):
                continue
            try:
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first
                continue
            log.warning("trial %d of study %r: its worker died (or never claimed it); marked FAIL and queued "
                        "again", trial.number, study.study_name)
            if callback is not None:
                callback(study, storage.get_trial(trial._trial_id))
        with warnings.catch_warnings():  # the heartbeat API is "experimental" and "meant for optimize()"
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)

    @staticmethod
    def done(study: optuna.Study) -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    # -- the loop ----------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> list[Any]:
        assert self.config is not None and self.launcher is not None
        space, fixed = parse_space(self.params, arguments)
        try:
            self.validate_batch_is_legal([self._overrides(fixed, space, {k: sample_value(d) for k, d in space.items()},
                                                          None, 0)])
        except ConfigCompositionException as error:
            raise SweepSpecError(f"the sweep's overrides do not apply to the config ({sorted(space)} searched): "
                                 f"{error} -- check the key names (`python -m benchmarks --cfg job` prints the "
                                 "config; a group added with + needs + in the sweep too)") from error
        study = self.create_study()
        log.info("Optuna study %r (%s) at %s: %d of %d trials done; search space: %s", study.study_name,
                 "/".join(self.directions), self.storage_url or "memory", self.done(study), self.n_trials,
                 {k: repr(d) for k, d in space.items()})
        returns: list[Any] = []
        attempts_left = self.n_trials * (self.max_retry + 1)
        # Other workers of a shared study may still run trials: the report waits for them, and a
        # retry queued meanwhile (one of theirs died) is taken here. The wait is bounded.
        wait_deadline = None
        while attempts_left > 0:
            self.recover(study)
            running = self._running_elsewhere(study)
            missing = self.n_trials - self.done(study) - running
            if missing > 0:
                batch = [study.ask(space) for _ in range(min(self.n_jobs, missing))]
                attempts_left -= len(batch)
                returns += self._run_batch(study, batch, fixed, space)
                wait_deadline = None
                continue
            wait_deadline = wait_deadline or time.monotonic() + 600
            if not running or time.monotonic() > wait_deadline:
                break
            time.sleep(1)
        self.report(study)
        return returns

    def _running_elsewhere(self, study: optuna.Study) -> int:
        """Trials other workers of a shared study are running now (queued retries are ours to take)."""
        return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))) if self.storage_url else 0

    def _overrides(self, fixed: list[str], space: dict[str, Any], values: dict[str, Any], trial: Any,
                   number: int) -> list[str]:
        tags = [f"++tags.optuna_study={override_value(self.study_name)}", f"++tags.optuna_trial={number}"]
        if trial is not None and self.storage_url:
            tags.append(f"++tags.optuna_storage={override_value(_redacted(self.storage_url))}")
        objectives = "[" + ",".join(self.objectives) + "]"
        return [*fixed, *(f"{key}={override_value(values[key])}" for key in space), *tags,
                f"++objectives={objectives}"]

    def _run_batch(self, study: optuna.Study, batch: list[optuna.Trial], fixed: list[str],
                   space: dict[str, Any]) -> list[Any]:
        worker = this_worker()
        overrides = []
        beats = []
        for trial in batch:
            study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker)
            overrides.append(self._overrides(fixed, space, trial.params, trial, trial.number))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                beat = optuna.storages._heartbeat.get_heartbeat_thread(trial._trial_id, study._storage)
            beat.start()
            beats.append(beat)
        try:
            results = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
        finally:
            for beat in beats:
                beat.join()
        self.job_idx += len(batch)
        for trial, result in zip(batch, results, strict=True):
            self._tell(study, trial, result)
        return results

    def _tell(self, study: optuna.Study, trial: optuna.Trial, result: Any) -> None:
        try:
            value = result.return_value
        except Exception as error:  # the job raised: Hydra re-raises it here
            if isinstance(error, optuna.TrialPruned) or type(error).__name__ == "TrialPruned":
                study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d pruned", trial.number)
                return
            log.error("trial %d failed: %s: %s%s", trial.number, type(error).__name__, error,
                      "".join(f"; {note}" for note in getattr(error, "__notes__", ())))
            study.tell(trial, state=TrialState.FAIL)
            return
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if len(values) != len(self.directions):
            log.error("trial %d returned %r; the study needs %d values (%s)", trial.number, value,
                      len(self.directions), self.objectives)
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, [float(v) for v in values] if len(values) > 1 else float(values[0]))
        log.info("trial %d: %s = %s", trial.number, self.objectives, values)

    # -- the report ----------------------------------------------------------------------------
    def report(self, study: optuna.Study) -> None:
        from hydra_plugins.compressbench_optuna_sweeper.report import write_report

        for line in write_report(study, self.objectives, self.results_dir):
            log.info("%s", line)


def _given(node: Any) -> bool:
    """A sampler or pruner is set (``null`` and ``{}`` mean Optuna's default: none)."""
    return node is not None and not (isinstance(node, DictConfig | dict) and not node)


def _built(node: Any) -> Any:
    """A sampler or pruner from its config (the sweeper's node is not instantiated recursively), or as given."""
    if not _given(node):
        return None
    return instantiate(node) if isinstance(node, DictConfig | dict) else node


def _sampler(node: Any) -> Any:
    """The study's sampler; one whose config gives a seed draws each trial from its own seed
    (:class:`TrialSeededSampler`), so that shared and resumed studies do not repeat points."""
    if not (isinstance(node, DictConfig | dict) and node.get("seed") is not None):
        return _built(node)
    sampler = instantiate(node)
    if isinstance(sampler, STUDY_SEEDED):
        return sampler
    return TrialSeededSampler(lambda seed: instantiate(node, seed=seed), int(node["seed"]), sampler)


def _redacted(url: str) -> str:
    """The storage URL without its password (it goes into MLflow tags)."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}@{host}"
