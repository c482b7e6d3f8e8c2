"""`python -m benchmarks.matrix <command>`: the benchmark matrix behind `dvc.yaml`'s stages.

A matrix (``conf/bench/<name>.yaml``) names datasets, lookup tables to profile, baselines
(model x dataset) and entries (baseline x method x hardware). ``params.yaml`` is
``conf/dvc_params.yaml`` composed by Hydra (``bench=quick`` by default); DVC reads its
``bench`` node for the stages' ``foreach`` and tracks each entry as a parameter, so
editing one entry (or one method's yaml, a file dependency) reruns only its stages.

    python -m benchmarks.matrix params [bench=full]   # (re)write params.yaml from conf/
    python -m benchmarks.matrix show <entry>          # the `python -m benchmarks` line of an entry
    python -m benchmarks.matrix data <dataset>        # stage data@<dataset>
    python -m benchmarks.matrix profile <table>       # stage profile@<table>
    python -m benchmarks.matrix baseline <baseline>   # stage baselines@<baseline>
    python -m benchmarks.matrix bench <entry>         # stage bench@<entry>
    python -m benchmarks.matrix leaderboard           # stage leaderboard
    python -m benchmarks.matrix reproductions         # stage reproductions

Each run of a stage is one ordinary pipeline run (``benchmarks.pipeline.run``) whose
MLflow run carries the tags ``dvc_stage`` and ``data_checksum``; its metrics and the
run id go to ``results/{baselines,bench}/<name>.json`` (DVC metrics files), and the
leaderboard stage builds the leaderboard from those files alone, so it depends on
nothing DVC does not track. The reproductions stage sets the matrix's ``reproductions``
(a paper's published figures, keyed by the metric names a run records) beside the
metrics of the entry that reproduces them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

log = logging.getLogger(__name__)

PARAMS_FILE = Path("params.yaml")
#: The primary config of params.yaml (``dvc config hydra.config_name``).
PARAMS_CONFIG = "dvc_params"
#: MLflow fields copied into a stage's metrics file (leaderboard columns among them).
RUN_TAGS = ("dataset", "model", "method", "hw", "seed", "latency_source", "data_checksum", "dvc_stage",
            "git_commit", "baseline_origin", "baseline_key", "run_kind", "data_fraction", "eval_split", "mlflow.runName",
            "speedup_verdict", "latency_noisy")


class MatrixError(ValueError):
    """A matrix file or a stage name that cannot be used; the message names the fix."""


# -- the matrix ------------------------------------------------------------------------------
def compose_params(overrides: list[str]) -> dict[str, Any]:
    """``conf/dvc_params.yaml`` composed and resolved, exactly as DVC's Hydra composition does."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from benchmarks.preflight import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose(config_name=PARAMS_CONFIG, overrides=overrides)
    # a mapping node's container is a dict with the yaml's string keys
    params = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    validate(params["bench"])
    return params


def load_matrix(params_file: Path = PARAMS_FILE) -> dict[str, Any]:
    """The ``bench`` node of params.yaml, validated."""
    import yaml

    if not params_file.is_file():
        raise MatrixError(f"{params_file} not found: run `python -m benchmarks.matrix params` in the project root")
    matrix = (yaml.safe_load(params_file.read_text()) or {}).get("bench")
    if not isinstance(matrix, dict):
        raise MatrixError(f"{params_file} has no `bench` node: run `python -m benchmarks.matrix params`")
    validate(matrix)
    return matrix


def validate(matrix: Mapping[str, Any]) -> None:
    """Refuse a matrix whose entries lack a key or name a baseline it does not train."""
    for key in ("name", "datasets", "baselines", "entries"):
        if key not in matrix:
            raise MatrixError(f"benchmark matrix has no `{key}`: see conf/bench/quick.yaml for the layout")
    for name, baseline in (matrix["baselines"] or {}).items():
        missing = {"model", "dataset"} - set(baseline)
        if missing:
            raise MatrixError(f"bench.baselines.{name} lacks {sorted(missing)}")
        if baseline["dataset"] not in matrix["datasets"]:
            raise MatrixError(f"bench.baselines.{name}: dataset {baseline['dataset']!r} is not in bench.datasets")
        if name != baseline_name(baseline):
            raise MatrixError(f"bench.baselines.{name} must be named {baseline_name(baseline)!r} (<model>_<dataset>)")
    for name, entry in (matrix["entries"] or {}).items():
        missing = {"model", "dataset", "method", "hw"} - set(entry)
        if missing:
            raise MatrixError(f"bench.entries.{name} lacks {sorted(missing)}")
        if baseline_name(entry) not in (matrix["baselines"] or {}):
            raise MatrixError(f"bench.entries.{name}: no baseline {baseline_name(entry)!r} in bench.baselines; add it")
    for name, reproduction in (matrix.get("reproductions") or {}).items():
        missing = {"entry", "source", "paper"} - set(reproduction)
        if missing:
            raise MatrixError(f"bench.reproductions.{name} lacks {sorted(missing)}")
        if reproduction["entry"] not in (matrix["entries"] or {}):
            raise MatrixError(f"bench.reproductions.{name}: no entry {reproduction['entry']!r} in bench.entries")


def baseline_name(node: Mapping[str, Any]) -> str:
    return f"{node['model']}_{node['dataset']}"


def _lookup(matrix: Mapping[str, Any], group: str, name: str) -> Mapping[str, Any]:
    nodes = matrix.get(group) or {}
    if name not in nodes:
        raise MatrixError(f"no {group} {name!r} in the {matrix['name']} matrix; known: {sorted(nodes)}")
    return nodes[name]


def _hw_overrides(matrix: Mapping[str, Any], hw: str) -> list[str]:
    """The matrix's settings for one device (timing protocol, say), applied after ``+hw=<hw>``."""
    return list((matrix.get("hw_overrides") or {}).get(hw) or [])


def run_kind_of(matrix: Mapping[str, Any]) -> str:
    """The ``run_kind`` of the matrix's runs: the tiny matrix's are smoke tests, quick's and full's their own."""
    from benchmarks.run_labels import MATRIX_KINDS

    return MATRIX_KINDS.get(str(matrix["name"]), "user")


def baseline_overrides(matrix: Mapping[str, Any], name: str) -> list[str]:
    """The run of baseline ``name`` (on local_cpu): the matrix's common overrides, model, dataset, its own."""
    node = _lookup(matrix, "baselines", name)
    return [*(matrix.get("common") or []), f"model={node['model']}", f"dataset={node['dataset']}",
            *(node.get("overrides") or []), "+method=baseline", "+hw=local_cpu", *_hw_overrides(matrix, "local_cpu"),
            f"++tags.dvc_stage=baselines@{name}", f"run_kind={run_kind_of(matrix)}"]


def entry_overrides(matrix: Mapping[str, Any], name: str) -> list[str]:
    """The run of entry ``name``: its baseline's overrides, then method, hardware and its own."""
    entry = _lookup(matrix, "entries", name)
    base = _lookup(matrix, "baselines", baseline_name(entry))
    # A preset (conf/experiment/) that sets the method itself stands in for +method=.
    method = f"+experiment={entry['experiment']}" if entry.get("experiment") else f"+method={entry['method']}"
    return [*(matrix.get("common") or []), f"model={entry['model']}", f"dataset={entry['dataset']}",
            *(base.get("overrides") or []), method, f"+hw={entry['hw']}", *_hw_overrides(matrix, entry["hw"]),
            *(entry.get("overrides") or []), f"++tags.dvc_stage=bench@{name}", f"++tags.bench_matrix={matrix['name']}",
            f"run_kind={run_kind_of(matrix)}"]


# -- stages ----------------------------------------------------------------------------------
def compose_run(overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_dir

    from benchmarks.preflight import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def run_stage(overrides: list[str], out: Path) -> dict[str, Any]:
    """One pipeline run; its MLflow metrics and provenance tags written to ``out`` (JSON)."""
    import mlflow

    from benchmarks.pipeline import run

    invocation = uuid.uuid4().hex
    cfg = compose_run([*overrides, f"++tags.dvc_invocation={invocation}"])
    run(cfg)
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    (found,) = mlflow.search_runs(experiment_names=[cfg.logger.experiment_name], output_format="list",
                                  filter_string=f"tags.dvc_invocation = '{invocation}'")
    record = {
        "run_id": found.info.run_id,
        "date": found.info.start_time,
        **{tag: found.data.tags.get(tag) for tag in RUN_TAGS},
        "metrics": dict(sorted(found.data.metrics.items())),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log.info("wrote %s (MLflow run %s)", out, found.info.run_id)
    return record


def prepare_data(dataset: str, out: Path) -> dict[str, Any]:
    """Prepare ``<data_dir>/<dataset>`` from its source (sha256-checked); its checksum to ``out``."""
    from hydra.utils import instantiate

    cfg = compose_run([f"dataset={dataset}"])
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    record = {"dataset": dataset, "checksum": datamodule.checksum, "folder": os.path.relpath(datamodule.folder)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    log.info("%s: checksum %s", dataset, datamodule.checksum)
    return record


def profile(matrix: Mapping[str, Any], name: str, out: Path) -> None:
    """A latency lookup table measured here, by the hardware package's profiler."""
    node = _lookup(matrix, "profile", name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # the profiler extends an existing table; a stage starts afresh
    command = [sys.executable, "-m", "hardware", "profile", "--hw", str(node["hw"]),
               *[str(a) for a in node.get("args") or []], "--out", str(out)]
    log.info("%s", " ".join(command))
    subprocess.run(command, check=True)


def leaderboard(matrix: Mapping[str, Any], bench_dir: Path, results_dir: Path) -> list[Path]:
    """The leaderboard of the matrix's entries, from their metrics files (not the whole store)."""
    import pandas as pd

    from benchmarks.leaderboard import FIELDS, rank, write_leaderboard

    rows = []
    for name in sorted(matrix.get("entries") or {}):
        record = json.loads((bench_dir / f"{name}.json").read_text())
        fields = {**record, **record["metrics"]}
        row = {column: fields.get(field.split(".", 1)[-1]) for column, field in FIELDS}
        row["date"] = pd.Timestamp(record["date"], unit="ms").strftime("%Y-%m-%d %H:%M")
        rows.append(row)
    table = pd.DataFrame(rows, columns=[c for c, _ in FIELDS])
    if not table.empty:
        table = table.sort_values(["dataset", "hw", "test_top1"], ascending=[True, True, False]).reset_index(drop=True)
    return write_leaderboard(rank(table), results_dir)


def reproductions(matrix: Mapping[str, Any], bench_dir: Path, out: Path) -> Path:
    """Paper figures against the matrix's own runs: ``results/reproductions/<matrix>.md``."""
    lines = [f"# Reproductions: the {matrix['name']} matrix", "",
             "Generated by `dvc repro` (stage `reproductions`) from the paper figures in "
             f"`conf/bench/{matrix['name']}.yaml` and the metrics files `results/bench/<entry>.json`. "
             "Difference = ours - paper.", ""]
    for name, reproduction in sorted((matrix.get("reproductions") or {}).items()):
        record = json.loads((bench_dir / f"{reproduction['entry']}.json").read_text())
        metrics = record["metrics"]
        lines += [f"## {name}", "", f"Paper: {reproduction['source']}. Entry `{reproduction['entry']}` "
                  f"(`python -m benchmarks.matrix show {reproduction['entry']}`), seed {record.get('seed')}, "
                  f"MLflow run `{record['run_id']}`.", "", "| figure | paper | ours | difference |",
                  "|---|---:|---:|---:|"]
        for figure, published in reproduction["paper"].items():
            ours = metrics.get(figure)
            if ours is None:
                raise MatrixError(f"bench.reproductions.{name}: {figure!r} is not a metric of entry "
                                  f"{reproduction['entry']}; known: {sorted(metrics)}")
            lines.append(f"| {figure} | {published:g} | {ours:.4g} | {ours - published:+.4g} |")
        if reproduction.get("note"):
            lines += ["", str(reproduction["note"]).strip()]
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    return out


def write_params(overrides: list[str], path: Path = PARAMS_FILE) -> None:
    import yaml

    params = compose_params(overrides)
    header = ("# Generated from conf/dvc_params.yaml by `python -m benchmarks.matrix params"
              f"{''.join(' ' + o for o in overrides)}` (or by `dvc exp run -S ...`): edit conf/, not this file.\n")
    path.write_text(header + yaml.safe_dump(params, sort_keys=False, width=200))
    log.info("wrote %s (matrix %s: %d baselines, %d entries)", path, params["bench"]["name"],
             len(params["bench"]["baselines"] or {}), len(params["bench"]["entries"] or {}))


def main(argv: list[str] | None = None) -> None:
    for var, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("DVC_NO_ANALYTICS", "1")):
        os.environ.setdefault(var, value)
    import benchmarks  # noqa: F401  (config resolvers)

    parser = argparse.ArgumentParser(prog="python -m benchmarks.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="the composed params file (params.yaml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("params", help="write params.yaml from conf/dvc_params.yaml").add_argument("overrides", nargs="*")
    for name, what in (("show", "entry"), ("data", "dataset"), ("profile", "table"), ("baseline", "baseline"),
                       ("bench", "entry")):
        commands.add_parser(name).add_argument(what)
    board = commands.add_parser("leaderboard")
    board.add_argument("--bench-dir", type=Path, default=Path("results/bench"))
    board.add_argument("--results-dir", type=Path, default=Path("results"))
    papers = commands.add_parser("reproductions")
    papers.add_argument("--bench-dir", type=Path, default=Path("results/bench"))
    papers.add_argument("--out", type=Path, default=None, help="default: results/reproductions/<matrix>.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.command == "params":
        write_params(args.overrides, args.params)
        return
    matrix = load_matrix(args.params)
    if args.command == "show":
        print(" ".join(["python -m benchmarks", *entry_overrides(matrix, args.entry)]))
    elif args.command == "data":
        if args.dataset not in matrix["datasets"]:
            raise MatrixError(f"dataset {args.dataset!r} is not in bench.datasets {matrix['datasets']}")
        prepare_data(args.dataset, Path("results/data") / f"{args.dataset}.json")
    elif args.command == "profile":
        profile(matrix, args.table, Path("results/profile") / f"{args.table}.json")
    elif args.command == "baseline":
        run_stage(baseline_overrides(matrix, args.baseline), Path("results/baselines") / f"{args.baseline}.json")
    elif args.command == "bench":
        run_stage(entry_overrides(matrix, args.entry), Path("results/bench") / f"{args.entry}.json")
    elif args.command == "leaderboard":
        for path in leaderboard(matrix, args.bench_dir, args.results_dir):
            log.info("wrote %s", path)
    elif args.command == "reproductions":
        out = args.out or Path("results/reproductions") / f"{matrix['name']}.md"
        log.info("wrote %s", reproductions(matrix, args.bench_dir, out))


if __name__ == "__main__":
    from benchmarks.preflight import one_line, user_errors

    try:
        main()
    except Exception as error:  # a stage's run refused by its checks, too: one line, not a traceback
        if not isinstance(error, (MatrixError, *user_errors())):
            raise
        sys.exit(f"error: {one_line(error)}")
