"""PTQ int8 of pretrained ResNet-20 on cifar10_jpeg: accuracy (float, simulated, deployed) and
measured ONNX Runtime latency of the int8 model against the fp32 one on this CPU.

    python -m benchmarks.studies.quantization_ptq [--variants auto,8bit] [--out results/quantization_ptq.json]

Uses the real pieces: the datamodule and model zoo of the benchmark, the ``ptq`` method
(``methods.create_method``: conf/method/ptq.yaml with a variant's overrides) with a context built
by ``benchmarks.context.make_context``, and the ``onnxruntime_cpu`` target
(``hardware.measured.OnnxRuntimeCPU``) for latency. Writes one JSON file of figures;
``python -m benchmarks.studies.report quantization_ptq`` renders results/quantization_ptq.md from them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule
from benchmarks.models.zoo import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.training import evaluate
from hardware.measured import OnnxRuntimeCPU
from hardware.protocol import cpu_model
from methods import create_method
from methods.quantization.onnx_int8 import cpu_has_vnni, export_float_onnx, onnx_accuracy, onnx_ops

ROOT = Path(__file__).resolve().parents[2]

VARIANTS: dict[str, dict[str, Any]] = {
    # the default: 7-bit weights where this CPU's int8 kernels saturate on 8-bit ones
    "auto": {"reduce_range": "auto"},
    # full 8-bit weights: what the simulation promises, and what saturating kernels deliver
    "8bit": {"reduce_range": False},
    "8bit_percentile": {"reduce_range": False, "observer": "percentile"},
    # simulated only (no int8 kernel deploys them): granularity and observers at low bit-widths
    "w8a8_per_tensor": {"reduce_range": False, "per_channel": False, "onnx": False},
    "w4a8_minmax": {"bits": 4, "act_bits": 8, "onnx": False},
    "w4a8_mse": {"bits": 4, "act_bits": 8, "weight_observer": "mse", "onnx": False},
    "w8a4_percentile": {"bits": 8, "act_bits": 4, "observer": "percentile", "onnx": False},
}


def latency(target: OnnxRuntimeCPU, onnx_path: Path) -> dict[str, float]:
    report = target.latency(torch.nn.Identity(), (target.batch_size, 3, 32, 32), layers=[], deployables={"onnx": onnx_path})
    return {"ms": report.latency_ms, "iqr_ms": report.spread_ms}


def _signed(points: float) -> str:
    """Points of top-1 with a sign, as the report prints them (−0.06, +0.11)."""
    return f"{points:+.2f}".replace("-", "−")


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _timing(entry: dict[str, float]) -> str:
    return f"{_ms(entry['ms'])} (IQR {_ms(entry['iqr_ms'])})"


def _weight_bits(variant: dict[str, Any]) -> int:
    return int(variant["layer_bits"][0][0])


def _accuracy_section(run: dict[str, Any]) -> list[str]:
    auto, full = run["variants"]["auto"], run["variants"]["8bit"]
    float_top1, images = run["float_top1"], run["samples"]
    bits = _weight_bits(auto)
    meets = max(float_top1 - auto["simulated_top1"], float_top1 - auto["deployed_top1"]) <= 0.5
    return [
        "## Accuracy", "",
        "| model | weights / activations | top-1 (%) | vs float (points) | stored bytes |",
        "| --- | --- | --- | --- | --- |",
        f"| float (torch) | fp32 | {float_top1:.2f} | — | {run['bytes_fp32_state_dict']:,} (fp32 state dict) |",
        f"| float (ONNX Runtime fp32) | fp32 | {run['float_onnx_top1']:.2f} | "
        f"{_signed(run['float_onnx_top1'] - float_top1)} | |",
        f"| **PTQ, default (`reduce_range: auto`)**, simulated (fake-quant, torch) | {bits} / 8 | "
        f"{auto['simulated_top1']:.2f} | {_signed(auto['simulated_top1'] - float_top1)} | {auto['stored_bytes']:,} |",
        f"| **PTQ, default, deployed (ONNX Runtime int8 QDQ)** | {bits} / 8 in int8 tensors | "
        f"**{auto['deployed_top1']:.2f}** | **{_signed(auto['deployed_top1'] - float_top1)}** | "
        f"{int(auto['bytes_onnx_int8']):,} (.onnx) |",
        f"| PTQ, 8-bit weights (`reduce_range: false`), simulated | 8 / 8 | {full['simulated_top1']:.2f} | "
        f"{_signed(full['simulated_top1'] - float_top1)} | {full['stored_bytes']:,} |",
        f"| PTQ, 8-bit weights, deployed | 8 / 8 | {full['deployed_top1']:.2f} | "
        f"{_signed(full['deployed_top1'] - float_top1)} | {int(full['bytes_onnx_int8']):,} (.onnx) |", "",
        f"The goal (PTQ int8 loses at most 0.5 point of top-1) is {'met' if meets else '**not met**'} by the default "
        f"model, simulated and deployed: {_signed(auto['simulated_top1'] - float_top1)} and "
        f"{_signed(auto['deployed_top1'] - float_top1)} points (deployed minus simulated: "
        f"{_signed(auto['deployed_minus_simulated_top1'])}; one of the {images:,} test images is "
        f"{100 / images:.2f} point).", "",
        "Stored file of the default model (bytes, from the method's `bytes_*` metrics): "
        f"weight codes {int(auto['bytes_weight_codes']):,} ({bits}-bit packed), per-channel scales "
        f"{int(auto['bytes_scales']):,}, biases (folded BN) {int(auto['bytes_biases']):,}, activation "
        f"scales/zero-points {int(auto['bytes_act_qparams']):,}, compressed header {int(auto['bytes_header']):,}: "
        f"{run['bytes_fp32_state_dict'] / auto['stored_bytes']:.1f}x smaller than the fp32 state dict "
        f"({run['bytes_fp32_state_dict'] / full['stored_bytes']:.1f}x with 8-bit codes).", ""]


def _saturation_section(run: dict[str, Any]) -> list[str]:
    auto, full = run["variants"]["auto"], run["variants"]["8bit"]
    vnni = "with VNNI" if run["cpu_vnni"] else "**no VNNI**"
    return [
        f"## Why {_weight_bits(auto)}-bit weights by default on this CPU", "",
        f"This run's CPU (\"{run['cpu']}\", {vnni}) decides what `reduce_range: auto` does. Without VNNI, "
        "ONNX Runtime's u8 x s8 kernels add pairs of 8-bit products into *saturating* int16 (`vpmaddubsw`: "
        "2 x 255 x 127 > 32767), so the deployed model is not the simulated one; with 7-bit weights "
        "(`[-63, 63]`, stored packed at 7 bits, recorded as `layer_bits` (7, 8)) it is, which is ONNX "
        "Runtime's own documented remedy. `auto` picks 7 bits exactly when the CPU lacks VNNI and the model "
        "is deployed at 8/8 (tests/test_quantization_uniform.py shows the discrepancy on a tiny net when forced).",
        "", f"Deployed minus simulated top-1 on ResNet-20: {_signed(auto['deployed_minus_simulated_top1'])} with "
        f"the default, {_signed(full['deployed_minus_simulated_top1'])} with full 8-bit weights. The simulation "
        "(`methods/quantization/fakequant.py`) quantizes weights and the input of every conv/linear layer; the "
        "deployed model also quantizes what an int8 runtime must (conv outputs before the residual additions, the "
        "additions, the pooled features and the logits, calibrated by ONNX Runtime on the same batches, with our "
        "weights, scales and activation parameters imposed through `TensorQuantOverrides`).", ""]


def _latency_rows(run: dict[str, Any], variants: list[str]) -> list[str]:
    rows = []
    for clock, suffix in (("thread CPU time", "_cpu"), ("wall", "")):
        for batch in ("1", "32"):
            key = batch + suffix
            cells = [batch, clock, _timing(run["fp32_latency"][key])]
            for name in variants:
                variant = run["variants"][name]
                cells += [_timing(variant["int8_latency"][key]), f"{variant['speedup_vs_fp32'][key]:.2f}x"]
            rows.append("| " + " | ".join(cells) + " |")
    return rows


def _protocol(run: dict[str, Any]) -> str:
    protocol = run["latency_protocol"]
    return (f"ONNX Runtime {protocol['runtime']['onnxruntime']}, {protocol['runtime']['execution_provider']}, "
            f"{protocol['threads']} intra-op thread(s), {protocol['warmup']} warm-up and {protocol['repeats']} timed "
            "runs, median with inter-quartile range")


def _latency_section(run: dict[str, Any]) -> list[str]:
    ops = run["variants"]["auto"]["int8_ops"]
    return [
        "## Latency (measured, `hardware.measured.OnnxRuntimeCPU`)", "",
        f"{_protocol(run)}. Load average at the start: {run['load_average'][0]:.1f}. On a loaded machine the "
        "wall-clock figures measure the scheduler as much as the model; the thread-CPU-time figures (`clock: "
        "thread_cpu`, the CPU time of the one thread that runs the model) are not inflated by waiting.", "",
        "| batch | clock | fp32 (ms) | int8 default (ms) | speed-up | int8, 8-bit weights (ms) | speed-up |",
        "| --- | --- | --- | --- | --- | --- | --- |", *_latency_rows(run, ["auto", "8bit"]), "",
        "Operators of the int8 graph ONNX Runtime executes (after its fusions; "
        "`methods.quantization.onnx_int8.onnx_ops`): "
        + ", ".join(f"{count} `{op}`" for op, count in sorted(ops.items(), key=lambda item: (-item[1], item[0]))) + ".",
        ""]


def _vnni_section(run: dict[str, Any]) -> list[str]:
    auto, float_top1 = run["variants"]["auto"], run["float_top1"]
    when = f" ({run['date']})" if "date" in run else ""
    return [
        f"## Rerun on a CPU {'with' if run['cpu_vnni'] else 'without'} VNNI{when}", "",
        f"`python -m benchmarks.studies.quantization_ptq --variants auto --out results/quantization_ptq_vnni.json` on "
        f"\"{run['cpu']}\" (load average {run['load_average'][0]:.1f} at the start): `reduce_range: auto` kept "
        f"{_weight_bits(auto)}-bit weights here.", "",
        "| model | top-1 (%) | vs float (points) | stored bytes |", "| --- | --- | --- | --- |",
        f"| float (torch; ONNX Runtime fp32 {run['float_onnx_top1']:.2f}) | {float_top1:.2f} | — | "
        f"{run['bytes_fp32_state_dict']:,} |",
        f"| PTQ {_weight_bits(auto)}/8, simulated (fake-quant, torch) | {auto['simulated_top1']:.2f} | "
        f"{_signed(auto['simulated_top1'] - float_top1)} | {auto['stored_bytes']:,} |",
        f"| **PTQ {_weight_bits(auto)}/8, deployed (ONNX Runtime int8 QDQ)** | **{auto['deployed_top1']:.2f}** | "
        f"**{_signed(auto['deployed_top1'] - float_top1)}** | {int(auto['bytes_onnx_int8']):,} (.onnx) |", "",
        f"{_protocol(run)}:", "",
        "| batch | clock | fp32 (ms) | int8 (ms) | int8 speed-up |", "| --- | --- | --- | --- | --- |",
        *_latency_rows(run, ["auto"]), ""]


def _lowbit_section(run: dict[str, Any], float_top1: float) -> list[str]:
    lines = [
        "## Lower bit-widths and other choices (simulated only)", "",
        "`python -m benchmarks.studies.quantization_ptq --accuracy-only --variants "
        f"{','.join(run['variants'])} --out results/quantization_ptq_lowbit.json`; decoded fake-quant models "
        "evaluated in torch on the test split (no int8 kernel deploys these any faster, so they are not exported).",
        "", f"| variant | ptq settings (`conf/method/ptq.yaml` otherwise) | weights / activations | top-1 (%) | "
        f"vs float {float_top1:.2f} | stored bytes |", "| --- | --- | --- | --- | --- | --- |"]
    for name, variant in run["variants"].items():
        settings = ", ".join(f"`{k}: {v if isinstance(v, str) else json.dumps(v)}`"
                             for k, v in VARIANTS[name].items() if k != "onnx")
        weight_bits, act_bits = variant["layer_bits"][0]
        lines.append(f"| {name} | {settings} | {weight_bits} / {act_bits} | {variant['simulated_top1']:.2f} | "
                     f"{_signed(variant['simulated_top1'] - float_top1)} | {variant['stored_bytes']:,} |")
    return [*lines, ""]


def render(run: dict[str, Any], vnni: dict[str, Any] | None = None, lowbit: dict[str, Any] | None = None) -> str:
    """results/quantization_ptq.md from the study's JSON figures: the main run, the VNNI rerun, the low-bit variants."""
    lines = [
        "# PTQ int8 of pretrained ResNet-20 on cifar10_jpeg", "",
        "Rendered from `results/quantization_ptq.json`"
        + (", `results/quantization_ptq_vnni.json`" if vnni else "")
        + (" and `results/quantization_ptq_lowbit.json`" if lowbit else "")
        + " by `python -m benchmarks.studies.report quantization_ptq`; the figures come from "
        "`python -m benchmarks.studies.quantization_ptq --variants auto,8bit`, with the `ptq` method "
        "(`conf/method/ptq.yaml` defaults: per-channel symmetric weights, asymmetric uint8 activations at the "
        "input of every conv/linear layer, min-max observers, BN folded) on `resnet20_cifar` with akamaster's "
        f"pretrained weights, evaluated on the {run['split']} split ({run['samples']:,} images) of "
        f"`{run['dataset']}`. One seed (42: the validation split and the calibration batches).", "",
        *_accuracy_section(run), *_saturation_section(run), *_latency_section(run)]
    if vnni:
        lines += _vnni_section(vnni)
    if lowbit:
        lines += _lowbit_section(lowbit, run["float_top1"])
    lines += ["## Caveats", "",
              "- One seed; no confidence intervals beyond one test image's share of the top-1.",
              "- cifar10_jpeg is a lossy JPEG copy: the pretrained ResNet-20 scores "
              f"{run['float_top1']:.1f}%, not the published 91.7%.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", default="auto,8bit")
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for latency")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--out", default=str(ROOT / "results" / "quantization_ptq.json"))
    parser.add_argument("--accuracy-only", action="store_true", help="skip the float baseline and latency")
    args = parser.parse_args()

    start = time.perf_counter()
    dm = CIFAR10JPEGDataModule(data_dir=ROOT / "data", source_dir=ROOT.parent / "shared" / "data", name="cifar10_jpeg",
                               batch_size=128, eval_batch_size=256, seed=42, test_subset=args.test_subset,
                               mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dm.prepare_data()
    dm.setup("fit")
    model = build_model("resnet20_cifar", 10, 3,
                        ROOT.parent / "shared" / "data" / "weights" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th").eval()
    work = Path(tempfile.mkdtemp(prefix="ptq_bench_"))
    figures: dict[str, Any] = {
        "model": "resnet20_cifar (akamaster pretrained)", "dataset": "cifar10_jpeg", "split": "test",
        "date": f"{_dt.datetime.now(_dt.UTC):%Y-%m-%d}",
        "cpu": cpu_model(), "cpu_vnni": cpu_has_vnni(), "load_average": os.getloadavg(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
    }
    figures["bytes_fp32_state_dict"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    fp32_onnx = export_float_onnx(model, torch.zeros(1, 3, 32, 32), work / "fp32.onnx")
    if not args.accuracy_only:
        float_eval = evaluate(model, dm, "test")
        figures["float_top1"] = float_eval["top1"]
        figures["samples"] = float_eval["samples"]
        figures["float_onnx_top1"] = onnx_accuracy(fp32_onnx, dm.test_dataloader())["top1"]
    print(json.dumps(figures, indent=1), flush=True)

    # wall-clock latency, and (one thread) the CPU time of the calling thread, which the other
    # processes of a shared machine do not inflate
    targets: dict[int | str, OnnxRuntimeCPU] = {
        int(b): OnnxRuntimeCPU(batch_size=int(b), threads=args.threads, repeats=50, warmup=10)
        for b in args.batch_sizes.split(",")}
    if args.threads == 1:
        targets.update({f"{b}_cpu": OnnxRuntimeCPU(batch_size=int(b), threads=1, repeats=50, warmup=10,
                                                   clock="thread_cpu")
                        for b in args.batch_sizes.split(",")})
    figures["latency_protocol"] = {"threads": args.threads, "repeats": 50, "warmup": 10,
                                   "runtime": next(iter(targets.values())).runtime_provenance()}
    figures["fp32_latency"] = {} if args.accuracy_only else {b: latency(t, fp32_onnx) for b, t in targets.items()}
    figures["variants"] = {}
    for name in args.variants.split(","):
        t0 = time.perf_counter()
        method = create_method("ptq", calibration_batches=args.calibration_batches, **VARIANTS[name])
        ctx = make_context(dm, next(iter(targets.values())), RecipeConfig(epochs=0), TrainerConfig(progress_bar=False), 42,
                           work / name)
        result = method.compress(model, ctx)
        entry: dict[str, Any] = {"seconds": time.perf_counter() - t0, "stored_bytes": result.stored_bytes,
                 "layer_bits": sorted({tuple(v) for v in result.layer_bits.values()}), **result.metrics}
        if "simulated_top1" not in entry:  # not deployed: evaluate the decoded (simulated) model here
            entry["simulated_top1"] = evaluate(result.model, dm, "test")["top1"]
        onnx_int8 = result.deployables.get("onnx")
        if onnx_int8 is not None and not args.accuracy_only:
            entry["int8_latency"] = {b: latency(t, onnx_int8) for b, t in targets.items()}
            entry["speedup_vs_fp32"] = {b: figures["fp32_latency"][b]["ms"] / entry["int8_latency"][b]["ms"]
                                        for b in targets}
            entry["int8_ops"] = onnx_ops(onnx_int8)
        figures["variants"][name] = entry
        print(name, json.dumps(entry, indent=1, default=str), flush=True)
    figures["total_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(figures, indent=1, default=str))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
