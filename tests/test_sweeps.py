"""Optuna sweeps through Hydra (`python -m benchmarks -m sweep=<preset>`): search-space errors,
a multi-objective study killed with SIGKILL mid-trial that resumes, retries the killed
trial, reruns no finished one and writes its Pareto front, and trials pruned by their
validation metric."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from benchmarks.pipeline import CONF_DIR
from hydra_plugins.compressbench_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.compressbench_optuna_sweeper.optuna_sweeper import (
    WORKER_ATTR,
    SweepSpecError,
    parse_space,
    this_worker,
)
from tests.conftest import REPO_ROOT, needs_shared_data

#: A trial in seconds, not minutes: a few hundred samples, short timing, no per-layer extras.
TRIAL = ["+experiment=tiny", "dataset.train_subset=128", "dataset.val_subset=64", "dataset.test_subset=64",
         "+hw=local_cpu", "hw.warmup=1", "hw.repeats=3", "hw.min_time_s=0", "hw.per_layer=false",
         "evaluation.measure_local_cpu=false", "evaluation.per_layer_table=false", "logger.log_training=false"]


def test_search_space_from_preset_and_command_line() -> None:
    space, fixed = parse_space({"method.sparsity": "interval(0.5, 0.9)", "method.scope": "choice(layer, global)"},
                               ["method.sparsity=tag(log, interval(0.1, 0.5))", "recipe.epochs=range(1, 4)", "seed=3"])
    assert space["method.sparsity"] == optuna.distributions.FloatDistribution(0.1, 0.5, log=True)
    assert space["method.scope"] == optuna.distributions.CategoricalDistribution(["layer", "global"])
    assert space["recipe.epochs"] == optuna.distributions.IntDistribution(1, 3)
    assert fixed == ["seed=3"]


@pytest.mark.parametrize(("params", "message"), [
    ({}, "search space is empty"),
    ({"method.sparsity": "interval(0.9, 0.5)"}, "needs low < high"),
    ({"method.scope": "range(3, 3)"}, "empty range"),
    ({"method.layers.exclude": "choice([fc1], [fc1, fc2])"}, "not all plain values"),
])
def test_bad_search_space_is_refused(params: dict[str, str], message: str) -> None:
    # by name: Hydra's plugin scan re-executes plugin modules, so the class object may be a new one
    with pytest.raises(ValueError, match=message) as error:
        parse_space(params, [])
    assert type(error.value).__name__ == SweepSpecError.__name__


@needs_shared_data
@pytest.mark.e2e
def test_unknown_key_stops_the_sweep_before_any_trial(run_env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks", "-m", "sweep=tpe", "recipe.lrr=interval(0.01, 0.1)",
                           *TRIAL], cwd=REPO_ROOT, env=run_env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "recipe.lrr" in done.stderr and "check the key names" in done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # no trial ran


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials()
    except Exception:  # the study (or the database) does not exist yet
        return []


@needs_shared_data
@pytest.mark.slow
@pytest.mark.e2e
def test_multi_objective_study_resumes_after_sigkill(run_env: dict[str, str], tmp_path: Path) -> None:
    storage, name = f"sqlite:///{tmp_path}/optuna.db", "mo_resume"
    command = [sys.executable, "-m", "benchmarks", "-m", "sweep=nsga2_magnitude", *TRIAL, "method.finetune.epochs=0",
               f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=3",
               "hydra.sweeper.sampler.population_size=2"]
    first = subprocess.Popen(command, cwd=REPO_ROOT, env=run_env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and first.poll() is None:
        trials = {t.number: t for t in _trials(storage, name)}
        # trial 1 running, and already claimed by its worker (the sweeper marks it right after ask())
        if (0 in trials and trials[0].state == TrialState.COMPLETE and 1 in trials
                and trials[1].state == TrialState.RUNNING and WORKER_ATTR in trials[1].system_attrs):
            break
        time.sleep(0.3)
    assert first.poll() is None, "the sweep ended before trial 1 could be killed"
    os.killpg(first.pid, signal.SIGKILL)  # the sweeper and its trial, mid-trial
    first.wait()
    killed = {t.number: t for t in _trials(storage, name)}[1]
    assert killed.state == TrialState.RUNNING

    subprocess.run(command, cwd=REPO_ROOT, env=run_env, check=True, capture_output=True, timeout=900)
    trials = _trials(storage, name)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 3 and states.count(TrialState.FAIL) == 1
    assert trials[1].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.params == killed.params and retry.state == TrialState.COMPLETE

    mlflow.set_tracking_uri(run_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["compressbench"], output_format="list",
                              filter_string=f"tags.optuna_study = '{name}'")
    by_trial: dict[str, list] = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["optuna_trial"], []).append(run)
    assert len(by_trial["0"]) == 1 and by_trial["0"][0].info.status == "FINISHED"  # not rerun
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            (run,) = by_trial[str(trial.number)]
            assert run.data.metrics["val_top1"] == pytest.approx(trial.values[0])  # chosen on validation data
            assert run.data.metrics["stored_bytes"] == pytest.approx(trial.values[1])

    results = tmp_path / "results" / "sweeps" / name
    assert {"pareto.md", "pareto.csv", "pareto.png", "best_trials.md"} <= {p.name for p in results.iterdir()}
    assert (results / "pareto.png").stat().st_size > 5_000
    assert "| trial | val_top1 | stored_bytes |" in (results / "pareto.md").read_text()


@needs_shared_data
@pytest.mark.e2e
def test_pruner_stops_trials_by_their_validation_metric(run_env: dict[str, str], tmp_path: Path) -> None:
    """A pruner that prunes every reported value: each trial stops after its first validation epoch."""
    storage, name = f"sqlite:///{tmp_path}/optuna.db", "pruned"
    subprocess.run([sys.executable, "-m", "benchmarks", "-m", "sweep=tpe", *TRIAL, "recipe.epochs=2",
                    f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_trials=2",
                    "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 101.0}"],
                   cwd=REPO_ROOT, env=run_env, check=True, capture_output=True, timeout=900)
    trials = _trials(storage, name)
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in trials)  # pruned at the first of two epochs
    mlflow.set_tracking_uri(run_env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["compressbench"], output_format="list")
    assert sorted(r.data.tags["optuna_trial"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "KILLED" and r.data.tags["end_reason"] == "pruned" for r in runs)


@pytest.mark.parametrize(("settings", "message"), [
    ({"storage": None}, "needs hydra.sweeper.storage"),
    ({"direction": ["maximize", "minimize"], "objectives": ["val_top1", "latency_ms"]}, "cannot prune multi-objective"),
])
def test_pruner_needs_a_storage_and_one_objective(settings: dict[str, Any], message: str) -> None:
    node = OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), {
        "storage": "sqlite:///optuna.db", "params": {"recipe.lr": "interval(0.01, 0.1)"},
        "pruner": {"_target_": "optuna.pruners.MedianPruner"}, **settings})
    with pytest.raises(InstantiationException, match=message):  # Hydra wraps the sweeper's SweepSpecError
        instantiate(node)


@pytest.mark.parametrize("objectives", [["top1"], ["baseline_top1"], ["top1_delta", "latency_ms"]])
def test_a_sweep_never_optimises_a_test_split_figure(objectives: list[str]) -> None:
    node = OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), {
        "direction": ["maximize"] * len(objectives), "objectives": objectives,
        "params": {"recipe.lr": "interval(0.01, 0.1)"}})
    with pytest.raises(InstantiationException, match=r"test-split metrics.*val_top1"):
        instantiate(node)


def test_pruned_preset_composes_a_median_pruner() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["sweep=tpe_pruned"], return_hydra_config=True)
    assert cfg.hydra.sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert cfg.hydra.sweeper.params["recipe.lr"].startswith("tag(log")  # the tpe preset underneath


def test_a_trial_no_worker_claimed_is_failed_and_queued_again(tmp_path: Path) -> None:
    """A sweeper killed between ask() and its claim leaves a RUNNING trial without worker or heartbeat."""
    sweeper = instantiate(OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), {
        "storage": f"sqlite:///{tmp_path / 'optuna.db'}", "grace_period_s": 1,
        "params": {"recipe.lr": "interval(0.01, 0.1)"}}))
    study = sweeper.create_study()
    space = {"recipe.lr": optuna.distributions.FloatDistribution(0.01, 0.1)}
    orphan, claimed = study.ask(space), study.ask(space)
    study._storage.set_trial_system_attr(claimed._trial_id, WORKER_ATTR, this_worker())  # alive: this process
    sweeper.recover(study)
    assert {t.state for t in study.get_trials()} == {TrialState.RUNNING}  # younger than the grace period
    time.sleep(1.5)
    sweeper.recover(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert trials[2].params == trials[0].params == orphan.params


def _draws(sweeper_settings: dict[str, Any], storage: str, workers: int, rounds: int) -> dict[int, float]:
    """``workers`` sweepers of one study (each its own sampler, as separate processes have) asking in turn."""
    space = {"recipe.lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)}
    studies = [instantiate(OmegaConf.merge(OmegaConf.structured(OptunaSweeperConf), {
        **sweeper_settings, "storage": storage, "params": {"recipe.lr": "interval(0.01, 0.1)"}})).create_study()
        for _ in range(workers)]
    draws = {}
    for _ in range(rounds):
        for study in studies:
            trial = study.ask(space)
            draws[trial.number] = trial.params["recipe.lr"]
            study.tell(trial, trial.params["recipe.lr"])
    return draws


@pytest.mark.parametrize("sampler", ["TPESampler", "NSGAIISampler", "RandomSampler"])
def test_workers_of_a_shared_study_draw_distinct_points_and_any_split_draws_the_same(sampler: str,
                                                                                     tmp_path: Path) -> None:
    """One seeded sampler per process drew the same points in every worker (4 workers, 8 trials, 2 points)
    and a resumed sweep drew its first points again; seeded per trial, trial n's point is the same however
    the trials were split among workers or sessions."""
    settings = {"sampler": {"_target_": f"optuna.samplers.{sampler}", "seed": 7}}
    alone = _draws(settings, f"sqlite:///{tmp_path / 'alone.db'}", workers=1, rounds=8)
    shared = _draws(settings, f"sqlite:///{tmp_path / 'shared.db'}", workers=4, rounds=2)
    assert len(set(shared.values())) == 8
    assert shared == alone
    resumed = tmp_path / "resumed.db"
    first = _draws(settings, f"sqlite:///{resumed}", workers=1, rounds=3)
    assert {**first, **_draws(settings, f"sqlite:///{resumed}", workers=1, rounds=5)} == alone
