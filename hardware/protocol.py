"""The timing protocol shared by every measured target and by the lookup-table profiler.

A latency figure measured on a shared machine is a distribution, not a number. The
protocol follows common benchmarking practice (and the measurement sections of the
ProxylessNAS and CompactNet papers, which time each candidate layer many times on the
device): run ``warmup`` untimed calls (caches, oneDNN primitive creation, lazy
allocation), then time calls one by one until both ``repeats`` samples and ``min_time_s``
seconds of timed work are reached (or ``max_time_s`` runs out), and summarise by the
median (robust to the preemptions of a shared machine), the inter-quartile range and
the coefficient of variation (standard deviation / mean). The noise verdict matches the
estimator: when the robust coefficient of variation (inter-quartile range / (1.349 x median),
which equals the coefficient of variation for normally spread samples) exceeds
``noise_threshold`` (5 %, the goal of ISSUE 3), the summary carries a note saying the machine
was too noisy for a trustworthy figure. The plain coefficient of variation is kept in the
record, but it does not decide: a few preempted calls inflate it (a 0.4 ms call delayed by
a 10 ms time slice) while the median, the figure reported, ignores them. Models compared with each
other are timed in ``rounds`` interleaved rounds instead (``hardware.speedup``), each visit taking
its share of the protocol (:meth:`TimingProtocol.per_visit`).

The clock is a parameter: CPU targets time wall-clock with ``time.perf_counter_ns`` by
default, or, for single-threaded runs on a shared machine, the CPU time of the calling
thread (``time.thread_time_ns``), which other processes' preemptions do not inflate;
the CUDA target passes a function that times one call with CUDA events.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

#: clocks a protocol can time with
CLOCKS = ("wall", "thread_cpu")
#: robust coefficient of variation above which a measurement is flagged as noisy (ISSUE 3 goal)
NOISE_THRESHOLD = 0.05
#: inter-quartile range of a normal distribution in standard deviations
IQR_PER_SIGMA = 1.349


def check_interval(coverage: float, resolution: float) -> None:
    """The two settings of a paired speedup's interval (hardware.speedup), refused with the key that is wrong."""
    if not 0 < coverage < 1:
        raise ValueError(f"hw.coverage must lie strictly between 0 and 1 (0.5: the inter-quartile range of the "
                         f"per-round ratios), got {coverage}")
    if not 0 <= resolution < 1:
        raise ValueError(f"hw.resolution must lie in [0, 1) (0.05: differences under 5% are not resolved), got {resolution}")


@dataclass(frozen=True)
class TimingProtocol:
    """How many times, and for how long, a callable is timed."""

    warmup: int = 10
    repeats: int = 50
    min_time_s: float = 0.5
    max_time_s: float = 30.0
    noise_threshold: float = NOISE_THRESHOLD
    #: "wall" (perf_counter) or "thread_cpu" (CPU time of the calling thread: immune to
    #: preemption by other processes on a shared machine; valid only for single-threaded runs)
    clock: str = "wall"
    #: models compared together are timed in this many interleaved rounds (hardware.speedup),
    #: each round taking its share of ``repeats`` and of the time limits
    rounds: int = 20
    #: the central share of the per-round ratios a paired speedup's interval spans (hardware.speedup)
    coverage: float = 0.5
    #: the smallest relative difference of speedups the machine resolves across comparisons (hardware.speedup):
    #: 5% on a shared VM (results/speedup_pairing.md); 0 on a quiet, dedicated machine
    resolution: float = 0.05

    def __post_init__(self) -> None:
        if self.clock not in CLOCKS:
            raise ValueError(f"hw.clock must be one of {CLOCKS}, got {self.clock!r}")
        if self.warmup < 0:
            raise ValueError(f"hw.warmup must be >= 0, got {self.warmup}")
        if self.repeats < 3:
            raise ValueError(f"hw.repeats must be >= 3 (quartiles need samples), got {self.repeats}")
        if self.min_time_s < 0 or self.max_time_s <= 0:
            raise ValueError(
                f"hw.min_time_s must be >= 0 and hw.max_time_s > 0, got {self.min_time_s}, {self.max_time_s}"
            )
        if self.rounds < 3:
            raise ValueError(f"hw.rounds must be >= 3 (a paired speedup's interval needs rounds), got {self.rounds}")
        if self.noise_threshold < 0:
            raise ValueError(f"hw.noise_threshold must be >= 0 (a coefficient of variation, 0.05 = 5%), got {self.noise_threshold}")
        check_interval(self.coverage, self.resolution)

    def per_visit(self) -> TimingProtocol:
        """One of the ``2 * rounds`` visits of a model in interleaved rounds (each round visits every model
        twice): its share of the repeats (at least 3) and of the time limits, no warm-up."""
        visits = 2 * self.rounds
        return replace(self, warmup=0, repeats=max(3, -(-self.repeats // visits)),
                       min_time_s=self.min_time_s / visits, max_time_s=self.max_time_s / visits)


@dataclass
class TimingResult:
    """Summary of the timed samples of one callable, in milliseconds."""

    samples_ms: list[float] = field(repr=False)
    warmup: int
    median_ms: float
    q1_ms: float
    q3_ms: float
    mean_ms: float
    min_ms: float
    cv: float
    noise_threshold: float = NOISE_THRESHOLD

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @property
    def repeats(self) -> int:
        return len(self.samples_ms)

    @property
    def robust_cv(self) -> float:
        """The spread of the bulk of the samples around the median, on the scale of a CV."""
        return self.iqr_ms / (IQR_PER_SIGMA * self.median_ms) if self.median_ms > 0 else 0.0

    @property
    def noisy(self) -> bool:
        return self.robust_cv > self.noise_threshold

    def notes(self) -> list[str]:
        if not self.noisy:
            return []
        return [
            f"machine too noisy: robust coefficient of variation {self.robust_cv:.1%} > {self.noise_threshold:.0%} "
            f"over {self.repeats} repeats (CV {self.cv:.1%}); treat the median {self.median_ms:.3f} ms with care"
        ]

    def provenance(self) -> dict[str, Any]:
        return {
            "repeats": self.repeats,
            "warmup": self.warmup,
            "median_ms": self.median_ms,
            "iqr_ms": self.iqr_ms,
            "mean_ms": self.mean_ms,
            "min_ms": self.min_ms,
            "cv": self.cv,
            "robust_cv": self.robust_cv,
        }


def summarise(samples_ms: list[float], warmup: int = 0, noise_threshold: float = NOISE_THRESHOLD) -> TimingResult:
    """Median, quartiles, mean and coefficient of variation of timed samples."""
    if len(samples_ms) < 2:
        raise ValueError(f"need at least 2 timed samples to summarise, got {len(samples_ms)}")
    ordered = sorted(samples_ms)
    q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    mean = statistics.fmean(ordered)
    cv = statistics.stdev(ordered) / mean if mean > 0 else 0.0
    return TimingResult(
        samples_ms=list(samples_ms),
        warmup=warmup,
        median_ms=median,
        q1_ms=q1,
        q3_ms=q3,
        mean_ms=mean,
        min_ms=ordered[0],
        cv=cv,
        noise_threshold=noise_threshold,
    )


def _perf_counter_ms(fn: Callable[[], Any]) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e6


def _thread_time_ms(fn: Callable[[], Any]) -> float:
    start = time.thread_time_ns()
    fn()
    return (time.thread_time_ns() - start) / 1e6


def time_callable(
    fn: Callable[[], Any],
    protocol: TimingProtocol,
    time_one_ms: Callable[[Callable[[], Any]], float] | None = None,
) -> TimingResult:
    """Warm ``fn`` up, then time it until the protocol's repeats and minimum time are met.

    ``time_one_ms`` times one call (CUDA events for the GPU); by default the protocol's clock.
    """
    if time_one_ms is None:
        time_one_ms = _thread_time_ms if protocol.clock == "thread_cpu" else _perf_counter_ms
    for _ in range(protocol.warmup):
        fn()
    samples: list[float] = []
    started = time.perf_counter()
    timed_s = 0.0
    while True:
        sample = time_one_ms(fn)
        samples.append(sample)
        timed_s += sample / 1e3
        elapsed = time.perf_counter() - started
        enough = len(samples) >= protocol.repeats and timed_s >= protocol.min_time_s
        if enough or (elapsed >= protocol.max_time_s and len(samples) >= 3):
            break
    return summarise(samples, protocol.warmup, protocol.noise_threshold)


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_mismatch(recorded: str | None, what: str) -> str | None:
    """A warning when this machine's CPU is not ``recorded``, the CPU ``what`` was measured on.

    Figures measured on one CPU (a latency table, a calibration) do not transfer to another
    model of CPU; None when they match or nothing was recorded.
    """
    current = cpu_model()
    if not recorded or recorded == current:
        return None
    return f"{what} was measured on {recorded!r}, this machine is {current!r}: its figures may not hold here"


def machine_provenance() -> dict[str, Any]:
    """What a reader needs to know about the machine a figure was measured on."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def protocol_dict(protocol: TimingProtocol) -> dict[str, Any]:
    return asdict(protocol)
