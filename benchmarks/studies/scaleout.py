"""Issue 6's goals, measured: `dvc repro` from a fresh clone (first and second call), the
pipeline's determinism, and a 16-trial Optuna sweep on a local Ray cluster with 1 and 4 workers.

Writes results/scaleout.md and results/scaleout.json. Everything runs as a user would run it:
`git clone` of this repository, `dvc repro` in the clone (its own MLflow store, data folder and
caches; the read-only source data from $COMPRESSBENCH_SOURCE_DATA or ../shared/data), then
`dvc repro` again, then `dvc repro --force` with the baseline cache emptied, to check that a
rerun that retrains everything reproduces the leaderboard's accuracy columns exactly; and `ray start --head` on loopback with
`python -m benchmarks -m launcher=ray sweep=tpe hydra.sweeper.n_jobs=N`.

    python -m benchmarks.studies.scaleout [--parts dvc ray] [--trials 16]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hardware.protocol import cpu_model

ROOT = Path(__file__).resolve().parents[2]

#: The columns of results/<matrix>/leaderboard.csv that a rerun must reproduce exactly.
ACCURACY_COLUMNS = ("top1", "params", "nonzero_params", "macs", "stored_bytes")
#: One sweep trial: LeNet-5 on 4096 MNIST images for one epoch, short latency protocol.
TRIAL = ["+experiment=tiny", "dataset.train_subset=4096", "dataset.val_subset=256", "dataset.test_subset=512",
         "+hw=local_cpu", "hw.threads=1", "hw.warmup=2", "hw.repeats=10", "hw.min_time_s=0", "hw.per_layer=false",
         "evaluation.measure_local_cpu=false", "evaluation.per_layer_table=false", "logger.log_training=false"]


def _env(root: Path) -> dict[str, str]:
    source = os.environ.get("COMPRESSBENCH_SOURCE_DATA", str((ROOT.parent / "shared" / "data").resolve()))
    env = {**os.environ, "COMPRESSBENCH_SOURCE_DATA": source, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db",
           "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("COMPRESSBENCH_ROOT", None)
    return env


def _timed(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def _dvc_repro(clone: Path, env: dict[str, str], log: Path, *args: str) -> tuple[float, list[str]]:
    """`dvc repro [args]` in the clone: its wall time and the stages it ran."""
    before = log.stat().st_size if log.exists() else 0
    seconds = _timed(["dvc", "repro", *args], clone, env, log)
    with log.open() as f:
        f.seek(before)
        ran = [line.split("'")[1] for line in f if line.startswith("Running stage")]
    return seconds, ran


def _accuracy_columns(clone: Path, matrix: str) -> list[dict[str, str]]:
    import csv

    with (clone / "results" / matrix / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    return sorted(({k: row[k] for k in ("dataset", "model", "method", "hw", *ACCURACY_COLUMNS)} for row in rows),
                  key=lambda r: (r["model"], r["method"], r["hw"]))


def bench_dvc(work: Path) -> dict[str, Any]:
    clone = work / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env, log = _env(clone), work / "dvc.log"
    matrix = json.loads(subprocess.run([sys.executable, "-c", "import yaml,json;print(json.dumps(yaml.safe_load("
                                        "open('params.yaml'))['bench']['name']))"], cwd=clone, check=True,
                                       capture_output=True, text=True).stdout)
    first, first_ran = _dvc_repro(clone, env, log)
    status = subprocess.run(["dvc", "status"], cwd=clone, env=env, capture_output=True, text=True).stdout.strip()
    second, second_ran = _dvc_repro(clone, env, log)
    board = _accuracy_columns(clone, matrix)
    shutil.rmtree(clone / ".cache", ignore_errors=True)  # the baselines too are trained again, not reused
    forced, forced_ran = _dvc_repro(clone, env, log, "--force")
    again = _accuracy_columns(clone, matrix)
    return {"matrix": matrix, "first_s": first, "second_s": second, "forced_s": forced, "status_after": status,
            "first_ran": first_ran, "second_ran": second_ran, "forced_ran": forced_ran,
            "leaderboard": board, "rerun_leaderboard": again, "identical": board == again,
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True,
                                     text=True).stdout.strip()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_ray(work: Path, trials: int, workers: list[int]) -> dict[str, Any]:
    """One local Ray cluster on loopback (as conf/launcher/ray.yaml says); one study per worker count."""
    root = work / "ray"
    root.mkdir()
    port = _free_port()
    env = {**_env(root), "COMPRESSBENCH_ROOT": str(root), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "token", "RAY_ADDRESS": f"127.0.0.1:{port}"}
    ray_cli, log = str(Path(sys.executable).parent / "ray"), work / "ray.log"
    slots = max(workers)
    _timed([ray_cli, "start", "--head", "--num-cpus", str(slots), "--port", str(port), "--include-dashboard=false",
            "--disable-usage-stats"], root, env, log)
    runs = []
    try:
        for n in workers:
            command = [sys.executable, "-m", "benchmarks", "-m", "launcher=ray", "sweep=tpe", *TRIAL,
                       f"hydra.sweeper.study_name=ray_{n}_workers", f"hydra.sweeper.n_trials={trials}",
                       f"hydra.sweeper.n_jobs={n}", f"hydra.sweeper.sampler.n_startup_trials={trials}"]
            seconds = _timed(command, ROOT, env, log)
            runs.append({"workers": n, "trials": trials, "seconds": seconds, "s_per_trial": seconds / trials})
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True)
    base = runs[0]["seconds"]
    for run in runs:
        run["speedup"] = base / run["seconds"]
    return {"cluster_cpus": slots, "runs": runs}


def _stages(names: list[str]) -> str:
    return f"{len(names)}: " + ", ".join(names) if names else "none"


def _provenance(part: dict[str, Any]) -> str:
    return (f"Measured {part['date']} on {part['machine']} ({part['cpus']} logical CPUs; load average "
            f"{part['load_before']:.1f} at the start, {part['load_after']:.1f} at the end).")


def _measured(bench: Any, *args: Any) -> dict[str, Any]:
    """One part's figures with when, where and under what load they were taken."""
    start = {"date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": cpu_model(),
             "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    return {**start, **bench(*args), "load_after": os.getloadavg()[0]}


def scaleout_markdown(results: dict[str, Any]) -> str:
    """results/scaleout.md from the figures of results/scaleout.json."""
    lines = ["# Reproducible pipeline and scale-out, measured", "",
             "Generated by `python -m benchmarks.studies.scaleout [--parts dvc ray]`; a part not rerun keeps "
             "its earlier figures, each section says when and where it was measured.", ""]
    dvc = results.get("dvc")
    if dvc:
        lines += [f"## `dvc repro` from a fresh clone (matrix `{dvc['matrix']}`, commit {dvc['commit']})", "",
                  _provenance(dvc), "",
                  "| call | wall time | stages run |", "|---|---:|---|",
                  f"| first `dvc repro` | {dvc['first_s']:.0f} s | {_stages(dvc['first_ran'])} |",
                  f"| second `dvc repro` | {dvc['second_s']:.1f} s | {_stages(dvc['second_ran'])} |",
                  f"| `dvc repro --force`, baseline cache emptied | {dvc['forced_s']:.0f} s | "
                  f"{_stages(dvc['forced_ran'])} |", "",
                  "A clone whose `dvc.lock` matches its code reruns only what git does not hold (the data, "
                  "from its checked source, and the DVC-cached lookup tables); the forced call recomputes "
                  "every stage, baselines included: that is the time of the whole quick matrix.", "",
                  f"`dvc status` after the first call: `{dvc['status_after'] or '(empty)'}`.", "",
                  "Determinism: the forced rerun's leaderboard has "
                  + ("**the same** accuracy, size and MACs columns, to the last digit:" if dvc["identical"]
                     else "**different** accuracy columns (first run, then rerun):"), "",
                  "| model | method | hw | " + " | ".join(ACCURACY_COLUMNS) + " |",
                  "|---|---|---|" + "---:|" * len(ACCURACY_COLUMNS)]
        rows = dvc["leaderboard"] if dvc["identical"] else dvc["leaderboard"] + dvc["rerun_leaderboard"]
        lines += [f"| {r['model']} | {r['method']} | {r['hw']} | " + " | ".join(r[c] for c in ACCURACY_COLUMNS)
                  + " |" for r in rows]
        lines.append("")
    ray = results.get("ray")
    if ray:
        lines += [f"## Optuna sweep on a local Ray cluster ({ray['cluster_cpus']} CPU slots on this machine)", "",
                  "`python -m benchmarks -m launcher=ray sweep=tpe hydra.sweeper.n_jobs=N`, one trial = LeNet-5 "
                  "trained one epoch on 4,096 MNIST images, evaluated and recorded in MLflow; each Ray task one "
                  "CPU slot and one torch thread.", "", _provenance(ray), "",
                  "| workers | trials | wall time | per trial | speedup |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['workers']} | {r['trials']} | {r['seconds']:.0f} s | {r['s_per_trial']:.1f} s | "
                  f"{r['speedup']:.2f}x |" for r in ray["runs"]]
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("dvc", "ray"), default=["dvc", "ray"])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (clone, logs)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scaleout_bench_"))
    record = args.out / "scaleout.json"
    # the parts not rerun keep their figures (and say when they were measured)
    results: dict[str, Any] = json.loads(record.read_text()) if record.exists() else {}
    try:
        if "dvc" in args.parts:
            results["dvc"] = _measured(bench_dvc, work)
        if "ray" in args.parts:
            results["ray"] = _measured(bench_ray, work, args.trials, args.workers)
    finally:
        print(f"logs: {work}", file=sys.stderr)
    record.write_text(json.dumps({k: results[k] for k in ("dvc", "ray") if k in results}, indent=1) + "\n")
    (args.out / "scaleout.md").write_text(scaleout_markdown(results))
    print((args.out / "scaleout.md").read_text())
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
