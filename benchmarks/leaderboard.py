"""`python -m benchmarks.leaderboard [flags] [overrides]`: the MLflow store -> results/leaderboard.{md,csv} + Pareto plots.

Comparable runs only: FINISHED runs (``--status`` adds others), of every kind but smoke tests
(``--kind`` picks kinds: smoke, quick, full, user, sweep_trial), narrowed by ``--dataset``,
``--device`` and ``--since``/``--until`` (dates). One table per (dataset, hardware), with a
baseline row for each baseline the runs were compared with (its figures as measured in the run,
unless a baseline run is there itself), and a PNG of test top-1 against latency: points labelled
by method, the Pareto front (higher accuracy, lower latency) drawn, noisy latencies ringed in red.
The same table is logged to MLflow as a table artifact (``leaderboard.json``) of a run named
``leaderboard``; ``--register`` puts the Pareto-front models in the model registry
(benchmarks.registry). The store and the output folder come from the same Hydra config as runs
(``logger.tracking_uri``, ``paths.results_dir``), so overrides work the same way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.run_labels import SEARCH_CANDIDATE_KIND

log = logging.getLogger(__name__)

#: Leaderboard columns: (column, MLflow field it comes from); accuracy columns name their split.
COLUMNS = [
    ("dataset", "tags.dataset"),
    ("model", "tags.model"),
    ("method", "tags.method"),
    ("hw", "tags.hw"),
    ("run_name", "tags.mlflow.runName"),
    ("test_top1", "metrics.top1"),  # reported: the test split
    ("val_top1", "metrics.val_top1"),  # what sweeps and presets choose by: the validation split
    ("params", "metrics.params"),
    ("nonzero_params", "metrics.nonzero_params"),
    ("macs", "metrics.macs"),
    ("stored_bytes", "metrics.stored_bytes"),
    ("latency_ms", "metrics.latency_ms"),
    ("latency_source", "tags.latency_source"),
    ("local_cpu_latency_ms", "metrics.local_cpu_latency_ms"),
    ("speedup", "metrics.speedup"),  # median per-round ratio of a paired measurement (hardware.speedup)
    ("speedup_verdict", "tags.speedup_verdict"),  # faster | slower | no measurable difference | predicted
    ("latency_noisy", "tags.latency_noisy"),  # true: the timing protocol found the machine too noisy
    ("compression", "metrics.compression"),
    ("seed", "tags.seed"),
    ("run_kind", "tags.run_kind"),  # smoke | quick | full | user | sweep_trial (benchmarks.run_labels)
    ("data_fraction", "tags.data_fraction"),  # of the training set
    ("eval_split", "tags.eval_split"),  # the split test_top1 was measured on
    ("run_id", "run_id"),
    ("date", "start_time"),
]

#: Fields the table carries for its baseline rows, registration and filters, not shown.
HIDDEN = [
    ("baseline_top1", "metrics.baseline_top1"),
    ("baseline_val_top1", "metrics.baseline_val_top1"),
    ("baseline_params", "metrics.baseline_params"),
    ("baseline_nonzero_params", "metrics.baseline_nonzero_params"),
    ("baseline_macs", "metrics.baseline_macs"),
    ("baseline_stored_bytes", "metrics.baseline_stored_bytes"),
    ("baseline_latency_ms", "metrics.baseline_latency_ms"),
    ("baseline_local_cpu_latency_ms", "metrics.baseline_local_cpu_latency_ms"),
    ("baseline_key", "tags.baseline_key"),
    ("mlflow_model", "tags.mlflow_model"),
    ("status", "status"),
]
FIELDS = [*COLUMNS, *HIDDEN]
#: Kinds left out unless asked for: smoke tests, and a search's candidates (child runs of the derived net's run).
DEFAULT_EXCLUDED_KINDS = ("smoke", SEARCH_CANDIDATE_KIND)
LEADERBOARD_KIND = "leaderboard"
SORT = {"by": ["dataset", "hw", "test_top1"], "ascending": [True, True, False]}


def load_runs(tracking_uri: str, experiment_name: str, statuses: Sequence[str] = ("FINISHED",)) -> pd.DataFrame:
    """The experiment's runs in ``statuses`` as a table with the leaderboard's fields (all kinds)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment_name], output_format="pandas")
    runs = runs[runs["status"].isin(statuses)] if not runs.empty else runs  # the store filters one status only
    if runs.empty:
        return pd.DataFrame(columns=[c for c, _ in FIELDS])
    table = pd.DataFrame({column: runs[field] if field in runs else None for column, field in FIELDS})
    table["date"] = pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d %H:%M")
    return table.sort_values(**SORT).reset_index(drop=True)


def select(table: pd.DataFrame, kinds: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
           devices: Sequence[str] | None = None, since: str | None = None, until: str | None = None) -> pd.DataFrame:
    """The comparable rows: of ``kinds`` (default: all but smoke tests), datasets, devices, dates (inclusive).

    A run recorded before run kinds existed has kind ``unknown``; the leaderboard's own runs never count.
    """
    kind = table["run_kind"].fillna("unknown")
    keep = kind.isin(kinds) if kinds else ~kind.isin(DEFAULT_EXCLUDED_KINDS)
    keep &= kind != LEADERBOARD_KIND
    if datasets:
        keep &= table["dataset"].isin(datasets)
    if devices:
        keep &= table["hw"].isin(devices)
    day = pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d")
    if since:
        keep &= day >= pd.Timestamp(since).strftime("%Y-%m-%d")
    if until:
        keep &= day <= pd.Timestamp(until).strftime("%Y-%m-%d")
    return table[keep].reset_index(drop=True)


def with_baselines(table: pd.DataFrame) -> pd.DataFrame:
    """The table with a ``row`` column and one baseline row per baseline its runs were compared with.

    A baseline row holds the baseline's figures as the latest run measured them beside its own
    (same target, same protocol); a run of the baseline itself (method ``baseline``) stands in for it.
    """
    table = table.assign(row="run")
    key = table["baseline_key"].fillna(table["model"].astype(str) + "/seed" + table["seed"].astype(str))
    table = table.assign(_key=key)
    own = set(zip(table.loc[table["method"] == "baseline", "dataset"], table.loc[table["method"] == "baseline", "hw"],
                  table.loc[table["method"] == "baseline", "_key"], strict=True))
    compared = table[(table["method"] != "baseline") & table["baseline_top1"].notna()].sort_values("date")
    rows = []
    for (dataset, hw, base), runs in compared.groupby(["dataset", "hw", "_key"], sort=False):
        if (dataset, hw, base) in own:
            continue
        latest = runs.iloc[-1]
        row = latest.copy()
        row["method"], row["row"], row["speedup"], row["compression"] = "baseline", "baseline", 1.0, 1.0
        row = row.drop(labels=[c for c in ("speedup_verdict",) if c in row.index])  # the run's, not the baseline's
        for column in ("test_top1", "val_top1", "params", "nonzero_params", "macs", "stored_bytes", "latency_ms",
                       "local_cpu_latency_ms"):
            row[column] = latest[f"baseline_{column.removeprefix('test_')}"]
        row["run_name"] = f"baseline of {latest['run_name'] if pd.notna(latest['run_name']) else latest['run_id']}"
        rows.append(row)
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return table.drop(columns="_key").sort_values(**SORT).reset_index(drop=True)


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Baseline rows added and ``on_front`` set per (dataset, hw): what the files and the registry use."""
    table = with_baselines(table)
    table["on_front"] = False
    for _, index in table.groupby(["dataset", "hw"]).groups.items():
        group = table.loc[index].dropna(subset=["latency_ms", "test_top1"])
        table.loc[group.index, "on_front"] = pareto_front(group["latency_ms"].astype(float),
                                                          group["test_top1"].astype(float))
    return table


def pareto_front(latency: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True for the runs no other run beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i in latency.index:
        dominated = (
            (latency <= latency[i]) & (accuracy >= accuracy[i]) & ((latency < latency[i]) | (accuracy > accuracy[i]))
        ).any()
        front.append(not dominated)
    return pd.Series(front, index=latency.index)


def accuracy_limits(accuracy: pd.Series) -> tuple[float, float]:
    """The accuracy axis: the points' range with a margin, never below 0% or above 100%."""
    low, high = float(accuracy.min()), float(accuracy.max())
    margin = max(1.0, 0.1 * (high - low))
    return max(0.0, low - margin), min(100.0, high + margin)


def noisy_latency(table: pd.DataFrame) -> pd.Series:
    """Rows whose latency the timing protocol found too noisy (tag ``latency_noisy``; absent: not known noisy)."""
    if "latency_noisy" not in table:
        return pd.Series(False, index=table.index)
    return table["latency_noisy"].astype(str).str.lower() == "true"


def plot_pareto(group: pd.DataFrame, dataset: str, hw: str, path: Path) -> Path:
    """Top-1 against latency: points labelled by method, baselines as stars, noisy latencies ringed, the front drawn.

    The accuracy axis is bounded to the points' range (within 0-100%), so a smoke run at chance
    level does not squash the rest, and never runs past 100%.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    several_models = group["model"].nunique() > 1
    for method, points in group.groupby("method"):
        marker = "*" if method == "baseline" else "o"
        ax.scatter(points["latency_ms"], points["test_top1"], s=110 if marker == "*" else 45, marker=marker,
                   label=str(method), alpha=0.85)
        for _, row in points.iterrows():
            label = f"{method} ({row['model']})" if several_models else str(method)
            ax.annotate(label, (row["latency_ms"], row["test_top1"]), fontsize=7, alpha=0.8, xytext=(4, 3),
                        textcoords="offset points")
    noisy = group[noisy_latency(group)]
    if not noisy.empty:
        ax.scatter(noisy["latency_ms"], noisy["test_top1"], s=260, facecolors="none", edgecolors="red",
                   linewidths=1.0, linestyles="dotted", label="noisy latency (machine too busy)")
    front = group[group["on_front"]].sort_values("latency_ms")
    ax.step(front["latency_ms"], front["test_top1"], where="post", color="black", linewidth=1.2, linestyle="--",
            label="Pareto front")
    ax.scatter(front["latency_ms"], front["test_top1"], s=140, facecolors="none", edgecolors="black", linewidths=1.2)
    ax.set_ylim(*accuracy_limits(group["test_top1"]))
    sources = ", ".join(sorted(set(group["latency_source"].dropna().astype(str))))
    ax.set_xlabel(f"latency on {hw} (ms, batch 1; source: {sources or 'unknown'})")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"{dataset} on {hw}: accuracy against latency")
    ax.grid(True, alpha=0.3)
    ax.legend(title="method", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def shown(table: pd.DataFrame) -> pd.DataFrame:
    """The published columns: the leaderboard's, with ``row`` (run or baseline) after the method."""
    columns = [c for c, _ in COLUMNS if c in table]
    columns.insert(columns.index("method") + 1, "row")
    return table[columns]


def _markdown_table(frame: pd.DataFrame) -> str:
    table = shown(frame).drop(columns=["dataset", "hw"]).copy()
    table.insert(0, "front", frame["on_front"].map({True: "*", False: ""}))
    for column, digits in (("test_top1", 2), ("val_top1", 2), ("latency_ms", 3), ("local_cpu_latency_ms", 3),
                           ("speedup", 2), ("compression", 2)):
        table[column] = table[column].map(lambda v, d=digits: "" if pd.isna(v) else f"{float(v):.{d}f}")
    for column in ("params", "nonzero_params", "macs", "stored_bytes"):
        table[column] = table[column].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    table = table.fillna("")
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_leaderboard(table: pd.DataFrame, results_dir: Path, selection: str = "") -> list[Path]:
    """Write leaderboard.md, leaderboard.csv and one Pareto PNG per (dataset, hw) of ``table`` (from :func:`rank`);
    ``selection`` says which runs."""
    results_dir.mkdir(parents=True, exist_ok=True)
    written = [results_dir / "leaderboard.csv"]
    shown(table).to_csv(written[0], index=False)
    lines = ["# CompressBench leaderboard", "",
             "One row per run, grouped by dataset and hardware, with a `baseline` row for each baseline the runs "
             "were compared with (as measured beside them); `*` marks the Pareto front "
             "(no other row is both faster and more accurate). Speedup and compression are against each run's "
             "own baseline, measured in the same run. Latency source: `measured` on this machine, or "
             "`table/…` / `analytical/…` emulated with its calibration; `latency_noisy` true: the machine was "
             "too busy for the timing protocol (ringed in red on the plot).", ""]
    if selection:
        lines += [f"Runs: {selection}.", ""]
    for (dataset, hw), group in table.groupby(["dataset", "hw"], sort=True):
        plot = plot_pareto(group.dropna(subset=["latency_ms", "test_top1"]), dataset, hw,
                           results_dir / f"pareto_{dataset}_{hw}.png")
        written.append(plot)
        lines += [f"## {dataset} on {hw}", "", f"![Pareto front]({plot.name})", "", _markdown_table(group), ""]
    if table.empty:
        lines.append("No comparable runs: run `python -m benchmarks` first (smoke runs count with `--kind smoke`).")
    written.insert(0, results_dir / "leaderboard.md")
    written[0].write_text("\n".join(lines) + "\n")
    return written


def log_leaderboard_run(table: pd.DataFrame, files: list[Path], logger_cfg: Any, selection: str) -> str:
    """A run named ``leaderboard`` holding the ranked ``table`` (an MLflow table artifact) and the files; its id."""
    import mlflow

    from benchmarks.preflight import CONF_DIR
    from benchmarks.tracking import git_state, mlflow_run

    tags = {"run_kind": LEADERBOARD_KIND, "selection": selection, **git_state(CONF_DIR.parent)}
    with mlflow_run(logger_cfg.tracking_uri, logger_cfg.experiment_name, logger_cfg.artifact_location,
                    "leaderboard", tags) as recorder:
        mlflow.log_table(shown(table).astype(object).where(lambda t: t.notna(), None), "leaderboard.json",
                         run_id=recorder.run_id)
        for path in files:
            recorder.artifact(path)
    return recorder.run_id


def describe(args: argparse.Namespace) -> str:
    """The selection in words, for the files and the leaderboard run."""
    parts = [f"status {'/'.join(args.status)}",
             f"kind {'/'.join(args.kind)}" if args.kind else f"every kind but {'/'.join(DEFAULT_EXCLUDED_KINDS)}"]
    parts += [f"{name} {'/'.join(values)}" for name, values in (("dataset", args.dataset), ("device", args.device))
              if values]
    parts += [f"{name} {value}" for name, value in (("since", args.since), ("until", args.until)) if value]
    return ", ".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from benchmarks.run_labels import RUN_KINDS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.leaderboard", description=__doc__.split("\n")[0])
    parser.add_argument("--kind", action="append", choices=[*RUN_KINDS, SEARCH_CANDIDATE_KIND, "unknown"],
                        help="run kinds to include (repeatable; default: all but smoke and search candidates)")
    parser.add_argument("--dataset", action="append", help="only these datasets (repeatable)")
    parser.add_argument("--device", action="append", help="only these hardware targets, the runs' hw (repeatable)")
    parser.add_argument("--since", type=pd.Timestamp, help="runs started on or after this date (YYYY-MM-DD)")
    parser.add_argument("--until", type=pd.Timestamp, help="runs started on or before this date (YYYY-MM-DD)")
    parser.add_argument("--status", action="append", choices=["FINISHED", "FAILED", "KILLED", "RUNNING"],
                        help="run statuses to include (repeatable; default: FINISHED)")
    parser.add_argument("--register", action="store_true",
                        help="register the Pareto-front models in the MLflow model registry")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only, log no leaderboard run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. paths.results_dir=... logger.tracking_uri=...")
    args = parser.parse_args(argv)
    args.status = args.status or ["FINISHED"]
    args.since = args.since and args.since.strftime("%Y-%m-%d")
    args.until = args.until and args.until.strftime("%Y-%m-%d")
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from hydra import compose, initialize_config_dir

    import benchmarks  # noqa: F401  (config resolvers)
    from benchmarks.preflight import CONF_DIR

    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=args.overrides)
    runs = load_runs(cfg.logger.tracking_uri, cfg.logger.experiment_name, args.status)
    table = select(runs, args.kind, args.dataset, args.device, args.since, args.until)
    selection = describe(args)
    ranked = rank(table)
    files = write_leaderboard(ranked, Path(cfg.paths.results_dir), selection)
    for path in files:
        log.info("wrote %s", path)
    log.info("%d of %d runs from %s (%s)", len(table), len(runs), cfg.logger.tracking_uri, selection)
    if not args.no_mlflow:
        log.info("leaderboard run %s", log_leaderboard_run(ranked, files, cfg.logger, selection))
    if args.register:
        from benchmarks.registry import register_front

        for line in register_front(ranked, cfg.logger.tracking_uri):
            log.info("%s", line)


if __name__ == "__main__":
    main()
