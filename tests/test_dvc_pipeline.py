"""The DVC pipeline on the tiny matrix, in a fresh git + DVC project copied from this tree:
`dvc repro` runs every stage, a second call runs nothing, and editing one method's yaml
reruns only that method's stage (and the leaderboard built from it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from benchmarks.matrix import MatrixError, compose_params, entry_overrides, load_matrix
from tests.conftest import REPO_ROOT, SHARED_DATA, needs_shared_data

#: What a project needs to run its pipeline (code, configs, the pipeline itself).
PROJECT_FILES = ["benchmarks", "methods", "hardware", "hydra_plugins", "conf", "dvc.yaml", ".dvcignore"]


def test_every_matrix_composes() -> None:
    """Each entry of every shipped matrix is a valid run composition (no typo waits for hours)."""
    from benchmarks.matrix import baseline_overrides, compose_run

    for name in ("tiny", "quick", "full"):
        matrix = compose_params([f"bench={name}"])["bench"]
        assert matrix["name"] == name
        for baseline in matrix["baselines"]:
            cfg = compose_run(baseline_overrides(matrix, baseline))
            assert cfg.tags.dvc_stage == f"baselines@{baseline}"
        for entry in matrix["entries"]:
            cfg = compose_run(entry_overrides(matrix, entry))
            assert cfg.method.name == matrix["entries"][entry]["method"]
            assert cfg.tags.dvc_stage == f"bench@{entry}"


def test_committed_params_match_the_quick_matrix() -> None:
    """params.yaml is conf/dvc_params.yaml composed: a fresh clone's `dvc repro` runs conf/bench/quick.yaml."""
    assert load_matrix(REPO_ROOT / "params.yaml") == compose_params([])["bench"]


def _in_git(path: str, tracked: set[str]) -> bool:
    return path in tracked or any(name.startswith(path.rstrip("/") + "/") for name in tracked)


def test_the_committed_dvc_lock_matches_the_code_configs_and_params() -> None:
    """dvc.lock records the code, configs and params the results in git came from: changing any of them
    without `dvc repro` fails here. Deps git does not hold (DVC-cached data such as data/mnist, absent
    from a fresh clone) and outputs missing from DVC's cache do not count."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(["dvc", "status", "--json"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          check=True)
    status = json.loads(done.stdout or "{}")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                                 check=True).stdout.splitlines())
    drift: dict[str, list[object]] = {}
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):  # "changed command", "changed checksum", ...
                drift.setdefault(stage, []).append(change)
                continue
            for kind, entries in change.items():
                if kind == "changed deps":
                    entries = {path: why for path, why in entries.items() if _in_git(path, tracked)}
                if kind != "changed outs" and entries:
                    drift.setdefault(stage, []).append({kind: entries})
    assert not drift, f"dvc.lock is stale: run `dvc repro` and commit dvc.lock with results/ ({drift})"


def test_bad_matrix_is_refused() -> None:
    with pytest.raises(MatrixError, match="no baseline 'lenet5_cifar10_jpeg'"):
        compose_params(["bench=tiny", "+bench.entries.x={model: lenet5, dataset: cifar10_jpeg, method: ptq, hw: local_cpu}"])
    with pytest.raises(MatrixError, match="no entry 'lenet5_mnist_agp'"):
        compose_params(["bench=tiny", "+bench.reproductions.x={entry: lenet5_mnist_agp, source: s, paper: {top1: 99}}"])


def _project(root: Path) -> dict[str, str]:
    for name in PROJECT_FILES:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, root / name)
    env = {k: v for k, v in os.environ.items() if k not in ("COMPRESSBENCH_ROOT", "MLFLOW_TRACKING_URI")}
    env.update({"COMPRESSBENCH_SOURCE_DATA": str(SHARED_DATA), "PYTHONPATH": str(root), "DVC_NO_ANALYTICS": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"})
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@example.com"],
                    ["git", "config", "user.name", "test"], [sys.executable, "-m", "dvc", "init", "-q"],
                    [sys.executable, "-m", "benchmarks.matrix", "params", "bench=tiny"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "tiny project"]):
        subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
    return env


def _repro(root: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line.split("'")[1] for line in done.stdout.splitlines() if line.startswith("Running stage")]


@needs_shared_data
@pytest.mark.slow
def test_repro_noop_and_one_method_change(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    env = _project(root)

    ran = _repro(root, env)
    assert sorted(ran) == ["baselines@lenet5_mnist", "bench@lenet5_mnist_filter", "bench@lenet5_mnist_magnitude",
                           "data@mnist", "leaderboard", "reproductions"]
    checksum = json.loads((root / "results/data/mnist.json").read_text())["checksum"]
    assert (root / "data/mnist").is_dir() and (root / ".dvc/cache").is_dir()  # data versioned by DVC
    assert "/mnist" in (root / "data/.gitignore").read_text()                    # ... never by git
    record = json.loads((root / "results/bench/lenet5_mnist_magnitude.json").read_text())
    assert record["dvc_stage"] == "bench@lenet5_mnist_magnitude" and record["data_checksum"] == checksum
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    run = mlflow.get_run(record["run_id"])
    assert run.data.tags["dvc_stage"] == "bench@lenet5_mnist_magnitude"
    assert run.data.tags["data_checksum"] == checksum
    assert run.data.metrics["top1"] == record["metrics"]["top1"]
    board = (root / "results/tiny/leaderboard.csv").read_text()
    assert "magnitude" in board and "filter" in board
    papers = (root / "results/reproductions/tiny.md").read_text()
    compression = record["metrics"]["compression"]
    assert f"| compression | 12 | {compression:.4g} | {compression - 12:+.4g} |" in papers

    assert _repro(root, env) == []  # nothing changed: nothing runs

    method = root / "conf/method/filter.yaml"
    method.write_text(method.read_text().replace("pruning_ratio: 0.5", "pruning_ratio: 0.25"))
    # the reproductions table reads the whole results/bench folder, so it is rebuilt too (milliseconds)
    assert sorted(_repro(root, env)) == ["bench@lenet5_mnist_filter", "leaderboard", "reproductions"]
    assert json.loads((root / "results/bench/lenet5_mnist_filter.json").read_text())["run_id"] != record["run_id"]

    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["bench"]["name"] == "tiny"


def test_dvc_exp_run_composes_the_same_params(tmp_path: Path) -> None:
    """`dvc exp run -S bench=tiny` writes params.yaml with DVC's Hydra composition (.dvc/config): the same
    matrix `python -m benchmarks.matrix params bench=tiny` writes."""
    from dvc.utils.hydra import compose_and_dump

    from benchmarks.pipeline import CONF_DIR

    config = (REPO_ROOT / ".dvc" / "config").read_text()
    assert "config_name = dvc_params" in config and "enabled = true" in config
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "dvc_params", str(REPO_ROOT), ["bench=tiny"])
    assert yaml.safe_load(out.read_text())["bench"] == compose_params(["bench=tiny"])["bench"]
