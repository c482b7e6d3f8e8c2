"""A run's name, kind and code version: what makes runs readable and comparable in MLflow (issue 11)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig

from benchmarks.matrix import baseline_overrides, compose_params, entry_overrides
from benchmarks.run_labels import run_kind, run_name
from benchmarks.schema import ConfigError
from benchmarks.tracking import git_state

TAGS = {"model": "lenet5", "method": "amc", "hw": "pixel1", "seed": 42}


def test_run_name_reads_model_method_device_seed_and_can_be_set() -> None:
    assert run_name(None, TAGS) == "lenet5-amc-pixel1-s42"
    assert run_name(None, {**TAGS, "optuna_trial": "7"}) == "lenet5-amc-pixel1-s42-t7"
    assert run_name("my-run", TAGS) == "my-run"


def test_run_kind_is_derived_from_the_config_or_set(compose_cfg: Callable[..., DictConfig]) -> None:
    tiny = compose_cfg("+experiment=tiny")
    assert run_kind(tiny.get("run_kind"), dict(tiny.tags)) == "smoke"
    plain = compose_cfg()
    assert run_kind(plain.get("run_kind"), dict(plain.tags)) == "user"
    assert run_kind(None, {"optuna_trial": "3"}) == "sweep_trial"
    assert run_kind("full", {"preset": "tiny"}) == "full"
    with pytest.raises(ConfigError, match="run_kind: 'fast' is not a run kind.*smoke"):
        run_kind("fast", {})


@pytest.mark.parametrize(("bench", "kind"), [("quick", "quick"), ("full", "full"), ("tiny", "smoke")])
def test_the_dvc_matrix_tags_its_runs_with_its_kind(bench: str, kind: str) -> None:
    matrix = compose_params([f"bench={bench}"])["bench"]
    entry, baseline = sorted(matrix["entries"])[0], sorted(matrix["baselines"])[0]
    assert f"run_kind={kind}" in entry_overrides(matrix, entry)
    assert f"run_kind={kind}" in baseline_overrides(matrix, baseline)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                   capture_output=True)


def test_git_dirty_counts_source_and_configs_not_results(tmp_path: Path) -> None:
    for path in ("benchmarks/a.py", "conf/config.yaml", "results/leaderboard.md", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "v1")
    (tmp_path / "results/leaderboard.md").write_text("rewritten by the leaderboard\n")
    (tmp_path / "results/new.csv").write_text("new\n")
    (tmp_path / "README.md").write_text("docs\n")
    clean = git_state(tmp_path)
    assert clean["git_dirty"] == "false" and "git_dirty_paths" not in clean

    (tmp_path / "conf/config.yaml").write_text("v2\n")
    (tmp_path / "benchmarks/b.py").write_text("new module\n")
    dirty = git_state(tmp_path)
    assert dirty["git_dirty"] == "true"
    assert dirty["git_dirty_paths"].split() == ["conf/config.yaml", "benchmarks/b.py"]


def test_git_dirty_paths_are_truncated_with_a_count(tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "pyproject.toml").write_text("v1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "v1")
    for i in range(25):
        (tmp_path / "methods" / f"m{i:02d}.py").write_text("x\n")
    paths = git_state(tmp_path)["git_dirty_paths"]
    assert paths.endswith("(+5 more)") and len(paths.split()) == 20 + 2
