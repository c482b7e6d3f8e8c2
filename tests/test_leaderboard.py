"""The leaderboard compares comparable runs only, shows each group's baseline, and plots readably (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.leaderboard import (
    FIELDS,
    accuracy_limits,
    noisy_latency,
    parse_args,
    rank,
    select,
    with_baselines,
    write_leaderboard,
)


def row(**values: object) -> dict[str, object]:
    base = {"dataset": "mnist", "model": "lenet5", "method": "magnitude", "hw": "local_cpu", "run_name": "r",
            "test_top1": 97.0, "latency_ms": 0.5, "latency_source": "measured", "seed": "42", "run_kind": "user",
            "date": "2026-12-05 10:00", "run_id": "id", "baseline_key": "k1", "baseline_top1": 98.0,
            "baseline_val_top1": 97.5, "baseline_latency_ms": 0.8, "baseline_stored_bytes": 1000.0,
            "baseline_params": 10.0, "baseline_nonzero_params": 10.0, "baseline_macs": 20.0, "stored_bytes": 300.0}
    return {**base, **values}


def table(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows), columns=[c for c, _ in FIELDS])


RUNS = table(
    row(run_id="user1"),
    row(run_id="smoke1", run_kind="smoke"),
    row(run_id="quick1", run_kind="quick", dataset="cifar10_jpeg"),
    row(run_id="pixel1", run_kind="full", hw="pixel1", date="2026-12-01 08:00"),
    row(run_id="board", run_kind="leaderboard", test_top1=None),
    row(run_id="legacy", run_kind=None),
    row(run_id="candidate", run_kind="search_candidate", test_top1=None),
)


def ids(frame: pd.DataFrame) -> set[str]:
    return set(frame["run_id"])


def test_smoke_runs_search_candidates_and_leaderboard_runs_are_left_out_by_default() -> None:
    assert ids(select(RUNS)) == {"user1", "quick1", "pixel1", "legacy"}
    assert ids(select(RUNS, kinds=["smoke"])) == {"smoke1"}
    assert ids(select(RUNS, kinds=["unknown"])) == {"legacy"}  # recorded before run kinds existed
    assert ids(select(RUNS, kinds=["search_candidate"])) == {"candidate"}  # a search's candidates, on request


def test_filters_by_kind_dataset_device_and_date() -> None:
    assert ids(select(RUNS, kinds=["quick", "full"])) == {"quick1", "pixel1"}
    assert ids(select(RUNS, datasets=["cifar10_jpeg"])) == {"quick1"}
    assert ids(select(RUNS, devices=["pixel1"])) == {"pixel1"}
    assert ids(select(RUNS, since="2026-12-05")) == {"user1", "quick1", "legacy"}
    assert ids(select(RUNS, until="2026-12-01")) == {"pixel1"}


def test_cli_flags_parse_into_filters() -> None:
    args = parse_args(["--kind", "quick", "--kind", "full", "--device", "pixel1", "--since", "2026-12-01",
                       "--register", "paths.results_dir=/tmp/x"])
    assert args.kind == ["quick", "full"] and args.device == ["pixel1"] and args.since == "2026-12-01"
    assert args.register and args.status == ["FINISHED"] and args.overrides == ["paths.results_dir=/tmp/x"]
    with pytest.raises(SystemExit):
        parse_args(["--kind", "fast"])


def test_each_group_shows_the_baseline_its_runs_were_compared_with() -> None:
    runs = table(row(run_id="a", method="magnitude", date="2026-12-05 10:00"),
                 row(run_id="b", method="filter", date="2026-12-05 11:00", baseline_latency_ms=0.9),
                 row(run_id="c", hw="pixel1", method="amc"))
    shown = with_baselines(runs)
    baselines = shown[shown["row"] == "baseline"].set_index("hw")
    assert sorted(baselines.index) == ["local_cpu", "pixel1"]  # one per (dataset, device, baseline)
    local = baselines.loc["local_cpu"]
    assert (local["method"], local["test_top1"], local["val_top1"], local["latency_ms"], local["stored_bytes"]) == (
        "baseline", 98.0, 97.5, 0.9, 1000.0)  # the latest run's measurement beside it
    assert local["run_id"] == "b" and local["speedup"] == 1.0


def test_a_baseline_run_of_its_own_stands_in_for_the_baseline_row() -> None:
    runs = table(row(run_id="a"), row(run_id="base", method="baseline", test_top1=98.2))
    shown = with_baselines(runs)
    assert list(shown["row"]) == ["run", "run"] and ids(shown) == {"a", "base"}


def test_files_show_baseline_rows_and_the_selection(tmp_path: Path) -> None:
    written = write_leaderboard(rank(select(RUNS)), tmp_path, "status FINISHED, every kind but smoke")
    markdown = (tmp_path / "leaderboard.md").read_text()
    assert "Runs: status FINISHED, every kind but smoke." in markdown
    assert "| baseline | baseline | baseline of r |" in markdown
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    assert "row" in csv and "baseline_top1" not in csv and "status" not in csv
    assert {p.name for p in written} >= {"pareto_mnist_local_cpu.png", "pareto_mnist_pixel1.png",
                                         "pareto_cifar10_jpeg_local_cpu.png"}


def test_the_front_counts_the_baseline_row() -> None:
    ranked = rank(table(row(run_id="slow_worse", test_top1=90.0, latency_ms=0.9)))
    front = ranked[ranked["on_front"]]
    assert list(front["row"]) == ["baseline"]  # 98% at 0.8 ms beats 90% at 0.9 ms


def test_accuracy_axis_is_bounded_and_noisy_latencies_are_found() -> None:
    assert accuracy_limits(pd.Series([97.0, 99.5])) == (96.0, 100.0)
    assert accuracy_limits(pd.Series([0.5, 10.0])) == (0.0, 11.0)
    frame = pd.DataFrame({"latency_noisy": ["true", "false", None]})
    assert list(noisy_latency(frame)) == [True, False, False]
    assert not noisy_latency(pd.DataFrame({"x": [1]})).any()  # a store without the tag
