"""The runs behind results/reproductions.md (Deep Compression) and results/quantization_fixed_point.md.

Drives the methods through benchmarks.context.make_context (the same fine-tuning and
evaluation the pipeline gives a method), on MNIST with the mnist_sgd recipe:

    python results/quantization_codebook_bench.py baseline lenet_300_100 42
    python results/quantization_codebook_bench.py deep_compression lenet_300_100 42 conf/experiment/deep_compression_lenet_300_100.yaml [overrides.yaml] [tag]
    python results/quantization_codebook_bench.py fixed_point lenet_300_100 42

Outputs go to outputs/quantization_codebook/ (JSON per run). Data: $COMPRESSBENCH_SOURCE_DATA
(default ../shared/data). One torch thread: on a shared 2-core machine two threads made small
ops ~30x slower.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

import benchmarks.models  # noqa: E402,F401  (registers the LeNets)
from benchmarks.context import make_context  # noqa: E402
from benchmarks.data import MNISTDataModule  # noqa: E402
from benchmarks.schema import RecipeConfig, TrainerConfig  # noqa: E402
from benchmarks.training import fit  # noqa: E402
from hardware.measured import LocalCPU  # noqa: E402
from methods.quantization.deep_compression import DeepCompression  # noqa: E402
from methods.quantization.fixed_point import FixedPoint  # noqa: E402

OUT = ROOT / "outputs" / "quantization_codebook"


def context(workdir: Path, seed: int):
    source = os.environ.get("COMPRESSBENCH_SOURCE_DATA", str(ROOT.parent / "shared" / "data"))
    data = MNISTDataModule(data_dir=ROOT / "data", source_dir=source, batch_size=128, eval_batch_size=1000,
                           val_size=5000, seed=seed)
    data.prepare_data()
    data.setup("fit")
    recipe = RecipeConfig(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf/recipe/mnist_sgd.yaml")))
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


def run_deep_compression(name: str, seed: int, preset: str, overrides: str | None = None, tag: str = "") -> dict:
    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "conf/method/deep_compression.yaml"), OmegaConf.load(preset)["method"])
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.load(overrides)["method"])
    cfg = OmegaConf.to_container(cfg)
    cfg.pop("_target_")
    _, _, _, ctx = context(OUT / f"dc_{name}_s{seed}{tag}", seed)
    model = load_baseline(name, seed)
    start = time.time()
    result = DeepCompression(**cfg).compress(model, ctx)
    return {"model": name, "seed": seed, "config": cfg, "baseline_test": ctx.evaluate(model, "test"),
            "final_test": ctx.evaluate(result.model, "test"), "stored_bytes": result.stored_bytes,
            "seconds": time.time() - start, "metrics": result.metrics, "layer_bits": result.layer_bits}


def run_fixed_point(name: str, seed: int, finetune_epochs: float = 0.5, lr: float = 0.01) -> list[dict]:
    _, _, _, ctx = context(OUT / f"fxp_{name}_s{seed}", seed)
    model = load_baseline(name, seed)
    rows = [{"config": "float baseline", "test_top1": ctx.evaluate(model, "test")["top1"]}]
    tuned = ctx.finetune(copy.deepcopy(model), finetune_epochs, lr=lr)
    rows.append({"config": f"float fine-tuned {finetune_epochs} epoch", "test_top1": ctx.evaluate(tuned, "test")["top1"]})
    for fl, rounding, epochs in [(12, "stochastic", 0), (12, "nearest", 0), (12, "stochastic", finetune_epochs),
                                 (12, "nearest", finetune_epochs), (4, "nearest", 0), (4, "nearest", finetune_epochs),
                                 (4, "stochastic", finetune_epochs), (2, "nearest", 0), (2, "nearest", finetune_epochs),
                                 (2, "stochastic", finetune_epochs)]:
        result = FixedPoint(word_length=16, integer_bits=16 - fl, fraction_bits=fl, rounding=rounding,
                            finetune_epochs=epochs, finetune_lr=lr).compress(model, ctx)
        rows.append({"config": f"<{16 - fl},{fl}> {rounding}, fine-tune {epochs}", "fraction_bits": fl,
                     "rounding": rounding, "finetune_epochs": epochs,
                     "test_top1": ctx.evaluate(result.model, "test")["top1"], "stored_bytes": result.stored_bytes})
    return rows


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    kind, name, seed, *rest = sys.argv[1:]
    runners = {"baseline": run_baseline, "deep_compression": run_deep_compression, "fixed_point": run_fixed_point}
    output = runners[kind](name, int(seed), *rest)
    tag = rest[2] if kind == "deep_compression" and len(rest) > 2 else ""
    (OUT / f"{kind}_{name}_s{seed}{tag}.json").write_text(json.dumps(output, indent=1))
    print(json.dumps(output)[:2000])
