"""Issue 11, fail fast and cleanly: one-line errors before any MLflow run, Ctrl-C / SIGTERM, orphaned runs, the store."""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from benchmarks.preflight import default_logger
from benchmarks.runs import HOST_TAG, PID_START_TAG, PID_TAG, process_tags
from benchmarks.tracking import mlflow_run
from hardware.cli import main as hardware_cli
from tests.conftest import FAST_LATENCY, REPO_ROOT, needs_shared_data

EXPERIMENT = "compressbench"


def cli(env: dict[str, str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def runs_in(tracking_uri: str) -> list:
    client = MlflowClient(tracking_uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def assert_one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("error: ") and all(w in lines[-1] for w in words), lines[-1]


def _store(env: dict[str, str]) -> Path:
    return Path(env["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///"))


@pytest.fixture
def not_a_folder(tmp_path: Path) -> Path:
    """A file where a folder is expected: unwritable even for root, which ignores permission bits."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.e2e
@pytest.mark.parametrize("overrides, words", [
    (["seed=abc"], ["seed", "seed=42"]),
    (["recipe.lr=-1"], ["recipe.lr", "> 0"]),
    (["trainer.devices=0"], ["trainer.devices"]),
    (["paths.cache_dir={file}/cache"], ["paths.cache_dir", "writable"]),
], ids=["seed", "recipe", "trainer", "cache_dir"])
def test_settings_refused_before_any_run(run_env: dict[str, str], not_a_folder: Path, overrides: list[str],
                                         words: list[str]) -> None:
    done = cli(run_env, "benchmarks", *[o.format(file=not_a_folder) for o in overrides])
    assert_one_line_error(done, *words)
    assert not _store(run_env).exists()  # no store opened, so no FAILED run in it


@needs_shared_data
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("overrides, words", [
    (["dataset=cifar10_jpeg"], ["model.name=lenet5", "dataset.name=cifar10_jpeg", "3x32x32"]),
    (["+method=magnitude", "method.sparsity=1.5"], ["method.sparsity", "[0, 1)"]),
    (["+hw=pixel1", "hw.batch_size=0"], ["hw.batch_size"]),
    (["model=timm", "model.name=nosuchnet"], ["model.name='nosuchnet'", "timm.list_models"]),
    (["model.pretrained=/nonexistent/checkpoint.pt"], ["model.pretrained"]),
    (["paths.data_dir={file}/data"], ["paths.data_dir", "writable"]),
], ids=["model_vs_dataset", "method", "hw", "unknown_timm_model", "checkpoint", "data_dir"])
def test_a_run_that_cannot_work_is_refused_before_its_run(run_env: dict[str, str], data_root: Path,
                                                          not_a_folder: Path, overrides: list[str],
                                                          words: list[str]) -> None:
    done = cli(run_env, "benchmarks", f"paths.data_dir={data_root}", *[o.format(file=not_a_folder) for o in overrides])
    assert_one_line_error(done, *words)
    assert not _store(run_env).exists()  # no store opened, so no FAILED run in it


@pytest.mark.e2e
def test_missing_data_is_one_line(run_env: dict[str, str], tmp_path: Path) -> None:
    empty = tmp_path / "no_source"
    empty.mkdir()
    done = cli({**run_env, "COMPRESSBENCH_SOURCE_DATA": str(empty)}, "benchmarks", f"paths.data_dir={tmp_path / 'd'}")
    assert_one_line_error(done, "mnist", "dataset.download")


@pytest.mark.e2e
@pytest.mark.parametrize("overrides, words", [
    (["+method=magnitude", "method.sparsity=1.5"], ["method.sparsity", "[0, 1)"]),
    (["model=timm", "model.name=nosuchnet"], ["model.name='nosuchnet'", "timm.list_models"]),
], ids=["method", "model_name"])
def test_a_misspelt_method_or_model_is_refused_before_the_data_is_read(run_env: dict[str, str], tmp_path: Path,
                                                                        overrides: list[str], words: list[str]) -> None:
    """With no data anywhere, the error is the typo's: method and model name are checked before the data."""
    empty = tmp_path / "no_source"
    empty.mkdir()
    done = cli({**run_env, "COMPRESSBENCH_SOURCE_DATA": str(empty)}, "benchmarks", f"paths.data_dir={tmp_path / 'd'}",
               *overrides)
    assert_one_line_error(done, *words)


def test_building_any_method_imports_neither_lightning_nor_timm_nor_mlflow() -> None:
    """Methods reach the training loop through Lightning-free hooks (methods.hooks), so refusing a method's
    config costs torch's import only, not the seconds of Lightning, timm (Torch-Pruning's) or MLflow."""
    code = (
        "import sys, pathlib\n"
        "from hydra.utils import instantiate\n"
        "from omegaconf import OmegaConf\n"
        "for path in sorted(pathlib.Path('conf/method').glob('*.yaml')):\n"
        "    instantiate(OmegaConf.load(path), _convert_='all')\n"
        "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'timm', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_misspelt_model_is_refused_from_the_cached_names_without_importing_timm(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from benchmarks.preflight import check_model_name\n"
        "for name in ('resnet20_cifar', 'resnet50.a1_in1k', 'searched', 'resnet5O'):\n"
        "    try:\n"
        "        check_model_name(name, Path(sys.argv[1]))\n"
        "    except ValueError as error:\n"
        "        print(error)\n"
        "print('timm' in sys.modules)\n"
    )
    first, second = (subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                                    text=True, timeout=300) for _ in range(2))
    for done, imported in ((first, "True"), (second, "False")):  # the first run lists timm's names and caches them
        assert done.returncode == 0, done.stderr[-3000:]
        *errors, timm_imported = done.stdout.strip().splitlines()
        assert timm_imported == imported
        assert len(errors) == 1 and "unknown model.name='resnet5O'" in errors[0] and "resnet50" in errors[0]


def test_the_cached_model_names_follow_the_zoo_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import model_names

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "family.py").write_text("NAMES = ['net_a']\n")
    monkeypatch.setattr(model_names, "ZOO_DIR", zoo)
    model_names.ModelNames(("net_a",), ("net_a",)).save(tmp_path)
    assert model_names.ModelNames.cached(tmp_path) == model_names.ModelNames(("net_a",), ("net_a",))
    (zoo / "family.py").write_text("NAMES = ['net_a', 'net_b']\n")  # a new model: the old list no longer answers
    assert model_names.ModelNames.cached(tmp_path) is None


@pytest.mark.e2e
def test_unwritable_store_fails_at_once_naming_it(run_env: dict[str, str], not_a_folder: Path) -> None:
    store = f"sqlite:///{not_a_folder}/mlflow.db"
    done = cli({**run_env, "MLFLOW_TRACKING_URI": store}, "benchmarks")
    assert_one_line_error(done, "logger.tracking_uri", str(not_a_folder), "MLFLOW_TRACKING_URI")


@pytest.mark.e2e
@pytest.mark.parametrize("listening", [False, True], ids=["nothing_listens", "listens_never_answers"])
def test_unreachable_server_fails_within_the_bound(run_env: dict[str, str], listening: bool) -> None:
    with socket.socket() as silent:
        if listening:
            silent.bind(("127.0.0.1", 0))
            silent.listen(16)  # connections complete in the backlog; no request is ever answered
        server = f"http://127.0.0.1:{silent.getsockname()[1] if listening else _free_port()}"
        # mlflow alone retries for minutes: the subprocess timeout is the bound
        done = cli({**run_env, "MLFLOW_TRACKING_URI": server}, "benchmarks", "logger.timeout_s=2", timeout=60)
        assert_one_line_error(done, "logger.tracking_uri", server, "does not answer")
        done = cli(run_env, "benchmarks.runs", "cleanup", "--tracking-uri", server, timeout=60)
        assert_one_line_error(done, server)


class _HealthOnly(http.server.BaseHTTPRequestHandler):
    """A tracking server that answers its health check, then never answers the API (a hung server)."""

    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path.startswith("/health"):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"OK")
        else:
            time.sleep(60)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@needs_shared_data
@pytest.mark.e2e
def test_a_server_that_stops_answering_fails_the_run_within_its_bound(run_env: dict[str, str],
                                                                       data_root: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthOnly)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        # MLflow's own bound (120 s a call, 7 retries) would outlast this timeout many times over
        done = cli({**run_env, "MLFLOW_TRACKING_URI": uri}, "benchmarks", f"paths.data_dir={data_root}",
                   "logger.timeout_s=1", timeout=150)
    finally:
        server.shutdown()
    assert_one_line_error(done, "logger.tracking_uri", "stopped answering", "logger.timeout_s")


def _restore_default_sigint() -> None:
    """In the child: a suite started as a background job ignores SIGINT, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_shared_data
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_interrupt_marks_the_run_killed_in_one_line(run_env: dict[str, str], data_root: Path, signum: int,
                                                    code: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", f"paths.data_dir={data_root}", "recipe.epochs=20", *FAST_LATENCY],
        cwd=REPO_ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_restore_default_sigint,
    )
    uri = run_env["MLFLOW_TRACKING_URI"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(r.info.status == "RUNNING" for r in _safe_runs(uri)):
        time.sleep(1)
    time.sleep(5)  # inside training by now
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    (killed,) = runs_in(uri)
    assert process.returncode == code, err[-3000:]
    *_, stopped, last = err.strip().splitlines()
    assert stopped == f"interrupted: run {killed.info.run_name} ({killed.info.run_id}) marked KILLED"
    assert last.startswith(f"[mlflow] run {killed.info.run_name} ({killed.info.run_id}) KILLED: store {uri}")
    assert "Traceback" not in err, err[-3000:]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["end_reason"] == "interrupted"
    assert killed.data.tags["killed_reason"] == signal.Signals(signum).name
    assert killed.data.tags[PID_TAG] == str(process.pid) and killed.data.tags[HOST_TAG] == socket.gethostname()


def _safe_runs(uri: str) -> list:
    try:
        return runs_in(uri)
    except Exception:  # the store does not exist yet
        return []


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _running_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str:
    return client.create_run(experiment_id, tags=tags).info.run_id


def test_cleanup_marks_runs_whose_process_is_gone(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(tmp_path / "art").as_uri())
    host = socket.gethostname()
    dead = _running_run(client, exp, {HOST_TAG: host, PID_TAG: str(_dead_pid()), PID_START_TAG: "1.00"})
    reused = _running_run(client, exp, {**process_tags(), PID_START_TAG: "12345.00"})  # this pid, another start
    alive = _running_run(client, exp, process_tags())
    elsewhere = _running_run(client, exp, {HOST_TAG: "another-host", PID_TAG: "1", PID_START_TAG: "1.00"})

    done = cli({**os.environ, "PYTHONPATH": str(REPO_ROOT)}, "benchmarks.runs", "cleanup", "--tracking-uri", uri)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 run(s) marked KILLED" in done.stdout
    status = {run_id: client.get_run(run_id) for run_id in (dead, reused, alive, elsewhere)}
    assert status[dead].info.status == "KILLED" and "is not running" in status[dead].data.tags["killed_reason"]
    assert status[reused].info.status == "KILLED" and "another process" in status[reused].data.tags["killed_reason"]
    assert status[alive].info.status == "RUNNING"
    assert status[elsewhere].info.status == "RUNNING"


def test_the_next_run_marks_orphans_and_says_where_it_is(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    artifacts = tmp_path / "artifacts"
    with mlflow_run(uri, EXPERIMENT, str(artifacts), "first", {}) as first:
        pass
    client = MlflowClient(uri)
    orphan = _running_run(client, client.get_run(first.run_id).info.experiment_id,
                          {HOST_TAG: socket.gethostname(), PID_TAG: str(_dead_pid()), PID_START_TAG: "1.00"})
    with caplog.at_level(logging.INFO, logger="benchmarks.tracking"):
        with mlflow_run(uri, EXPERIMENT, str(artifacts), "second", {"model": "lenet5"}) as second:
            pass
    assert client.get_run(orphan).info.status == "KILLED"
    assert client.get_run(orphan).data.tags["end_reason"] == "process gone"
    run = client.get_run(second.run_id)
    assert run.data.tags[PID_TAG] == str(os.getpid())
    assert float(run.data.tags[PID_START_TAG]) == pytest.approx(psutil.Process().create_time(), abs=0.01)
    last = caplog.records[-1].getMessage()
    assert last == (f"[mlflow] run second ({second.run_id}) FINISHED: store {uri}, artifacts {run.info.artifact_uri.removeprefix('file://')}; "
                    f"open it with: mlflow ui --backend-store-uri {uri}, then "
                    f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}?workflowType=machine_learning")
    assert str(artifacts) in last


def test_a_failed_run_says_where_it_is_after_its_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with caplog.at_level(logging.INFO, logger="benchmarks.tracking"), pytest.raises(ValueError) as failed:
        with mlflow_run(uri, EXPERIMENT, str(tmp_path / "artifacts"), "broken", {}) as run:
            raise ValueError("method.sparsity cannot be met")
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"
    (note,) = failed.value.__notes__  # printed after the error line: the console's last line
    assert note.startswith(f"[mlflow] run broken ({run.run_id}) FAILED: store {uri}")
    assert not any("FAILED: store" in r.getMessage() for r in caplog.records)  # not also before the error


@pytest.mark.parametrize("args, words", [
    (["--input-size", "224", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    (["--input-size", "0"], ["--input-size", ">= 1"]),
    (["--import", "benchmarks.models", "--model", "lenet5", "--in-chans", "1", "--input-size", "20"],
     ["--input-size 20", "lenet5", "--input-size 28"]),
    (["--input-size", "224", "--set", "batch_size=0"], ["hw.batch_size"]),
], ids=["batch_size", "input_size", "model_minimum", "hw_key"])
def test_hardware_predict_validates_its_arguments(args: list[str], words: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model = [] if "--model" in args else ["--model", "mobilenetv2_100"]
    assert hardware_cli(["predict", "--hw", "pixel1", *model, *args]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and all(w in line for w in words), line



@pytest.mark.e2e
def test_a_dvc_stage_refused_by_its_checks_is_one_line(run_env: dict[str, str], tmp_path: Path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["bench"]["common"] = [*(params["bench"].get("common") or []), "seed=abc"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    baseline = next(iter(params["bench"]["baselines"]))
    done = cli(run_env, "benchmarks.matrix", "--params", str(tmp_path / "params.yaml"), "baseline", baseline)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == "error: seed: must be an integer, got 'abc'; e.g. seed=42"


def test_the_store_and_outputs_belong_to_the_project_wherever_the_command_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPRESSBENCH_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logger = default_logger()
    assert logger.tracking_uri == f"sqlite:///{REPO_ROOT}/mlflow.db"
    assert logger.artifact_location == f"{REPO_ROOT}/mlartifacts"
