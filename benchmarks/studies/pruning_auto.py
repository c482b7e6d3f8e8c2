"""AMC / uniform width scaling / CompactNet on LeNet-5 + MNIST, sized for a shared 2-core CPU.

Writes results/pruning_amc.md and results/pruning_platform_exchange.md. Every piece is
the project's own: the MNIST datamodule, the LeNet-5 of the zoo, the emulated ``pixel1``
target (conf/hw/pixel1.yaml, calibrated on real Pixel-1 profiles), the measured
``local_cpu`` target (one thread, thread-CPU clock so that other processes on the
machine do not inflate the figures), the fine-tuning loop of ``benchmarks.context``, and
the methods in methods/pruning. Smaller than a ``python -m benchmarks`` run (a
subset of MNIST, short training) so that all of it runs in ~15 minutes on a loaded
machine; the sizes are printed into the reports.

    python -m benchmarks.studies.pruning_auto [--out results]
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
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
from hardware.target import HardwareTarget
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]

INPUT = (1, 1, 28, 28)
SIZES: dict[str, Any] = {"train_subset": 10000, "val_subset": 1000, "test_subset": 2000}
#: CompactNet's target for both models; LeNet-5's fixed per-layer costs cap this CPU near 1.5x
EXCHANGE_SPEEDUP = 1.4
#: what every AMC run of the study overrides in conf/method/amc.yaml (episode counts come from the command line)
AMC_OVERRIDES: dict[str, Any] = {"calibration_batches": 4, "finetune_epochs": 1.0, "finetune_lr": 0.01}
#: CompactNet's settings in the exchange (conf/method/compactnet.yaml otherwise)
COMPACTNET_OVERRIDES: dict[str, Any] = {"resource": "latency", "target_speedup": EXCHANGE_SPEEDUP, "iterations": 4,
                                        "decay": 0.96, "eval_batches": 2, "finetune": {"epochs": 0.05, "lr": 0.01},
                                        "retrain": {"epochs": 1.0, "lr": 0.01}}
EXCHANGE_ROUNDS = 9  # interleaved measurements per model and target (a VM's speed drifts within a minute)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--parts", nargs="+", choices=("amc", "exchange", "uniform"), default=["amc", "exchange"],
                        help="uniform: only AMC against uniform width at --flops-ratio (pruning_amc_vs_uniform.md)")
    parser.add_argument("--flops-ratio", type=float, default=0.15)
    parser.add_argument("--reward-batches", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="pruning_bench_"))
    dm = MNISTDataModule(data_dir=work / "data", source_dir=ROOT.parent / "shared" / "data", batch_size=128,
                         eval_batch_size=256, val_size=5000, seed=42, **SIZES)
    dm.prepare_data()
    dm.setup("fit")
    recipe = RecipeConfig(epochs=2, lr=0.05, nesterov=True)
    trainer = TrainerConfig(progress_bar=False)
    pixel1 = registry.instantiate("pixel1", {"reference_dir": str(ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite")})
    local = LocalCPU(threads=1, clock="thread_cpu", warmup=5, repeats=30, min_time_s=0.1)
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
    base_file = work / "baseline.pt"
    torch.save(base.state_dict(), base_file)
    base_top1 = evaluate(base, dm, "test")["top1"]
    base_macs = count_macs(base, INPUT)
    base_px, base_cpu = pixel1.latency(base, INPUT), local.latency(base, INPUT)
    print(f"baseline top-1 {base_top1:.2f}, trained in {time.perf_counter() - start:.0f} s", flush=True)

    def ctx(target, name):
        return make_context(dm, target, recipe, trainer, seed=42, workdir=work / name)

    def summary(name, result, seconds):
        m = result.model.eval()
        px, cpu = pixel1.latency(m, INPUT), local.latency(m, INPUT)
        return {"name": name, "top1": evaluate(m, dm, "test")["top1"], "macs_ratio": count_macs(m, INPUT) / base_macs,
                "pixel1_ms": px.latency_ms, "pixel1_ratio": px.latency_ms / base_px.latency_ms,
                "local_ms": cpu.latency_ms, "local_iqr": cpu.spread_ms,
                "local_speedup": base_cpu.latency_ms / cpu.latency_ms, "seconds": seconds,
                "widths": layer_widths(m), **{f"m_{k}": v for k, v in result.metrics.items()}}

    rows: list[dict[str, Any]] = []
    amc_common = dict(episodes=args.episodes, warmup_episodes=args.warmup, reward_batches=args.reward_batches,
                      **AMC_OVERRIDES)
    fr = args.flops_ratio
    runs = [] if "amc" not in args.parts else [
        ("AMC, 0.5x pixel1 latency", create_method("amc", resource="latency", target_ratio=0.5, **amc_common), pixel1)]
    if "amc" in args.parts or "uniform" in args.parts:
        runs += [(f"AMC, {fr}x FLOPs", create_method("amc", resource="flops", target_ratio=fr, **amc_common), pixel1),
                 (f"uniform width, {fr}x FLOPs",
                  create_method("amc", resource="flops", target_ratio=fr, search="uniform", **amc_common), pixel1)]
    for name, method, target in runs:
        t = time.perf_counter()
        result = method.compress(copy.deepcopy(base), ctx(target, name.split(",")[0].replace(" ", "_") + str(len(rows))))
        rows.append(summary(name, result, time.perf_counter() - t))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "widths"}), flush=True)

    trimmed, trimmed_rows = {}, []
    for hw, target in trim_targets.items():
        method = create_method("compactnet", **COMPACTNET_OVERRIDES)
        t = time.perf_counter()
        result = method.compress(copy.deepcopy(base), ctx(target, f"compactnet_{hw}"))
        trimmed[hw] = result.model.eval()
        trimmed_rows.append(summary(f"CompactNet {EXCHANGE_SPEEDUP}x for {hw}", result, time.perf_counter() - t))
        print(json.dumps({k: v for k, v in trimmed_rows[-1].items() if k != "widths"}), flush=True)

    now = f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC"
    setup = (f"LeNet-5 on MNIST (train subset {SIZES['train_subset']}, validation 1000 of a 5000 hold-out, "
             f"test subset {SIZES['test_subset']}), baseline trained 2 epochs (SGD lr 0.05, cosine); "
             f"pixel1 = emulated (`{base_px.label}`), local_cpu = measured PyTorch eager, 1 thread, thread-CPU clock "
             f"(`{base_cpu.label}`). Generated {now} by `python -m benchmarks.studies.pruning_auto`.")
    if "exchange" in args.parts:
        exch = exchange_rows(base, trimmed, {**trim_targets, "local_cpu": local}, INPUT, rounds=EXCHANGE_ROUNDS)
        top1 = {"baseline": base_top1, **{hw: evaluate(m, dm, "test")["top1"] for hw, m in trimmed.items()}}
        channels = {"baseline": layer_widths(base), **{hw: layer_widths(m) for hw, m in trimmed.items()}}
        (args.out / "pruning_platform_exchange.md").write_text(exchange_markdown(
            exch, top1, channels,
            "# CompactNet platform exchange (Li et al. 2019, Table 7)\n\n" + setup
            + f"\n\nBoth models were trimmed by CompactNet to a {EXCHANGE_SPEEDUP}x speedup (N=4, d=0.96, fine-tune 0.05 epoch "
              "per candidate, retrain 1 epoch), one guided by pixel1, one by local_cpu_table: CompactNet's "
              "simulator for this CPU, a per-layer lookup table of LeNet-5's layers at every width the search can "
              "reach (`python -m hardware profile --hw local_cpu --threads 1 --clock thread_cpu --model lenet5 "
              "--input-size 28 --in-chans 1 --narrower`, profiled on this machine just before the search, "
              "uncalibrated: the sum of its entries), so that it stays fixed during the search. Bold: the model on "
              "the target it was trimmed for. local_cpu rows are direct measurements of the same models: each "
              f"model measured {EXCHANGE_ROUNDS} times, the three models interleaved, median of the rounds' "
              "medians ± their IQR (the emulated and table rows are deterministic: IQR 0)."))

    lines = ["# AMC on LeNet-5 / MNIST", "", setup, "",
             f"Baseline: top-1 {base_top1:.2f}%, {base_macs} MACs, pixel1 {base_px.latency_ms:.4f} ms, "
             f"local_cpu {base_cpu.latency_ms:.4f} ms (IQR {base_cpu.spread_ms:.4f}).", "",
             f"AMC: {args.episodes} DDPG episodes after {args.warmup} warm-up episodes, reward `acc` on "
             f"{args.reward_batches} validation "
             "batches, least-squares channel selection, lbound 0.2; the best policy fine-tuned 1 epoch (lr 0.01). "
             "Uniform width: the largest single preserve ratio within the budget, same selection and fine-tuning.", "",
             "| run | top-1 before FT | top-1 (test) | MACs ratio | pixel1 ms | pixel1 ratio | local_cpu ms (IQR) | local_cpu speedup | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows + trimmed_rows:
        before = r.get("m_top1_before_finetune", r.get("m_top1_before_retrain", float("nan")))
        lines.append(f"| {r['name']} | {before:.2f} | {r['top1']:.2f} | {r['macs_ratio']:.3f} | {r['pixel1_ms']:.4f} | "
                     f"{r['pixel1_ratio']:.3f} | {r['local_ms']:.4f} ({r['local_iqr']:.4f}) | {r['local_speedup']:.2f}x | "
                     f"{r['seconds']:.0f} |")
    lines += ["", "Widths (output channels of conv1, conv2, fc1):", ""]
    for r in rows + trimmed_rows:
        w = r["widths"]
        lines.append(f"- {r['name']}: conv1 {w['conv1']}, conv2 {w['conv2']}, fc1 {w['fc1']}")
    if rows:  # the AMC report (the exchange alone has its own file, its models measured in rounds)
        name = "pruning_amc.md" if "amc" in args.parts else "pruning_amc_vs_uniform.md"
        (args.out / name).write_text("\n".join(lines) + "\n")
        print((args.out / name).read_text())
    if "exchange" in args.parts:
        print((args.out / "pruning_platform_exchange.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
