"""What a user can measure on a device we do not have, read as :class:`KernelSample` lists.

``python -m hardware fit`` reads one of ``FORMATS``:

* ``whole_model_csv``: rows ``model,input_size,latency_ms`` (optional ``in_chans``): timm or
  registered model names, built without weights only to trace their kernels;
* ``tflite_benchmark_model``: a folder of TF-Lite ``benchmark_model`` per-operator profiles
  (``hardware.tflite_profiles``, as the AMC Pixel-1 logs): one sample per operator and one per model;
* ``tflite_totals``: the same folder's whole-model "no stats" averages only, one row per run;
* ``onnxruntime_profile``: ONNX Runtime profiler JSONs named ``<timm model>@<input size>.json``
  (the median ``model_run``; their convolution nodes are checked against the model).

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
        samples.append(sample)
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
