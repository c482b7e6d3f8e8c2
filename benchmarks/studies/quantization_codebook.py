"""The runs behind results/reproductions.md (Deep Compression) and results/quantization_fixed_point.md.

Drives the methods through benchmarks.context.make_context (the same fine-tuning and
evaluation the pipeline gives a method), on MNIST with the mnist_sgd recipe:

    python -m benchmarks.studies.quantization_codebook baseline lenet_300_100 42
    python -m benchmarks.studies.quantization_codebook deep_compression lenet_300_100 42 \
        conf/experiment/deep_compression_lenet_300_100.yaml [overrides.yaml] [tag] [--settings TEXT]
    python -m benchmarks.studies.quantization_codebook fixed_point lenet_300_100 42

The Deep Compression settings are conf/method/deep_compression.yaml with the preset's ``method:``
block (and the overrides file's) merged in, built by ``methods.create_method``.

Outputs go to outputs/quantization_codebook/ (JSON per run). The figures the reports show go to
results/: a Deep Compression run becomes entry ``dc_<model>_s<seed><tag>`` of
results/deep_compression_mnist.json (replacing one of that name), the fixed-point grid
results/quantization_fixed_point.json; ``python -m benchmarks.studies.report`` renders the reports.
Data: $COMPRESSBENCH_SOURCE_DATA (default ../shared/data). One torch thread: on a shared 2-core
machine two threads made small ops ~30x slower.
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
from typing import Any, NamedTuple, cast

import timm
import torch
from omegaconf import OmegaConf

import benchmarks.models  # noqa: F401  (registers the LeNets)
from benchmarks.context import make_context
from benchmarks.data import MNISTDataModule
from benchmarks.schema import TrainerConfig
from benchmarks.studies.deep_compression_selection import RUNS
from benchmarks.studies.recipes import conf_recipe
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


class FixedPointGoal(NamedTuple):
    """A fixed-point format and rounding that, fine-tuned, should stay within ``points`` of float top-1."""

    fraction_bits: int
    rounding: str
    points: float


#: Issue 5's fixed-point goal: <4,12> with stochastic rounding, fine-tuned, within 0.2 point of float
FIXED_POINT_GOAL = FixedPointGoal(fraction_bits=12, rounding="stochastic", points=0.2)


def context(workdir: Path, seed: int):
    source = os.environ.get("COMPRESSBENCH_SOURCE_DATA", str(ROOT.parent / "shared" / "data"))
    data = MNISTDataModule(data_dir=ROOT / "data", source_dir=source, batch_size=128, eval_batch_size=1000,
                           val_size=5000, seed=seed)
    data.prepare_data()
    data.setup("fit")
    recipe = conf_recipe("mnist_sgd")
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


def record_deep_compression(output: dict[str, Any], entry: str, settings: str, runs_file: Path = RUNS) -> dict:
    """Write a run into the runs file the selection and reproductions reports read, as entry ``entry``:
    the test top-1 of baseline and final model, size and time beside the method's metrics."""
    runs = json.loads(runs_file.read_text()) if runs_file.exists() else {}
    runs[entry] = {"baseline_top1": output["baseline_test"]["top1"], "final_top1": output["final_test"]["top1"],
                   "stored_bytes": output["stored_bytes"], "seconds": round(output["seconds"]), **output["metrics"],
                   "settings": settings}
    runs_file.write_text(json.dumps(runs, indent=1))
    return runs[entry]


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


def _fixed_point_row(run: dict[str, Any], fraction_bits: int, rounding: str, tuned: bool) -> dict[str, Any] | None:
    """The study's row of one setting (fine-tuned or not), None when it did not run."""
    return next((r for r in run["rows"] if r.get("fraction_bits") == fraction_bits and r.get("rounding") == rounding
                 and bool(r["finetune_epochs"]) == tuned), None)


def _fixed_point_reading(run: dict[str, Any], float_top1: float) -> list[str]:
    """What the rows show: the goal row against float, and for every narrower format what fine-tuning
    under each rounding did to the rounded model."""
    goal = FIXED_POINT_GOAL
    best = _fixed_point_row(run, goal.fraction_bits, goal.rounding, tuned=True)
    lines = ["Reading (computed from the rows above):"]
    if best is not None:
        gap = best["test_top1"] - float_top1
        lines.append(f"- Goal (issue 5): <{FIXED_POINT_WORD - goal.fraction_bits},{goal.fraction_bits}> with "
                     f"{goal.rounding} rounding, fine-tuned, within {goal.points} point of float: {gap:+.2f} "
                     f"point, **{'met' if abs(gap) <= goal.points else 'not met'}**.")
    for fl in sorted({r["fraction_bits"] for r in run["rows"] if "fraction_bits" in r} - {goal.fraction_bits}):
        rounded = _fixed_point_row(run, fl, "nearest", tuned=False)
        nearest, stochastic = (_fixed_point_row(run, fl, rounding, tuned=True) for rounding in ("nearest", "stochastic"))
        if rounded is None or nearest is None or stochastic is None:
            continue
        moved = nearest["test_top1"] - rounded["test_top1"]
        lines.append(f"- FL = {fl}: the rounded model scores {rounded['test_top1']:.2f}%; fine-tuned "
                     f"{nearest['finetune_epochs']} epoch with round-to-nearest {nearest['test_top1']:.2f}% ("
                     + ("unchanged" if moved == 0 else f"{moved:+.2f}") + f"), with stochastic rounding "
                     f"{stochastic['test_top1']:.2f}% (stochastic − nearest: {stochastic['test_top1'] - nearest['test_top1']:+.2f} "
                     "point).")
    return lines


def fixed_point_markdown(run: dict[str, Any]) -> str:
    """results/quantization_fixed_point.md from the study's JSON (results/quantization_fixed_point.json)."""
    word, rows = run["word_length"], run["rows"]
    float_top1 = rows[0]["test_top1"]
    stored = {r["stored_bytes"] for r in rows if "stored_bytes" in r}
    lines = [f"# Fixed point (Gupta et al. 2015) on MNIST, {run['model']}", "",
             "`methods.quantization.fixed_point.FixedPoint` (`conf/method/fixed_point.yaml`): weights, biases and "
             f"every layer's input as {word}-bit `<IL, FL>` words (IL + FL = {word}), round-to-nearest (survey Eq. 1) "
             "or stochastic rounding (Eq. 2). Fine-tuning keeps the parameters on the fixed-point grid: after every "
             "SGD step they are rounded back with the configured rounding (a fixed-point weight update), so an update "
             "smaller than half a step is lost under round-to-nearest and survives in expectation under stochastic "
             "rounding. Evaluation rounds activations to nearest. Accuracy is that of the model decoded from the "
             "stored file (" + ", ".join(f"{b:,} bytes, {run['float32_bytes'] / b:.1f}x smaller" for b in sorted(stored))
             + f" than the {run['float32_bytes']:,} bytes of the float32 parameters).", "",
             f"Setup: our {run['model']} baseline (mnist_sgd recipe, {run['recipe']['epochs']} epochs, "
             f"{run['images']['train']:,} training images), fine-tuning {run['finetune_epochs']} epoch at lr "
             f"{run['lr']} ({run['recipe']['scheduler']}), test set of {run['images']['test']:,} images, one seed "
             f"({run['seed']}), run {run['date']}. Rendered by `python -m benchmarks.studies.report "
             "quantization_fixed_point` from `results/quantization_fixed_point.json`, written by "
             f"`python -m benchmarks.studies.quantization_codebook fixed_point {run['model']} {run['seed']}`.", "",
             f"| format `<IL,FL>` | rounding | fine-tuned | test top-1 (%) | vs float baseline ({float_top1:.2f}) |",
             "|---|---|---|---:|---:|"]
    goal = FIXED_POINT_GOAL
    for row in rows:
        fl = row.get("fraction_bits")
        cells = [f"<{word - fl},{fl}>" if fl else "float32", row.get("rounding", "—"),
                 f"{row['finetune_epochs']} epoch" if row["finetune_epochs"] else "no", f"{row['test_top1']:.2f}",
                 f"{row['test_top1'] - float_top1:+.2f}" if row is not rows[0] else "—"]
        if fl == goal.fraction_bits and row["rounding"] == goal.rounding and row["finetune_epochs"]:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *_fixed_point_reading(run, float_top1), "",
              "Departures (see the module docstring): operands are quantized and accumulation is float32 (Gupta et al. "
              "also round inside their FPGA's GEMM); training is a fine-tune from float, not training from scratch in "
              "fixed point. Dynamic fixed point (`DynamicFixedPoint`, Courbariaux et al.) is implemented and tested "
              "(`tests/test_quantization_codebook.py`), not part of this study."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("baseline", "deep_compression", "fixed_point"))
    parser.add_argument("model", help="lenet_300_100 | lenet5")
    parser.add_argument("seed", type=int)
    parser.add_argument("preset", nargs="?", help="deep_compression: a conf/experiment yaml with a method: block")
    parser.add_argument("overrides", nargs="?", help="deep_compression: a yaml whose method: block is merged last")
    parser.add_argument("tag", nargs="?", default="", help="deep_compression: suffix of the output names")
    parser.add_argument("--settings", help="deep_compression: the run's setting in words, as the reports show it "
                                           "(default: the preset and overrides file names)")
    args = parser.parse_args(argv)
    if args.kind == "deep_compression" and not args.preset:
        parser.error("deep_compression needs a preset, e.g. conf/experiment/deep_compression_lenet_300_100.yaml")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    if args.kind == "deep_compression":
        output: Any = run_deep_compression(args.model, args.seed, args.preset, args.overrides, args.tag)
        settings = args.settings or " + ".join(Path(f).stem for f in (args.preset, args.overrides) if f)
        record_deep_compression(output, f"dc_{args.model}_s{args.seed}{args.tag}", settings)
    else:
        runners: dict[str, Callable[[str, int], Any]] = {"baseline": run_baseline, "fixed_point": run_fixed_point}
        output = runners[args.kind](args.model, args.seed)
    record = FIXED_POINT_JSON if args.kind == "fixed_point" else OUT / f"{args.kind}_{args.model}_s{args.seed}{args.tag}.json"
    record.write_text(json.dumps(output, indent=1) + "\n")
    print(json.dumps(output)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
