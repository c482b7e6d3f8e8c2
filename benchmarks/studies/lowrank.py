"""Low-rank factorization and tensor-train layers (issue 16), sized for a shared 2-core CPU.

    python -m benchmarks.studies.lowrank --parts conv tt     # results/lowrank.json
    python -m benchmarks.studies.report lowrank              # results/lowrank.md

- ``conv``: the pretrained ResNet-20 (akamaster's CIFAR-10 weights) on ``cifar10_jpeg``: Tucker-2 (Kim
  et al. 2016) with VBMF ranks and with an energy threshold, CP (Lebedev et al. 2015) with VBMF-derived
  ranks, each fine-tuned, and beside each, filter pruning (``filter``, l1) to the same MACs with the same
  fine-tuning. Every model's MACs, stored bytes, test/validation top-1 and its speedup over the baseline
  measured on ``local_cpu`` (PyTorch eager) and ``onnxruntime_cpu`` as paired interleaved rounds
  (``hardware.speedup``, as the run pipeline measures it). The baseline is fine-tuned the same budget
  too, so a change in accuracy is the method's, not the fine-tuning's on this JPEG copy. Departures for
  this machine: fine-tuning sees a subset of the training split for ``--finetune-epochs``, test top-1 is
  on a subset of the test split (both sizes in the JSON).
- ``tt``: Novikov et al. (2015)'s MNIST setting scaled down: a 784-1024-1024-10 MLP whose two hidden
  layers become TT-matrices (784 = 4x7x7x4 -> 1024 = 4x8x8x4, 1024 -> 1024 = 4x8x8x4) at several TT-ranks,
  trained end to end from random cores for as many epochs as the dense baseline, and once from the
  TT-SVD of the trained layers with a short fine-tuning. Compression factor of the two layers' weights
  and test error, against the dense net.

Choices use no test data (all settings are fixed in advance). Resumable: every finished row is written
to the JSON at once and skipped on a rerun with the same settings (changed settings start afresh).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule, MNISTDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.studies.runs import Runs
from benchmarks.training import evaluate, fit
from hardware.layers import count_macs
from hardware.measured import LocalCPU, MeasuredTarget, OnnxRuntimeCPU
from hardware.speedup import speedup_between
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]
FIGURES = "lowrank.json"
WEIGHTS = "weights/akamaster-resnet-cifar10/resnet20-12fca82f.th"
#: the low-rank settings of the conv part (conf/method/lowrank.yaml otherwise); each gets a filter row at its MACs
CONV_ARMS: dict[str, dict[str, Any]] = {
    "Tucker-2, VBMF ranks": {"conv_decomposition": "tucker2", "rank_rule": "vbmf"},
    "Tucker-2, energy 0.9": {"conv_decomposition": "tucker2", "rank_rule": "energy", "energy": 0.9},
    "CP, VBMF ranks": {"conv_decomposition": "cp", "rank_rule": "vbmf"},
}
#: the TT part's layer shapes (out x in modes) and ranks
TT_SHAPES = {"fc1": {"in_modes": [4, 7, 7, 4], "out_modes": [4, 8, 8, 4]},
             "fc2": {"in_modes": [4, 8, 8, 4], "out_modes": [4, 8, 8, 4]}}
TT_RANKS = (2, 4, 8)
MLP: dict[str, Any] = {"hidden_features": [1024, 1024], "dropout": 0.0, "input_dropout": 0.0}
ROUNDS = 9  # paired rounds per speedup


def _recipe(epochs: float, lr: float) -> RecipeConfig:
    return RecipeConfig(epochs=epochs, lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4, scheduler="cosine")


def _targets() -> dict[str, MeasuredTarget]:
    timing: dict[str, Any] = {"threads": 1, "warmup": 5, "repeats": 20, "min_time_s": 0.1, "rounds": ROUNDS}
    return {"local_cpu": LocalCPU(clock="thread_cpu", **timing), "onnxruntime_cpu": OnnxRuntimeCPU(**timing)}


def _measure(base: nn.Module, model: nn.Module, dm: Any, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Accuracy, MACs, parameters and the paired speedups of ``model`` over ``base``."""
    model.eval()
    row: dict[str, Any] = {"test_top1": evaluate(model, dm, "test")["top1"], "val_top1": evaluate(model, dm, "val")["top1"],
                           "macs": count_macs(model, input_shape), "params": sum(p.numel() for p in model.parameters())}
    for name, target in _targets().items():
        paired = target.latencies({"baseline": base, "compressed": model}, input_shape)
        speedup = speedup_between(paired["baseline"], paired["compressed"])
        row[name] = {"ms": paired["compressed"].latency_ms, "baseline_ms": paired["baseline"].latency_ms,
                     "speedup": speedup.value, "low": speedup.low, "high": speedup.high, "verdict": speedup.verdict,
                     "noisy": speedup.noisy}
    return row


def _compressed(method: str, settings: dict[str, Any], base: nn.Module, dm: Any, recipe: RecipeConfig, work: Path,
                input_shape: tuple[int, ...]) -> dict[str, Any]:
    ctx = make_context(dm, LocalCPU(threads=1), recipe, TrainerConfig(progress_bar=False), 42, work)
    result = create_method(method, **settings).compress(copy.deepcopy(base), ctx)
    return {"method": method, "settings": settings, "stored_bytes": result.stored_bytes,
            "metrics": result.metrics, **_measure(base, result.model, dm, input_shape)}


def conv(study: Runs, args: argparse.Namespace, work: Path) -> None:
    dm = CIFAR10JPEGDataModule(data_dir=work / "data", source_dir=args.source_dir, batch_size=128, eval_batch_size=256,
                               seed=42, val_size=5000, train_subset=args.train_subset, val_subset=1000,
                               test_subset=args.test_subset)
    dm.prepare_data()
    dm.setup("fit")
    shape = (1, 3, 32, 32)
    base = build_model("resnet20_cifar", 10, 3, pretrained=args.source_dir / WEIGHTS).eval()
    recipe = _recipe(args.finetune_epochs, args.finetune_lr)
    finetune = {"epochs": args.finetune_epochs, "lr": args.finetune_lr}
    study.get("conv/baseline", lambda: {"stored_bytes": None, **_measure(base, base, dm, shape)})

    def tuned_baseline() -> dict[str, Any]:
        tuned = copy.deepcopy(base)
        make_context(dm, LocalCPU(threads=1), recipe, TrainerConfig(progress_bar=False), 42, work).finetune(
            tuned, args.finetune_epochs, lr=args.finetune_lr)
        return _measure(base, tuned, dm, shape)

    study.get("conv/baseline fine-tuned", tuned_baseline)
    for name, settings in CONV_ARMS.items():
        low = study.get(f"conv/{name}", partial(_compressed, "lowrank", {**settings, "finetune": finetune}, base, dm,
                                                recipe, work / "lowrank", shape))
        if "diverged" in low:
            continue
        ratio = low["macs"] / study.data["rows"]["conv/baseline"]["macs"]
        study.get(f"conv/filter l1 at the MACs of {name}", partial(
            _compressed, "filter", {"criterion": "l1", "target_macs_ratio": round(ratio, 4), "finetune": finetune}, base,
            dm, recipe, work / "filter", shape))


def tt(study: Runs, args: argparse.Namespace, work: Path) -> None:
    dm = MNISTDataModule(data_dir=work / "mnist", source_dir=args.source_dir, batch_size=128, eval_batch_size=512,
                         seed=42, val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    shape = (1, 1, 28, 28)
    recipe = _recipe(args.tt_epochs, 0.05)
    torch.manual_seed(42)
    base = build_model("mlp", 10, 1, **MLP)
    fit(base, dm, recipe, TrainerConfig(progress_bar=False), seed=42)
    base.eval()
    study.get("tt/dense 784-1024-1024-10", lambda: {"stored_bytes": None, **_measure(base, base, dm, shape)})
    runs = [(f"TT rank {r}, random cores, {args.tt_epochs:g} epochs", r, "random", args.tt_epochs) for r in TT_RANKS]
    runs.append((f"TT rank {TT_RANKS[-1]}, TT-SVD of the trained layers, 1 epoch", TT_RANKS[-1], "tt_svd", 1.0))
    for name, rank, init, epochs in runs:
        settings = {"rank": rank, "shapes": TT_SHAPES, "init": init, "finetune": {"epochs": epochs, "lr": 0.05}}
        study.get(f"tt/{name}", partial(_compressed, "tensor_train", settings, base, dm, _recipe(epochs, 0.05),
                                        work / "tt", shape))


PARTS: dict[str, Callable[[Runs, argparse.Namespace, Path], None]] = {"conv": conv, "tt": tt}
#: the settings each part's rows depend on: changing one drops that part's rows only
PART_SETTINGS = {"conv": ("train_subset", "test_subset", "finetune_epochs", "finetune_lr", "conv_arms", "rounds"),
                 "tt": ("tt_epochs", "tt_shapes", "tt_ranks", "mlp", "rounds")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    parser.add_argument("--train-subset", type=int, default=8000, help="conv: training images the fine-tunings see")
    parser.add_argument("--test-subset", type=int, default=2000, help="conv: test images top-1 is measured on")
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="conv: every fine-tuning, baseline's too")
    parser.add_argument("--finetune-lr", type=float, default=0.002,
                        help="conv: every fine-tuning's learning rate (at 0.01 filter pruning to 0.15x MACs diverged at step 4)")
    parser.add_argument("--tt-epochs", type=float, default=3.0, help="tt: the dense and the random-core TT nets' training")
    parser.add_argument("--source-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # 5 studies share 2 cores; speedups are 1-thread figures anyway
    settings = {k: v for k, v in vars(args).items() if k not in ("parts", "source_dir", "out")}
    settings.update(conv_arms=CONV_ARMS, tt_shapes=TT_SHAPES, tt_ranks=list(TT_RANKS), mlp=MLP, rounds=ROUNDS)
    study = Runs(args.out / FIGURES, settings, hidden=("metrics",), collection="rows", diverged_rows=True,
                 parts=PART_SETTINGS, running=args.parts)
    kept = study.data["settings"]  # the stored values of the settings no running part depends on
    options = " ".join(f"--{k.replace('_', '-')} {kept[k]:g}" for k, v in vars(args).items() if isinstance(v, (int, float)))
    parts = sorted(set(args.parts) | {key.split("/", 1)[0] for key in study.data["rows"]})  # every part in the file
    study.data["command"] = f"python -m benchmarks.studies.lowrank --parts {' '.join(parts)} {options}"
    work = Path(tempfile.mkdtemp(prefix="lowrank_"))
    for part in args.parts:
        PARTS[part](study, args, work)
    print(f"wrote {study.path}; render the report: python -m benchmarks.studies.report lowrank")
    return 0


# -- the report ---------------------------------------------------------------------------------------------------

def _speedup(cell: dict[str, Any]) -> str:
    text = f"x{cell['speedup']:.2f} [{cell['low']:.2f}, {cell['high']:.2f}]"
    return text + (" (noisy)" if cell["noisy"] else "")


def _kb(row: dict[str, Any]) -> str:
    return f"{row['stored_bytes'] / 1024:.0f}" if row.get("stored_bytes") else "-"


def _table(header: list[str], rows: dict[str, dict[str, Any]], cells: Callable[[dict[str, Any]], list[str]]) -> list[str]:
    """A markdown table, a row per study row (its name first); a diverged row says so across the table."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, row in rows.items():
        body = f"{row['diverged']} |" + "|" * (len(header) - 2) if "diverged" in row else " | ".join(cells(row)) + " |"
        lines.append(f"| {name} | {body}")
    return lines


def _two_se(n: int, *top1: float) -> float:
    """Two binomial standard errors of the difference of two top-1 figures on ``n`` test images, in points."""
    p = sum(top1) / len(top1) / 100
    return 2 * (2 * p * (1 - p) / n) ** 0.5 * 100


def _conv_section(figures: dict[str, Any]) -> list[str]:
    rows = {k.split("/", 1)[1]: r for k, r in figures["rows"].items() if k.startswith("conv/")}
    if "baseline" not in rows:
        return []
    s, base = figures["settings"], rows["baseline"]
    tuned = rows.get("baseline fine-tuned", base)
    lines = ["## Low-rank against filter pruning at equal MACs (ResNet-20, cifar10_jpeg)", "",
             f"Pretrained ResNet-20 (akamaster's CIFAR-10 weights; {base['test_top1']:.2f}% on the JPEG test subset). "
             f"Every fine-tuning: {s['finetune_epochs']:g} epoch over a {s['train_subset']}-image subset of the "
             f"training split, SGD lr {s['finetune_lr']:g} (cosine), the baseline's too. Test top-1 on a "
             f"{s['test_subset']}-image subset of the test split; \"before FT\" is validation top-1 (1000 images) "
             "right after factorizing or pruning. Speedups: baseline / model latency at batch 1, one thread, "
             f"median of {s['rounds']} paired interleaved rounds with its 95% bootstrap interval "
             "(hardware/speedup.py); local_cpu = PyTorch eager (thread CPU clock), onnxruntime_cpu = ONNX Runtime "
             "(wall clock). Filter pruning: `filter`, l1, `target_macs_ratio` = the low-rank model's MACs ratio.", "",
             *_table(["model", "MACs (x base)", "params", "stored KB", "top-1 before FT", "test top-1",
                      "vs fine-tuned baseline", "local_cpu speedup", "onnxruntime_cpu speedup"], rows, lambda r: [
                 f"{r['macs'] / base['macs']:.3f}", f"{r['params']:,}", _kb(r),
                 f"{r['metrics']['top1_before_finetune']:.2f}" if "metrics" in r else "-", f"{r['test_top1']:.2f}",
                 f"{r['test_top1'] - tuned['test_top1']:+.2f}", _speedup(r["local_cpu"]), _speedup(r["onnxruntime_cpu"])])]
    lines += ["", "Reading (computed from the rows above):"]
    for arm in s["conv_arms"]:
        low, flt = rows.get(arm), rows.get(f"filter l1 at the MACs of {arm}")
        if low is None or flt is None or "diverged" in low or "diverged" in flt:
            continue
        diff, bound = low["test_top1"] - flt["test_top1"], _two_se(s["test_subset"], low["test_top1"], flt["test_top1"])
        lines.append(f"- {arm} ({low['macs'] / base['macs']:.3f}x MACs) against filter pruning "
                     f"({flt['macs'] / base['macs']:.3f}x): {diff:+.2f} points of test top-1 (two standard errors "
                     f"{bound:.2f}: {'significant' if abs(diff) > bound else 'not significant'}); local_cpu "
                     f"x{low['local_cpu']['speedup']:.2f} ({low['local_cpu']['verdict']}) against "
                     f"x{flt['local_cpu']['speedup']:.2f} ({flt['local_cpu']['verdict']}), onnxruntime_cpu "
                     f"x{low['onnxruntime_cpu']['speedup']:.2f} against x{flt['onnxruntime_cpu']['speedup']:.2f}.")
    return lines


def _tt_section(figures: dict[str, Any]) -> list[str]:
    rows = {k.split("/", 1)[1]: r for k, r in figures["rows"].items() if k.startswith("tt/")}
    dense = next((r for k, r in rows.items() if k.startswith("dense")), None)
    if dense is None:
        return []
    s = figures["settings"]
    lines = ["", "## Tensor-train layers on MNIST (Novikov et al. 2015)", "",
             f"A 784-1024-1024-10 ReLU MLP trained {s['tt_epochs']:g} epoch(s) (SGD lr 0.05, cosine, full MNIST "
             "training split less 5000 for validation); its two hidden layers as TT-matrices (fc1: 784 = "
             f"{'x'.join(map(str, s['tt_shapes']['fc1']['in_modes']))} -> 1024 = "
             f"{'x'.join(map(str, s['tt_shapes']['fc1']['out_modes']))}; fc2: 1024 -> 1024 = 4x8x8x4), the "
             "classifier dense. Random cores are trained end to end as long as the dense net (the paper trains "
             "from scratch); the TT-SVD row starts from the trained layers. Layer compression = the two dense "
             "weight matrices' parameters / their TT cores'; network compression = all parameters. Test error on "
             "the 10,000 MNIST test images. The paper's MNIST figures were not retrieved "
             "(../shared/reference/method-notes/hashing-tt-svd.md), so no paper number is printed here.", "",
             *_table(["model", "layer compression", "network compression", "MACs (x dense)", "stored KB", "test error %",
                      "error vs dense (points)", "local_cpu speedup", "onnxruntime_cpu speedup"], rows, lambda r: [
                 f"{r['metrics']['layer_compression_factor']:.0f}x" if "metrics" in r else "1x",
                 f"{r['metrics']['network_compression_factor']:.1f}x" if "metrics" in r else "1x",
                 f"{r['macs'] / dense['macs']:.2f}", _kb(r), f"{100 - r['test_top1']:.2f}",
                 f"{dense['test_top1'] - r['test_top1']:+.2f}", _speedup(r["local_cpu"]), _speedup(r["onnxruntime_cpu"])])]
    return lines


def render(figures: dict[str, Any]) -> str:
    """results/lowrank.md from results/lowrank.json."""
    machine = figures["machine"]
    loads = [r["load_average"][0] for r in figures["rows"].values()]
    head = ["# Low-rank factorization and tensor-train layers", "",
            f"Generated by `python -m benchmarks.studies.report lowrank` from `results/{FIGURES}`, written by "
            f"`{figures.get('command', 'python -m benchmarks.studies.lowrank')}` on {machine.get('cpu', 'this machine')} "
            f"({machine.get('logical_cpus', '?')} logical CPUs; 1-minute load average {min(loads):.1f}-{max(loads):.1f} "
            "during the rows: other jobs shared the cores, which the paired rounds are built to withstand).", ""]
    return "\n".join([*head, *_conv_section(figures), *_tt_section(figures)]) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
