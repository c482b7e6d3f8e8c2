"""The sweeper's config node (``hydra.sweeper``), registered as ``hydra/sweeper=compressbench_optuna``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.compressbench_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    #: The sampler and pruner arrive as their configs: the sweeper builds the sampler again for
    #: every trial, with that trial's seed (sampler.TrialSeededSampler).
    _recursive_: bool = False
    #: The study's name: runs of the same name (and storage) resume one study.
    study_name: str = "compressbench"
    #: Any SQLAlchemy URL (sqlite:///..., postgresql://...) or null for in-memory (not resumable).
    storage: Any = None
    #: "maximize"/"minimize", or a list of them for a multi-objective study.
    direction: Any = "maximize"
    #: What each trial returns, in the order of ``direction`` (metrics of the run, see pipeline.run):
    #: validation figures (``val_top1``) or costs; test-split figures are refused (benchmarks.splits).
    objectives: Any = field(default_factory=lambda: ["val_top1"])
    #: Trials the study should hold when the sweep ends (COMPLETE or PRUNED; failed ones are retried).
    n_trials: int = 20
    #: Trials launched at once (one launcher batch): 1 for the basic launcher, N for Ray/submitit.
    n_jobs: int = 1
    #: Times a trial whose worker died (SIGKILL, lost node) is retried with the same parameters.
    max_retry: int = 3
    #: Optuna heartbeat (RDB storages): a running trial silent for grace_period_s is stale.
    heartbeat_interval_s: int = 10
    grace_period_s: int = 60
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 42})
    #: An Optuna pruner (``_target_: optuna.pruners.MedianPruner``, ...) or null: trials report
    #: ``prune_monitor`` after every validation epoch and stop early (benchmarks/trial_pruning.py).
    pruner: Any = None
    prune_monitor: str = "val/top1"
    #: The search space: {config key: Hydra sweep expression}, e.g. ``interval(0.5, 0.95)``.
    params: Any = None
    #: Where the best-trial table and, for several objectives, the Pareto front go (null: no files).
    results_dir: Any = None


ConfigStore.instance().store(group="hydra/sweeper", name="compressbench_optuna", node=OptunaSweeperConf,
                             provider="compressbench")
