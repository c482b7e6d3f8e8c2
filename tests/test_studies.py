"""The studies in benchmarks/studies build their methods from the yamls: every setting they override must exist.

A renamed yaml key (or a removed method) fails here, not half an hour into a study's run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.studies.binary import RESNET_RUNS, chosen_lr
from benchmarks.studies.pruning_auto import AMC_OVERRIDES, COMPACTNET_OVERRIDES
from benchmarks.studies.quantization_codebook import deep_compression_overrides, fixed_point_method
from benchmarks.studies.quantization_ptq import VARIANTS
from methods import create_method
from methods.base import CompressionMethod

PRESETS = sorted((Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("deep_compression_*.yaml"))


@pytest.mark.parametrize("search", ["ddpg", "uniform"])
@pytest.mark.parametrize("resource", ["latency", "flops"])
def test_pruning_auto_amc_settings(resource, search):
    method = create_method("amc", resource=resource, target_ratio=0.5, search=search, episodes=2, warmup_episodes=1,
                           reward_batches=1, **AMC_OVERRIDES)
    assert isinstance(method, CompressionMethod)


def test_pruning_auto_compactnet_settings():
    assert isinstance(create_method("compactnet", **COMPACTNET_OVERRIDES), CompressionMethod)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_quantization_codebook_deep_compression_presets(preset):
    assert PRESETS and isinstance(create_method("deep_compression", **deep_compression_overrides(preset)),
                                  CompressionMethod)


@pytest.mark.parametrize(("fraction_bits", "rounding"), [(12, "stochastic"), (4, "nearest"), (2, "nearest")])
def test_quantization_codebook_fixed_point_grid(fraction_bits, rounding):
    assert isinstance(fixed_point_method(fraction_bits, rounding, 0.5, 0.01), CompressionMethod)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_quantization_ptq_variants(variant):
    assert isinstance(create_method("ptq", calibration_batches=16, **VARIANTS[variant]), CompressionMethod)


@pytest.mark.parametrize("label", sorted(label for label, spec in RESNET_RUNS.items() if spec["method"]))
def test_binary_resnet20_rows(label):
    spec = RESNET_RUNS[label]
    for lr in spec["lr_grid"]:
        assert isinstance(create_method(spec["method"], **spec["settings"], finetune={"epochs": 1, "lr": lr}),
                          CompressionMethod)


def test_binary_resnet20_learning_rate_is_the_best_validated_that_did_not_diverge():
    grid = {0.1: {"diverged": "the training loss is nan"}, 0.01: {"val_top1": 80.0}, 0.001: {"val_top1": 85.0}}
    assert chosen_lr(grid) == 0.001
    assert chosen_lr({**grid, 0.001: {"diverged": "nan"}}) == 0.01
    assert chosen_lr({0.1: {"diverged": "nan"}, 0.01: {"diverged": "nan"}}) == 0.1


def test_a_study_resumes_and_drops_only_the_runs_of_changed_settings(tmp_path: Path) -> None:
    from benchmarks.studies.runs import Runs

    path, measured = tmp_path / "figures.json", []

    def measure(key: str) -> dict[str, str]:
        measured.append(key)
        return {"key": key}

    parts = {"mnist": ["epochs"], "cifar": ["subset"]}
    study = Runs(path, {"epochs": 1, "subset": 10}, parts=parts)
    for key in ("mnist/a", "cifar/a"):
        study.get(key, lambda key=key: measure(key))
    resumed = Runs(path, {"epochs": 1, "subset": 20}, parts=parts)  # cifar's setting changed: its run is redone
    for key in ("mnist/a", "cifar/a"):
        resumed.get(key, lambda key=key: measure(key))
    assert measured == ["mnist/a", "cifar/a", "cifar/a"]
    # running mnist alone with cifar's flag at another value keeps cifar's runs and the setting they were made with
    alone = Runs(path, {"epochs": 1, "subset": 99}, parts=parts, running=["mnist"])
    assert sorted(alone.data["runs"]) == ["cifar/a", "mnist/a"] and alone.data["settings"]["subset"] == 20
    assert sorted(Runs(path, {"epochs": 2, "subset": 20}).data["runs"]) == []  # no parts: all or nothing


def test_parts_run_apart_keep_each_others_runs_and_a_diverged_run_is_a_row(tmp_path: Path) -> None:
    from benchmarks.studies.runs import Runs
    from benchmarks.training import TrainingDivergedError

    path, settings = tmp_path / "figures.json", {"lr": 0.01}
    first, second = Runs(path, settings, collection="rows"), Runs(path, settings, collection="rows")  # two processes
    first.get("conv/a", lambda: {"top1": 1.0})
    second.get("tt/a", lambda: {"top1": 2.0})
    assert sorted(Runs(path, settings, collection="rows").data["rows"]) == ["conv/a", "tt/a"]

    def diverges() -> dict[str, float]:
        raise TrainingDivergedError("the training loss is nan")

    with pytest.raises(TrainingDivergedError):
        first.get("conv/b", diverges)
    recorded = Runs(path, settings, collection="rows", diverged_rows=True).get("conv/b", diverges)
    assert recorded["diverged"] == "the training loss is nan"
