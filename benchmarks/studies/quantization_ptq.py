"""PTQ int8 of pretrained ResNet-20 on cifar10_jpeg: accuracy (float, simulated, deployed) and
measured ONNX Runtime latency of the int8 model against the fp32 one on this CPU.

    python -m benchmarks.studies.quantization_ptq [--variants auto,8bit] [--out results/quantization_ptq.json]

Uses the real pieces: the datamodule and model zoo of the benchmark, the ``ptq`` method
(``methods.create_method``: conf/method/ptq.yaml with a variant's overrides) with a context built
by ``benchmarks.context.make_context``, and the ``onnxruntime_cpu`` target
(``hardware.measured.OnnxRuntimeCPU``) for latency. Writes one JSON file of figures.
"""

from __future__ import annotations

import argparse
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
    report = target.latency(torch.nn.Identity(), (target.batch_size, 3, 32, 32), layers=[], onnx_file=onnx_path)
    return {"ms": report.latency_ms, "iqr_ms": report.spread_ms}


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
        if result.onnx_file is not None and not args.accuracy_only:
            entry["int8_latency"] = {b: latency(t, result.onnx_file) for b, t in targets.items()}
            entry["speedup_vs_fp32"] = {b: figures["fp32_latency"][b]["ms"] / entry["int8_latency"][b]["ms"]
                                        for b in targets}
            entry["int8_ops"] = onnx_ops(result.onnx_file)
        figures["variants"][name] = entry
        print(name, json.dumps(entry, indent=1, default=str), flush=True)
    figures["total_seconds"] = time.perf_counter() - start
    Path(args.out).write_text(json.dumps(figures, indent=1, default=str))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
