"""What a user can measure on a device we do not have, read as :class:`KernelSample` lists.

``python -m hardware fit`` reads one of ``FORMATS``:

* ``whole_model_csv``: rows ``model,input_size,latency_ms`` (optional ``in_chans``): timm or
  registered model names, built without weights only to trace their kernels;
* ``tflite_benchmark_model``: a folder of TF-Lite ``benchmark_model`` per-operator profiles
  (``hardware.tflite_profiles``, as the AMC Pixel-1 logs): one sample per operator and one per model;
* ``tflite_totals``: the same folder's whole-model "no stats" averages only, one row per run;
* ``onnxruntime_profile``: ONNX Runtime profiler JSONs named ``<timm model>@<input size>.json``:
  one sample per model (the median ``model_run``; its convolution nodes are checked against the
  model) and one per node that runs a kernel the predictors know (convolutions, matrix products,
  adds, multiplies, pools, activations: the median of its durations over the runs). ONNX Runtime's
  layout reorders, reshapes and reductions other than pooling count in the whole model only.

A sample's ``source`` names its model (``<model>:network`` for a whole model): rows of one model
are held out together in cross-validation. Every problem is one line naming the file and row.
"""

from __future__ import annotations

import csv
import functools
import importlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from hardware.kernelcost.predictor import KernelSample
from hardware.kernelcost.sources import layer_kernels, tflite_profile_samples
from hardware.kernels import Kernel, model_kernels
from hardware.layers import FUNCTIONAL, LayerSpec
from hardware.target import HardwareError

COLUMNS = ("model", "input_size", "latency_ms")


@functools.lru_cache(maxsize=256)
def _traced(model: str, size: int, in_chans: int, runtime: str) -> tuple[Kernel, ...]:
    import timm
    import torch

    network = timm.create_model(model, pretrained=False, in_chans=in_chans).eval()
    with torch.no_grad():
        return tuple(model_kernels(network, (1, in_chans, size, size), runtime))


def _positive(value: str | None, column: str, where: str, kind: type = float) -> float:
    try:
        number = kind(str(value).strip())
    except ValueError:
        raise HardwareError(f"{where}: {column} {value!r} is not a number; give a positive {column}") from None
    if not math.isfinite(number) or number <= 0:
        raise HardwareError(f"{where}: {column} {value} must be > 0 (a latency in ms, a size in pixels)")
    return number


def _imported(imports: Sequence[str]) -> None:
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise HardwareError(f"--import {module}: {error}") from None


def _sample(model: str, size: int, chans: int, ms: float, where: str, runtime: str,
            imports: Sequence[str]) -> KernelSample:
    """A whole-model sample: ``model``'s kernels (``runtime``'s fusion rules) at ``size`` px and its latency."""
    import timm

    _imported(imports)
    if not timm.is_model(model):
        raise HardwareError(f"{where}: unknown model {model!r} (not registered in timm); use a timm name, "
                            "or --import the module that registers it (benchmarks.models: the project's zoo)")
    try:
        kernels = list(_traced(model, size, chans, runtime))
    except RuntimeError as error:
        raise HardwareError(f"{where}: {model} does not run on {chans}x{size}x{size} inputs "
                            f"({str(error).strip().splitlines()[0]})") from None
    return KernelSample(f"{model}@{size}", kernels, ms, f"{model}@{size}:network")


def whole_model_rows(path: Path, runtime: str, imports: Sequence[str] = ()) -> list[KernelSample]:
    """One sample per CSV row: the model's kernels (``runtime``'s fusion rules) and its measured latency."""
    samples = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise HardwareError(f"{path}: missing column(s) {missing}; the header must name {', '.join(COLUMNS)}")
        for row in reader:
            where = f"{path} line {reader.line_num}"
            size = int(_positive(row["input_size"], "input_size", where, int))
            ms = _positive(row["latency_ms"], "latency_ms", where)
            chans = int(_positive(row.get("in_chans") or "3", "in_chans", where, int))
            samples.append(_sample((row["model"] or "").strip(), size, chans, ms, where, runtime, imports))
    if not samples:
        raise HardwareError(f"{path}: no rows; give one row per measured model ({', '.join(COLUMNS)})")
    return samples


def _profiles(path: Path) -> list:
    from hardware.tflite_profiles import load_reference

    try:
        return load_reference(path)
    except (ValueError, FileNotFoundError) as error:
        raise HardwareError(str(error)) from None


def tflite_operator_profiles(path: Path, runtime: str = "tflite", imports: Sequence[str] = ()) -> list[KernelSample]:
    """Per-operator and whole-model samples of a folder of profiles (TF-Lite's own fusion: ``runtime`` unused)."""
    _profiles(path)  # the checks, with their errors as one line
    return tflite_profile_samples(path)


def tflite_totals(path: Path, runtime: str = "tflite", imports: Sequence[str] = ()) -> list[KernelSample]:
    """One whole-model sample per profile run (its "no stats" average): what a user without per-op profiles has."""
    samples = []
    for ref in _profiles(path):
        kernels = layer_kernels(ref.layers())
        samples += [KernelSample(f"{ref.name} run {index}", kernels, profile.whole_model_ms, f"{ref.name}:network")
                    for index, profile in enumerate(ref.profiles, start=1)]
    return samples


#: ONNX Runtime node types that run a convolution layer (their count per run is checked against the model)
_ORT_CONVS = ("Conv", "FusedConv", "NhwcFusedConv")
#: ONNX Runtime node types -> the tracer's layer op (``hardware.layers.LayerSpec.op``) of their kernel
_ORT_LAYER_OPS = {**dict.fromkeys(_ORT_CONVS, "conv"), **dict.fromkeys(("Gemm", "MatMul", "FusedGemm", "FusedMatMul"), "linear"),
                  "Add": "add", "Sum": "add", "Mul": "mul", "GlobalAveragePool": "pool", "AveragePool": "pool",
                  "MaxPool": "pool", **dict.fromkeys(("Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
                                                      "Tanh"), "act")}
#: ONNX activation node types -> the PyTorch module names the fusion rules and predictors use
_ORT_ACTIVATIONS = {"Relu": "ReLU", "Clip": "ReLU6", "Sigmoid": "Sigmoid", "HardSigmoid": "Hardsigmoid",
                    "HardSwish": "Hardswish", "LeakyRelu": "LeakyReLU", "Tanh": "Tanh"}


def _shapes(shapes: list[dict[str, list[int]]]) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in next(iter(s.values()))) for s in shapes]


def _ort_layer(node: dict) -> LayerSpec | None:
    """The layer an ONNX Runtime node ran, from its profiled shapes (None: a node no kernel predictor covers)."""
    args = node["args"]
    op = _ORT_LAYER_OPS.get(args["op_name"])
    inputs, (output, *_) = _shapes(args["input_type_shape"]), _shapes(args["output_type_shape"])
    if op is None or not inputs:
        return None
    name, x = node["name"].removesuffix("_kernel_time"), inputs[0]
    if op == "conv":
        cout, per_group, kh, kw = inputs[1]
        groups = max(1, x[1] // per_group)
        stride = max(1, -(-x[2] // output[2]))
        depthwise = groups == x[1] and groups > 1
        macs = math.prod(output) * per_group * kh * kw
        return LayerSpec(name, "dwconv" if depthwise else "conv", "Conv2d", x, output, x[1], cout, (kh, kw),
                         (stride, stride), (kh // 2, kw // 2), groups=groups, macs=macs)
    if op == "linear":
        return LayerSpec(name, "linear", "Linear", x, output, x[-1], output[-1], macs=math.prod(output) * x[-1])
    if op == "pool":
        kernel = (x[2] // output[2], x[3] // output[3]) if len(x) == 4 and len(output) == 4 and output[2] else (1, 1)
        module = {"MaxPool": "MaxPool2d", "AveragePool": "AvgPool2d"}.get(args["op_name"], "AdaptiveAvgPool2d")
        return LayerSpec(name, "pool", module, x, output, x[1], output[1], kernel, kernel)
    if op == "act":
        return LayerSpec(name, "act", _ORT_ACTIVATIONS[args["op_name"]], x, output, x[1], output[1])
    return LayerSpec(name, op, FUNCTIONAL, output, output, output[1], output[1], extra={"operand_shapes": inputs})


def _ort_node_samples(events: list[dict], model: str) -> list[KernelSample]:
    """One sample per node whose layer the fusion rules make a kernel: its median duration over the runs."""
    durations: dict[str, list[float]] = {}
    nodes: dict[str, dict] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            durations.setdefault(event["name"], []).append(float(event["dur"]) / 1e3)
            nodes.setdefault(event["name"], event)
    samples = []
    for key, event in nodes.items():
        layer = _ort_layer(event)
        kernels = layer_kernels([layer], "onnxruntime") if layer is not None else []
        if layer is not None and kernels:
            ms = sorted(durations[key])
            samples.append(KernelSample(f"{model}/{layer.name}", kernels, max(ms[len(ms) // 2], 1e-6), model))
    return samples


def onnxruntime_profiles(path: Path, runtime: str = "onnxruntime", imports: Sequence[str] = ()) -> list[KernelSample]:
    """One sample per ONNX Runtime profiler JSON (``SessionOptions.enable_profiling``), named
    ``<timm model>@<input size>.json`` (a file, or a folder of them): the median of its ``model_run``
    durations. Its convolution nodes per run must be the model's convolution layers."""
    import json

    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    samples = []
    for file in files:
        model, _, size = file.stem.rpartition("@")
        if not model or not size.isdigit():
            raise HardwareError(f"{file}: name an ONNX Runtime profile <timm model>@<input size>.json "
                                "(e.g. mobilenetv2_100@224.json)")
        try:
            events = json.loads(file.read_text(encoding="utf-8"))
            runs = sorted(float(e["dur"]) / 1e3 for e in events if e.get("name") == "model_run")
            convs = sum(e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and
                        e["args"]["op_name"] in _ORT_CONVS for e in events)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise HardwareError(f"{file}: not an ONNX Runtime profiler JSON ({error!r})") from None
        if not runs:
            raise HardwareError(f"{file}: no 'model_run' events; profile at least one InferenceSession.run")
        sample = _sample(model, int(size), 3, runs[len(runs) // 2], str(file), runtime, imports)
        wanted = sum(k.type in ("conv", "dwconv") for k in sample.kernels)
        wanted += sum(2 for k in sample.kernels if k.type == "se")  # squeeze-excitation runs two 1x1 convolutions
        if convs / len(runs) != wanted:
            raise HardwareError(f"{file}: {convs / len(runs):g} convolution nodes per run, but {model} at {size} px "
                                f"has {wanted}: the profile is of another model or input size")
        samples += [*_ort_node_samples(events, sample.name), sample]
    if not samples:
        raise HardwareError(f"{path}: no ONNX Runtime profiles (<timm model>@<input size>.json)")
    return samples


#: Measurement formats ``fit`` reads: a loader of (path, runtime, imports).
FORMATS: dict[str, Callable[..., list[KernelSample]]] = {
    "whole_model_csv": whole_model_rows,
    "tflite_benchmark_model": tflite_operator_profiles,
    "tflite_totals": tflite_totals,
    "onnxruntime_profile": onnxruntime_profiles,
}


def detect_format(path: Path) -> str:
    """A folder of TF-Lite profiles (or of ONNX Runtime profiler JSONs), a ``.csv`` of whole-model rows,
    a ``.json`` ONNX Runtime profile; anything else must name --format."""
    if path.is_dir():
        return "onnxruntime_profile" if any(path.glob("*.json")) else "tflite_benchmark_model"
    if path.suffix.lower() == ".csv":
        return "whole_model_csv"
    if path.suffix.lower() == ".json":
        return "onnxruntime_profile"
    raise HardwareError(f"--measurements {path}: cannot tell its format from the name; give --format, one of "
                        f"{sorted(FORMATS)}")


def read(path: Path, fmt: str | None, runtime: str, imports: Sequence[str] = ()) -> list[KernelSample]:
    """The samples of ``path`` in format ``fmt`` (None: from the name), kernels by ``runtime``'s fusion rules."""
    if not path.exists():
        raise HardwareError(f"--measurements {path} does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise HardwareError(f"--format {fmt!r} is unknown; use one of {sorted(FORMATS)}")
    return FORMATS[fmt](path, runtime, imports)
