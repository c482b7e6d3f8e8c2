"""Scale-out on existing engines: a multirun on a local Ray instance and through submitit's
local executor; 8 runs at once into the default sqlite MLflow store; one Optuna study on
PostgreSQL swept by 4 concurrent workers that log to an MLflow server on PostgreSQL."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from benchmarks.lineage import SplitDataset, log_dataset
from benchmarks.tracking import RunRecorder, experiment_id
from tests.conftest import REPO_ROOT, needs_shared_data
from tests.test_sweeps import TRIAL

pytestmark = [needs_shared_data, pytest.mark.slow, pytest.mark.e2e]

POSTGRES = shutil.which("pg_ctl") or next(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finished(uri: str, **tags: str) -> list[Any]:
    mlflow.set_tracking_uri(uri)
    query = " and ".join([f"tags.{k} = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"])
    return mlflow.search_runs(experiment_names=["compressbench"], output_format="list", filter_string=query)


RAY_LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token"}  # conf/launcher/ray.yaml


def _ray(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    ray_cli = str(Path(sys.executable).parent / "ray")
    return subprocess.run([ray_cli, *args], env=env, capture_output=True, text=True, timeout=300)


def _start_ray_head(env: dict[str, str], port: int, attempts: int = 3) -> None:
    """`ray start --head` on loopback, as conf/launcher/ray.yaml tells a user; Ray gives its raylet
    a fixed 30 s to register, which a loaded 2-core machine can miss, so the start is retried."""
    for _ in range(attempts):
        started = _ray("start", "--head", "--num-cpus", "2", "--port", str(port), "--include-dashboard=false",
                       "--disable-usage-stats", env=env)
        if started.returncode == 0:
            return
        _ray("stop", "--force", env=env)
    raise AssertionError(f"ray start failed {attempts} times:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")


def test_multirun_on_local_ray(run_env: dict[str, str], data_root: Path) -> None:
    port = _free_port()
    # token mode needs a token: a fresh machine has no ~/.ray/auth_token, so the test brings its own
    env = {**run_env, **RAY_LOOPBACK, "RAY_ADDRESS": f"127.0.0.1:{port}", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    _start_ray_head(env, port)  # the test's own one-machine cluster, stopped below
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks", "-m", "launcher=ray", "model=lenet5,lenet_300_100",
                               *TRIAL, f"paths.data_dir={data_root}"], cwd=REPO_ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"Launching 2 jobs on Ray (127.0.0.1:{port})" in done.stderr + done.stdout
    finally:
        _ray("stop", "--force", env=env)
    runs = _finished(run_env["MLFLOW_TRACKING_URI"])
    assert sorted(r.data.tags["model"] for r in runs) == ["lenet5", "lenet_300_100"]
    assert len({r.data.tags["multirun"] for r in runs}) == 1


def test_multirun_through_submitit_local(run_env: dict[str, str], data_root: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "benchmarks", "-m", "launcher=submitit_local", "seed=1,2", *TRIAL,
                    f"paths.data_dir={data_root}"], cwd=REPO_ROOT, env=run_env, check=True, capture_output=True,
                   timeout=900)
    runs = _finished(run_env["MLFLOW_TRACKING_URI"])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    assert list((tmp_path / "outputs" / "multiruns").glob("*/.submitit/*"))  # submitit's job folders


def _one_run(cfg: Any) -> None:
    import torch

    from benchmarks.pipeline import run

    torch.set_num_threads(1)
    run(cfg)


def test_eight_concurrent_runs_into_sqlite(compose_cfg: Any, run_env: dict[str, str]) -> None:
    """Eight processes writing one sqlite store at once: every run ends recorded, FINISHED."""
    configs = [compose_cfg(*TRIAL, "recipe.epochs=0", f"++tags.concurrent={i}") for i in range(8)]
    # spawn, not fork: a child forked while another thread of this process holds a lock (torch's
    # thread pools, MLflow's) waits on it forever; eight fresh interpreters, each its own store client.
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_one_run, args=(cfg,)) for cfg in configs]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 900
    try:
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
    finally:
        for worker in workers:
            if worker.is_alive():  # a stuck run fails the test instead of hanging the suite
                worker.kill()
    assert [w.exitcode for w in workers] == [0] * 8
    runs = _finished(run_env["MLFLOW_TRACKING_URI"])
    assert sorted(int(r.data.tags["concurrent"]) for r in runs) == list(range(8))
    assert all("top1" in r.data.metrics and "latency_ms" in r.data.metrics for r in runs)


@pytest.fixture
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if POSTGRES is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; .ci/run does)")
    folder = Path(f"/tmp/compressbench-test-pg-{os.getpid()}-{_free_port()}")  # readable by the postgres user
    script = REPO_ROOT / "scripts" / "start_postgres.sh"
    url = subprocess.run([str(script), str(folder), str(_free_port())], check=True, capture_output=True, text=True,
                         timeout=300).stdout.strip()
    yield url
    subprocess.run([str(script), "--stop", str(folder)], check=False, capture_output=True, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)


def _create_database(postgres_url: str, name: str) -> str:
    import sqlalchemy

    base = postgres_url.rsplit("/", 1)[0]
    engine = sqlalchemy.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{base}/{name}"


def _log_together(recorder: RunRecorder, dataset: SplitDataset, together: threading.Barrier,
                  failures: list[str]) -> None:
    together.wait()
    try:
        log_dataset(recorder, dataset)
    except Exception as err:
        failures.append(str(err)[:300])


def test_runs_logging_one_new_dataset_at_once_on_postgres_all_keep_it(postgres_url: str, tmp_path: Path) -> None:
    """MLflow inserts a new dataset without a lock: of the runs that log it at once, all but one hit its
    key (a sweep's first trials failed so); each run must still end with the dataset as its input."""
    uri = _create_database(postgres_url, "mlflow_datasets")
    client = mlflow.MlflowClient(uri)
    experiment = experiment_id(uri, "datasets", str(tmp_path / "artifacts"))
    source = mlflow.data.get_dataset_source_from_json(json.dumps({"uri": str(tmp_path)}), source_type="local")
    failures: list[str] = []
    for attempt in range(4):
        recorders = [RunRecorder(client.create_run(experiment).info.run_id, client) for _ in range(6)]
        dataset = SplitDataset({"splits": {"train": 1}}, source=source, name=f"data{attempt}", digest=f"d{attempt}")
        together = threading.Barrier(len(recorders))
        threads = [threading.Thread(target=_log_together, args=(recorder, dataset, together, failures))
                   for recorder in recorders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for recorder in recorders:
            inputs = client.get_run(recorder.run_id).inputs.dataset_inputs
            assert [entry.dataset.digest for entry in inputs] == [f"d{attempt}"], failures
    assert not failures


def test_four_workers_share_a_postgres_study(postgres_url: str, run_env: dict[str, str], data_root: Path,
                                             tmp_path: Path) -> None:
    """Optuna on PostgreSQL, MLflow as a server on PostgreSQL: 4 workers, every trial recorded once in each."""
    mlflow_db, optuna_db = (_create_database(postgres_url, name) for name in ("mlflow", "optuna"))
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", mlflow_db, "--default-artifact-root",
         str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "mlflow server did not start"
                time.sleep(1)
        tracking = f"http://127.0.0.1:{port}"
        env = {**run_env, "MLFLOW_TRACKING_URI": tracking}
        command = [sys.executable, "-m", "benchmarks", "-m", "sweep=tpe", *TRIAL, f"paths.data_dir={data_root}",
                   f"hydra.sweeper.storage={optuna_db}", "hydra.sweeper.study_name=shared",
                   "hydra.sweeper.n_trials=8"]
        # Hydra logs to stdout (a trial's 'failed: <error>' line included), Python's warnings to stderr;
        # files, not pipes, so that no worker blocks on a full pipe while another is waited for
        outputs = [tmp_path / f"worker{i}.log" for i in range(4)]
        workers = []
        for output in outputs:
            with output.open("w") as sink:
                workers.append(subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=sink,
                                                stderr=subprocess.STDOUT))
        for worker, output in zip(workers, outputs, strict=True):
            worker.wait(timeout=900)
            assert worker.returncode == 0, output.read_text()[-3000:]
        logs = [output.read_text() for output in outputs]
        trials = optuna.load_study(study_name="shared", storage=optuna_db).get_trials()
        complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
        others = {t.number: t.state.name for t in trials if t.state != TrialState.COMPLETE}
        why = [line for log in logs for line in log.splitlines()
               if ("ERROR" in line or "WARNING" in line) and "mlflow.pytorch" not in line]
        assert len(complete) >= 8 and not others, (others, why)
        assert len({t.params["recipe.lr"] for t in trials}) == len(trials)  # no two workers drew the same point
        runs = _finished(tracking, optuna_study="shared")
        recorded = Counter(int(r.data.tags["optuna_trial"]) for r in runs)
        assert recorded == Counter(complete)  # each trial once in MLflow, and no run without its trial
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: the session it was started in
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
