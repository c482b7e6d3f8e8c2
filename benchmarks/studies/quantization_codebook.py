"""The runs behind results/reproductions.md (Deep Compression) and results/quantization_fixed_point.md.

Drives the methods through benchmarks.context.make_context (the same fine-tuning and
evaluation the pipeline gives a method), on MNIST with the mnist_sgd recipe:

    python -m benchmarks.studies.quantization_codebook baseline lenet_300_100 42
    python -m benchmarks.studies.quantization_codebook deep_compression lenet_300_100 42 \
        conf/experiment/deep_compression_lenet_300_100.yaml [overrides.yaml] [tag]
    python -m benchmarks.studies.quantization_codebook fixed_point lenet_300_100 42

The Deep Compression settings are conf/method/deep_compression.yaml with the preset's ``method:``
block (and the overrides file's) merged in, built by ``methods.create_method``.

Outputs go to outputs/quantization_codebook/ (JSON per run), except the fixed-point figures:
results/quantization_fixed_point.json, rendered by ``python -m benchmarks.studies.report``.
Data: $COMPRESSBENCH_SOURCE_DATA (default ../shared/data). One torch thread: on a shared 2-core machine two threads made small
ops ~30x slower.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import timm
import torch
from omegaconf import OmegaConf

import benchmarks.models  # noqa: F401  (registers the LeNets)
from benchmarks.context import make_context
from benchmarks.data import MNISTDataModule
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import fit
from hardware.measured import LocalCPU
from methods import create_method
from methods.base import CompressionMethod
from methods.registry import method_config

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "outputs" / "quantization_codebook"
#: the fixed-point figures behind results/quantization_fixed_point.md (python -m benchmarks.studies.report)
FIXED_POINT_JSON = ROOT / "results" / "quantization_fixed_point.json"
FIXED_POINT_WORD = 16  #: bits of every fixed-point word of the study


def context(workdir: Path, seed: int):
    source = os.environ.get("COMPRESSBENCH_SOURCE_DATA", str(ROOT.parent / "shared" / "data"))
    data = MNISTDataModule(data_dir=ROOT / "data", source_dir=source, batch_size=128, eval_batch_size=1000,
                           val_size=5000, seed=seed)
    data.prepare_data()
    data.setup("fit")
    recipe = RecipeConfig(**cast(dict[str, Any], OmegaConf.to_container(OmegaConf.load(ROOT / "conf/recipe/mnist_sgd.yaml"))))
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0)
    return data, recipe, trainer, make_context(data, LocalCPU(), recipe, trainer, seed, workdir)


def baseline_path(name: str, seed: int) -> Path:
    return OUT / f"baseline_{name}_s{seed}.pt"


def load_baseline(name: str, seed: int) -> torch.nn.Module:
    model = timm.create_model(name)
    model.load_state_dict(torch.load(baseline_path(name, seed), weights_only=True))
    return model


def run_baseline(name: str, seed: int) -> dict:
    data, recipe, trainer, ctx = context(OUT / f"baseline_{name}_s{seed}", seed)
    torch.manual_seed(seed)
    model = fit(timm.create_model(name), data, recipe, trainer, seed=seed)
    torch.save(model.state_dict(), baseline_path(name, seed))
    return {"model": name, "seed": seed, **ctx.evaluate(model, "test")}


def deep_compression_overrides(preset: str | Path, overrides: str | Path | None = None) -> dict[str, Any]:
    """The ``method:`` block of a preset, with an overrides file's merged over it: what the study changes."""
    settings = OmegaConf.select(OmegaConf.load(preset), "method")
    if overrides:
        settings = OmegaConf.merge(settings, OmegaConf.select(OmegaConf.load(overrides), "method"))
    return cast(dict[str, Any], OmegaConf.to_container(settings))


def fixed_point_method(fraction_bits: int, rounding: str, finetune_epochs: float, lr: float) -> CompressionMethod:
    """16-bit ``<16 - fraction_bits, fraction_bits>`` fixed point (conf/method/fixed_point.yaml otherwise)."""
    return create_method("fixed_point", word_length=FIXED_POINT_WORD, integer_bits=FIXED_POINT_WORD - fraction_bits, fraction_bits=fraction_bits,
                         rounding=rounding, finetune={"epochs": finetune_epochs, "lr": lr})


def run_deep_compression(name: str, seed: int, preset: str, overrides: str | None = None, tag: str = "") -> dict:
    changes = deep_compression_overrides(preset, overrides)
    cfg = cast(dict[str, Any], OmegaConf.to_container(method_config("deep_compression", **changes)))
    cfg.pop("_target_")
    _, _, _, ctx = context(OUT / f"dc_{name}_s{seed}{tag}", seed)
    model = load_baseline(name, seed)
    start = time.time()
    result = create_method("deep_compression", **changes).compress(model, ctx)
    return {"model": name, "seed": seed, "config": cfg, "baseline_test": ctx.evaluate(model, "test"),
            "final_test": ctx.evaluate(result.model, "test"), "stored_bytes": result.stored_bytes,
            "seconds": time.time() - start, "metrics": result.metrics, "layer_bits": result.layer_bits}


def run_fixed_point(name: str, seed: int, finetune_epochs: float = 0.5, lr: float = 0.01) -> dict[str, Any]:
    data, recipe, _, ctx = context(OUT / f"fxp_{name}_s{seed}", seed)
    model = load_baseline(name, seed)
    rows = [{"config": "float baseline", "finetune_epochs": 0, "test_top1": ctx.evaluate(model, "test")["top1"]}]
    tuned = ctx.finetune(copy.deepcopy(model), finetune_epochs, lr=lr)
    rows.append({"config": f"float fine-tuned {finetune_epochs} epoch", "finetune_epochs": finetune_epochs,
                 "test_top1": ctx.evaluate(tuned, "test")["top1"]})
    for fl, rounding, epochs in [(12, "stochastic", 0), (12, "nearest", 0), (12, "stochastic", finetune_epochs),
                                 (12, "nearest", finetune_epochs), (4, "nearest", 0), (4, "nearest", finetune_epochs),
                                 (4, "stochastic", finetune_epochs), (2, "nearest", 0), (2, "nearest", finetune_epochs),
                                 (2, "stochastic", finetune_epochs)]:
        result = fixed_point_method(fl, rounding, epochs, lr).compress(model, ctx)
        rows.append({"config": f"<{FIXED_POINT_WORD - fl},{fl}> {rounding}, fine-tune {epochs}", "fraction_bits": fl,
                     "rounding": rounding, "finetune_epochs": epochs,
                     "test_top1": ctx.evaluate(result.model, "test")["top1"], "stored_bytes": result.stored_bytes})
    return {"date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC", "model": name, "seed": seed,
            "word_length": FIXED_POINT_WORD, "finetune_epochs": finetune_epochs, "lr": lr,
            "recipe": {"epochs": recipe.epochs, "scheduler": recipe.scheduler},
            "images": {split: len(getattr(data, f"data_{split}")) for split in ("train", "val", "test")},
            "float32_bytes": 4 * sum(p.numel() for p in model.parameters()), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("baseline", "deep_compression", "fixed_point"))
    parser.add_argument("model", help="lenet_300_100 | lenet5")
    parser.add_argument("seed", type=int)
    parser.add_argument("preset", nargs="?", help="deep_compression: a conf/experiment yaml with a method: block")
    parser.add_argument("overrides", nargs="?", help="deep_compression: a yaml whose method: block is merged last")
    parser.add_argument("tag", nargs="?", default="", help="deep_compression: suffix of the output names")
    args = parser.parse_args(argv)
    if args.kind == "deep_compression" and not args.preset:
        parser.error("deep_compression needs a preset, e.g. conf/experiment/deep_compression_lenet_300_100.yaml")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.kind == "deep_compression":
        output: Any = run_deep_compression(args.model, args.seed, args.preset, args.overrides, args.tag)
    else:
        runners: dict[str, Callable[[str, int], Any]] = {"baseline": run_baseline, "fixed_point": run_fixed_point}
        output = runners[args.kind](args.model, args.seed)
    record = FIXED_POINT_JSON if args.kind == "fixed_point" else OUT / f"{args.kind}_{args.model}_s{args.seed}{args.tag}.json"
    record.write_text(json.dumps(output, indent=1) + "\n")
    print(json.dumps(output)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
