"""Optuna pruning of sweep trials by Lightning's validation metric (issue 6, "Pruning of bad trials").

A trial of the project's sweeper runs as an ordinary Hydra job, perhaps in another process
or on another machine (Ray, SLURM), so no ``optuna.Trial`` object can be handed to it. The
job finds its trial instead: the study's storage and name come from its own Hydra config
(``hydra.sweeper``), the trial number from the ``optuna_trial`` tag the sweeper sets. After
every validation epoch of the baseline's training and of the method's fine-tuning, the
monitored metric is reported to the trial (one step per validation, counted across both),
and when the study's pruner says so the run stops with ``optuna.TrialPruned``: its MLflow
run ends KILLED (``end_reason: pruned``) and the sweeper records the trial PRUNED.

Pruning needs a storage the jobs can reach (not in-memory) and a single-objective study
(Optuna does not prune multi-objective trials); the sweeper refuses other settings. The
reported value is ``hydra.sweeper.prune_monitor`` (``val/top1`` by default), so the study's
direction must suit it.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    """Report ``monitor`` after each validation; raise ``optuna.TrialPruned`` when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str = "val/top1") -> None:
        self.trial = trial
        self.monitor = monitor
        self.step = 0  # validations so far, across every training of the run

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.trial.report(value, self.step)
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"trial {self.trial.number} pruned after validation {self.step} "
                                     f"({self.monitor} = {value:.4g})")


def trial_pruning(cfg: DictConfig) -> OptunaPruning | None:
    """The pruning callback of this run when it is a trial of a sweep with a pruner; else None."""
    try:
        sweeper = HydraConfig.get().sweeper
    except ValueError:  # composed without @hydra.main: not a trial
        return None
    number = (cfg.get("tags") or {}).get("optuna_trial")
    if sweeper.get("pruner") is None or number is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat options are "experimental"
        study = optuna.load_study(study_name=str(sweeper.study_name), storage=str(sweeper.storage),
                                  pruner=_pruner(sweeper.pruner))
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(number))
    log.info("trial %s of study %r: pruning on %s", number, study.study_name, sweeper.prune_monitor)
    return OptunaPruning(optuna.Trial(study, trial_id), str(sweeper.prune_monitor))


def _pruner(node: Any) -> optuna.pruners.BasePruner:
    return node if isinstance(node, optuna.pruners.BasePruner) else instantiate(node)
