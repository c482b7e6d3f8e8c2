"""The one evaluation every run gets, for the compressed model and for its baseline.

Accuracy on the report split (test) and on the selection split (val), parameters and
nonzero parameters, MACs (PyTorch's flop counter via hardware.layers), the stored size of
the file the method wrote, and the latency on the run's target with its provenance.
Ratios against the baseline are computed from two reports made the same way in the same
run. The two models are timed together, in interleaved rounds, so a measured speedup is
paired and carries an interval and a verdict (``hardware.speedup``); a predicted one is a
point. Two splits, because choosing and reporting must not share data (benchmarks.splits).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from benchmarks.splits import SELECTION_PREFIX
from benchmarks.training import evaluate
from hardware.layers import LayerSpec, count_macs, describe_layers
from hardware.speedup import Speedup, speedup_between
from hardware.target import HardwareTarget, LatencyReport


@dataclass
class ModelReport:
    """Everything measured about one model in one run."""

    accuracy: dict[str, float]  # on the report split (test)
    params: int
    nonzero_params: int
    macs: int
    stored_bytes: int
    latency: LatencyReport
    layers: list[LayerSpec] = field(default_factory=list)
    local_latency: LatencyReport | None = None
    selection_accuracy: dict[str, float] | None = None  # on the selection split (val)

    def metrics(self, prefix: str = "") -> dict[str, float | None]:
        values: dict[str, float | None] = {
            "top1": self.accuracy["top1"],
            "top5": self.accuracy["top5"],
            "loss": self.accuracy["loss"],
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "stored_bytes": self.stored_bytes,
            "latency_ms": self.latency.latency_ms,
            "latency_spread_ms": self.latency.spread_ms,
            "energy_mj": self.latency.energy_mj,
        }
        if self.local_latency is not None:
            values["local_cpu_latency_ms"] = self.local_latency.latency_ms
        if self.selection_accuracy is not None:
            values.update({f"{SELECTION_PREFIX}{k}": self.selection_accuracy[k] for k in ("top1", "top5", "loss")})
        return {f"{prefix}{k}": v for k, v in values.items()}


def evaluate_pair(
    baseline: nn.Module,
    compressed: nn.Module,
    datamodule: Any,
    target: HardwareTarget,
    input_shape: tuple[int, ...],
    stored_bytes: tuple[int, int],
    *,
    split: str = "test",
    selection_split: str | None = "val",
    layer_bits: dict[str, tuple[int, int]] | None = None,
    deployables: Mapping[str, Path] | None = None,
    local_target: HardwareTarget | None = None,
) -> tuple[ModelReport, ModelReport]:
    """Measure the baseline and the compressed model as every run does: (baseline, compressed) reports.

    Accuracy is measured on ``split`` (reported) and on ``selection_split`` (what choices use);
    the two models' latencies are timed together on ``target`` (and ``local_target``, a measured
    CPU latency beside an emulated one), so that their speedup is paired. ``layer_bits`` and
    ``deployables`` belong to the compressed model; ``stored_bytes`` is (baseline, compressed).
    """
    models = {"baseline": baseline.eval(), "compressed": compressed.eval()}
    layers = {"baseline": describe_layers(baseline, input_shape),
              "compressed": describe_layers(compressed, input_shape, layer_bits)}
    deployed = {"compressed": deployables}
    latency = target.latencies(models, input_shape, layers, deployed)
    local = {} if local_target is None else local_target.latencies(models, input_shape, deployables=deployed)
    sizes = dict(zip(models, stored_bytes, strict=True))
    reports = {name: ModelReport(
        accuracy=evaluate(model, datamodule, split),
        selection_accuracy=None if selection_split is None else evaluate(model, datamodule, selection_split),
        params=sum(p.numel() for p in model.parameters()),
        nonzero_params=sum(int(p.count_nonzero()) for p in model.parameters()),
        macs=count_macs(model, (1, *input_shape[1:])),
        stored_bytes=sizes[name],
        latency=latency[name],
        layers=layers[name],
        local_latency=local.get(name),
    ) for name, model in models.items()}
    return reports["baseline"], reports["compressed"]


def speedups(compressed: ModelReport, baseline: ModelReport) -> dict[str, Speedup]:
    """The run's speedups by metric name: on its target, and measured here when the target is emulated."""
    found = {"speedup": speedup_between(baseline.latency, compressed.latency)}
    if compressed.local_latency is not None and baseline.local_latency is not None:
        found["local_cpu_speedup"] = speedup_between(baseline.local_latency, compressed.local_latency)
    return found


def speedup_tags(found: Mapping[str, Speedup]) -> dict[str, str]:
    """``<speedup>_verdict`` (faster, slower, no measurable difference, predicted) and the noise flags:
    ``latency_noisy`` for the run's target, ``local_cpu_latency_noisy`` for the CPU measured beside it."""
    tags = {f"{name}_verdict": s.verdict for name, s in found.items()}
    for name, s in found.items():
        tags[name.replace("speedup", "latency_noisy")] = str(s.noisy).lower()
    return tags


def comparison(compressed: ModelReport, baseline: ModelReport, found: Mapping[str, Speedup]) -> dict[str, float]:
    """Speedups (``found``, from :func:`speedups`, with their interval), compression and accuracy change against
    the run's own baseline."""
    ratios = {
        **{key: value for name, s in found.items() for key, value in s.metrics(name).items()},
        "compression": baseline.stored_bytes / compressed.stored_bytes,
        "macs_reduction": baseline.macs / max(compressed.macs, 1),
        "top1_delta": compressed.accuracy["top1"] - baseline.accuracy["top1"],
    }
    if compressed.selection_accuracy is not None and baseline.selection_accuracy is not None:
        ratios[f"{SELECTION_PREFIX}top1_delta"] = compressed.selection_accuracy["top1"] - baseline.selection_accuracy["top1"]
    return ratios


def write_layer_table(report: ModelReport, path: Path) -> Path:
    """Per-layer CSV: name, op, shapes, params, MACs, latency and its share of the total."""
    per_layer = report.latency.per_layer_ms
    total = sum(per_layer.values())
    rows = []
    for spec in report.layers:
        row = spec.as_row()
        layer_ms = per_layer.get(spec.name)
        row["latency_ms"] = "" if layer_ms is None else f"{layer_ms:.6f}"
        row["latency_share"] = "" if layer_ms is None or total <= 0 else f"{layer_ms / total:.4f}"
        rows.append(row)
    with path.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
