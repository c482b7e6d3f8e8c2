"""What a person finds in MLflow after tiny runs: named runs, dataset inputs, loadable models, the
leaderboard run and registry, the MLflow UI in a real (headless) browser, and optuna-dashboard (issue 11).

The browser tests use Playwright driving Debian's chromium (`apt-get install chromium`, see
README); where no chromium is installed they skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from hydra import compose, initialize_config_dir

from benchmarks.leaderboard import main as leaderboard_main
from benchmarks.lineage import MODEL_NAME
from benchmarks.models import build_model
from benchmarks.pipeline import CONF_DIR, run
from benchmarks.tracking import ui_page
from methods.storage.container import load_model as load_stored_model
from tests.conftest import FAST_LATENCY, REPO_ROOT, SHARED_DATA, needs_shared_data

pytestmark = [needs_shared_data, pytest.mark.slow]

TINY = ["+experiment=tiny", *FAST_LATENCY, "evaluation.per_layer_table=false", "logger.log_training=false"]
RUNS = {"lenet5-baseline-local_cpu-s42": [], "lenet5-magnitude-local_cpu-s42": ["+method=magnitude",
                                                                                 "method.finetune.epochs=0"]}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
Serve = Callable[[list[str], str, dict[str, str]], None]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[dict[str, str]]:
    """A project root whose MLflow store holds two tiny runs (the baseline and magnitude pruning)."""
    root = tmp_path_factory.mktemp("store")
    env = {"COMPRESSBENCH_ROOT": str(root), "COMPRESSBENCH_SOURCE_DATA": str(SHARED_DATA),
           "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        for overrides in RUNS.values():
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                run(compose(config_name="config", overrides=[f"paths.data_dir={data_root}", *TINY, *overrides]))
        yield {**os.environ, **env, "PYTHONPATH": str(REPO_ROOT)}


def runs_by_name(env: dict[str, str]) -> dict[str, mlflow.entities.Run]:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["compressbench"], output_format="list")}


def test_runs_are_named_tagged_and_the_experiment_is_a_training_one(store: dict[str, str]) -> None:
    runs = runs_by_name(store)
    assert set(RUNS) <= set(runs)
    tags = runs["lenet5-magnitude-local_cpu-s42"].data.tags
    assert (tags["run_kind"], tags["eval_split"], tags["data_fraction"]) == ("smoke", "test", f"{512 / 59000:.4g}")
    experiment = mlflow.MlflowClient().get_experiment_by_name("compressbench")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_each_run_logs_its_dataset_as_an_mlflow_input(store: dict[str, str]) -> None:
    run = runs_by_name(store)["lenet5-baseline-local_cpu-s42"]
    (entry,) = run.inputs.dataset_inputs
    checksum = run.data.tags["data_checksum"]
    assert entry.dataset.name == "mnist" and entry.dataset.digest == checksum[:36]
    profile = json.loads(entry.dataset.profile)
    assert profile["checksum"] == checksum
    assert profile["splits"] == {"train": 512, "val": 256, "test": 256} and profile["available"]["train"] == 59000
    assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "training"


def test_the_compressed_model_loads_from_mlflow_with_the_stored_models_logits(store: dict[str, str], tmp_path: Path) -> None:
    run = runs_by_name(store)["lenet5-magnitude-local_cpu-s42"]
    logged = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/{MODEL_NAME}")
    stored_dir = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model", dst_path=str(tmp_path)))
    (stored_file,) = stored_dir.glob("*.cbm")  # our own file beside MLflow's
    stored = load_stored_model(stored_file, build_model("lenet5", 10, 1, None)).eval()
    images = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(logged.eval()(images), stored(images))
    signature = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/{MODEL_NAME}").signature
    assert tuple(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 28, 28)


def test_leaderboard_logs_its_table_and_registers_the_front(store: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("COMPRESSBENCH_ROOT", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, store[key])
    leaderboard_main(["--kind", "smoke", "--register", f"paths.results_dir={tmp_path}"])
    board = runs_by_name(store)["leaderboard"]
    assert board.data.tags["run_kind"] == "leaderboard"
    table = mlflow.MlflowClient().load_table(board.info.experiment_id, "leaderboard.json", [board.info.run_id])
    assert set(RUNS) <= set(table["run_name"])

    client = mlflow.MlflowClient(registry_uri=store["MLFLOW_TRACKING_URI"])
    versions = client.search_model_versions("name = 'mnist-local_cpu-lenet5-baseline'")
    baseline_run = runs_by_name(store)["lenet5-baseline-local_cpu-s42"]  # the most accurate: always on the front
    assert [v.run_id for v in versions] == [baseline_run.info.run_id]
    assert (versions[0].tags["dataset"], versions[0].tags["device"]) == ("mnist", "local_cpu")
    leaderboard_main(["--kind", "smoke", "--register", f"paths.results_dir={tmp_path}"])  # again: no second version
    assert len(client.search_model_versions("name = 'mnist-local_cpu-lenet5-baseline'")) == 1


# -- servers and a browser -------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start a server command on 127.0.0.1; wait until ``url`` answers; stop it (its process group) after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], url: str, env: dict[str, str]) -> None:
        log = open(tmp_path / f"server{len(started)}.log", "wb")  # noqa: SIM115  (closed with the process)
        started.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert started[-1].poll() is None, (tmp_path / f"server{len(started) - 1}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{command[0]} did not answer at {url} within 180 s")

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@contextmanager
def browser_page(url: str, wait_for: str) -> Iterator[Any]:
    """``url`` open in headless chromium (Playwright) once ``wait_for`` shows; skip where no browser is installed."""
    if CHROMIUM is None:
        pytest.skip("no chromium installed: `apt-get install chromium` (README, 'Leaderboard and MLflow UI') "
                    "to run the browser checks")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 2000, "height": 1000})
            page.goto(url)
            page.get_by_text(wait_for).first.wait_for(timeout=90_000)
            yield page
        finally:
            browser.close()


def test_mlflow_ui_opens_the_printed_page_on_the_runs_table_with_the_named_runs_and_their_top1(
        store: dict[str, str], serve: Serve) -> None:
    """The page a run's closing line names (``ui_page``) in a fresh browser: MLflow's UI opens it on the
    runs table in its Model training view, not on the GenAI overview it opens a bare experiment on."""
    port = free_port()
    serve([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store["MLFLOW_TRACKING_URI"],
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], f"http://127.0.0.1:{port}/health", store)
    runs = runs_by_name(store)
    experiment = next(iter(runs.values())).info.experiment_id
    with browser_page(f"http://127.0.0.1:{port}/{ui_page(experiment)}", "lenet5-magnitude-local_cpu-s42") as page:
        opened = page.url.split("#", 1)[1]
        assert opened.startswith(f"/experiments/{experiment}/runs?workflowType=machine_learning"), opened
        assert page.locator("input[name=runs-view-mode][value=TABLE]").is_checked()  # the table, not the charts
        page.get_by_role("button", name="Columns", exact=True).click()  # metrics are hidden until chosen
        page.get_by_text("top1", exact=True).first.click()
        page.keyboard.press("Escape")
        text = page.inner_text("body")
    for name in RUNS:
        assert name in text
        assert f"{runs[name].data.metrics['top1']:g}"[:5] in text, (name, runs[name].data.metrics["top1"])
    assert "mnist (" in text  # the Dataset column: the run's dataset input


def test_optuna_dashboard_serves_the_sweeps_storage(tmp_path: Path, serve: Serve) -> None:
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"  # where sweeps keep their studies (conf/sweep/*.yaml)
    study = optuna.create_study(study_name="tpe_lenet5_mnist", storage=storage, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("recipe.lr", 0.005, 0.2, log=True), n_trials=3)
    port = free_port()
    serve([str(Path(sys.executable).parent / "optuna-dashboard"), storage, "--host", "127.0.0.1", "--port", str(port)],
          f"http://127.0.0.1:{port}/api/studies", dict(os.environ))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=10) as answer:
        studies = json.load(answer)["study_summaries"]
    assert [s["study_name"] for s in studies] == ["tpe_lenet5_mnist"]
    with browser_page(f"http://127.0.0.1:{port}/dashboard", "tpe_lenet5_mnist") as page:
        assert "tpe_lenet5_mnist" in page.inner_text("body")
