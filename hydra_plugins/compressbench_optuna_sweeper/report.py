"""What a finished sweep leaves: its best trials (one objective) or its Pareto front (several).

``<results_dir>/best_trials.md`` lists the top trials; a multi-objective study also writes
``pareto.md``, ``pareto.csv`` and ``pareto.png`` (every completed trial, the front marked).
Each row carries the trial's MLflow run id (tag ``optuna_trial`` of the run) via its number.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState


def _row(trial: FrozenTrial, objectives: list[str]) -> dict[str, object]:
    values = trial.values or []
    return {"trial": trial.number, **dict(zip(objectives, values, strict=False)),
            **{f"param {k}": v for k, v in trial.params.items()}}


def _markdown(rows: list[dict[str, object]]) -> str:
    if not rows:
        return "No completed trials."
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c])
                                       for c in columns) + " |")
    return "\n".join(lines)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto-optimal trials (several objectives) or the trials ranked by value (one)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    ranked = sorted(((sign * t.value, t) for t in complete if t.value is not None), key=lambda pair: pair[0])
    return [t for _, t in ranked]


def write_report(study: optuna.Study, objectives: list[str], results_dir: Path | None) -> list[str]:
    """Log lines of the best trials; the files in ``results_dir`` when one is given."""
    best = best_trials(study)
    counts = {s.name: len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    summary = ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if n)
    multi = len(study.directions) > 1
    title = "Pareto front" if multi else "best trials"
    lines = [f"study {study.study_name!r}: {summary}; {title}:"]
    lines += [f"  trial {t.number}: {dict(zip(objectives, t.values or [], strict=False))} {t.params}"
              for t in best[:10]]
    if results_dir is None:
        return lines
    results_dir.mkdir(parents=True, exist_ok=True)
    header = (f"# Optuna study `{study.study_name}`\n\nTrials: {summary}. Directions: "
              f"{', '.join(f'{o} ({d.name.lower()})' for o, d in zip(objectives, study.directions, strict=True))}. "
              "Each trial is an MLflow run tagged `optuna_study` and `optuna_trial`.\n\n")
    (results_dir / "best_trials.md").write_text(header + f"## {title}\n\n" + _markdown(
        [_row(t, objectives) for t in best[:20]]) + "\n")
    lines.append(f"wrote {results_dir / 'best_trials.md'}")
    if multi:
        lines += write_pareto(study, objectives, best, results_dir, header)
    return lines


def write_pareto(study: optuna.Study, objectives: list[str], front: list[FrozenTrial], results_dir: Path,
                 header: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    on_front = {t.number for t in front}
    table = pd.DataFrame([{**_row(t, objectives), "on_front": t.number in on_front} for t in complete])
    table.to_csv(results_dir / "pareto.csv", index=False)
    (results_dir / "pareto.md").write_text(
        header + "## Pareto front\n\n![Pareto front](pareto.png)\n\n"
        + _markdown([_row(t, objectives) for t in front]) + "\n")
    x_name, y_name = objectives[1], objectives[0]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter(table[x_name], table[y_name], s=30, alpha=0.6, label="trials")
    points = table[table["on_front"]].sort_values(x_name)
    ax.step(points[x_name], points[y_name], where="post", color="black", linestyle="--", linewidth=1.2,
            label="Pareto front")
    ax.scatter(points[x_name], points[y_name], s=110, facecolors="none", edgecolors="black")
    for _, row in points.iterrows():
        ax.annotate(f"#{int(row['trial'])}", (row[x_name], row[y_name]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    directions = {o: d.name.lower() for o, d in zip(objectives, study.directions, strict=True)}
    ax.set_xlabel(f"{x_name} ({directions[x_name]})")
    ax.set_ylabel(f"{y_name} ({directions[y_name]})")
    ax.set_title(f"study {study.study_name}: {len(front)} of {len(complete)} trials on the front")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir / "pareto.png")
    plt.close(fig)
    return [f"wrote {results_dir / name}" for name in ("pareto.md", "pareto.csv", "pareto.png")]
