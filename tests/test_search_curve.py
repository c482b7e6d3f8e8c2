"""The agent-against-random-search curve shared by the HAQ and AMC studies (issue 15): record, table, diversity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.studies import amc_curve, search_curve


@dataclass
class _Episode:
    reward: float
    top1: float
    cost_ratio: float


def _run(seed: int, rewards: list[float], policies: list[list[float]], asked: list[list[float]] | None = None) -> dict:
    history = [_Episode(r, 100 * r, 0.5) for r in rewards]
    return search_curve.record(seed, history, preserve=policies, proposed=asked or policies,
                               mean_preserve=[float(np.mean(p)) for p in policies])


def _data(runs: dict, seeds: list[int]) -> dict:
    return {"settings": {"seeds": seeds, "warmup": 2, "episodes": 3, "ratio": 0.5, "reward_batches": 2,
                         "calibration_batches": 4}, "runs": runs, "machine": {"cpu": "test"}}


def test_both_arms_play_the_same_number_of_episodes_and_only_random_search_never_learns():
    assert search_curve.arms(8, 24) == {"ddpg": (8, 24), "random": (32, 0)}


def test_record_keeps_the_best_reward_so_far_and_the_family_fields():
    run = _run(1, [0.3, 0.1, 0.5, 0.4], [[1.0]] * 4)
    assert run["best_so_far"] == [0.3, 0.3, 0.5, 0.5]
    assert run["top1"] == [30.0, 10.0, 50.0, 40.0] and run["mean_preserve"] == [1.0] * 4


def test_the_table_pairs_the_arms_per_seed_and_counts_the_agent_wins():
    """Seed 2 has no random-search run yet: it is left out of the table and the tally, not compared half-done."""
    runs = {"curve/ddpg/s1": _run(1, [0.2, 0.6], [[0.5]] * 2), "curve/random/s1": _run(1, [0.2, 0.4], [[0.5]] * 2),
            "curve/ddpg/s2": _run(2, [0.9], [[0.5]])}
    lines = search_curve.comparison(_data(runs, [1, 2]), {"extra": lambda r: f"{len(r['rewards'])}"})
    assert lines[0].endswith("| DDPG extra | random extra |") and lines[1].count("---") == 7
    assert lines[2] == "| 1 | 0.600 | 0.400 | 0.400 | 0.300 | 2 | 2 |"
    assert lines[-1].startswith("Over 1 seed(s) (of 2 planned) the agent's best reward beats random search's in 1: "
                                "mean best 0.600 against 0.400.")
    runs["curve/random/s2"] = _run(2, [0.9], [[0.5]])
    assert "beats random search's in 1 and ties it in 1: mean best 0.750 against 0.650." in search_curve.comparison(
        _data(runs, [1, 2]), {})[-1]


def test_action_diversity_tells_a_repeated_policy_from_exploration():
    repeated = [[1.0, 0.2, 0.2]] * 12
    varied = [[0.3 + 0.05 * i, 0.9 - 0.05 * i, 0.5] for i in range(12)]
    stuck = amc_curve.diversity(_run(1, [0.1] * 12, repeated, [[1.0, 0.2, 0.9]] * 12))  # the wall cut the last layer
    moving = amc_curve.diversity(_run(1, [0.1] * 12, varied))
    assert stuck["distinct"] == 1 and stuck["episodes_std"] < 1e-9 and stuck["asked_at_rbound"] == 1 / 3
    assert stuck["asked_at_lbound"] == 1 / 3 and stuck["cut_by_wall"] == 1 / 3 and stuck["layers_std"] > 0
    assert moving["distinct"] == 10 and moving["episodes_std"] > 0.05  # the last ten episodes only


def test_the_amc_report_and_figure_come_from_the_runs(tmp_path: Path):
    runs = {f"curve/{arm}/s1": _run(1, rewards, [[0.5, 1.0]] * 5)
            for arm, rewards in (("ddpg", [0.1, 0.2, 0.3, 0.5, 0.5]), ("random", [0.1, 0.2, 0.25, 0.2, 0.1]))}
    text = amc_curve.render(_data(runs, [1]))
    assert "| 1 | 0.500 | 0.250 | 0.320 | 0.170 | 3 | 2 | 0.750 | 0.750 |" in text
    assert "| 1 | DDPG | 0.250 | 0.000 | 0.000 | 1 | 50% | 0% | 0% |" in text
    assert search_curve.draw(_data(runs, [1]), tmp_path / "curve.png").stat().st_size > 0
