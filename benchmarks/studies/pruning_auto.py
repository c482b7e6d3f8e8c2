"""AMC / uniform width scaling / CompactNet on LeNet-5 + MNIST, sized for a shared 2-core CPU.

Writes the figures as JSON: results/pruning_amc.json (``--parts amc``, with the CompactNet
rows when ``exchange`` runs too), results/pruning_amc_vs_uniform.json (``--parts uniform``) and
results/pruning_platform_exchange.json (``--parts exchange``); ``python -m benchmarks.studies.report``
renders the markdown reports from them. Every piece is the project's own: the MNIST datamodule,
the LeNet-5 of the zoo, the emulated ``pixel1`` target (conf/hw/pixel1.yaml, calibrated on real
Pixel-1 profiles), the measured ``local_cpu`` target (one thread, thread-CPU clock so that other
processes on the machine inflate the figures less), the fine-tuning loop of ``benchmarks.context``,
and the methods in methods/pruning. Smaller than a ``python -m benchmarks`` run (a subset of MNIST,
short training) so that all of it runs in ~15 minutes on a loaded machine; the sizes, the CPU and
its load average go into the JSON and the reports.

    python -m benchmarks.studies.pruning_auto [--out results]                     # pruning_amc + exchange
    python -m benchmarks.studies.pruning_auto --parts uniform --flops-ratio 0.1 --episodes 80 --warmup 20 \
        --reward-batches 4                                                        # pruning_amc_vs_uniform
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.context import make_context
from benchmarks.data import MNISTDataModule
from benchmarks.models import build_model
from benchmarks.platform_exchange import exchange_markdown, exchange_rows, layer_widths
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import evaluate, fit
from hardware import registry
from hardware.cli import main as hardware_cli
from hardware.layers import count_macs
from hardware.lookup import TableTarget
from hardware.measured import LocalCPU
from hardware.protocol import machine_provenance
from hardware.speedup import speedup_between
from hardware.target import HardwareTarget
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]

INPUT = (1, 1, 28, 28)
SIZES: dict[str, Any] = {"train_subset": 10000, "val_size": 5000, "val_subset": 1000, "test_subset": 2000}
#: CompactNet's target for both models; LeNet-5's fixed per-layer costs cap this CPU near 1.5x
EXCHANGE_SPEEDUP = 1.4
#: what every AMC run of the study overrides in conf/method/amc.yaml (episode counts come from the command line)
AMC_OVERRIDES: dict[str, Any] = {"calibration_batches": 4, "finetune": {"epochs": 1.0, "lr": 0.01}}
#: CompactNet's settings in the exchange (conf/method/compactnet.yaml otherwise)
COMPACTNET_OVERRIDES: dict[str, Any] = {"resource": "latency", "target_speedup": EXCHANGE_SPEEDUP, "iterations": 4,
                                        "decay": 0.96, "eval_batches": 2, "finetune": {"epochs": 0.05, "lr": 0.01},
                                        "retrain": {"epochs": 1.0, "lr": 0.01}}
EXCHANGE_ROUNDS = 9  # interleaved rounds of the measured target (a VM's speed drifts within a minute)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where the JSON figures go")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--parts", nargs="+", choices=("amc", "exchange", "uniform"), default=["amc", "exchange"],
                        help="uniform: only AMC against uniform width at --flops-ratio (pruning_amc_vs_uniform.json)")
    parser.add_argument("--flops-ratio", type=float, default=0.15)
    parser.add_argument("--reward-batches", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    machine = machine_provenance()
    work = Path(tempfile.mkdtemp(prefix="pruning_bench_"))
    dm = MNISTDataModule(data_dir=work / "data", source_dir=ROOT.parent / "shared" / "data", batch_size=128,
                         eval_batch_size=256, seed=42, **SIZES)
    dm.prepare_data()
    dm.setup("fit")
    recipe = RecipeConfig(epochs=2, lr=0.05, nesterov=True)
    trainer = TrainerConfig(progress_bar=False)
    pixel1 = registry.instantiate("pixel1", {"reference_dir": str(ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite")})
    local = LocalCPU(threads=1, clock="thread_cpu", warmup=5, repeats=30, min_time_s=0.1, rounds=EXCHANGE_ROUNDS)
    # CompactNet's platform simulator for this CPU: a per-layer lookup table of LeNet-5's layers at
    # every width a search can reach, profiled here first so that it stays fixed during the search.
    table_file = work / "local_cpu_lenet5.json"
    if "exchange" in args.parts:
        hardware_cli(["profile", "--hw", "local_cpu", "--threads", "1", "--clock", "thread_cpu", "--model", "lenet5",
                      "--input-size", "28", "--in-chans", "1", "--narrower", "--out", str(table_file)])
    #: the targets CompactNet trims for, each model then measured on all of them and on local_cpu
    trim_targets: dict[str, HardwareTarget] = {} if "exchange" not in args.parts else {
        "pixel1": pixel1, "local_cpu_table": TableTarget(name="local_cpu_table", table=str(table_file),
                                                         on_missing="error", statistic="median")}

    start = time.perf_counter()
    torch.manual_seed(42)  # the initial weights: profiling above drew from the global generator
    base = build_model("lenet5", num_classes=10, in_chans=1)
    fit(base, dm, recipe, trainer, seed=42)
    base.eval()
    base_top1 = evaluate(base, dm, "test")["top1"]
    base_macs = count_macs(base, INPUT)
    base_px, base_cpu = pixel1.latency(base, INPUT), local.latency(base, INPUT)
    print(f"baseline top-1 {base_top1:.2f}, trained in {time.perf_counter() - start:.0f} s", flush=True)

    def ctx(target, name):
        return make_context(dm, target, recipe, trainer, seed=42, workdir=work / name)

    def summary(name, result, seconds, **setting):
        m = result.model.eval()
        px = pixel1.latency(m, INPUT)
        paired = local.latencies({"baseline": base, "compressed": m}, INPUT)  # the speedup timed in rounds
        cpu, speedup = paired["compressed"], speedup_between(paired["baseline"], paired["compressed"])
        return {"name": name, **setting, "top1": evaluate(m, dm, "test")["top1"],
                "macs_ratio": count_macs(m, INPUT) / base_macs,
                "pixel1_ms": px.latency_ms, "pixel1_ratio": px.latency_ms / base_px.latency_ms,
                "local_ms": cpu.latency_ms, "local_iqr": cpu.spread_ms, "local_speedup": speedup.value,
                "local_speedup_low": speedup.low, "local_speedup_high": speedup.high,
                "local_speedup_verdict": speedup.verdict, "seconds": seconds,
                "widths": layer_widths(m), **{f"m_{k}": v for k, v in result.metrics.items()}}

    rows: list[dict[str, Any]] = []
    amc_common = dict(episodes=args.episodes, warmup_episodes=args.warmup, reward_batches=args.reward_batches,
                      **AMC_OVERRIDES)
    fr = args.flops_ratio
    runs = [] if "amc" not in args.parts else [
        ("AMC, 0.5x pixel1 latency", {"search": "ddpg", "resource": "latency", "target_ratio": 0.5})]
    if "amc" in args.parts or "uniform" in args.parts:
        runs += [(f"AMC, {fr}x FLOPs", {"search": "ddpg", "resource": "flops", "target_ratio": fr}),
                 (f"uniform width, {fr}x FLOPs", {"search": "uniform", "resource": "flops", "target_ratio": fr})]
    for name, setting in runs:
        t = time.perf_counter()
        method = create_method("amc", **setting, **amc_common)
        result = method.compress(copy.deepcopy(base), ctx(pixel1, name.split(",")[0].replace(" ", "_") + str(len(rows))))
        rows.append(summary(name, result, time.perf_counter() - t, **setting))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "widths"}), flush=True)

    trimmed, trimmed_rows = {}, []
    for hw, target in trim_targets.items():
        method = create_method("compactnet", **COMPACTNET_OVERRIDES)
        t = time.perf_counter()
        result = method.compress(copy.deepcopy(base), ctx(target, f"compactnet_{hw}"))
        trimmed[hw] = result.model.eval()
        trimmed_rows.append(summary(f"CompactNet {EXCHANGE_SPEEDUP}x for {hw}", result, time.perf_counter() - t,
                                    search="compactnet", resource="latency", target_ratio=1 / EXCHANGE_SPEEDUP))
        print(json.dumps({k: v for k, v in trimmed_rows[-1].items() if k != "widths"}), flush=True)

    command = (f"python -m benchmarks.studies.pruning_auto --parts {' '.join(args.parts)} --flops-ratio {fr} "
               f"--episodes {args.episodes} --warmup {args.warmup} --reward-batches {args.reward_batches}")
    record = {"date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC", "command": command, "machine": machine,
              "load_average_end": list(os.getloadavg()), "sizes": SIZES,
              "baseline": {"epochs": recipe.epochs, "lr": recipe.lr, "scheduler": recipe.scheduler,
                           "top1": base_top1, "macs": base_macs,
                           "pixel1_ms": base_px.latency_ms, "pixel1_label": base_px.label,
                           "local_ms": base_cpu.latency_ms, "local_iqr": base_cpu.spread_ms,
                           "local_label": base_cpu.label}}
    written = []
    if "exchange" in args.parts:
        exchange = {**record, "speedup": EXCHANGE_SPEEDUP, "compactnet": COMPACTNET_OVERRIDES,
                    "rounds": EXCHANGE_ROUNDS,
                    "rows": exchange_rows(base, trimmed, {**trim_targets, "local_cpu": local}, INPUT),
                    "top1": {"baseline": base_top1, **{hw: evaluate(m, dm, "test")["top1"] for hw, m in trimmed.items()}},
                    "channels": {"baseline": layer_widths(base), **{hw: layer_widths(m) for hw, m in trimmed.items()}}}
        written.append(_write(args.out / "pruning_platform_exchange.json", exchange))
    if rows:  # the AMC figures (the exchange alone has its own file, its models measured in rounds)
        amc = {**record, "parts": args.parts, "episodes": args.episodes, "warmup": args.warmup,
               "reward_batches": args.reward_batches, "flops_ratio": fr, "amc": AMC_OVERRIDES,
               "rows": rows + trimmed_rows}
        written.append(_write(args.out / ("pruning_amc.json" if "amc" in args.parts else "pruning_amc_vs_uniform.json"),
                              amc))
    print(f"wrote {', '.join(map(str, written))}; render the reports: python -m benchmarks.studies.report")
    return 0


def _write(path: Path, figures: dict[str, Any]) -> Path:
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path


def _setup(run: dict[str, Any], report: str) -> str:
    """Where the figures come from: data sizes, targets, the command, the machine and its load."""
    sizes, base, machine = run["sizes"], run["baseline"], run["machine"]
    return (f"LeNet-5 on MNIST (train subset {sizes['train_subset']}, validation {sizes['val_subset']} of a "
            f"{sizes['val_size']} hold-out, test subset {sizes['test_subset']}), baseline trained {base['epochs']} "
            f"epochs (SGD lr {base['lr']}, {base['scheduler']}); pixel1 = emulated (`{base['pixel1_label']}`), local_cpu = measured PyTorch eager, 1 thread, "
            f"thread-CPU clock (`{base['local_label']}`). Run {run['date']} by `{run['command']}` on {machine['cpu']} "
            f"({machine['logical_cpus']} logical CPUs), 1-minute load average {machine['load_average_1m']:.1f} at "
            f"the start and {run['load_average_end'][0]:.1f} at the end (15-minute: {run['load_average_end'][2]:.1f}); "
            f"rendered by `python -m benchmarks.studies.report {report}`.")


def _share_range(shares: list[float]) -> str:
    """``3% to 8%`` (or ``2%`` when they round alike): a spread of relative figures."""
    low, high = f"{min(shares):.0%}", f"{max(shares):.0%}"
    return low if low == high else f"{low} to {high}"


def _test_error_points(run: dict[str, Any], *top1: float) -> float:
    """Two binomial standard errors of the difference of two top-1 figures on the test subset, in points."""
    n, p = run["sizes"]["test_subset"], sum(top1) / len(top1) / 100
    return 2 * math.sqrt(2 * p * (1 - p) / n) * 100


def _amc_reading(run: dict[str, Any]) -> list[str]:
    rows = run["rows"]
    lines = ["Reading (computed from the rows above):"]
    achieved = {"flops": ("macs_ratio", "MACs"), "latency": ("pixel1_ratio", "pixel1 latency")}
    for r in rows:
        if r["search"] != "compactnet":
            key, what = achieved[r["resource"]]
            lines.append(f"- {r['name']}: {r[key]:.3f}x of the baseline's {what} (budget {r['target_ratio']}x).")
    by_search = {(r["search"], r["resource"], r["target_ratio"]): r for r in rows}
    for (search, resource, ratio), amc in by_search.items():
        uniform = by_search.get(("uniform", resource, ratio))
        if search != "ddpg" or uniform is None:
            continue
        diff, bound = amc["top1"] - uniform["top1"], _test_error_points(run, amc["top1"], uniform["top1"])
        before = amc["m_top1_before_finetune"] - uniform["m_top1_before_finetune"]
        lines.append(f"- AMC against uniform width at {ratio}x {resource}: {diff:+.2f} point of test top-1 after "
                     f"fine-tuning ({before:+.2f} on validation before it); two standard errors of such a difference on "
                     f"{run['sizes']['test_subset']} test images are {bound:.2f} point, so the difference is "
                     + ("significant." if abs(diff) > bound else "not significant."))
    spread = _share_range([r["local_iqr"] / r["local_ms"] for r in rows])
    lines.append(f"- local_cpu: the IQR is {spread} of the median across the rows; a "
                 "speedup whose IQR is as large as its difference from 1x is noise of the shared machine.")
    return lines


def amc_report(run: dict[str, Any]) -> str:
    """results/pruning_amc.md or pruning_amc_vs_uniform.md from the study's JSON (which one: its ``parts``)."""
    base, rows = run["baseline"], run["rows"]
    report = "pruning_amc" if "amc" in run["parts"] else "pruning_amc_vs_uniform"
    title = "AMC on LeNet-5 / MNIST" if report == "pruning_amc" else "AMC against uniform width on LeNet-5 / MNIST"
    lines = [f"# {title}", "", _setup(run, report), "",
             f"Baseline: top-1 {base['top1']:.2f}%, {base['macs']} MACs, pixel1 {base['pixel1_ms']:.4f} ms, "
             f"local_cpu {base['local_ms']:.4f} ms (IQR {base['local_iqr']:.4f}).", "",
             f"AMC: {run['episodes']} DDPG episodes after {run['warmup']} warm-up episodes, scored on "
             f"{run['reward_batches']} validation batches, the best policy fine-tuned {run['amc']['finetune']['epochs']} "
             f"epoch (lr {run['amc']['finetune']['lr']}); conf/method/amc.yaml otherwise. Uniform width: the largest "
             "single preserve ratio within the budget, same selection and fine-tuning."
             + (" CompactNet rows: the models of results/pruning_platform_exchange.md, trimmed in the same run."
                if any(r["search"] == "compactnet" for r in rows) else "")
             + " \"top-1 before FT\" is on the validation subset (what the search scored), \"top-1 (test)\" on the "
             "test subset after fine-tuning. The paper's comparison of AMC with uniform width (He et al. 2018, "
             "Table 4) is on MobileNets and ImageNet; this is its LeNet-5 / MNIST-sized counterpart.", "",
             "| run | top-1 before FT | top-1 (test) | MACs ratio | pixel1 ms | pixel1 ratio | local_cpu ms (IQR) "
             "| local_cpu speedup | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        before = r.get("m_top1_before_finetune", r.get("m_top1_before_retrain", float("nan")))
        lines.append(f"| {r['name']} | {before:.2f} | {r['top1']:.2f} | {r['macs_ratio']:.3f} | {r['pixel1_ms']:.4f} | "
                     f"{r['pixel1_ratio']:.3f} | {r['local_ms']:.4f} ({r['local_iqr']:.4f}) | {r['local_speedup']:.2f}x | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "Widths (output channels of conv1, conv2, fc1):", ""]
    lines += [f"- {r['name']}: conv1 {r['widths']['conv1']}, conv2 {r['widths']['conv2']}, fc1 {r['widths']['fc1']}"
              for r in rows]
    return "\n".join([*lines, "", *_amc_reading(run)]) + "\n"


def _exchange_reading(run: dict[str, Any]) -> list[str]:
    rows = run["rows"]
    lines = ["Reading (computed from the rows above):"]
    for trimmed in run["top1"]:
        own = [r for r in rows if r["trimmed_for"] == trimmed]
        if not own:
            continue
        elsewhere = ", ".join(f"{r['speedup']:.2f}x on {r['evaluated_on']}" for r in own
                              if r["evaluated_on"] != trimmed)
        home = next(r["speedup"] for r in own if r["evaluated_on"] == trimmed)
        lines.append(f"- The model trimmed for {trimmed}: {home:.2f}x on {trimmed} (target {run['speedup']}x), "
                     f"{elsewhere}; top-1 {run['top1'][trimmed]:.2f}% (baseline {run['top1']['baseline']:.2f}%).")
    measured = [r for r in rows if r.get("verdict") not in (None, "predicted")]  # timed in rounds here
    if measured:
        spread = _share_range([r["spread_ms"] / r["latency_ms"] for r in measured])
        lines.append(f"- Measured rows: IQR over the rounds {spread} of the median.")
    return lines


def exchange_report(run: dict[str, Any]) -> str:
    """results/pruning_platform_exchange.md from the study's JSON."""
    cn = run["compactnet"]
    header = ("# CompactNet platform exchange (Li et al. 2019, Table 7)\n\n"
              + _setup(run, "pruning_platform_exchange")
              + f"\n\nBoth models were trimmed by CompactNet to a {run['speedup']}x speedup (N={cn['iterations']}, "
                f"d={cn['decay']}, fine-tune {cn['finetune']['epochs']} epoch per candidate, retrain "
                f"{cn['retrain']['epochs']} epoch), one guided by pixel1, one by local_cpu_table: CompactNet's "
                "simulator for this CPU, a per-layer lookup table of LeNet-5's layers at every width the search can "
                "reach (`python -m hardware profile --hw local_cpu --threads 1 --clock thread_cpu --model lenet5 "
                "--input-size 28 --in-chans 1 --narrower`, profiled on this machine just before the search, "
                "uncalibrated: the sum of its entries), so that it stays fixed during the search. Bold: the model on "
                "the target it was trimmed for. local_cpu rows are direct measurements of the same models: each "
                f"model measured {run['rounds']} times, the three models interleaved, median of the rounds' "
                "medians ± their IQR (the emulated rows: ± the target's stated out-of-sample error, 0 where it "
                "has none; the table rows are deterministic: 0).")
    return exchange_markdown(run["rows"], run["top1"], run["channels"], header) + "\n" + "\n".join(
        _exchange_reading(run)) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
