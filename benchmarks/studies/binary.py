"""Binary and ternary weights (issue 15) on LeNet-5 / MNIST and on ResNet-20 / cifar10_jpeg: accuracy change
against the same-data float baseline, the real file sizes, and what the hardware targets make of 1- and 2-bit layers.

    python -m benchmarks.studies.binary --parts lenet5      # results/binary.json
    python -m benchmarks.studies.binary --parts resnet20    # results/binary_resnet20.json
    python -m benchmarks.studies.report binary              # results/binary.md (and reproductions.md's sections)

LeNet-5, per seed: a baseline (``--baseline-epochs`` with conf/recipe/mnist_sgd.yaml's recipe), then each
method of ``RUNS`` built with ``create_method`` (its yaml, the settings listed) and fine-tuned
``--finetune-epochs`` from that baseline at ``--finetune-lr`` (LAB at ``--lab-lr``: its step is
preconditioned, about ``lr`` per weight per step). ``bwn`` and ``twn`` also run without fine-tuning (the
baseline binarized / ternarized as it is).

ResNet-20: the pretrained akamaster model is the float baseline of every seed; each row of ``RESNET_RUNS``
(the float model too, as a control) fine-tunes it ``--resnet-epochs`` of a ``--resnet-train-subset`` image
subset with conf/recipe/cifar_sgd.yaml's recipe, at the learning rate of its ``lr_grid`` with the best
validation top-1 on the first seed (``--resnet-val-subset`` images held out of training).

Every accuracy is the model decoded from the method's stored file; the file sizes are those files' bytes.
Latency: the baseline and each compressed model priced by ``bitfusion`` (bit-serial: 1- and 2-bit layers at
their rate) and ``zynq7020`` (bit-serial too, with a fitted per-layer overhead that bits do not shrink) with the
method's per-layer bits, and each report's
notes (what a target cannot use).

Departures from the papers, for this 2-core machine: fine-tuning from a trained baseline for a few epochs
(the papers train for tens to hundreds of epochs; ResNet-20 on a 6,000-image subset); the run's SGD
recipe, not the papers' Adam; Caffe LeNet-5 (no batch norm). Choices use no test data: test top-1 is
reported, validation top-1 beside it. Resumable: every finished run is written to the JSON at once and
skipped on a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule, ImageDataModule, MNISTDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.studies.distillation import _cifar_recipe, _recipe, _trained, best_lr
from benchmarks.studies.runs import Runs
from benchmarks.training import TrainingDivergedError, evaluate
from hardware import registry as hw_registry
from hardware.layers import describe_layers
from hardware.measured import LocalCPU
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]
FIGURES = "binary.json"
INPUT = (1, 1, 28, 28)
TARGETS = ("bitfusion", "zynq7020")
#: the runs of each seed: label -> method and its settings (fine-tuning added by the study)
RUNS: dict[str, dict[str, Any]] = {
    "BinaryConnect, deterministic": {"method": "binaryconnect", "settings": {}},
    "BinaryConnect, stochastic": {"method": "binaryconnect", "settings": {"stochastic": True}},
    "BWN, no fine-tuning": {"method": "bwn", "settings": {}, "epochs": 0},
    "BWN": {"method": "bwn", "settings": {}},
    "XNOR-Net": {"method": "xnor", "settings": {}},
    "TWN, no fine-tuning": {"method": "twn", "settings": {}, "epochs": 0},
    "TWN": {"method": "twn", "settings": {}},
    "TTQ": {"method": "ttq", "settings": {}},
    "LAB": {"method": "lab", "settings": {}},
}
#: the published accuracy changes (points of top-1) on the same network and data, where there is one
PAPER: dict[str, dict[str, Any]] = {
    "XNOR-Net": {"float": 99.34, "compressed": 99.23,
                 "source": "jiecaoyu/XNOR-Net-PyTorch README, MNIST LeNet-5 (a reimplementation; the paper has no "
                           "MNIST figure)"},
}
#: published figures on other networks, quoted beside ours for scale (not comparable one to one)
ELSEWHERE = {
    "BinaryConnect": "stochastic, MNIST MLP: about 1.15 % error (authors' README; not the paper's experiment)",
    "TTQ": "ResNet-20 CIFAR-10: 8.87 % error against 8.23 % float (authors' README)",
    "TWN": "ResNet-20 CIFAR-10: 89.6-89.8 % (third-party reimplementation)",
    "LAB": "no figure in the authors' code; the paper's tables are not in ../shared/papers",
}


#: the ResNet-20 part's runs: label -> method, settings and the learning rates tried on seed 1 (``lr_grid``, the one
#: with the best validation top-1 is used for every seed); ``method: None`` is the float model fine-tuned alike
RESNET_RUNS: dict[str, dict[str, Any]] = {
    "Float, fine-tuned": {"method": None, "settings": {}, "lr_grid": [0.01, 0.001]},
    "BinaryConnect, deterministic": {"method": "binaryconnect", "settings": {}, "lr_grid": [0.01, 0.001]},
    "BinaryConnect, stochastic": {"method": "binaryconnect", "settings": {"stochastic": True},
                                  "lr_grid": [0.01, 0.001]},
    "BWN": {"method": "bwn", "settings": {}, "lr_grid": [0.01, 0.001]},
    "XNOR-Net": {"method": "xnor", "settings": {}, "lr_grid": [0.01, 0.001]},  # its yaml: first and last layer float
    "TWN": {"method": "twn", "settings": {}, "lr_grid": [0.01, 0.001]},
    # the authors' ResNet-20 run kept the first conv float and ternarised the classifier (method notes, "Pitfall")
    "TTQ": {"method": "ttq", "settings": {"layers": {"first": False}}, "lr_grid": [0.01, 0.001]},
    "LAB": {"method": "lab", "settings": {}, "lr_grid": [0.001, 0.0001]},
}
RESNET_FIGURES = "binary_resnet20.json"
RESNET_WEIGHTS = "weights/akamaster-resnet-cifar10/resnet20-12fca82f.th"
#: published top-1 on ResNet-20 / CIFAR-10 (lossless), float and compressed, where a source states both
RESNET_PAPER: dict[str, dict[str, Any]] = {
    "TTQ": {"float": 100 - 8.23, "compressed": 100 - 8.87,
            "source": "czhu95/ternarynet README: 8.87 % error against 8.23 % float (first conv float, classifier "
                      "ternary)"},
}
#: published figures that are not a ResNet-20 change, quoted for scale (../shared/reference/method-notes)
RESNET_ELSEWHERE = {
    "TWN": "ResNet-20 CIFAR-10 89.6-89.8 % top-1, no float figure beside it (BambooMask/quantization, a "
           "third-party reimplementation)",
    "XNOR-Net": "CIFAR-10 NIN 86.28 % against 89.67 % float (jiecaoyu/XNOR-Net-PyTorch README; not ResNet-20)",
    "BinaryConnect": "stochastic, CIFAR-10 about 8.27 % error (authors' README, their own CNN; not ResNet-20)",
    "float ResNet-20": "8.75 % error in He et al., 8.27 % reproduced (akamaster README) on lossless CIFAR-10",
    "BWN, LAB": "no ResNet-20 / CIFAR-10 figure in ../shared/papers or the method notes",
}


def _scores(model: nn.Module, dm: ImageDataModule) -> dict[str, float]:
    model.eval()
    return {"test_top1": evaluate(model, dm, "test")["top1"], "val_top1": evaluate(model, dm, "val")["top1"]}


def _latency(model: nn.Module, layer_bits: dict[str, tuple[int, int]] | None,
             image: tuple[int, ...] = INPUT[1:]) -> dict[str, Any]:
    """Each target's predicted latency (ms) and notes for ``model`` at ``layer_bits`` on ``image``-shaped inputs."""
    out = {}
    for name in TARGETS:
        target = hw_registry.instantiate(name)
        shape = (target.batch_size, *image)
        report = target.latency(model, shape, describe_layers(model, shape, layer_bits))
        out[name] = {"latency_ms": report.latency_ms, "notes": report.notes}
    return out


def _baseline_row(base: nn.Module, dm: ImageDataModule) -> dict[str, Any]:
    return {"fp32_bytes": sum(4 * t.numel() for t in base.state_dict().values() if t.is_floating_point()),
            "latency": _latency(base, None, dm.input_shape), **_scores(base, dm)}


def _compressed_row(label: str, base: nn.Module, dm: MNISTDataModule, seed: int, args: argparse.Namespace,
                    work: Path) -> dict[str, Any]:
    spec = RUNS[label]
    lr = {"lab": args.lab_lr, "ttq": args.ttq_lr}.get(spec["method"], args.finetune_lr)
    return _compress(spec, spec.get("epochs", args.finetune_epochs), lr, base, dm, _recipe(args.baseline_epochs),
                     seed, work)


def _compress(spec: dict[str, Any], epochs: float, lr: float, base: nn.Module, dm: ImageDataModule,
              recipe: RecipeConfig, seed: int, work: Path) -> dict[str, Any]:
    """``spec``'s method applied to a copy of ``base``, fine-tuned ``epochs`` at ``lr``: scores, file, latency."""
    method = create_method(spec["method"], **spec["settings"], finetune={"epochs": epochs, "lr": lr})
    ctx = make_context(dm, LocalCPU(), recipe, TrainerConfig(progress_bar=False), seed, work / "runs" / spec["method"])
    start = time.perf_counter()
    try:
        result = method.compress(copy.deepcopy(base), ctx)
    except TrainingDivergedError as err:  # recorded as such: a learning rate this method does not survive
        return {"method": spec["method"], "settings": spec["settings"], "finetune_epochs": epochs, "lr": lr,
                "diverged": str(err)}
    seconds = time.perf_counter() - start
    m = result.metrics
    return {"method": spec["method"], "settings": spec["settings"], "finetune_epochs": epochs, "lr": lr,
            "compress_seconds": seconds, "file_bytes": result.stored_bytes,
            "compression_ratio": m["compression_ratio"], "quantized_layer_compression": m["quantized_layer_compression"],
            "layer_bits": {k: list(v) for k, v in result.layer_bits.items()},
            "latency": _latency(result.model, result.layer_bits, dm.input_shape), **_scores(result.model, dm)}


def _float_row(base: nn.Module, dm: ImageDataModule, epochs: float, lr: float, recipe: RecipeConfig, seed: int,
               work: Path) -> dict[str, Any]:
    """``base`` fine-tuned as the methods are, uncompressed: what the fine-tuning alone does to its accuracy."""
    ctx = make_context(dm, LocalCPU(), recipe, TrainerConfig(progress_bar=False), seed, work / "runs" / "float")
    start = time.perf_counter()
    model = ctx.finetune(copy.deepcopy(base), epochs, lr=lr)
    return {"method": None, "settings": {}, "finetune_epochs": epochs, "lr": lr,
            "compress_seconds": time.perf_counter() - start, **_baseline_row(model, dm)}


def chosen_lr(grid: dict[float, dict[str, Any]]) -> float:
    """The learning rate of ``grid`` with the best validation top-1 among the runs that did not diverge (all
    diverged: the first, whose row then says so)."""
    survived = {lr: run for lr, run in grid.items() if "diverged" not in run}
    return best_lr(survived) if survived else next(iter(grid))


def resnet20(study: Runs, dm: ImageDataModule, args: argparse.Namespace) -> None:
    """Every ``RESNET_RUNS`` row fine-tuned from the pretrained ResNet-20; the learning rates chosen on seed 1's
    validation top-1 (grid runs ``<label>/grid/lr<rate>``, seed 1's run being the chosen one's)."""
    base = build_model("resnet20_cifar", num_classes=10, in_chans=3,
                       pretrained=str(args.source_dir / RESNET_WEIGHTS)).eval()
    recipe = _cifar_recipe(args.resnet_epochs)
    first = args.seeds[0]
    row = study.get(f"baseline/s{first}", partial(_baseline_row, base, dm))  # one pretrained model: scored once
    for seed in args.seeds[1:]:
        study.get(f"baseline/s{seed}", partial(dict, row))

    def measure(label: str, lr: float, seed: int) -> dict[str, Any]:
        spec = RESNET_RUNS[label]
        if spec["method"] is None:
            return _float_row(base, dm, args.resnet_epochs, lr, recipe, seed, args.work / "resnet20")
        return _compress(spec, args.resnet_epochs, lr, base, dm, recipe, seed, args.work / "resnet20")

    labels = [label for label in RESNET_RUNS if label in args.resnet_runs]
    chosen = {}
    for label in labels:  # seed 1's grids first: a study cut short still has every method once
        grid = {lr: study.get(f"{label}/grid/lr{lr:g}", partial(measure, label, lr, first))
                for lr in RESNET_RUNS[label]["lr_grid"]}
        chosen[label] = chosen_lr(grid)
        study.get(f"{label}/s{first}", partial(dict, grid[chosen[label]], chosen_on="val_top1"))
    for seed in args.seeds[1:]:
        for label in labels:
            study.get(f"{label}/s{seed}", partial(measure, label, chosen[label], seed))


def _resnet_datamodule(args: argparse.Namespace) -> ImageDataModule:
    dm = CIFAR10JPEGDataModule(data_dir=args.data_dir, source_dir=args.source_dir, name="cifar10_jpeg",
                               batch_size=128, eval_batch_size=256, seed=42, val_size=5000,
                               train_subset=args.resnet_train_subset, val_subset=args.resnet_val_subset)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def lenet5(args: argparse.Namespace) -> None:
    """The LeNet-5 / MNIST part: results/binary.json."""
    settings = {"baseline_epochs": args.baseline_epochs, "finetune_epochs": args.finetune_epochs,
                "finetune_lr": args.finetune_lr, "lab_lr": args.lab_lr, "runs": RUNS,
                "recipe": dataclasses.asdict(_recipe(0)), "targets": list(TARGETS)}
    study = Runs(args.out / FIGURES, settings)
    study.data["runs"] = {k: v for k, v in study.data["runs"].items() if k.rsplit("/", 1)[0] not in args.redo}
    study.data["command"] = "python -m benchmarks.studies.binary --parts lenet5 " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--baseline-epochs {args.baseline_epochs:g}",
         f"--finetune-epochs {args.finetune_epochs:g}", f"--finetune-lr {args.finetune_lr:g}",
         f"--lab-lr {args.lab_lr:g}", f"--ttq-lr {args.ttq_lr:g}"])
    dm = MNISTDataModule(data_dir=Path(tempfile.mkdtemp(prefix="binary_")), source_dir=args.source_dir,
                         batch_size=128, eval_batch_size=256, seed=42, val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    for seed in args.seeds:
        base = _trained("lenet5", dm, args.baseline_epochs, seed, args.work)  # distillation's baseline recipe
        study.get(f"baseline/s{seed}", partial(_baseline_row, base, dm))
        for label in args.runs:
            study.get(f"{label}/s{seed}", partial(_compressed_row, label, base, dm, seed, args, args.work))
    print(f"wrote {study.path}")


def resnet20_part(args: argparse.Namespace) -> None:
    """The ResNet-20 / cifar10_jpeg part: results/binary_resnet20.json."""
    settings = {"seeds": args.seeds, "epochs": args.resnet_epochs, "train_subset": args.resnet_train_subset,
                "val_subset": args.resnet_val_subset, "runs": RESNET_RUNS,
                "recipe": dataclasses.asdict(_cifar_recipe(args.resnet_epochs)), "targets": list(TARGETS)}
    study = Runs(args.out / RESNET_FIGURES, settings, diverged_rows=True)
    study.data["command"] = "python -m benchmarks.studies.binary --parts resnet20 " + " ".join(
        [f"--seeds {' '.join(map(str, args.seeds))}", f"--resnet-epochs {args.resnet_epochs:g}",
         f"--resnet-train-subset {args.resnet_train_subset}", f"--resnet-val-subset {args.resnet_val_subset}"])
    resnet20(study, _resnet_datamodule(args), args)
    print(f"wrote {study.path}")


PARTS = {"lenet5": lenet5, "resnet20": resnet20_part}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--baseline-epochs", type=float, default=3, help="lenet5")
    parser.add_argument("--finetune-epochs", type=float, default=1, help="lenet5")
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="lenet5")
    parser.add_argument("--lab-lr", type=float, default=0.001, help="lenet5: LAB's preconditioned step (its yaml's)")
    parser.add_argument("--ttq-lr", type=float, default=1e-5,
                        help="lenet5: TTQ's (LeNet-5 diverged at 0.01 within 3 steps and at 1e-4 within 103: each "
                             "scale's gradient sums a whole layer's, and nothing renormalises a network without batch "
                             "norm); recorded in each run")
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS), metavar="RUN", help="lenet5")
    parser.add_argument("--redo", nargs="+", choices=sorted(RUNS), default=[], metavar="RUN",
                        help="lenet5: run these again (their recorded runs are dropped first)")
    parser.add_argument("--resnet-runs", nargs="+", choices=sorted(RESNET_RUNS), default=list(RESNET_RUNS),
                        metavar="RUN", help="resnet20: which rows to run")
    parser.add_argument("--resnet-epochs", type=float, default=2, help="resnet20: epochs of the training subset")
    parser.add_argument("--resnet-train-subset", type=int, default=6000, help="resnet20: training images")
    parser.add_argument("--resnet-val-subset", type=int, default=2000,
                        help="resnet20: validation images (of the 5,000 held out of training) for the learning rates")
    parser.add_argument("--source-dir", type=Path, default=ROOT.parent / "shared" / "data",
                        help="where mnist/*.gz, cifar10-jpeg and the pretrained ResNet-20 lie (checksums checked)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data", help="resnet20: cifar10_jpeg's decoded cache")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "studies" / "binary")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # accuracy does not depend on it; a shared 2-core machine is not oversubscribed
    args.work.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        PARTS[part](args)
    print("render the report: python -m benchmarks.studies.report binary")
    return 0


# -- the report ---------------------------------------------------------------------------------------------------

def _mean_sd(values: list[float], digits: int = 2, sign: bool = False) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    mean = f"{statistics.mean(values):+.{digits}f}" if sign else f"{statistics.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {sd:.{digits}f}"


def _pairs(runs: dict[str, Any], label: str, diverged: bool = False) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(baseline, run) of each seed that has both, of the runs that trained (or, ``diverged``, of those that did not)."""
    return [(runs[f"baseline/{key.rsplit('/', 1)[1]}"], run) for key, run in sorted(runs.items())
            if key.rsplit("/", 1)[0] == label and f"baseline/{key.rsplit('/', 1)[1]}" in runs
            and ("diverged" in run) == diverged]


def _trained_rows(runs: dict[str, Any], labels: list[str]) -> tuple[list[tuple[str, list[Any]]], list[str]]:
    """Each label with the (baseline, run) pairs that trained, and a line for every run that diverged."""
    rows, diverged = [], []
    for label in labels:
        diverged += [f"{label} diverged at learning rate {r['lr']:g} ({r['diverged'].split(':')[0]})"
                     for _b, r in _pairs(runs, label, diverged=True)]
        if pairs := _pairs(runs, label):
            rows.append((label, pairs))
    return rows, diverged


def _paper_change(label: str, papers: dict[str, dict[str, Any]] = PAPER) -> str:
    paper = papers.get(label)
    return f"{paper['compressed'] - paper['float']:+.2f}" if paper else "-"


def _size_cells(first: dict[str, Any], pairs: list[tuple[Any, Any]]) -> str:
    """File bytes, whole model smaller, quantized layers smaller (a float row: fp32, 1.0x, -)."""
    if first["method"] is None:
        return "fp32 | 1.0x | -"
    return (f"{first['file_bytes']:,} | {_mean_sd([r['compression_ratio'] for _b, r in pairs], 1)}x | "
            f"{_mean_sd([r['quantized_layer_compression'] for _b, r in pairs], 1)}x")


def render(figures: dict[str, Any], resnet: dict[str, Any] | None = None) -> str:
    """results/binary.md: the LeNet-5 part (``figures``), then the ResNet-20 part (``resnet``) where it has run."""
    text = _render_lenet5(figures)
    return text + "\n".join(_resnet_section(resnet)) if resnet else text


def _render_lenet5(figures: dict[str, Any]) -> str:
    runs, settings = figures["runs"], figures["settings"]
    baselines = [run for key, run in sorted(runs.items()) if key.startswith("baseline/")]
    seeds = sorted(key.rsplit("/s", 1)[1] for key in runs if key.startswith("baseline/"))
    lines = ["# Binary and ternary weights on LeNet-5 / MNIST", "",
             f"Generated by `python -m benchmarks.studies.report binary` from `results/{FIGURES}`, written by "
             f"`{figures.get('command', 'python -m benchmarks.studies.binary')}` "
             f"({figures['machine'].get('cpu', 'this machine')}). Seeds: {', '.join(seeds)} (one number: one seed; "
             "otherwise mean ± standard deviation). Every accuracy is the model decoded from the method's stored file; "
             "every size is that file's bytes. Method and departures: see the study's docstring.", ""]
    if not baselines:
        return "\n".join(lines)
    fp32 = baselines[0]["fp32_bytes"]
    lines += [f"Float baseline (Caffe LeNet-5, {settings['baseline_epochs']:g} epochs of the MNIST SGD recipe): test "
              f"top-1 {_mean_sd([b['test_top1'] for b in baselines])}, fp32 weights {fp32:,} bytes. Each method "
              f"fine-tunes that baseline {settings['finetune_epochs']:g} epochs at learning rate "
              f"{settings['finetune_lr']:g} unless the row says otherwise (column lr).", "",
              "| method | quantized layers (w, a bits) | lr | test top-1 | change vs float (points) | paper's change | "
              "val top-1 | file bytes | whole model smaller | quantized layers smaller | compress s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows, diverged = _trained_rows(runs, settings["runs"])
    for label, pairs in rows:
        first = pairs[0][1]
        bits = ", ".join(f"{name} ({w},{a})" for name, (w, a) in first["layer_bits"].items())
        lines.append(
            f"| {label} | {bits} | {first['lr'] if first['finetune_epochs'] else '-'} | "
            f"{_mean_sd([r['test_top1'] for _b, r in pairs])} | "
            f"{_mean_sd([r['test_top1'] - b['test_top1'] for b, r in pairs], sign=True)} | {_paper_change(label)} | "
            f"{_mean_sd([r['val_top1'] for _b, r in pairs])} | {_size_cells(first, pairs)} | "
            f"{_mean_sd([r['compress_seconds'] for _b, r in pairs], 0)} |")
    lines += [f"- {line}." for line in diverged]
    lines += ["", "Paper's change: the published top-1 change on the same network and data, where one exists: "
              + "; ".join(f"{label}: {p['compressed']:.2f} against {p['float']:.2f} float ({p['source']})"
                          for label, p in PAPER.items())
              + ". Published figures on other networks, for scale only: "
              + "; ".join(f"{name}: {text}" for name, text in ELSEWHERE.items()) + ".", "",
              "'quantized layers smaller': fp32 bytes of the binarized / ternarized weights over their stored bytes "
              "(1 bit or 2 bits per weight plus the scales): 32x and 16x less the scales. 'whole model smaller': the "
              "fp32 state dict over the whole file (float layers, biases and the header included).", ""]
    lines += _latency_table(runs, settings)
    loads = [run["load_average"][0] for run in runs.values()]
    lines += [f"Machine load (1-min average) during the runs: {min(loads):.1f} to {max(loads):.1f} on "
              f"{figures['machine'].get('logical_cpus', '?')} logical CPUs: wall times are shared-machine figures.", ""]
    return "\n".join(lines)


def _layers(run: dict[str, Any], every: set[str]) -> str:
    """``run``'s quantized layers counted by (w, a) bits, and the ones of ``every`` it keeps in float."""
    bits: dict[tuple[int, int], int] = {}
    for w, a in run.get("layer_bits", {}).values():
        bits[(w, a)] = bits.get((w, a), 0) + 1
    quantized = ", ".join(f"{n} at ({w},{a})" for (w, a), n in sorted(bits.items()))
    kept = sorted(every - set(run.get("layer_bits", {})))
    return f"{quantized or 'none'}; float: {'all' if kept and len(kept) == len(every) else ', '.join(kept) or 'none'}"


def _resnet_section(figures: dict[str, Any]) -> list[str]:
    """The ResNet-20 / cifar10_jpeg part: each row against the pretrained float model and the float fine-tuned alike."""
    runs, st = figures["runs"], figures["settings"]
    base = next((run for key, run in sorted(runs.items()) if key.startswith("baseline/")), None)
    lines = ["# Binary and ternary weights on ResNet-20 / cifar10_jpeg", "",
             f"From `results/{RESNET_FIGURES}`, written by "
             f"`{figures.get('command', 'python -m benchmarks.studies.binary --parts resnet20')}` "
             f"({figures['machine'].get('cpu', 'this machine')}, one torch thread). Every row starts from the "
             "pretrained ResNet-20 (akamaster, option-A shortcuts; its published 91.78 % is on lossless CIFAR-10, "
             f"the lossy JPEG copy here gives less) and fine-tunes {st['epochs']:g} epochs of a seeded "
             f"{st['train_subset']:,}-image subset of the training split (conf/recipe/cifar_sgd.yaml: SGD, momentum 0.9, "
             f"weight decay {st['recipe']['weight_decay']:g}, cosine, batch 128, crop and flip): "
             f"{st['epochs'] * st['train_subset']:,.0f} images seen. **Budget**: the papers train about 100-400 epochs "
             "of 50,000 lossless images (TTQ's ResNet-20: up to 400 epochs at lr 0.1), so our accuracies are not theirs; "
             "read the changes as relative (method against method on the same budget), and the column 'vs float "
             "fine-tuned' as the cost of the low precision alone.", "",
             "Learning rates: each row tries its `lr_grid` on the first seed and keeps the one with the best top-1 on "
             f"{st['val_subset']:,} validation images (held out of training; the test split plays no part); later "
             "seeds run at that rate. Test top-1 on the whole 10,000-image test split. Layers: every conv and the "
             "classifier quantized, except XNOR-Net (first conv and classifier in float, as the paper does) and TTQ "
             "(first conv in float, classifier ternary, as the authors' ResNet-20 run did).", ""]
    if base is None:
        return lines
    seeds = sorted(key.rsplit("/s", 1)[1] for key in runs if key.startswith("baseline/"))
    floats = _pairs(runs, "Float, fine-tuned")
    tuned = statistics.mean(r["test_top1"] for _b, r in floats) if floats else None
    every = {name for run in runs.values() for name in run.get("layer_bits", {})}
    lines += [f"Pretrained float: test top-1 {base['test_top1']:.2f}, validation top-1 {base['val_top1']:.2f}, fp32 "
              f"weights {base['fp32_bytes']:,} bytes. Seeds: {', '.join(seeds)} (mean ± standard deviation).", "",
              "| method | layers (w, a bits) | lr | test top-1 | change vs pretrained float | change vs float "
              "fine-tuned | paper's change | val top-1 | file bytes | whole model smaller | quantized layers smaller | "
              "fine-tune s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows, diverged = _trained_rows(runs, st["runs"])
    for label, pairs in rows:
        first = pairs[0][1]
        top1 = [r["test_top1"] for _b, r in pairs]
        vs_tuned = "-" if tuned is None or first["method"] is None else f"{statistics.mean(top1) - tuned:+.2f}"
        lines.append(
            f"| {label} | {_layers(first, every)} | {first['lr']:g} | {_mean_sd(top1)} | "
            f"{_mean_sd([r['test_top1'] - b['test_top1'] for b, r in pairs], sign=True)} | {vs_tuned} | "
            f"{_paper_change(label, RESNET_PAPER)} | "
            f"{_mean_sd([r['val_top1'] for _b, r in pairs])} | {_size_cells(first, pairs)} | "
            f"{_mean_sd([r['compress_seconds'] for _b, r in pairs], 0)} |")
    lines += [f"- {line}." for line in diverged]
    lines += ["", "'change vs float fine-tuned': the row's mean test top-1 less the float model's fine-tuned alike "
              "(same subset, epochs and seeds, its own validated learning rate). Paper's change: "
              + "; ".join(f"{label}: {p['compressed']:.2f} against {p['float']:.2f} float ({p['source']})"
                          for label, p in RESNET_PAPER.items())
              + ". Other published figures, not a ResNet-20 change: "
              + "; ".join(f"{name}: {text}" for name, text in RESNET_ELSEWHERE.items()) + ".", "",
              "Validation top-1 of each learning rate tried (first seed; the chosen one in bold):", ""]
    for label in st["runs"]:
        grid = {key.rsplit("/lr", 1)[1]: run for key, run in runs.items() if key.startswith(f"{label}/grid/")}
        if grid:
            ok = {lr: run["val_top1"] for lr, run in grid.items() if "diverged" not in run}
            best = chosen_lr(grid)
            lines.append(f"- {label}: " + ", ".join(
                (f"**{lr}: {top1:.2f}**" if lr == best else f"{lr}: {top1:.2f}") for lr, top1 in ok.items())
                + "".join(f", {lr}: diverged" for lr in grid if lr not in ok) + ".")
    edge = [label for label, spec in st["runs"].items() if len(spec["lr_grid"]) > 1 and f"{label}/s{seeds[0]}" in runs
            and runs[f"{label}/s{seeds[0]}"].get("lr") == max(spec["lr_grid"])]
    if edge:
        lines += ["", f"The rate chosen is the largest tried for {'; '.join(edge)}: a larger one may recover more "
                  "within this budget (not tried)."]
    lines += ["", *_latency_table(runs, st)]
    loads = [run["load_average"][0] for run in runs.values()]
    lines += [f"Machine load (1-min average) during the runs: {min(loads):.1f} to {max(loads):.1f} on "
              f"{figures['machine'].get('logical_cpus', '?')} logical CPUs: wall times are shared-machine figures.", ""]
    return lines


def _latency_table(runs: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    targets = settings["targets"]
    lines = ["## Latency with the per-layer bits (emulated targets)", "",
             "Predicted by each target's roofline from the method's `layer_bits` (the compressed model's "
             "`CompressionResult.layer_bits`), against the float baseline on the same target. Notes: what the "
             "target's report says about the compressed models' bit-widths (beyond what it says of the baseline's). "
             "Both targets are bit-serial; a fixed-precision target (titanxp, cambricon_npu) runs 1- and 2-bit layers at "
             "its narrowest precision and a measured one (local_cpu) times the float PyTorch model, each saying so in "
             "its report's notes (tests/test_binary_ternary.py).", "",
             "| method | " + " | ".join(f"{t} ms | {t} speedup" for t in targets) + " |",
             "|---|" + "---:|---:|" * len(targets)]
    notes: dict[str, set[str]] = {t: set() for t in targets}
    base = next(run for key, run in sorted(runs.items()) if key.startswith("baseline/"))
    lines.append("| float baseline | " + " | ".join(f"{base['latency'][t]['latency_ms']:.4f} | 1.00x"
                                                    for t in targets) + " |")
    for label in settings["runs"]:
        pairs = _pairs(runs, label)
        if not pairs:
            continue
        b, r = pairs[0]
        cells = []
        for t in targets:
            ms = r["latency"][t]["latency_ms"]
            cells.append(f"{ms:.4f} | {b['latency'][t]['latency_ms'] / ms:.2f}x")
            notes[t] |= {n for n in r["latency"][t]["notes"] if "bit" in n and n not in b["latency"][t]["notes"]}
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for t in targets:
        lines.append(f"- {t}: " + ("; ".join(sorted(notes[t])) if notes[t] else "no note on bit-widths") + ".")
    return [*lines, ""]


def _reproduction_rows(runs: dict[str, Any], published: dict[str, dict[str, Any]]) -> list[str]:
    """One row per ``published`` method that has runs: its float -> compressed top-1 beside ours."""
    rows = []
    for label, paper in published.items():
        pairs = _pairs(runs, label)
        if pairs:
            rows.append(f"| {label} | {paper['float']:.2f} -> {paper['compressed']:.2f} "
                        f"({paper['compressed'] - paper['float']:+.2f}) | "
                        f"{_mean_sd([b['test_top1'] for b, _r in pairs])} -> {_mean_sd([r['test_top1'] for _b, r in pairs])} "
                        f"({_mean_sd([r['test_top1'] - b['test_top1'] for b, r in pairs], sign=True)}) | "
                        f"{paper['source']} |")
    return rows


def reproduction(figures: dict[str, Any]) -> str:
    """results/reproductions.md's section: the published binary/ternary changes on LeNet-5 MNIST beside ours."""
    rows = _reproduction_rows(figures["runs"], PAPER)
    if not rows:
        return ""
    return "\n".join([
        "## Binary networks on LeNet-5 / MNIST (issue 15)", "",
        f"Rendered from `results/{FIGURES}` (`{figures.get('command', 'python -m benchmarks.studies.binary')}`; "
        "every method, file sizes and latencies in `results/binary.md`). Test top-1, float -> binarized (change). "
        "Departure: ours fine-tunes a trained baseline for a few epochs with the run's SGD recipe.", "",
        "| method | published | ours | source of the published figure |", "|---|---|---|---|", *rows, ""])


def resnet_reproduction(figures: dict[str, Any]) -> str:
    """results/reproductions.md's section: the published ternary change on ResNet-20 CIFAR-10 beside ours."""
    rows = _reproduction_rows(figures["runs"], RESNET_PAPER)
    if not rows:
        return ""
    st = figures["settings"]
    return "\n".join([
        "## Ternary ResNet-20 on CIFAR-10 (issue 15)", "",
        f"Rendered from `results/{RESNET_FIGURES}` (`{figures.get('command', '')}`; every method, file sizes and "
        "latencies in `results/binary.md`). Test top-1, pretrained float -> ternary (change). Departures: ours is on "
        "the lossy JPEG copy (cifar10_jpeg) and fine-tunes the pretrained model "
        f"{st['epochs']:g} epochs of {st['train_subset']:,} training images (theirs: up to 400 epochs of 50,000): "
        "ours measures what that short fine-tuning recovers, so it does not test their figure.", "",
        "| method | published | ours | source of the published figure |", "|---|---|---|---|", *rows, "",
        *_against_float_finetuned(figures["runs"], RESNET_PAPER)])


def _against_float_finetuned(runs: dict[str, Any], labels: Iterable[str]) -> list[str]:
    """The float model fine-tuned alike, and each of ``labels``' change against it (fine-tuning on the lossy
    copy alone moves the pretrained model's accuracy)."""
    floats = [r["test_top1"] for _b, r in _pairs(runs, "Float, fine-tuned")]
    if not floats:
        return []
    changes = [f"{label} {statistics.mean(r['test_top1'] for _b, r in pairs) - statistics.mean(floats):+.2f}"
               for label in labels if (pairs := _pairs(runs, label))]
    return [f"The float model fine-tuned alike reaches {_mean_sd(floats)}; against it: {', '.join(changes)}.", ""]


if __name__ == "__main__":
    raise SystemExit(main())
