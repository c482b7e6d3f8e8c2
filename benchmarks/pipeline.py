"""The flow of one run (docs/ARCHITECTURE.md): data -> model -> target -> baseline -> method -> report -> MLflow.

``run(cfg)`` is what ``python -m benchmarks`` calls for every point of a composition. It
returns the compressed model's top-1, the objective of sweeps; when the config names
``objectives`` (a list of recorded metrics, e.g. ``[top1, latency_ms]``: what an Optuna
sweep sets), it returns their values as a tuple in that order.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from benchmarks.baseline_cache import BaselineModel, baseline_key, obtain_baseline
from benchmarks.context import make_context
from benchmarks.evaluation import ModelReport, comparison, evaluate_pair, speedup_tags, speedups, write_layer_table
from benchmarks.lineage import check_model_format, data_fraction, dataset_of, log_dataset, log_model
from benchmarks.preflight import CONF_DIR, DEFAULT_OPTIONS, Prepared, prepare, with_defaults
from benchmarks.run_labels import SEARCH_CANDIDATE_KIND, run_kind, run_name
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.splits import DEFAULT_OBJECTIVE
from benchmarks.tracking import RunRecorder, git_state, mlflow_run
from benchmarks.training import fit
from benchmarks.trial_pruning import trial_pruning
from hardware.speedup import Speedup
from hardware.target import HardwareTarget, LatencyReport
from methods.base import CompressionResult

log = logging.getLogger(__name__)

@contextmanager
def stage(name: str) -> Iterator[None]:
    """One short log line per pipeline stage, with its duration."""
    start = time.perf_counter()
    log.info("[%s] ...", name)
    yield
    log.info("[%s] done in %.1f s", name, time.perf_counter() - start)


def _group_tags(cfg: DictConfig) -> dict[str, str]:
    """Runs of one Hydra multirun share the sweep folder as their group tag."""
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed without @hydra.main (tests, the API)
        return {}
    if str(hydra_cfg.mode) == "RunMode.MULTIRUN":
        return {"multirun": hydra_cfg.sweep.dir, "multirun_job": str(hydra_cfg.job.num)}
    return {}


def _provenance_tags(report: LatencyReport, prefix: str = "latency") -> dict[str, str]:
    return {f"{prefix}_source": report.label, f"{prefix}_calibration": report.calibration}


def run(cfg: DictConfig, prepared: Prepared | None = None) -> float | tuple[float, ...]:
    """Run one composition end to end and record it; return the compressed model's validation top-1.

    With ``cfg.objectives`` (a sweep's metrics) it returns those instead; test-split metrics
    are refused there before any work, since choices are made on validation data. ``prepared``:
    what :func:`benchmarks.preflight.prepare` built from ``cfg`` (the CLI prepares before importing
    this module); without it the run prepares first.
    """
    cfg = with_defaults(cfg)
    if prepared is None:
        with stage("check"):  # method, target, data and model built once: a config that cannot run leaves no run
            prepared = prepare(cfg)
    seed = prepared.settings.seed
    tags = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "method": cfg.method.name,
        "hw": cfg.hw.name,
        "seed": seed,
        "eval_split": cfg.evaluation.split,
        "selection_split": cfg.evaluation.selection_split,
        **git_state(CONF_DIR.parent),  # the code's own checkout, wherever the run writes
        **_group_tags(cfg),
        **{k: v for k, v in (cfg.get("tags") or {}).items()},
    }
    tags["run_kind"] = run_kind(cfg.get("run_kind"), tags)
    check_model_format(cfg.logger.log_model)
    logger_cfg = cfg.logger
    with mlflow_run(logger_cfg.tracking_uri, logger_cfg.experiment_name, logger_cfg.artifact_location,
                    run_name(logger_cfg.run_name, tags), tags) as recorder:
        recorder.params(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))  # the config's mapping
        recorder.text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        return _run_recorded(cfg, prepared, recorder)


def _run_recorded(cfg: DictConfig, prepared: Prepared, recorder: RunRecorder) -> float | tuple[float, ...]:
    recipe, trainer_cfg, seed = prepared.settings.recipe, prepared.settings.trainer, prepared.settings.seed
    L.seed_everything(seed, workers=True, verbose=False)
    with stage("data"):
        datamodule = prepared.datamodule
        recorder.tags({"data_checksum": datamodule.checksum, "data_fraction": f"{data_fraction(datamodule):.4g}"})
        log_dataset(recorder, dataset_of(datamodule))

    with stage("hardware"):
        target: HardwareTarget = prepared.target
        local_target = _local_target(cfg, target)
        input_shape = (target.batch_size, *datamodule.input_shape)

    callbacks: list[L.Callback] = [c for c in [trial_pruning(cfg)] if c is not None]  # every training reports to it
    with stage("baseline"):
        baseline = _baseline(cfg, prepared.model, datamodule, recipe, trainer_cfg, seed, recorder, callbacks)
        recorder.tags({"baseline_origin": baseline.origin, "baseline_key": baseline.key})

    workdir = Path(cfg.paths.output_root) / "work" / recorder.run_id
    with stage(f"method {cfg.method.name}"):
        method = prepared.method
        losses: list[str] = []  # what each fine-tuning minimised (recipe.distill, or the method's own loss)
        ctx = make_context(datamodule, target, recipe, trainer_cfg, seed, workdir,
                           logger=_training_logger(cfg, recorder, "finetune"), callbacks=callbacks,
                           baseline=baseline.model, on_finetune=losses.append)
        result: CompressionResult = method.compress(copy.deepcopy(baseline.model), ctx)
        recorder.tags({"finetune_loss": " | ".join(dict.fromkeys(losses)) or "none (no fine-tuning)"})

    split, selection_split = cfg.evaluation.split, cfg.evaluation.selection_split
    with stage("evaluate"):
        base_report, report = evaluate_pair(baseline.model, result.model, datamodule, target, input_shape,
                                            (baseline.file.stat().st_size, result.stored_bytes), split=split,
                                            selection_split=selection_split, layer_bits=result.layer_bits,
                                            deployables=result.deployables, local_target=local_target)

    paired = speedups(report, base_report)  # intervals: computed once, recorded and printed
    with stage("record"):
        _record(cfg, recorder, report, base_report, paired, result, workdir)
    with stage("mlflow model"):
        log_model(recorder, result.model, torch.randn(2, *datamodule.input_shape),  # 2: export fixes a batch of 1
                  {k: str(cfg[k].name) for k in ("dataset", "model", "method", "hw")}, cfg.logger.log_model)
    _log_result(cfg, report, base_report, paired)
    recorded = {**report.metrics(), **comparison(report, base_report, paired)}
    objectives = list(cfg.get("objectives") or [DEFAULT_OBJECTIVE])
    found = {name: value for name in objectives if (value := recorded.get(name)) is not None}
    unknown = [name for name in objectives if name not in found]
    if unknown:
        raise ValueError(f"objectives {unknown} are not metrics of this run; choose from {sorted(recorded)}")
    values = tuple(float(found[name]) for name in objectives)
    return values if cfg.get("objectives") else values[0]


def _log_result(cfg: DictConfig, report: ModelReport, base_report: ModelReport, found: dict[str, Speedup]) -> None:
    """The run's figures on the console; a speedup with its interval or verdict, and a warning when noisy."""
    local = f"; measured on this CPU: {found['local_cpu_speedup'].describe()}" if "local_cpu_speedup" in found else ""
    log.info("[result] %s/%s/%s on %s: top-1 %.2f%% (baseline %.2f%%), %.3f ms %s, speedup %s%s; %d bytes (x%.1f smaller)",
             cfg.dataset.name, cfg.model.name, cfg.method.name, cfg.hw.name, report.accuracy["top1"],
             base_report.accuracy["top1"], report.latency.latency_ms, report.latency.label,
             found["speedup"].describe(), local, report.stored_bytes, base_report.stored_bytes / report.stored_bytes)
    for name, speedup in found.items():
        if speedup.noisy:
            log.warning("[result] %s: machine too noisy (the timing protocol's coefficient of variation exceeded "
                        "its threshold; tag %s=true): rerun on a quieter machine before trusting it",
                        name, name.replace("speedup", "latency_noisy"))


def _local_target(cfg: DictConfig, target: HardwareTarget) -> HardwareTarget | None:
    """The measured CPU target, when the run's own target is emulated and asked for it."""
    if target.source == "measured" or not cfg.evaluation.measure_local_cpu:
        return None
    node = OmegaConf.load(CONF_DIR / "hw" / f"{DEFAULT_OPTIONS['hw']}.yaml")
    node.batch_size = target.batch_size
    return instantiate(node)


def _training_logger(cfg: DictConfig, recorder: RunRecorder, prefix: str) -> Any:
    """Lightning's MLflow logger writing training curves into the run's own MLflow run."""
    if not cfg.logger.log_training:
        return False
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(tracking_uri=cfg.logger.tracking_uri, run_id=recorder.run_id, prefix=prefix)


def _baseline(cfg: DictConfig, model: torch.nn.Module, datamodule: Any, recipe: RecipeConfig, trainer_cfg: TrainerConfig,
              seed: int, recorder: RunRecorder, callbacks: list[L.Callback]) -> BaselineModel:
    """``model`` (built by the checks, with the seed's initial weights) trained, or its cached or given weights."""
    model_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.model, resolve=True))
    dataset_cfg = cast(dict[str, Any], OmegaConf.to_container(cfg.dataset, resolve=True))
    key = baseline_key(model_cfg, dataset_cfg, datamodule.checksum, recipe, trainer_cfg, seed)
    fresh_origin = "trained" if recipe.epochs > 0 else ("weights" if model_cfg.get("pretrained") else "untrained")

    def train(m: torch.nn.Module) -> torch.nn.Module:
        return fit(m, datamodule, recipe, trainer_cfg, seed=seed, callbacks=callbacks,
                   logger=_training_logger(cfg, recorder, "baseline"))

    return obtain_baseline(model, key, Path(cfg.paths.cache_dir) / "baselines", use_cache=cfg.baseline.cache,
                           fresh_origin=fresh_origin, train=train)


def _record(cfg: DictConfig, recorder: RunRecorder, report: ModelReport, base_report: ModelReport,
            found: dict[str, Speedup], result: CompressionResult, workdir: Path) -> None:
    recorder.metrics({**report.metrics(), **base_report.metrics("baseline_"), **comparison(report, base_report, found),
                      **{f"method_{k}": v for k, v in result.metrics.items()}})
    recorder.tags({**_provenance_tags(report.latency), **speedup_tags(found),
                   "latency_provenance": json.dumps(report.latency.provenance, default=str)[:5000],
                   "latency_notes": " | ".join(report.latency.notes)[:5000]})
    recorder.text(json.dumps({"compressed": _latency_dict(report.latency), "baseline": _latency_dict(base_report.latency),
                              "local_cpu": _latency_dict(report.local_latency),
                              "baseline_local_cpu": _latency_dict(base_report.local_latency),
                              "speedups": {name: asdict(s) for name, s in found.items()}},
                             indent=2, default=str), "latency.json")
    if cfg.evaluation.per_layer_table:
        recorder.artifact(write_layer_table(report, workdir / "layers.csv"))
    recorder.artifact(result.stored_file, "model")
    for path in result.deployables.values():
        recorder.artifact(path, "model")
    for path in result.artifacts:
        recorder.artifact(path, "method")
    for index, candidate in enumerate(result.candidates):
        recorder.child(str(candidate.get("name", f"candidate-{index}")),
                       {"run_kind": SEARCH_CANDIDATE_KIND, "search_method": cfg.method.name},
                       candidate.get("params", {}), candidate.get("metrics", {}))
    if result.candidates:
        recorder.tags({"search_candidates": len(result.candidates)})


def _latency_dict(report: LatencyReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {"hw": report.hw, "latency_ms": report.latency_ms, "spread_ms": report.spread_ms, "source": report.source,
            "calibration": report.calibration, "energy_mj": report.energy_mj, "memory": report.memory,
            "provenance": report.provenance, "notes": report.notes, "per_layer_ms": report.per_layer_ms,
            "noisy": report.noisy, "rounds_ms": report.rounds_ms}
