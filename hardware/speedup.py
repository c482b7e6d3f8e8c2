"""Paired, interleaved timing of several models, and the speedup it supports.

Two models timed one after the other on a shared machine compare two moments, not two
models: any change in load lands in their ratio (the identity baseline once read x95 and
x0.89). So every measured comparison here is *paired*: the models are timed in alternating
rounds in the same process, their order rotated every round (A B, B A, ... for two), so a
slow drift hits both alike; each round yields one ratio (baseline median / compressed median
of that round), and the speedup is the median of those per-round ratios.

Its spread is the central ``coverage`` share of the per-round ratios (``hw.coverage``, 0.5 by
default: their inter-quartile range). Not a bootstrap interval of the median: that one shrinks
with the rounds and states the precision of this process's median alone, while the same two
models timed in another process differ by more (memory placement, the other jobs' phase): the
identity baseline's bootstrap intervals of +-0.2% excluded 1 in 4 of 20 runs
(results/speedup_pairing.md). Nor do the rounds of one comparison see the load phases that
shift a whole comparison (the same ResNet-20 pair read x1.08 and x1.13 a few seconds apart):
so the interval is at least ``median x (1 +- hw.resolution)``, the smallest difference the
machine resolves across comparisons (0 on a quiet, dedicated one). A speedup whose interval
contains 1 is "no measurable difference", not a number. An emulated
target's figures are model predictions (deterministic): their ratio is a point, marked
"predicted".
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from hardware.protocol import TimingProtocol, TimingResult, check_interval, summarise, time_callable
from hardware.target import LatencyReport

#: the default central share of the per-round ratios a speedup's interval spans (hw.coverage): their IQR
COVERAGE = 0.5

NO_DIFFERENCE = "no measurable difference"
#: verdicts a speedup can carry (an MLflow tag, a leaderboard column)
VERDICTS = ("faster", "slower", NO_DIFFERENCE, "predicted")


@dataclass(frozen=True)
class Speedup:
    """baseline latency / compressed latency, with its interval and how it was obtained."""

    value: float
    low: float
    high: float
    verdict: str
    coverage: float | None = None  # the central share of the per-round ratios in [low, high]; None for a prediction
    resolution: float = 0.0  # [low, high] spans at least value x (1 +- resolution)
    rounds: int = 0  # paired rounds behind a measured speedup
    noisy: bool = False  # a timing behind it crossed the protocol's noise threshold

    def metrics(self, name: str = "speedup") -> dict[str, float]:
        return {name: self.value, f"{name}_low": self.low, f"{name}_high": self.high}

    def describe(self) -> str:
        """One line for the console: never a bare number for a difference that was not measured."""
        if self.verdict == "predicted":
            text = f"x{self.value:.2f} (predicted)"
        else:
            floor = f", at least +-{self.resolution:.0%}" if self.resolution else ""
            interval = f"central {self.coverage:.0%} {self.low:.2f}-{self.high:.2f} of {self.rounds} paired rounds{floor}"
            text = (f"{NO_DIFFERENCE} (x{self.value:.2f}, {interval})" if self.verdict == NO_DIFFERENCE
                    else f"x{self.value:.2f} ({interval})")
        return text + (" [machine too noisy: treat with care]" if self.noisy else "")


def paired_speedup(baseline_ms: Sequence[float], compressed_ms: Sequence[float], coverage: float = COVERAGE,
                   resolution: float = 0.0, noisy: bool = False) -> Speedup:
    """The median of the per-round ratios baseline/compressed and the central ``coverage`` share of them,
    widened to at least ``median x (1 +- resolution)``.

    ``baseline_ms[i]`` and ``compressed_ms[i]`` were timed in the same round.
    """
    if len(baseline_ms) != len(compressed_ms):
        raise ValueError(f"paired rounds differ in length: {len(baseline_ms)} baseline, {len(compressed_ms)} compressed")
    if len(baseline_ms) < 3:
        raise ValueError(f"a paired speedup needs at least 3 rounds, got {len(baseline_ms)} (raise hw.rounds)")
    check_interval(coverage, resolution)
    ratios = np.asarray(baseline_ms, dtype=float) / np.asarray(compressed_ms, dtype=float)
    value = float(np.median(ratios))
    low, high = (float(q) for q in np.quantile(ratios, [(1 - coverage) / 2, (1 + coverage) / 2]))
    low, high = min(low, value * (1 - resolution)), max(high, value * (1 + resolution))
    verdict = NO_DIFFERENCE if low <= 1.0 <= high else ("faster" if low > 1.0 else "slower")
    return Speedup(value, low, high, verdict, coverage, resolution, len(ratios), noisy)


def speedup_between(baseline: LatencyReport, compressed: LatencyReport) -> Speedup:
    """The speedup of two reports of one target: paired when measured (the interval spans the coverage of
    the protocol they were timed under, ``hw.coverage``), a point when predicted."""
    noisy = baseline.noisy or compressed.noisy
    if baseline.rounds_ms or compressed.rounds_ms:
        protocol = baseline.provenance.get("protocol", {})
        return paired_speedup(baseline.rounds_ms, compressed.rounds_ms, protocol.get("coverage", COVERAGE),
                              protocol.get("resolution", 0.0), noisy=noisy)
    if baseline.source == "measured":
        raise ValueError(f"hw {baseline.hw!r}: measured latencies without paired rounds; time the models together "
                         "with target.latencies(...)")
    value = baseline.latency_ms / compressed.latency_ms
    return Speedup(value, value, value, "predicted", noisy=noisy)


def interleaved(calls: Mapping[str, Callable[[], Any]], protocol: TimingProtocol,
                time_one_ms: Callable[[Callable[[], Any]], float] | None = None) -> dict[str, tuple[TimingResult, list[float]]]:
    """Time ``calls`` in ``protocol.rounds`` interleaved rounds; per call: its timing over all rounds, round medians.

    Every call is warmed up first (in turn). Round ``r`` visits the calls in the order rotated
    by ``r``, then in the reverse order (A B B A, then B A A B, ...), so within every round each
    call sits as often early as late and a linear drift cancels; each visit takes the protocol's
    share (``TimingProtocol.per_visit``), and a call's round median pools its two visits.
    """
    names = list(calls)
    for name in names:
        time_callable(calls[name], replace(protocol, repeats=3, min_time_s=0.0), time_one_ms)  # warm-up pass
    visit = protocol.per_visit()
    samples: dict[str, list[float]] = {name: [] for name in names}
    medians: dict[str, list[float]] = {name: [] for name in names}
    for r in range(protocol.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        this_round: dict[str, list[float]] = {name: [] for name in names}
        for name in order + order[::-1]:
            this_round[name] += time_callable(calls[name], visit, time_one_ms).samples_ms
        for name, timed in this_round.items():
            samples[name] += timed
            medians[name].append(statistics.median(timed))
    return {name: (summarise(samples[name], protocol.warmup, protocol.noise_threshold), medians[name])
            for name in names}
