"""Paired speedups on a busy machine (issue 11, section 1): do the stated intervals hold?

    python -m benchmarks.studies.speedup_pairing [--identity-runs 20] [--pruned-runs 10] [--threads 1] [--out results]

On this machine, with a CPU-burning process of its own running beside it (started here, its
command and process id recorded), the study compares models as every run does
(``HardwareTarget.latencies`` on the default ``local_cpu`` target of conf/hw/local_cpu.yaml with
``--threads`` intra-op threads, then
``hardware.speedup.speedup_between``):

(a) the identity: LeNet-5 (the default composition's model) against the ``baseline`` method's
    stored and decoded copy of it, ``--identity-runs`` times: how many stated intervals contain 1;
(b) a real speedup: ResNet-20 (CIFAR) against its 50 %-filter-pruned self (the ``filter`` method,
    l1, no fine-tuning: weights do not change timing), ``--pruned-runs`` times: do the intervals overlap.

Each comparison is also made the old way, the two models timed one after the other
(``HardwareTarget.latency`` twice), to show what pairing removes. Writes
results/speedup_pairing.json; ``python -m benchmarks.studies.report speedup_pairing`` renders
results/speedup_pairing.md from it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule, MNISTDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from hardware import registry
from hardware.layers import count_macs
from hardware.measured import MeasuredTarget, available_cores
from hardware.protocol import machine_provenance, protocol_dict
from hardware.speedup import NO_DIFFERENCE, speedup_between
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"
#: the other job: one busy-looping Python process, what a second run on a 2-core machine costs it
BURNER = [sys.executable, "-c", "while True: pass"]
#: the identity's goal (issue 11): at least this share of runs read 1 within their interval
IDENTITY_GOAL = 0.95


@contextlib.contextmanager
def another_job() -> Iterator[dict[str, Any]]:
    """Run a CPU-burning process beside the block; yield what is recorded about it.

    SIGTERM ends the study through this block's exit, so the burner never outlives it."""
    process = subprocess.Popen(BURNER)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        time.sleep(1.0)  # let the scheduler see it
        yield {"command": " ".join(BURNER), "pid": process.pid, "load_average_start": list(os.getloadavg())}
    finally:
        process.terminate()
        process.wait()
        signal.signal(signal.SIGTERM, previous)


def compare(target: MeasuredTarget, baseline: nn.Module, compressed: nn.Module, shape: tuple[int, ...],
            unpaired: bool) -> dict[str, Any]:
    """One comparison as a run makes it (paired); with ``unpaired``, also the two models timed apart."""
    start = time.perf_counter()
    reports = target.latencies({"baseline": baseline, "compressed": compressed}, shape)
    speedup = speedup_between(reports["baseline"], reports["compressed"])
    seconds = time.perf_counter() - start
    apart = target.latency(baseline, shape).latency_ms / target.latency(compressed, shape).latency_ms if unpaired else None
    row = {"speedup": speedup.value, "low": speedup.low, "high": speedup.high, "verdict": speedup.verdict,
           "noisy": speedup.noisy, "cv_baseline": reports["baseline"].provenance["cv"],
           "cv_compressed": reports["compressed"].provenance["cv"],
           "robust_cv_baseline": reports["baseline"].provenance["robust_cv"],
           "robust_cv_compressed": reports["compressed"].provenance["robust_cv"], "unpaired": apart, "seconds": seconds,
           "load_average_1m": os.getloadavg()[0]}
    print(json.dumps(row), flush=True)
    return row


def cores(models: dict[str, tuple[nn.Module, tuple[int, ...]]]) -> list[dict[str, Any]]:
    """Each model timed on ``local_cpu`` with one thread and with every core this process may use (what
    ``hw.threads: null`` means), while the other job runs: what the target's default number of threads costs."""
    rows = []
    for name, (model, shape) in models.items():
        for threads in dict.fromkeys((1, available_cores())):
            report = registry.instantiate("local_cpu", {"per_layer": False, "threads": threads}).latency(model, shape)
            rows.append({"model": name, "threads": threads, "latency_ms": report.latency_ms,
                         "robust_cv": report.provenance["robust_cv"], "load_average_1m": os.getloadavg()[0]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _compressed(dm: Any, model: str, method: str, work: Path, **overrides: Any) -> tuple[nn.Module, nn.Module,
                                                                                       tuple[int, ...]]:
    """``model`` (seeded initial weights: timing does not depend on them), what ``method`` makes of it
    (decoded from the file it stores, as a run evaluates it), and the input shape of one image."""
    dm.prepare_data()
    dm.setup("fit")
    torch.manual_seed(42)
    original = build_model(model, num_classes=dm.num_classes, in_chans=dm.input_shape[0]).eval()
    ctx = make_context(dm, registry.instantiate("local_cpu"), RecipeConfig(), TrainerConfig(progress_bar=False), 42,
                       work / method)
    return original, create_method(method, **overrides).compress(original, ctx).model.eval(), (1, *dm.input_shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identity-runs", type=int, default=20)
    parser.add_argument("--pruned-runs", type=int, default=10)
    parser.add_argument("--unpaired-runs", type=int, default=5,
                        help="the first N comparisons of each part also time the two models apart (the old way)")
    parser.add_argument("--threads", type=int, default=1,
                        help="hw.threads of the local_cpu target (1: one core for the study, one for the other job)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where speedup_pairing.json goes")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="speedup_pairing_"))
    target = cast(MeasuredTarget, registry.instantiate("local_cpu", {"per_layer": False, "threads": args.threads}))
    # (a) LeNet-5, the default composition's model, and the baseline method's stored-and-decoded copy of it
    mnist = MNISTDataModule(data_dir=ROOT / "data", source_dir=SHARED_DATA, batch_size=128, eval_batch_size=256,
                            seed=42, val_size=5000, val_subset=256, test_subset=256)
    lenet, identity, lenet_shape = _compressed(mnist, "lenet5", "baseline", work)
    # (b) ResNet-20 and its 50 %-filter-pruned copy (l1 criterion, channels removed, not fine-tuned)
    cifar = CIFAR10JPEGDataModule(data_dir=ROOT / "data", source_dir=SHARED_DATA, name="cifar10_jpeg", batch_size=128,
                                  eval_batch_size=256, seed=42, val_size=5000, train_subset=512, val_subset=256,
                                  test_subset=256)
    resnet, pruned, resnet_shape = _compressed(cifar, "resnet20_cifar", "filter", work, pruning_ratio=0.5,
                                               finetune={"epochs": 0.0})
    started = time.perf_counter()
    with another_job() as job:
        identity_rows = [compare(target, lenet, identity, lenet_shape, i < args.unpaired_runs)
                         for i in range(args.identity_runs)]
        pruned_rows = [compare(target, resnet, pruned, resnet_shape, i < args.unpaired_runs)
                       for i in range(args.pruned_runs)]
        core_rows = cores({"lenet5": (lenet, lenet_shape), "resnet20_cifar": (resnet, resnet_shape)})
        job["load_average_end"] = list(os.getloadavg())
    figures = {
        "date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC",
        "command": f"python -m benchmarks.studies.speedup_pairing --identity-runs {args.identity_runs} "
                   f"--pruned-runs {args.pruned_runs} --unpaired-runs {args.unpaired_runs} --threads {args.threads}",
        "machine": machine_provenance(), "another_job": job, "seconds": time.perf_counter() - started,
        "target": "local_cpu (conf/hw/local_cpu.yaml, per_layer off)", "threads": target.threads,
        "protocol": protocol_dict(target.protocol), "identity_goal": IDENTITY_GOAL,
        "identity": {"model": "lenet5 (MNIST input 1x28x28) vs the baseline method's decoded copy", "runs": identity_rows},
        "pruned": {"model": "resnet20_cifar vs filter (l1, pruning_ratio 0.5, no fine-tuning)",
                   "macs": [count_macs(resnet, resnet_shape), count_macs(pruned, resnet_shape)],
                   "params": [sum(p.numel() for p in m.parameters()) for m in (resnet, pruned)], "runs": pruned_rows},
        "cores": core_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "speedup_pairing.json"
    path.write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {path}; render the report: python -m benchmarks.studies.report speedup_pairing")
    return 0


# -- the report ------------------------------------------------------------------------------------
def _spread(values: list[float | None]) -> str:
    measured = [v for v in values if v is not None]
    return f"{min(measured):.3f}-{max(measured):.3f} ({len(measured)} runs)" if measured else "not measured"


def _table(runs: list[dict[str, Any]]) -> list[str]:
    lines = ["| run | paired speedup | interval | verdict | noisy (robust CV baseline / compressed) | "
             "CV baseline / compressed | unpaired ratio | seconds | load (1 min) |", "|---:|---:|---|---|---|---|---:|---:|---:|"]
    for i, r in enumerate(runs, 1):
        lines.append(f"| {i} | {r['speedup']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] | {r['verdict']} | "
                     f"{'yes' if r['noisy'] else 'no'} ({r['robust_cv_baseline']:.1%} / {r['robust_cv_compressed']:.1%}) | "
                     f"{r['cv_baseline']:.0%} / {r['cv_compressed']:.0%} | "
                     f"{'' if r['unpaired'] is None else format(r['unpaired'], '.3f')} | {r['seconds']:.1f} | "
                     f"{r['load_average_1m']:.1f} |")
    return lines


def report(figures: dict[str, Any]) -> str:
    """results/speedup_pairing.md from the study's JSON."""
    protocol, job, machine = figures["protocol"], figures["another_job"], figures["machine"]
    identity, pruned = figures["identity"]["runs"], figures["pruned"]["runs"]
    inside = sum(r["low"] <= 1.0 <= r["high"] for r in identity)
    share = inside / len(identity)
    top_low, bottom_high = max(r["low"] for r in pruned), min(r["high"] for r in pruned)
    overlapping = sum(a["low"] <= b["high"] and b["low"] <= a["high"]
                      for i, a in enumerate(pruned) for b in pruned[i + 1:])
    pairs = len(pruned) * (len(pruned) - 1) // 2
    macs, params = figures["pruned"]["macs"], figures["pruned"]["params"]
    noisy = sum(r["noisy"] for r in identity + pruned)
    cvs = [r[k] for r in identity + pruned for k in ("robust_cv_baseline", "robust_cv_compressed")]
    return "\n".join([
        "# Paired speedups on a busy machine (issue 11, section 1)", "",
        f"Generated by `{figures['command']}` on {figures['date']} ({figures['seconds']:.0f} s of comparisons), "
        f"CPU {machine['cpu']} ({machine['logical_cpus']} logical CPUs). **Another job ran throughout**: the study "
        f"started `{job['command']}` (pid {job['pid']}) before the first comparison and stopped it after the last; "
        f"load average (1 min) {job['load_average_start'][0]:.1f} at the start, {job['load_average_end'][0]:.1f} at "
        "the end (other sessions shared the machine too).", "",
        f"Every comparison is made as a run makes it: target `{figures['target']}`, {figures['threads']} thread(s), "
        f"{protocol['rounds']} interleaved rounds (A B B A, B A A B, ...), {protocol['warmup']} warm-up calls, at least "
        f"{protocol['repeats']} timed calls and {protocol['min_time_s']} s per model; speedup = median of the "
        f"per-round ratios, interval = the central {protocol['coverage']:.0%} of the per-round ratios, at least "
        f"the median x (1 +- {protocol.get('resolution', 0.0):.0%}) (hw.resolution) "
        "(`hardware.speedup`). *Unpaired ratio*: the same two models timed one after the other, each with the "
        "same protocol, as runs did before (the first runs of each part only, to keep the study short). *Noisy*: the "
        "timing protocol's verdict (`hardware.protocol.TimingResult.noisy`): the robust coefficient of variation of "
        f"the per-call times (IQR / 1.349 median) exceeded {protocol['noise_threshold']:.0%} for either model, which a "
        "run reports as `latency_noisy=true`; the plain coefficient of variation (standard deviation / mean) is shown "
        "beside it.", "",
        "## (a) The identity against itself", "",
        f"{figures['identity']['model']}.", "",
        f"**{inside} of {len(identity)} runs ({share:.0%}) read 1 within their stated interval** (goal "
        f">= {figures['identity_goal']:.0%}: {'met' if share >= figures['identity_goal'] else '**not met**'}); "
        f"{sum(r['verdict'] == NO_DIFFERENCE for r in identity)} print \"{NO_DIFFERENCE}\". Paired speedups "
        f"{_spread([r['speedup'] for r in identity])}; unpaired ratios of the same models "
        f"{_spread([r['unpaired'] for r in identity])}.", "",
        *_table(identity), "",
        "## (b) A real speedup: ResNet-20, 50 % of the filters pruned", "",
        f"{figures['pruned']['model']}: {macs[0]:,} -> {macs[1]:,} MACs, {params[0]:,} -> {params[1]:,} parameters.", "",
        f"**The {len(pruned)} stated intervals {'overlap' if top_low <= bottom_high else 'do not all overlap'}**: "
        f"{overlapping} of {pairs} pairs overlap; the highest lower bound is {top_low:.3f}, the lowest upper bound "
        f"{bottom_high:.3f}"
        + (f", so every interval contains [{top_low:.3f}, {bottom_high:.3f}]." if top_low <= bottom_high else ".")
        + f" Paired speedups {_spread([r['speedup'] for r in pruned])}; unpaired ratios "
          f"{_spread([r['unpaired'] for r in pruned])}.", "",
        *_table(pruned), "",
        f"{noisy} of {len(identity) + len(pruned)} comparisons were flagged noisy (robust coefficient of variation "
        f"of the per-call times {min(cvs):.1%}-{max(cvs):.1%}); "
        "a run says so beside its speedup (console, `latency_noisy` tag, leaderboard column).", "",
        *_cores(figures.get("cores", []))])


def _cores(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    one = {r["model"]: r["latency_ms"] for r in rows if r["threads"] == 1}
    lines = ["## (c) One thread or every core, with the other job running", "",
             "Each model timed alone (not paired) on `local_cpu` with `hw.threads` 1 and with every core this process "
             "may use (`hw.threads: null`). With every core busy, a parallel region waits for its slowest thread, "
             "which the other job keeps off a core: the measured targets default to one thread.", "",
             "| model | threads | latency (ms) | x the one-thread latency | robust CV | load (1 min) |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['threads']} | {r['latency_ms']:.3f} | {r['latency_ms'] / one[r['model']]:.1f} | "
              f"{r['robust_cv']:.1%} | {r['load_average_1m']:.1f} |" for r in rows]
    return [*lines, ""]


if __name__ == "__main__":
    raise SystemExit(main())
