"""The agent against random search (issue 15): one record, table and figure for every DDPG family's study.

A curve run plays the family's search twice per seed with the same number of episodes and the same
evaluation: ``ddpg`` (``warmup`` random episodes, then ``episodes`` learning ones) and ``random``
(``warmup + episodes`` random episodes: :meth:`methods.search.ddpg.DDPGAgent.search` with no learning
episode). Both start from the same seed, so their warm-up draws are the same and the curves part where
the agent starts to learn. HAQ's study (benchmarks/studies/haq.py) and AMC's (amc_curve.py) use these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

#: how many of the last episodes the table averages (the agent's late behaviour)
LAST = 10


class Scored(Protocol):
    """An episode of a family's search (AMC's and HAQ's ``Episode``)."""

    reward: float
    top1: float
    cost_ratio: float


def arms(warmup: int, episodes: int) -> dict[str, tuple[int, int]]:
    """(warm-up, learning) episodes of each arm: the same total; random search never learns."""
    return {"ddpg": (warmup, episodes), "random": (warmup + episodes, 0)}


def record(seed: int, history: Sequence[Scored], **per_episode: list[Any]) -> dict[str, Any]:
    """A curve run's row: every episode's reward, the best so far, top-1 and cost; ``per_episode`` adds the family's."""
    rewards = [e.reward for e in history]
    return {"seed": seed, "rewards": rewards, "best_so_far": np.maximum.accumulate(rewards).tolist(),
            "top1": [e.top1 for e in history], "cost_ratio": [e.cost_ratio for e in history], **per_episode}


def pairs(curve_data: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(ddpg, random) runs of every seed that has both, in the settings' seed order."""
    runs = curve_data["runs"]
    return [(runs[f"curve/ddpg/s{x}"], runs[f"curve/random/s{x}"]) for x in curve_data["settings"]["seeds"]
            if f"curve/ddpg/s{x}" in runs and f"curve/random/s{x}" in runs]


def comparison(curve_data: dict[str, Any], columns: dict[str, Callable[[dict[str, Any]], str]]) -> list[str]:
    """The per-seed table (best reward, mean of the last episodes, the family's ``columns`` per arm) and the tally."""
    extra = "".join(f" DDPG {label} | random {label} |" for label in columns)
    lines = [f"| seed | DDPG best | random best | DDPG mean of the last {LAST} | random mean of the last {LAST} |{extra}",
             "|---|---|---|---|---|" + "---|" * 2 * len(columns)]
    for d, r in pairs(curve_data):
        cells = "".join(f" {cell(d)} | {cell(r)} |" for cell in columns.values())
        lines.append(f"| {d['seed']} | {max(d['rewards']):.3f} | {max(r['rewards']):.3f} | "
                     f"{np.mean(d['rewards'][-LAST:]):.3f} | {np.mean(r['rewards'][-LAST:]):.3f} |{cells}")
    done = pairs(curve_data)
    if done:
        wins = sum(max(d["rewards"]) > max(r["rewards"]) for d, r in done)
        ties = sum(max(d["rewards"]) == max(r["rewards"]) for d, r in done)
        tied = f" and ties it in {ties}" if ties else ""
        agent, random = (np.mean([max(run["rewards"]) for run in arm]) for arm in zip(*done, strict=True))
        lines += ["", f"Over {len(done)} seed(s) (of {len(curve_data['settings']['seeds'])} planned) the agent's best "
                  f"reward beats random search's in {wins}{tied}: mean best {agent:.3f} against {random:.3f}. The "
                  "warm-up episodes of both arms are the same draws (same seed), so the curves part at the end of the "
                  "warm-up."]
    return lines


def draw(curve_data: dict[str, Any], path: Path) -> Path:
    """Best reward so far per episode: every seed thin, the mean of the seeds thick, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for arm, colour in (("ddpg", "#1f77b4"), ("random", "#7f7f7f")):
        curves = [r["best_so_far"] for k, r in curve_data["runs"].items() if k.startswith(f"curve/{arm}/")]
        for c in curves:
            ax.plot(c, color=colour, alpha=0.35, lw=0.8)
        if curves:
            ax.plot(np.mean(curves, axis=0), color=colour, lw=2, label=f"{arm} (mean of {len(curves)} seeds)")
    ax.axvline(curve_data["settings"]["warmup"] - 0.5, color="black", ls="--", lw=0.7, label="end of DDPG warm-up")
    ax.set(xlabel="episode", ylabel="best reward so far")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
