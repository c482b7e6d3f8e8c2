"""Hessian-weighted quantization and vector quantization (issue 16): Choi et al. 2017 against plain k-means,
ECSQ against k-means at equal bits, residual quantization and Q-CNN against product quantization.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.hessian_quantization --parts scalar vq resnet20
    python -m benchmarks.studies.report hessian_quantization          # results/hessian_quantization.md

- ``scalar``: LeNet-5 on MNIST (trained ``--baseline-epochs`` with conf/recipe/mnist_sgd's recipe), every
  conv/linear layer shared into 2**bits values at 2, 3 and 4 bits, codes Huffman-coded, without and with
  ``--finetune-epochs`` of shared-value fine-tuning: plain k-means per layer (Deep Compression's) and over
  the whole network, Hessian-weighted k-means of the whole network (``fisher``: the Gauss-Newton diagonal;
  ``adam``: sqrt of Adam's second moment), ECSQ by uniform quantization (plain and Hessian-weighted means)
  and iterative ECSQ (``lagrangian``, 2**4 starting clusters, two multipliers, no fine-tuning).
- ``vq``: the same LeNet-5, its conv2 and fc1 (the first and last layers stay float32, as in Gong et al.)
  by PQ, RQ and Q-CNN without fine-tuning; RQ with one-bit stages against PQ with two-bit codewords is an
  exact equal-size pair, Q-CNN has PQ's size at the same settings by construction.
- ``resnet20``: akamaster's pretrained ResNet-20 on ``cifar10_jpeg``: plain against Hessian-weighted
  k-means of the whole network at 2, 3 and 4 bits, without and with ``--cifar-finetune-epochs`` of
  shared-value fine-tuning over ``--cifar-train-subset`` training images; importance from
  ``--cifar-batches`` training batches, test top-1 on ``--cifar-test-subset`` test images (a subset, for
  this shared 2-core machine), validation top-1 on the 5,000-image validation split's first 1,024.

Settings are fixed in advance; test top-1 is reported, validation top-1 beside it. Resumable: each finished
run is written to the JSON at once and skipped on a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import json
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
from benchmarks.studies.recipes import conf_recipe
from benchmarks.studies.runs import Runs
from benchmarks.training import evaluate, fit
from hardware.measured import LocalCPU
from methods import create_method

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
RESNET20 = SHARED / "weights" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
BITS = (2, 3, 4)
#: scalar quantizers, by label: (method, settings); all Huffman-code their indices
SCALAR: dict[str, tuple[str, dict[str, Any]]] = {
    "k-means, per layer": ("hessian_kmeans", {"importance": "none", "scope": "layer", "shared_gradient": "sum"}),
    "k-means, network": ("hessian_kmeans", {"importance": "none"}),
    "Hessian k-means (fisher)": ("hessian_kmeans", {"importance": "fisher", "calibration_batches": 2}),
    "Hessian k-means (adam)": ("hessian_kmeans", {"importance": "adam", "calibration_batches": 2}),
    "ECSQ uniform": ("ecsq", {"importance": "none"}),
    "ECSQ uniform, Hessian means": ("ecsq", {"importance": "fisher", "calibration_batches": 2}),
}
#: 2 batches of 128 training images for the importance: the exact Fisher diagonal (per-sample gradients
#: for each of 10 classes) took over 7 minutes for 8 batches on this loaded machine
FINETUNED = ("k-means, per layer", "k-means, network", "Hessian k-means (fisher)")
#: fine-tuning learning rate of the quantizers trained with their clusters' mean gradient (Choi et al.); the
#: per-layer k-means keeps Deep Compression's summed gradient at ``--finetune-lr`` (summed over a
#: network-wide cluster it diverged at 1e-4)
MEAN_GRADIENT_LR = 1e-3
LAGRANGIAN = (0.005, 0.02)
#: vector quantizers of LeNet-5's conv2 and fc1, by label: (method, settings)
_VQ_LAYERS = {"layers": {"first": False, "last": False}}
VQ: dict[str, tuple[str, dict[str, Any]]] = {
    **{f"{m} b={b} d={d}": (m, {"bits": b, "subvector_length": d, "subvector_length_per_layer": {"conv2": 5 * d // 4},
                                **_VQ_LAYERS})
       for m in ("pq", "qcnn") for b, d in ((2, 4), (4, 4), (4, 8))},
    **{f"rq b=1x2 d={d}": ("rq", {"bits": 1, "stages": 2, "subvector_length": d,
                                  "subvector_length_per_layer": {"conv2": 5 * d // 4}, **_VQ_LAYERS}) for d in (4, 8)},
    "rq b=2x2 d=4": ("rq", {"bits": 2, "stages": 2, "subvector_length": 4, "subvector_length_per_layer": {"conv2": 5},
                            **_VQ_LAYERS}),
}


def _mnist_recipe(epochs: float) -> RecipeConfig:
    """conf/recipe/mnist_sgd.yaml's recipe at ``epochs``."""
    return conf_recipe("mnist_sgd", epochs)


def _scores(model: nn.Module, dm: Any) -> dict[str, float]:
    model.eval()
    return {"test_top1": evaluate(model, dm, "test")["top1"], "val_top1": evaluate(model, dm, "val")["top1"]}


KEPT = ("size_total_bytes", "size_fixed_length_bytes", "size_weights_bytes", "size_codebook_bytes", "bits_per_weight",
        "compression_ratio", "weighted_distortion")


def _compress(method: str, settings: dict[str, Any], base: nn.Module, dm: Any, recipe: RecipeConfig,
              work: Path) -> dict[str, Any]:
    """One compression of ``base`` by ``method`` with ``settings``: its scores and stored sizes."""
    ctx = make_context(dm, LocalCPU(), recipe, TrainerConfig(progress_bar=False), 0, Path(tempfile.mkdtemp(dir=work)))
    result = create_method(method, **settings).compress(base, ctx)
    errors = {k: v for k, v in result.metrics.items() if k.endswith(("response_error", "response_error_pq"))}
    return {"method": method, "settings": settings, "stored_bytes": result.stored_bytes, **_scores(result.model, dm),
            **{k: result.metrics[k] for k in KEPT if k in result.metrics}, **errors}


def _lenet5(dm: MNISTDataModule, epochs: float, work: Path) -> nn.Module:
    torch.manual_seed(1)
    model = build_model("lenet5", num_classes=10, in_chans=1)
    path = work / f"lenet5_s1_e{epochs:g}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        fit(model, dm, _mnist_recipe(epochs), TrainerConfig(progress_bar=False), seed=1)
        torch.save(model.state_dict(), path)
    return model.eval()


def scalar(runs: Runs, args: argparse.Namespace, work: Path) -> None:
    dm = _mnist(args)
    base = _lenet5(dm, args.baseline_epochs, work)
    runs.get("scalar/baseline", lambda: {"stored_bytes": 4 * sum(t.numel() for t in base.state_dict().values()),
                                         **_scores(base, dm)})
    recipe = _mnist_recipe(args.finetune_epochs)
    for lagrange in LAGRANGIAN:
        full = {"scheme": "lagrangian", "lagrange_multiplier": lagrange, "importance": "fisher", "calibration_batches": 2,
                "bits": 4, "finetune": {"epochs": 0.0}}
        runs.get(f"scalar/ECSQ lagrangian {lagrange:g}/b4/ft0", partial(_compress, "ecsq", full, base, dm, recipe, work))
    for epochs in (0.0, args.finetune_epochs):
        for bits in BITS:
            for label, (method, settings) in SCALAR.items():
                if epochs and label not in FINETUNED:
                    continue
                full = {**settings, "bits": bits, "finetune": {"epochs": epochs, "lr": _finetune_lr(settings, args)}}
                runs.get(f"scalar/{label}/b{bits}/ft{epochs:g}", partial(_compress, method, full, base, dm, recipe, work))


def _finetune_lr(settings: dict[str, Any], args: argparse.Namespace) -> float:
    """Deep Compression's summed cluster gradient at ``--finetune-lr``, Choi et al.'s mean gradient at its own."""
    return args.finetune_lr if settings.get("shared_gradient") == "sum" else MEAN_GRADIENT_LR


def vq(runs: Runs, args: argparse.Namespace, work: Path) -> None:
    dm = _mnist(args)
    base = _lenet5(dm, args.baseline_epochs, work)
    for label, (method, settings) in VQ.items():
        runs.get(f"vq/{label}", partial(_compress, method, settings, base, dm, _mnist_recipe(1), work))


def resnet20(runs: Runs, args: argparse.Namespace, work: Path) -> None:
    dm = CIFAR10JPEGDataModule(data_dir=ROOT / "data", source_dir=SHARED, name="cifar10_jpeg", batch_size=64,
                               eval_batch_size=256, seed=42, val_size=5000, val_subset=1024,
                               train_subset=args.cifar_train_subset, test_subset=args.cifar_test_subset, mean=[0.485, 0.456, 0.406],
                               std=[0.229, 0.224, 0.225], augment=False)
    dm.prepare_data()
    dm.setup("fit")
    base = build_model("resnet20_cifar", 10, 3, RESNET20).eval()
    runs.get("resnet20/baseline", lambda: _scores(base, dm))
    recipe = RecipeConfig(epochs=max(args.cifar_finetune_epochs, 1.0), lr=0.01, weight_decay=0.0)
    for epochs in (0.0, args.cifar_finetune_epochs):
        for bits in BITS:
            for label in ("k-means, network", "Hessian k-means (fisher)"):
                method, settings = SCALAR[label]
                full = {**settings, "bits": bits, "calibration_batches": args.cifar_batches,
                        "finetune": {"epochs": epochs, "lr": _finetune_lr(settings, args)}}
                runs.get(f"resnet20/{label}/b{bits}/ft{epochs:g}", partial(_compress, method, full, base, dm, recipe, work))


def _mnist(args: argparse.Namespace) -> MNISTDataModule:
    dm = MNISTDataModule(data_dir=ROOT / "data", source_dir=SHARED, batch_size=128, eval_batch_size=256, seed=42,
                         val_size=5000)
    dm.prepare_data()
    dm.setup("fit")
    return dm


PARTS: dict[str, Callable[[Runs, argparse.Namespace, Path], None]] = {"scalar": scalar, "vq": vq, "resnet20": resnet20}
#: the settings each part's runs depend on: changing one drops that part's runs only
PART_SETTINGS = {"scalar": ("baseline_epochs", "finetune_epochs", "finetune_lr"), "vq": ("baseline_epochs",),
                 "resnet20": ("cifar_test_subset", "cifar_batches", "cifar_train_subset", "cifar_finetune_epochs",
                              "finetune_lr")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    parser.add_argument("--baseline-epochs", type=float, default=3)
    parser.add_argument("--finetune-epochs", type=float, default=0.5)
    parser.add_argument("--finetune-lr", type=float, default=1e-4, help="conf/method/kmeans.yaml's")
    parser.add_argument("--cifar-test-subset", type=int, default=2000)
    parser.add_argument("--cifar-batches", type=int, default=4, help="training batches of 64 for the importance")
    parser.add_argument("--cifar-train-subset", type=int, default=10000, help="training images the fine-tunings see")
    parser.add_argument("--cifar-finetune-epochs", type=float, default=1.0, help="shared-value fine-tuning of ResNet-20")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "hessian_quantization.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k not in ("parts", "out")}
    runs = Runs(args.out, settings, parts=PART_SETTINGS, running=args.parts)
    work = ROOT / "outputs" / "hessian_quantization"
    work.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        PARTS[part](runs, args, work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ------------------------------------------------------------------------------ the report
def _cell(run: dict[str, Any] | None) -> str:
    """test top-1, stored KB, code bits per weight of one run."""
    if run is None:
        return "-"
    bits = f", {run['bits_per_weight']:.2f} b/w" if "bits_per_weight" in run else ""
    return f"{run['test_top1']:.2f} ({run['stored_bytes'] / 1024:.1f} KB{bits})"


def _delta(runs: dict[str, Any], a: str, b: str) -> str:
    """Test top-1 of run ``a`` minus run ``b``, in points, when both exist."""
    if a not in runs or b not in runs:
        return "-"
    return f"{runs[a]['test_top1'] - runs[b]['test_top1']:+.2f}"


def _scalar_section(runs: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    base = runs.get("scalar/baseline")
    if base is None:
        return []
    ft = settings["finetune_epochs"]
    out = ["## Scalar quantization of LeNet-5 (MNIST), codes Huffman-coded", "",
           f"Baseline: LeNet-5 trained {settings['baseline_epochs']:g} epochs, test top-1 {base['test_top1']:.2f} "
           f"(validation {base['val_top1']:.2f}), {base['stored_bytes'] / 1024:.1f} KB as float32. Every conv/linear "
           "layer shared; a cell is test top-1 (stored file, average Huffman code bits per weight). Hessian (fisher) "
           "and Adam importance from 2 training batches of 128; each run's settings are in the JSON.", ""]
    for epochs, title in ((0.0, "without fine-tuning"),
                          (ft, f"after {ft:g} epoch of shared-value fine-tuning (k-means per layer: summed cluster "
                               f"gradients at lr {settings['finetune_lr']:g}, as Deep Compression; the others: mean "
                               f"cluster gradients at lr {MEAN_GRADIENT_LR:g}, as Choi et al.)")):
        labels = [label for label in SCALAR if not epochs or label in FINETUNED]
        out += [f"### {title[0].upper()}{title[1:]}", "", "| quantizer | " + " | ".join(f"{b} bits" for b in BITS) + " |",
                "|---|" + "---|" * len(BITS)]
        out += [f"| {label} | " + " | ".join(_cell(runs.get(f"scalar/{label}/b{b}/ft{epochs:g}")) for b in BITS) + " |"
                for label in labels]
        pairs = [("Hessian k-means (fisher)", "k-means, network"), ("Hessian k-means (fisher)", "k-means, per layer")]
        if not epochs:
            pairs.append(("ECSQ uniform", "k-means, network"))
        out += ["", "Test top-1 change at equal bits, in points: " + "; ".join(
            f"{b} bits: " + ", ".join(f"{a} - {z} {_delta(runs, f'scalar/{a}/b{b}/ft{epochs:g}', f'scalar/{z}/b{b}/ft{epochs:g}')}"
                                      for a, z in pairs)
            for b in BITS) + ".", ""]
    lagr = [(lam, runs.get(f"scalar/ECSQ lagrangian {lam:g}/b4/ft0")) for lam in LAGRANGIAN]
    out += ["### Iterative ECSQ (Lagrangian), 16 starting clusters, Hessian (fisher) weighted, no fine-tuning", "",
            "| lagrange_multiplier | test top-1 (stored, bits per weight) |", "|---|---|"]
    out += [f"| {lam:g} | {_cell(run)} |" for lam, run in lagr]
    return [*out, ""]


def _vq_section(runs: dict[str, Any]) -> list[str]:
    rows = [(label, runs.get(f"vq/{label}")) for label in VQ]
    if not any(run for _label, run in rows):
        return []
    out = ["## Vector quantization of LeNet-5's conv2 and fc1 (no fine-tuning)", "",
           "b: bits per codeword index (RQ: bits x stages), d: sub-vector length (conv2: 5d/4, a divisor of its 500 "
           "columns). Response error: ||(W - W_hat) x||^2 / ||W x||^2 on the calibration inputs, per layer.", "",
           "| quantizer | stored KB | test top-1 | val top-1 | response error conv2 | response error fc1 |",
           "|---|---|---|---|---|---|"]
    for label, run in rows:
        if run is None:
            continue
        errors = [f"{run[f'layer/{n}/response_error']:.4f} (PQ {run[f'layer/{n}/response_error_pq']:.4f})"
                  if f"layer/{n}/response_error" in run else "-" for n in ("conv2", "fc1")]
        out.append(f"| {label} | {run['stored_bytes'] / 1024:.1f} | {run['test_top1']:.2f} | {run['val_top1']:.2f} | "
                   f"{errors[0]} | {errors[1]} |")
    out += ["", "Equal-size pairs, test top-1 change in points: " + "; ".join(
        [f"qcnn - pq at b={b} d={d}: {_delta(runs, f'vq/qcnn b={b} d={d}', f'vq/pq b={b} d={d}')}"
         for b, d in ((2, 4), (4, 4), (4, 8))]
        + [f"rq b=1x2 - pq b=2 at d={d}: {_delta(runs, f'vq/rq b=1x2 d={d}', f'vq/pq b=2 d={d}')}" for d in (4,)]) + ".",
            ""]
    return out


def _resnet_section(runs: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    base = runs.get("resnet20/baseline")
    if base is None:
        return []
    ft = settings.get("cifar_finetune_epochs", 0.0)
    labels = ("k-means, network", "Hessian k-means (fisher)")
    out = ["## ResNet-20 (akamaster's pretrained weights), cifar10_jpeg", "",
           f"Test top-1 on a {settings['cifar_test_subset']}-image subset of the test split, importance from "
           f"{settings['cifar_batches']} training batches of 64; all 20 conv/linear layers shared, first and last "
           f"included. Float baseline: {base['test_top1']:.2f} (validation {base['val_top1']:.2f}; this project's "
           "JPEG copy of CIFAR-10 gives the pretrained net ~81%, as in results/quantization_ptq.md: read the "
           "accuracies relative to it).", ""]
    for epochs in sorted({0.0, ft}):
        if not any(f"resnet20/{label}/b{b}/ft{epochs:g}" in runs for label in labels for b in BITS):
            continue
        title = (f"After {epochs:g} epoch of shared-value fine-tuning over {settings['cifar_train_subset']} training "
                 f"images (mean cluster gradients at lr {MEAN_GRADIENT_LR:g}, as Choi et al.; far below a full CIFAR "
                 "schedule)") if epochs else "Without fine-tuning"
        out += [f"### {title}", "", "| quantizer | " + " | ".join(f"{b} bits" for b in BITS) + " |",
                "|---|" + "---|" * len(BITS)]
        out += [f"| {label} | " + " | ".join(_cell(runs.get(f"resnet20/{label}/b{b}/ft{epochs:g}")) for b in BITS) + " |"
                for label in labels]
        out += ["", "Test top-1 change at equal bits, Hessian k-means (fisher) - k-means, network, in points: " + "; ".join(
            f"{b} bits {_delta(runs, f'resnet20/{labels[1]}/b{b}/ft{epochs:g}', f'resnet20/{labels[0]}/b{b}/ft{epochs:g}')}"
            for b in BITS) + ".", ""]
    return out


def render(figures: dict[str, Any]) -> str:
    """results/hessian_quantization.md from results/hessian_quantization.json."""
    runs, settings = figures["runs"], figures["settings"]
    machine = figures.get("machine", {})
    return "\n".join([
        "# Hessian-weighted quantization and vector quantization (issue 16)", "",
        "Written by `python -m benchmarks.studies.report hessian_quantization` from results/hessian_quantization.json "
        "(`OMP_NUM_THREADS=1 python -m benchmarks.studies.hessian_quantization`). One seed; settings "
        f"`{json.dumps(settings, sort_keys=True)}`; machine: {machine.get('cpu', machine) if isinstance(machine, dict) else machine}.",
        "",
        *_scalar_section(runs, settings), *_vq_section(runs), *_resnet_section(runs, settings)])
