"""`python -m benchmarks.leaderboard [overrides]`: the MLflow store -> results/leaderboard.{md,csv} + Pareto plots.

One row per finished run, grouped by dataset and hardware; for each (dataset, hardware)
a PNG of test top-1 against latency with the Pareto front (higher accuracy, lower latency)
marked. The store and the output folder come from the same Hydra config as runs
(``logger.tracking_uri``, ``paths.results_dir``), so overrides work the same way.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

#: Leaderboard columns: (column, MLflow field it comes from); accuracy columns name their split.
COLUMNS = [
    ("dataset", "tags.dataset"),
    ("model", "tags.model"),
    ("method", "tags.method"),
    ("hw", "tags.hw"),
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
    ("run_id", "run_id"),
    ("date", "start_time"),
]


def load_runs(tracking_uri: str, experiment_name: str) -> pd.DataFrame:
    """Finished runs of the experiment as a table with the leaderboard's columns."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    runs = mlflow.search_runs(experiment_names=[experiment_name], filter_string="attributes.status = 'FINISHED'",
                              output_format="pandas")
    if runs.empty:
        return pd.DataFrame(columns=[c for c, _ in COLUMNS])
    table = pd.DataFrame({column: runs[field] if field in runs else None for column, field in COLUMNS})
    table["date"] = pd.to_datetime(table["date"]).dt.strftime("%Y-%m-%d %H:%M")
    return table.sort_values(["dataset", "hw", "test_top1"], ascending=[True, True, False]).reset_index(drop=True)


def pareto_front(latency: pd.Series, accuracy: pd.Series) -> pd.Series:
    """True for the runs no other run beats on both latency (lower) and accuracy (higher)."""
    front = []
    for i in latency.index:
        dominated = (
            (latency <= latency[i]) & (accuracy >= accuracy[i]) & ((latency < latency[i]) | (accuracy > accuracy[i]))
        ).any()
        front.append(not dominated)
    return pd.Series(front, index=latency.index)


def plot_pareto(group: pd.DataFrame, dataset: str, hw: str, path: Path) -> Path:
    """Top-1 against latency, one marker per method, the Pareto front drawn as a step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5), dpi=120)
    for method, points in group.groupby("method"):
        ax.scatter(points["latency_ms"], points["test_top1"], s=45, label=str(method), alpha=0.85)
        for _, row in points.iterrows():
            ax.annotate(str(row["model"]), (row["latency_ms"], row["test_top1"]), fontsize=7, alpha=0.7,
                        xytext=(4, 3), textcoords="offset points")
    front = group[group["on_front"]].sort_values("latency_ms")
    ax.step(front["latency_ms"], front["test_top1"], where="post", color="black", linewidth=1.2, linestyle="--",
            label="Pareto front")
    ax.scatter(front["latency_ms"], front["test_top1"], s=140, facecolors="none", edgecolors="black", linewidths=1.2)
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


def _markdown_table(frame: pd.DataFrame) -> str:
    shown = frame.drop(columns=["dataset", "hw", "on_front"]).copy()
    shown.insert(0, "front", frame["on_front"].map({True: "*", False: ""}))
    for column, digits in (("test_top1", 2), ("val_top1", 2), ("latency_ms", 3), ("local_cpu_latency_ms", 3), ("speedup", 2), ("compression", 2)):
        shown[column] = shown[column].map(lambda v, d=digits: "" if pd.isna(v) else f"{v:.{d}f}")
    for column in ("params", "nonzero_params", "macs", "stored_bytes"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{int(v):,}")
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_leaderboard(table: pd.DataFrame, results_dir: Path) -> list[Path]:
    """Write leaderboard.md, leaderboard.csv and one Pareto PNG per (dataset, hw)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    table = table.copy()
    table["on_front"] = False
    for _, index in table.groupby(["dataset", "hw"]).groups.items():
        group = table.loc[index].dropna(subset=["latency_ms", "test_top1"])
        table.loc[group.index, "on_front"] = pareto_front(group["latency_ms"], group["test_top1"])
    written = [results_dir / "leaderboard.csv"]
    table.drop(columns=["on_front"]).to_csv(written[0], index=False)
    lines = ["# CompressBench leaderboard", "",
             "One row per finished MLflow run, grouped by dataset and hardware; `*` marks the Pareto front "
             "(no other run is both faster and more accurate). Speedup and compression are against each run's "
             "own baseline, measured in the same run. Latency source: `measured` on this machine, or "
             "`table/…` / `analytical/…` emulated with its calibration.", ""]
    for (dataset, hw), group in table.groupby(["dataset", "hw"], sort=True):
        plot = plot_pareto(group.dropna(subset=["latency_ms", "test_top1"]), dataset, hw,
                           results_dir / f"pareto_{dataset}_{hw}.png")
        written.append(plot)
        lines += [f"## {dataset} on {hw}", "", f"![Pareto front]({plot.name})", "", _markdown_table(group), ""]
    if table.empty:
        lines.append("No finished runs yet: run `python -m benchmarks` first.")
    written.insert(0, results_dir / "leaderboard.md")
    written[0].write_text("\n".join(lines) + "\n")
    return written


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from hydra import compose, initialize_config_dir

    import benchmarks  # noqa: F401  (config resolvers)
    from benchmarks.pipeline import CONF_DIR

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(sys.argv[1:] if argv is None else argv))
    table = load_runs(cfg.logger.tracking_uri, cfg.logger.experiment_name)
    for path in write_leaderboard(table, Path(cfg.paths.results_dir)):
        log.info("wrote %s", path)
    log.info("%d runs from %s", len(table), cfg.logger.tracking_uri)


if __name__ == "__main__":
    main()
