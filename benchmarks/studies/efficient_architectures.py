"""Efficient architectures (issue 16): the zoo's CIFAR-size small nets side by side, and SqueezeNet's size claim.

    python -m benchmarks.studies.efficient_architectures            # results/efficient_architectures.{json,md}
    python -m benchmarks.studies.efficient_architectures --render   # the markdown again, from the JSON

- ``models``: per CIFAR-size model (SqueezeNet 1.0/1.1, ShuffleNet V1 g=3 1x, ShuffleNet V2 1x,
  MobileNetV3 Small/Large; ResNet-20 and MobileNetV2 for comparison): parameters, MACs (PyTorch's
  flop counter, ``hardware.layers.count_macs``), stored bytes (the dense fp32 file the baseline method
  writes, ``methods.baseline.save_dense``), and top-1 on a seeded ``cifar10_jpeg`` test subset after a short training on a seeded train subset (one seed; sizes and
  epochs in the settings; SGD with Nesterov momentum, cosine schedule, the same for every model).
- ``latency``: every model timed together on ``local_cpu`` (one thread, the timing thread's CPU time,
  interleaved rounds: ``hardware.measured.LocalCPU``), batch 1, 3x32x32; and every model's ``pixel1``
  emulated latency (it does not depend on the weights, so a new emulator reruns this row alone).
- ``size``: Iandola et al. (2016), Table 2: SqueezeNet 1.0 has 50x fewer parameters than AlexNet
  (240 MB -> 4.8 MB at 32 bits). Our SqueezeNets against torchvision's AlexNet, parameters and stored
  bytes, at 1000 classes (the paper's setting) and at 10 (CIFAR-10's head); AlexNet is not trained.

The training is far too short for the models' published accuracies: its top-1 ranks what a few
minutes of CPU buy, not the architectures. Resumable: each finished row is written to the JSON at
once and kept on a rerun with the same settings (a changed setting starts the file afresh).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from benchmarks.data import CIFAR10JPEGDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.studies.runs import Runs
from benchmarks.training import evaluate, fit
from hardware.layers import count_macs
from hardware.measured import LocalCPU
from hardware.registry import instantiate
from methods.baseline import save_dense

ROOT = Path(__file__).resolve().parents[2]
NAME = "efficient_architectures"
INPUT = (1, 3, 32, 32)
#: the CIFAR-size models compared, with their zoo arguments
MODELS: dict[str, dict[str, Any]] = {
    "squeezenet1_0_cifar": {},
    "squeezenet1_1_cifar": {},
    "shufflenet_v1_cifar": {"groups": 3, "width_mult": 1.0},
    "shufflenet_v2_cifar": {"width_mult": 1.0},
    "mobilenetv3_small_cifar": {},
    "mobilenetv3_large_cifar": {},
    "resnet20_cifar": {},
    "mobilenetv2_cifar": {},
}
#: Iandola et al. 2016, Table 2: AlexNet 240 MB, SqueezeNet 4.8 MB (32-bit weights): "50x"
PAPER_SIZE = {"alexnet_mb": 240.0, "squeezenet_mb": 4.8, "ratio": 50}
#: (row, model builder, classes) of the size comparison; AlexNet is torchvision's, never trained
SIZE_ROWS: tuple[tuple[str, str, int], ...] = (
    ("alexnet", "alexnet", 1000), ("squeezenet1_0", "squeezenet1_0", 1000), ("squeezenet1_1", "squeezenet1_1", 1000),
    ("alexnet, 10 classes", "alexnet", 10), ("squeezenet1_0_cifar", "squeezenet1_0_cifar", 10),
    ("squeezenet1_1_cifar", "squeezenet1_1_cifar", 10),
)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _stored_bytes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory(prefix=f"{NAME}_") as work:
        return int(save_dense(model, Path(work) / "model.cbm")["total"])


def _recipe(epochs: float, lr: float) -> RecipeConfig:
    return RecipeConfig(epochs=epochs, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, scheduler="cosine")


def _model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=10, in_chans=3, **MODELS[name])


def measure_model(name: str, dm: CIFAR10JPEGDataModule, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Static figures, then the short training and its test top-1."""
    model = _model(name, args.seed)
    row: dict[str, Any] = {"params": _params(model), "macs": count_macs(model, INPUT), "stored_bytes": _stored_bytes(model)}
    start = time.perf_counter()
    fit(model, dm, _recipe(args.epochs, args.lr), TrainerConfig(progress_bar=False), seed=args.seed)
    row["train_seconds"] = time.perf_counter() - start
    row["test_top1"] = evaluate(model, dm, "test")["top1"]
    torch.save(model.state_dict(), work / f"{name}_s{args.seed}.pt")
    return row


def measure_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Every model on local_cpu, one thread, timed together (paired rounds)."""
    target = LocalCPU(threads=1, clock="thread_cpu", rounds=args.rounds, per_layer=False)
    reports = target.latencies({name: _model(name, args.seed).eval() for name in MODELS}, INPUT)
    return {name: {"median_ms": report.latency_ms, "iqr_ms": report.spread_ms} for name, report in reports.items()}


def emulate_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Every model's ``pixel1`` emulated latency and the emulator's stated spread."""
    target = instantiate("pixel1")
    reports = {name: target.latency(_model(name, args.seed).eval(), INPUT) for name in MODELS}
    return {name: {"ms": report.latency_ms, "spread_ms": report.spread_ms} for name, report in reports.items()}


def _size_model(builder: str, classes: int) -> nn.Module:
    if builder == "alexnet":
        return torchvision.models.alexnet(num_classes=classes)
    return build_model(builder, num_classes=classes, in_chans=3)


def measure_size(builder: str, classes: int) -> dict[str, Any]:
    model = _size_model(builder, classes)
    return {"model": builder, "classes": classes, "params": _params(model), "stored_bytes": _stored_bytes(model)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=4000, help="seeded subset of the 45,000 training images")
    parser.add_argument("--test-subset", type=int, default=1000, help="seeded subset of the 10,000 test images")
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="local_cpu: interleaved timing rounds")
    parser.add_argument("--source-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "studies" / NAME)
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON")
    args = parser.parse_args(argv)
    if args.render:
        (args.out / f"{NAME}.md").write_text(render(json.loads((args.out / f"{NAME}.json").read_text())))
        return 0
    torch.set_num_threads(1)  # a shared 2-core machine; local_cpu is timed at one thread too
    settings = {key: getattr(args, key) for key in ("seed", "train_subset", "test_subset", "epochs", "lr", "batch_size",
                                                    "rounds")}
    settings["models"] = MODELS
    args.work.mkdir(parents=True, exist_ok=True)
    figures = Runs(args.out / f"{NAME}.json", settings, collection="rows")
    figures.data["command"] = f"python -m benchmarks.studies.{NAME} " + " ".join(
        f"--{key.replace('_', '-')} {value:g}" for key, value in settings.items() if key != "models")
    for row, builder, classes in SIZE_ROWS:
        figures.get(f"size/{row}", partial(measure_size, builder, classes))
    figures.get("latency/local_cpu", lambda: measure_latency(args))
    figures.get("latency/pixel1", lambda: emulate_latency(args))
    dm = CIFAR10JPEGDataModule(data_dir=args.data_dir, source_dir=args.source_dir, batch_size=args.batch_size,
                               eval_batch_size=256, seed=args.seed, val_size=5000, train_subset=args.train_subset,
                               val_subset=256, test_subset=args.test_subset)
    dm.prepare_data()
    dm.setup("fit")
    for name in MODELS:
        figures.get(f"models/{name}", partial(measure_model, name, dm, args, args.work))
    (args.out / f"{NAME}.md").write_text(render(figures.data))
    print(f"wrote {figures.path} and {NAME}.md")
    return 0


# -- the report ---------------------------------------------------------------------------------------------------

def _size_section(rows: dict[str, Any]) -> list[str]:
    sizes = {key.split("/", 1)[1]: row for key, row in rows.items() if key.startswith("size/")}
    if not sizes:
        return []
    lines = ["## SqueezeNet against its paper's size claim, relative", "",
             f"Iandola et al. (2016), Table 2: AlexNet {PAPER_SIZE['alexnet_mb']:g} MB, SqueezeNet "
             f"{PAPER_SIZE['squeezenet_mb']:g} MB at 32 bits: \"{PAPER_SIZE['ratio']}x\" fewer parameters. Ours: "
             "torchvision's AlexNet (untrained: only its size matters) and the zoo's SqueezeNets, parameters and the "
             "bytes of the dense fp32 file the baseline method stores. torchvision's AlexNet cannot run a 32x32 input "
             "(its maps shrink to 1x1 before the last max-pool), so its 10-class row is the same network with "
             "CIFAR-10's head.", "",
             "| model | classes | parameters | stored bytes | AlexNet / model, parameters | AlexNet / model, bytes |",
             "|---|---:|---:|---:|---:|---:|"]
    for row_name, row in sizes.items():
        alexnet = sizes.get("alexnet" if row["classes"] == 1000 else "alexnet, 10 classes")
        ratio_p = ratio_b = "-"
        if alexnet is not None and row["model"] != "alexnet":
            ratio_p = f"{alexnet['params'] / row['params']:.1f}x"
            ratio_b = f"{alexnet['stored_bytes'] / row['stored_bytes']:.1f}x"
        lines.append(f"| {row_name} | {row['classes']} | {row['params']:,} | {row['stored_bytes']:,} | {ratio_p} | "
                     f"{ratio_b} |")
    lines.append("")
    return lines


def render(figures: dict[str, Any]) -> str:
    rows, settings = figures["rows"], figures["settings"]
    latency, pixel1 = rows.get("latency/local_cpu", {}), rows.get("latency/pixel1", {})
    lines = [
        "# Efficient architectures on CIFAR-10 (JPEG)", "",
        f"Written by `{figures.get('command', f'python -m benchmarks.studies.{NAME}')}` "
        f"({figures['machine'].get('cpu', 'this machine')}) from `results/{NAME}.json`; the method is in the "
        "study's docstring. CIFAR-size variants (32x32 inputs, total stride 8; see each zoo module's docstring), "
        "10 classes, batch 1.", "",
        f"Training: {settings['train_subset']:,} seeded training images of `cifar10_jpeg` (augmented), "
        f"{settings['epochs']:g} epoch(s), batch {settings['batch_size']}, SGD lr {settings['lr']:g} (Nesterov "
        f"momentum 0.9, weight decay 5e-4, cosine), seed {settings['seed']}, one torch thread; top-1 on "
        f"{settings['test_subset']:,} seeded test images (chance: 10%). This is minutes of CPU per model, far from "
        "the architectures' trained accuracy: read it as what a short budget buys, not as the models' ranking; a "
        "top-1 near 10% is a net that had not started to learn in it (SqueezeNet, without batch norm, is known to "
        "start slowly). The trained baselines are the full matrix's (`dvc exp run -S bench=full`, 30 epochs).", "",
        "Latency: `local_cpu` measured (PyTorch eager, one thread, CPU time of the timing thread, median of "
        f"{settings['rounds']} interleaved rounds, IQR beside it); `pixel1` emulated (TF-Lite float32 per-operator "
        "cost model fitted on MobileNetV1 profiles at 224 px: these 32 px nets and their SE/hard-swish ops lie outside "
        "its fitted domain; concatenations and channel-shuffle transposes, which the profiles lack, are priced as "
        "streaming copies at the fitted elementwise rate).", "",
        "| model | parameters | MACs | stored bytes | local_cpu ms (IQR) | pixel1 ms (± stated) | test top-1 | "
        "train s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in settings["models"]:
        row = rows.get(f"models/{name}")
        if row is None:
            continue
        local = latency.get(name)
        local_text = f"{local['median_ms']:.2f} ({local['iqr_ms']:.2f})" if local else "-"
        emulated = pixel1.get(name)
        pixel1_text = f"{emulated['ms']:.1f} (± {emulated['spread_ms']:.1f})" if emulated else "-"
        lines.append(f"| {name} | {row['params']:,} | {row['macs'] / 1e6:.1f}M | {row['stored_bytes']:,} | {local_text} | "
                     f"{pixel1_text} | {row['test_top1']:.2f} | "
                     f"{row['train_seconds']:.0f} |")
    lines.append("")
    lines += _size_section(rows)
    loads = [row["load_average"][0] for row in rows.values()]
    if loads:
        lines += [f"Machine load (1-min average) during the rows: {min(loads):.1f} to {max(loads):.1f} on "
                  f"{figures['machine'].get('logical_cpus', '?')} logical CPUs (shared); local_cpu uses thread CPU "
                  "time so that others' load inflates it less; training times are wall time.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
