"""Paired, interleaved speedups (hardware.speedup): the statistics, the pairing, and what a run records."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from itertools import count

import mlflow
import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch import nn

from benchmarks.pipeline import run
from hardware.measured import LocalCPU
from hardware.protocol import TimingProtocol, time_callable
from hardware.speedup import NO_DIFFERENCE, VERDICTS, interleaved, paired_speedup, speedup_between
from tests.conftest import FAST_LATENCY, needs_shared_data

# -- the statistics, on deterministic synthetic rounds ------------------------------------------
#: per-round relative noise, the same for every test (a shared machine's jitter, +-8%)
JITTER = [1.00, 1.06, 0.95, 1.03, 0.97, 1.08, 0.93, 1.01, 0.99, 1.04, 0.96, 1.02, 0.98, 1.05, 0.94, 1.00,
          1.07, 0.92, 1.03, 0.97]


def test_interval_containing_one_reads_no_measurable_difference() -> None:
    baseline = [2.0 * j for j in JITTER]
    compressed = [2.0 * j for j in reversed(JITTER)]  # the same model: round ratios scatter around 1
    speedup = paired_speedup(baseline, compressed)
    assert speedup.low <= 1.0 <= speedup.high and speedup.verdict == NO_DIFFERENCE
    assert speedup.describe().startswith(NO_DIFFERENCE) and speedup.rounds == len(JITTER)
    assert (speedup.low, speedup.high) == tuple(np.quantile(np.array(baseline) / np.array(compressed), [0.25, 0.75]))


def test_a_clear_difference_reads_faster_or_slower_with_its_interval() -> None:
    baseline = [2.0 * j for j in JITTER]
    compressed = [1.0 * j for j in reversed(JITTER)]
    faster = paired_speedup(baseline, compressed)
    assert faster.verdict == "faster" and 1.0 < faster.low <= faster.value <= faster.high
    assert faster.describe().startswith(f"x{faster.value:.2f} (central 50%")
    assert paired_speedup(compressed, baseline).verdict == "slower"


def test_the_coverage_is_a_setting_and_a_wider_one_gives_a_wider_interval() -> None:
    baseline = [2.0 * j for j in JITTER]
    compressed = [1.9 * j for j in reversed(JITTER)]
    narrow, wide = paired_speedup(baseline, compressed, 0.5), paired_speedup(baseline, compressed, 0.9)
    assert wide.low < narrow.low and narrow.high < wide.high and wide.coverage == 0.9
    with pytest.raises(ValueError, match="hw.coverage"):
        TimingProtocol(coverage=1.0)
    with pytest.raises(ValueError, match="hw.coverage"):
        paired_speedup(baseline, compressed, 0.0)


def test_the_resolution_floor_widens_the_interval_to_what_the_machine_resolves() -> None:
    baseline = [2.0 * j for j in JITTER]
    compressed = [1.96 * j for j in JITTER]  # 2% faster in every round: a tight interval that excludes 1
    tight, floored = paired_speedup(baseline, compressed), paired_speedup(baseline, compressed, resolution=0.05)
    assert tight.verdict == "faster" and tight.low == pytest.approx(tight.high) == pytest.approx(2.0 / 1.96)
    assert floored.verdict == NO_DIFFERENCE and floored.value == tight.value
    assert (floored.low, floored.high) == pytest.approx((tight.value * 0.95, tight.value * 1.05))
    assert "at least +-5%" in floored.describe()
    assert paired_speedup(baseline, [1.0 * j for j in JITTER], resolution=0.05).verdict == "faster"  # x2 is resolved
    with pytest.raises(ValueError, match="hw.resolution"):
        TimingProtocol(resolution=1.0)
    with pytest.raises(ValueError, match="at least 3 rounds"):
        paired_speedup([1.0, 1.0], [1.0, 1.0])


def test_a_noisy_speedup_is_never_printed_bare() -> None:
    noisy = paired_speedup([2.0 * j for j in JITTER], [1.0 * j for j in JITTER], noisy=True)
    assert "too noisy" in noisy.describe()


def test_pairing_cancels_a_common_drift_on_a_synthetic_clock() -> None:
    """A clock whose every call costs 1 ms x a load that triples halfway: two identical calls timed apart
    read 3x apart; timed in interleaved rounds, every round ratio is 1 but the round the load changed in."""
    ticks = count()

    def loaded_clock(fn: Callable[[], object]) -> float:
        return 1.0 if next(ticks) < 60 else 3.0  # tick 60: after the first measurement apart, mid-way through the rounds together

    protocol = TimingProtocol(warmup=0, repeats=60, min_time_s=0.0, rounds=10)
    apart = time_callable(lambda: None, protocol, loaded_clock).median_ms, \
        time_callable(lambda: None, protocol, loaded_clock).median_ms
    ticks = count()
    together = interleaved({"baseline": lambda: None, "compressed": lambda: None}, protocol, loaded_clock)
    paired = paired_speedup(together["baseline"][1], together["compressed"][1])
    assert apart == (1.0, 3.0)  # the unpaired ratio reads the load, not the models
    assert paired.value == 1.0 and paired.verdict == NO_DIFFERENCE
    assert together["baseline"][0].median_ms != together["baseline"][0].min_ms  # the load did change mid-way


# -- the pairing, timed for real under an artificial load change ------------------------------------
class Load:
    """A shared load knob: forward passes do ``factor`` times the work once ``switch_at`` passes have run."""

    def __init__(self, switch_at: int, factor: int) -> None:
        self.calls, self.switch_at, self.factor = 0, switch_at, factor

    def work(self) -> int:
        self.calls += 1
        return self.factor if self.calls > self.switch_at else 1


class Loaded(nn.Module):
    def __init__(self, load: Load) -> None:
        super().__init__()
        self.load = load
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.load.work()):
            x = self.conv(x)
        return x


def test_pairing_cancels_a_load_change_when_timed() -> None:
    """Two identical models, a 4x load change halfway: apart they read ~4x, paired ~1x (ratios, not speeds)."""
    target = LocalCPU(threads=1, warmup=2, repeats=40, min_time_s=0.0, rounds=10, per_layer=False)
    shape = (1, 8, 16, 16)
    torch.manual_seed(0)
    load = Load(switch_at=10**9, factor=4)
    a, b = Loaded(load), Loaded(load)
    b.load_state_dict(a.state_dict())
    first = target.latency(a, shape).latency_ms
    load.switch_at = load.calls  # the machine gets busy between the two measurements
    unpaired = target.latency(b, shape).latency_ms / first
    # paired: the same change, halfway through the rounds (warm-up 2 + 3 calls each, then 10 rounds x 2 visits x 3)
    load = Load(switch_at=2 * (2 + 3) + 60, factor=4)
    a.load = b.load = load
    reports = target.latencies({"baseline": a, "compressed": b}, shape)
    paired = paired_speedup(reports["baseline"].rounds_ms, reports["compressed"].rounds_ms)
    assert load.calls > load.switch_at  # the load did change during the paired measurement
    assert unpaired > 2.0
    assert 0.8 < paired.value < 1.25


def test_a_measured_speedup_must_be_paired() -> None:
    """Two models timed apart carry no rounds: their ratio is refused, not reported as a speedup."""
    target = LocalCPU(threads=1, warmup=1, repeats=3, min_time_s=0.0, per_layer=False)
    model, shape = nn.Conv2d(3, 4, 3), (1, 3, 8, 8)
    apart = target.latency(model, shape), target.latency(model, shape)
    assert apart[0].rounds_ms == []
    with pytest.raises(ValueError, match="without paired rounds"):
        speedup_between(*apart)
    together = target.latencies({"baseline": model, "compressed": model}, shape)
    assert speedup_between(together["baseline"], together["compressed"]).rounds == target.protocol.rounds


# -- what a run records ----------------------------------------------------------------------------
TINY = ["+experiment=tiny", *FAST_LATENCY, "evaluation.per_layer_table=false"]


def _only_run(cfg: DictConfig):
    mlflow.set_tracking_uri(cfg.logger.tracking_uri)
    (recorded,) = mlflow.search_runs(experiment_names=[cfg.logger.experiment_name], output_format="list")
    return recorded


@needs_shared_data
@pytest.mark.slow
def test_a_run_records_the_paired_speedup_its_verdict_and_noise(compose_cfg, caplog) -> None:
    cfg = compose_cfg(*TINY, "hw.rounds=5", "hw.noise_threshold=0.0")  # every timing is "too noisy" at 0
    with caplog.at_level(logging.INFO):
        run(cfg)
    recorded = _only_run(cfg)
    tags, metrics = recorded.data.tags, recorded.data.metrics
    assert tags["speedup_verdict"] in VERDICTS and tags["speedup_verdict"] != "predicted"
    assert metrics["speedup_low"] <= metrics["speedup"] <= metrics["speedup_high"]
    assert tags["latency_noisy"] == "true"
    assert "machine too noisy" in caplog.text and "latency_noisy=true" in caplog.text
    latency = json.loads(mlflow.artifacts.load_text(f"{recorded.info.artifact_uri}/latency.json"))
    assert latency["speedups"]["speedup"]["rounds"] == 5
    assert len(latency["compressed"]["rounds_ms"]) == len(latency["baseline"]["rounds_ms"]) == 5


@needs_shared_data
@pytest.mark.slow
def test_an_emulated_run_pairs_its_local_cpu_speedup(compose_cfg, caplog) -> None:
    cfg = compose_cfg(*[o for o in TINY if not o.startswith(("+hw=", "hw."))], "+hw=pixel1")
    with caplog.at_level(logging.INFO):
        run(cfg)
    recorded = _only_run(cfg)
    tags, metrics = recorded.data.tags, recorded.data.metrics
    assert tags["speedup_verdict"] == "predicted" and tags["latency_noisy"] == "false"
    assert metrics["speedup_low"] == metrics["speedup"] == metrics["speedup_high"]
    assert tags["local_cpu_speedup_verdict"] in set(VERDICTS) - {"predicted"}
    assert tags["local_cpu_latency_noisy"] in ("true", "false")
    assert metrics["local_cpu_speedup_low"] <= metrics["local_cpu_speedup"] <= metrics["local_cpu_speedup_high"]
    assert "measured on this CPU" in caplog.text and "(predicted)" in caplog.text
