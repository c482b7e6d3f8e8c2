"""Measured kernel latencies from public sources, as :class:`KernelSample` lists.

``SOURCES`` maps a source format to a loader of one path: ``tflite_benchmark_model``
(a folder of TF-Lite per-operator profiles, ``hardware.tflite_profiles``: one sample per
profiled operator and one per whole model) and ``proxylessnas_lut`` (the ProxylessNAS
per-block latency table, ``mobile_trim.yaml``: one sample per block, its kernels read off
the block rebuilt in PyTorch and traced by the one layer tracer) and ``kernel_table``
(kernels measured on this CPU by ``python -m hardware profile --kernels``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from hardware.kernelcost.predictor import KernelSample
from hardware.kernels import detect_kernels, model_kernels
from hardware.layers import LayerSpec, ModelTrace
from hardware.target import HardwareError

_SHAPE = r"(\d+)x(\d+)x(\d+)"
_BLOCK = re.compile(
    rf"^expanded_conv-input:{_SHAPE}-output:{_SHAPE}-expand:(\d+)-kernel:(\d+)-stride:(\d+)-idskip:([01])$"
)
_CONV = re.compile(rf"^(Conv|Conv_1)-input:{_SHAPE}-output:{_SHAPE}$")
_LOGITS = re.compile(rf"^Logits-input:{_SHAPE}-output:(\d+)$")


def layer_kernels(layers: list[LayerSpec], runtime: str = "tflite") -> list:
    """The kernels of a layer list that has no torch model behind it (a profile's layers)."""
    return detect_kernels(ModelTrace(layers=list(layers), sequence=list(layers)), runtime)


def tflite_profile_samples(folder: Path) -> list[KernelSample]:
    """One sample per profiled operator that is a kernel (not the tail reshape/softmax), one per whole model."""
    from hardware.tflite_profiles import load_reference

    samples = []
    for ref in load_reference(folder):
        kernels = []
        for layer, ms in zip(ref.layers(), ref.per_layer_ms(), strict=True):
            found = layer_kernels([layer])
            if found:
                samples.append(KernelSample(f"{ref.name}/{layer.name}", found, ms, f"{ref.name}"))
                kernels += found
        samples.append(KernelSample(ref.name, kernels, ref.measured_ms, f"{ref.name}:network"))
    return samples


def proxylessnas_block(key: str) -> tuple[nn.Module, tuple[int, int, int, int]]:
    """The PyTorch module of one ProxylessNAS table key and its input shape (batch 1)."""
    from hardware import search_space

    if match := _BLOCK.match(key):
        h, _w, cin, ho, _wo, cout, expand, kernel, stride, skip = map(int, match.groups())
        block = search_space.InvertedResidual(cin, cout, kernel, stride, expand)
        if block.use_shortcut != bool(skip) or ho != -(-h // stride):
            raise HardwareError(f"ProxylessNAS table key {key!r}: shortcut or output size disagrees with the block")
        return block, (1, cin, h, h)
    if match := _CONV.match(key):
        first = match.group(1) == "Conv"
        size, _, c_in, size_out, _, c_out = map(int, match.groups()[1:])
        return search_space.conv_bn_act(c_in, c_out, 3 if first else 1, size // size_out), (1, c_in, size, size)
    if match := _LOGITS.match(key):
        h, _w, cin, classes = map(int, match.groups())
        return search_space.Classifier(cin, classes), (1, cin, h, h)
    raise HardwareError(f"ProxylessNAS table key {key!r} is not a Conv, Conv_1, expanded_conv or Logits entry")


def read_proxylessnas_lut(path: Path) -> dict[str, dict[str, float]]:
    """The table's entries by key ({count, mean, var}, ms), every key of a known form and with a mean."""
    import yaml

    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a ProxylessNAS latency table (mobile_trim.yaml)")
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise HardwareError(f"{path} is not valid YAML ({' '.join(str(err).split())}); "
                            "use the ProxylessNAS mobile_trim.yaml") from None
    if not isinstance(table, dict) or not table:
        raise HardwareError(f"{path} holds no table entries (key: {{count, mean, var}}); use the ProxylessNAS mobile_trim.yaml")
    for key, entry in table.items():
        if not any(form.match(str(key)) for form in (_BLOCK, _CONV, _LOGITS)):
            raise HardwareError(f"{path}: key {key!r} is not a Conv, Conv_1, expanded_conv or Logits entry")
        if not isinstance(entry, dict) or not isinstance(entry.get("mean"), int | float):
            raise HardwareError(f"{path}: entry {key!r} has no numeric 'mean' latency")
    return table


def proxylessnas_lut_samples(path: Path) -> list[KernelSample]:
    """One sample per entry of the table (its mean latency)."""
    samples = []
    for key, entry in read_proxylessnas_lut(path).items():
        module, shape = proxylessnas_block(key)
        with torch.no_grad():
            kernels = model_kernels(module, shape, "tflite")
        samples.append(KernelSample(key, kernels, float(entry["mean"]), "proxylessnas"))
    return samples


def kernel_table_samples(path: Path) -> list[KernelSample]:
    """One sample per measured kernel of a table written by ``python -m hardware profile --kernels``."""
    from hardware.kernelcost.profiling import load_table
    from hardware.kernels import Kernel

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; measure it with `python -m hardware profile --kernels --out {path}`")
    samples = []
    for entry in load_table(path)["entries"]:
        kernel = Kernel(entry["type"], dict(entry["config"]))
        samples.append(KernelSample(kernel.key, [kernel], float(entry["ms"]), "kernel-table"))
    return samples


#: Source formats a device's yaml names: a loader of samples from a file or folder.
SOURCES: dict[str, Callable[[Path], list[KernelSample]]] = {
    "tflite_benchmark_model": tflite_profile_samples,
    "proxylessnas_lut": proxylessnas_lut_samples,
    "kernel_table": kernel_table_samples,
}
