"""A device from a few whole-model measurements (issue 13, item 5): ``python -m hardware fit`` shown.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.hardware_fit [--size 160] [--draws 50] [--out results]

- ``pixel1``: the Pixel-1 rebuilt from the AMC whole-model totals alone (``--format tflite_totals``:
  4 MobileNetV1 plans x 3 runs = 12 rows, 4 distinct networks, fewer than the 10 networks of the goal),
  once on the CPU kernel device ``local_cpu_kernels`` (another device entirely) and once on
  ``pixel1_kernels`` restricted to its ProxylessNAS table (the Pixel-1 of another TF-Lite build, never
  fitted on AMC). Compared with the per-layer fit ``pixel1`` (AMC per-operator profiles) on the AMC
  networks (leave-one-model-out), on published Pixel-1 latencies of other networks
  (``hardware/devices/pixel1_published.yaml``) and on the 72 ProxylessNAS table blocks.
- ``local_cpu``: the goal. This machine is the device we "do not have": ``--networks`` timm CNNs are
  measured at ``--size`` px, one thread, thread-CPU clock, each in interleaved rounds with a reference
  network (resnet18) and normalised by its drift (``hardware.kernelcost.target.drift_normalised``);
  the rows go to results/hardware_fit_local_cpu.csv. A device is fitted on 10 of them (``--draws``
  seeded draws of 10) with ``--base`` local_cpu_kernels (this CPU's kernel predictors) or pixel1_kernels
  (a phone's), and predicts the other networks: Spearman rank correlation and error. The first draw is
  also written by ``python -m hardware fit`` itself (into a temporary conf dir) and rebuilt with
  ``+hw``'s loader, whose predictions must equal the study's.

Resumable: the measurements are kept in results/hardware_fit.json and skipped on a rerun with the same settings.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import math
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scipy.stats import spearmanr

from benchmarks.studies.runs import Runs
from hardware import registry
from hardware.fit import fit_device
from hardware.kernelcost import measurements
from hardware.kernelcost.fewshot import fit_scales, model_groups, type_sums
from hardware.kernelcost.target import drift_normalised
from hardware.paths import project_root
from hardware.target import rmspe

ROOT = project_root()
AMC = ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite"
LUT = ROOT.parent / "shared" / "reference" / "pixel1-proxylessnas-lut" / "mobile_trim.yaml"
PUBLISHED = ROOT / "hardware" / "devices" / "pixel1_published.yaml"
#: the bases the Pixel-1 is rebuilt on: (device, its yaml overrides, what it is)
PIXEL1_BASES = {
    "local_cpu_kernels": ({}, "this x86 CPU's kernel predictors (PyTorch eager): another device entirely"),
    "pixel1_kernels": ({"sources": [{"name": "proxylessnas", "format": "proxylessnas_lut", "build": "proxylessnas",
                                     "path": str(LUT)}]},
                       "pixel1_kernels on the ProxylessNAS table alone (the Pixel-1 of another TF-Lite build)"),
}
LOCAL_BASES = ("local_cpu_kernels", "pixel1_kernels")
REFERENCE = "resnet18"
SHOTS = 10


def _errors(predicted: list[float], measured: list[float]) -> dict[str, float]:
    e = np.array(predicted) / np.array(measured) - 1
    out = {"n": len(e), "rmspe": rmspe(e), "within_10": float(np.mean(np.abs(e) <= 0.1)),
           "bias": float(np.mean(e))}
    if len(e) > 2:
        out["spearman"] = float(spearmanr(predicted, measured)[0])
    return out


# --------------------------------------------------------------------------- part 1: the Pixel-1
def _copy_conf(conf: Path) -> Path:
    """A conf dir holding the project's devices, for devices written by ``fit`` that must not join conf/hw."""
    conf.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "conf" / "hw").glob("*.yaml"):
        (conf / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return conf


def _published() -> list[dict[str, Any]]:
    return [e for e in yaml.safe_load(PUBLISHED.read_text(encoding="utf-8"))["models"] if e.get("timm")]


def _predict_timm(target: Any, entry: dict[str, Any]) -> float:
    import timm

    size = int(entry.get("input_size", 224))
    model = timm.create_model(entry["timm"], pretrained=False, **entry.get("kwargs", {})).eval()
    with torch.no_grad():
        return float(target.latency(model, (1, 3, size, size)).latency_ms)


def pixel1_part(work: Path) -> dict[str, Any]:
    """Each base adapted to the AMC totals by ``fit``, against the per-layer fit ``pixel1``."""
    from hardware.kernelcost.sources import proxylessnas_block

    conf, out = _copy_conf(work / "conf"), work / "out"
    per_layer = registry.instantiate("pixel1", {"reference_dir": str(AMC)})
    amc_lomo = {c.name: c.predicted_ms for c in per_layer.validation_cases(lomo=True, per_layer=False, holdout=False)
                if c.fit == "leave-one-out"}
    devices: dict[str, Any] = {"pixel1 (per-layer fit on the AMC per-operator profiles)": per_layer}
    result: dict[str, Any] = {"bases": {}, "networks": [], "blocks": {}}
    for base, (overrides, what) in PIXEL1_BASES.items():
        name = f"pixel1_totals_on_{base}"
        fitted = fit_device(name, AMC, "tflite_totals", base, overrides, conf, out, calibration="published",
                            force=True, progress=print)
        result["bases"][base] = {"what": what, "scales": fitted["scales"], "default_scale": fitted["default_scale"],
                                 "ridge": fitted["ridge"], "cv": fitted["cv"]}
        devices[f"{name} (AMC totals, base {base})"] = registry.instantiate(name, conf_dir=conf)
    for entry in _published():
        row = {"network": entry["name"], "group": entry.get("group", ""), "published_ms": float(entry["latency_ms"])}
        row["predicted"] = {label: _predict_timm(target, entry) for label, target in devices.items()}
        result["networks"].append(row)
    lut = yaml.safe_load(LUT.read_text(encoding="utf-8"))
    for label, target in devices.items():
        predicted, measured = [], []
        for key, entry in lut.items():
            module, shape = proxylessnas_block(key)
            with torch.no_grad():
                predicted.append(float(target.latency(module.eval(), shape).latency_ms))
            measured.append(float(entry["mean"]))
        result["blocks"][label] = _errors(predicted, measured)
    result["amc_lomo_per_layer"] = amc_lomo
    result["devices"] = list(devices)
    return result


# --------------------------------------------------------------------------- part 2: this CPU as the device
def measure(runs: Runs, networks: list[str], size: int, protocol: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(network, raw ms, reference ms) of each network, interleaved with the reference (resumable)."""
    import timm

    from hardware.layers import trace_model
    from hardware.measured import LocalCPU

    timer = LocalCPU(threads=1, clock="thread_cpu", per_layer=False, **protocol)
    shape = (1, 3, size, size)
    reference = timm.create_model(REFERENCE, pretrained=False).eval()
    reference_layers = trace_model(reference, shape).layers

    def one(name: str) -> dict[str, Any]:
        model = timm.create_model(name, pretrained=False).eval()
        timed = timer.latencies({"reference": reference, "network": model}, shape,
                                {"reference": reference_layers, "network": trace_model(model, shape).layers})
        return {"network_ms": timed["network"].latency_ms, "reference_ms": timed["reference"].latency_ms}

    rows = [runs.get(f"{name}@{size}", functools.partial(one, name)) for name in networks]
    return [(name, row["network_ms"], row["reference_ms"]) for name, row in zip(networks, rows, strict=True)]


def write_csv(path: Path, rows: list[tuple[str, float, float]], size: int) -> None:
    normalised = drift_normalised([(size, [(net, ref)]) for _, net, ref in rows])
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["model", "input_size", "latency_ms"])
        for (name, _, _), (ms,) in zip(rows, normalised, strict=True):
            writer.writerow([name, size, f"{ms:.4f}"])


def local_part(csv_path: Path, draws: int, work: Path) -> dict[str, Any]:
    """Fit on ``SHOTS`` rows, predict the rest, per base and draw; draw 0 also through ``fit`` and ``+hw``."""
    result: dict[str, Any] = {}
    conf = _copy_conf(work / "conf")
    header, *lines = csv_path.read_text(encoding="utf-8").splitlines()
    for base in LOCAL_BASES:
        target = registry.instantiate(base)
        samples = measurements.read(csv_path, "whole_model_csv", target.runtime)
        sums, ms, groups = type_sums(target.predictor, samples), [s.ms for s in samples], model_groups(samples)
        per_draw: list[dict[str, Any]] = []
        common: list[dict[str, float]] = []
        first = None
        for draw in range(draws):
            chosen = sorted(random.Random(draw).sample(range(len(samples)), SHOTS))
            rest = [i for i in range(len(samples)) if i not in chosen]
            fitted = fit_scales([sums[i] for i in chosen], [ms[i] for i in chosen], [groups[i] for i in chosen])
            predicted = [fitted.predict(sums[i]) for i in rest]
            one = dataclasses.replace(fitted, scales={}, ridge=math.inf)  # the single common scale alone
            per_draw.append({"fitted_on": [groups[i] for i in chosen], "ridge": str(fitted.ridge),
                             "scales": fitted.scales, **_errors(predicted, [ms[i] for i in rest])})
            common.append(_errors([one.predict(sums[i]) for i in rest], [ms[i] for i in rest]))
            first = first or (chosen, rest, predicted)
        assert first is not None
        chosen, rest, predicted = first
        shots = work / f"shots_{base}.csv"
        shots.write_text("\n".join([header] + [lines[i] for i in chosen]) + "\n", encoding="utf-8")
        name = f"local_cpu_from_{SHOTS}_on_{base}"
        written = fit_device(name, shots, None, base, {}, conf, work / "out", force=True, progress=print)
        device = registry.instantiate(name, conf_dir=conf)
        through_hw = [_predict_timm(device, {"timm": groups[i].rsplit("@", 1)[0],
                                              "input_size": int(groups[i].rsplit("@", 1)[1])}) for i in rest]
        result[base] = {
            "draws": per_draw, "common_scale": common,
            "unadapted": _errors([math.fsum(s.values()) for s in sums], ms),
            "summary": {key: _spread([d[key] for d in per_draw]) for key in ("spearman", "rmspe", "within_10", "bias")},
            "common_summary": {key: _spread([d[key] for d in common]) for key in ("spearman", "rmspe", "within_10")},
            "draw0": {"device": name, "fit_cv": written["cv"], "scales": written["scales"], "ridge": written["ridge"],
                      "rows": [{"network": groups[i], "measured_ms": ms[i], "predicted_ms": p}
                               for i, p in zip(rest, through_hw, strict=True)],
                      "held_out": _errors(through_hw, [ms[i] for i in rest]),
                      "max_difference_to_study": max(abs(a / b - 1) for a, b in zip(through_hw, predicted, strict=True))},
        }
    return result


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "share_spearman_ge_0.9": sum(v >= 0.9 for v in values) / len(values)}


# --------------------------------------------------------------------------- report
def _load(data: dict[str, Any]) -> str:
    loads = [row["load_average"][0] for row in data.get("measurements", {}).values() if "load_average" in row]
    return f"{min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f})" if loads else "n/a"


def render(data: dict[str, Any]) -> str:
    lines = ["# A device from a few measurements (`python -m hardware fit`, issue 13 item 5)", "",
             f"Written by `{data['command']}` from results/hardware_fit.json. Machine: {data['machine'].get('cpu')}, "
             f"{data['machine'].get('logical_cpus')} logical CPUs shared with other jobs; 1-min load average during "
             f"the measurements {_load(data)}.", ""]
    p1 = data.get("pixel1")
    if p1:
        lines += ["## pixel1 rebuilt from the AMC whole-model totals alone", "",
                  "12 rows (4 MobileNetV1 plans x 3 runs of TF-Lite `benchmark_model`, the 'no stats' averages): "
                  "only 4 distinct networks, fewer than the goal's 10, and all of one family. Scales of each base's "
                  "per-kernel-type sums, fitted by `python -m hardware fit --format tflite_totals`; cross-validated "
                  "leave-one-model-out. 4 networks are fewer than the scales (conv, dwconv, small types) + 2, so `fit` "
                  "keeps one common scale: per-type scales cannot be told apart by four MobileNetV1 totals.", "",
                  "| base | what | scales (ridge) | CV RMSPE | CV within ±10% |", "|---|---|---|---:|---:|"]
        for base, b in p1["bases"].items():
            scales = ", ".join(f"{k} {v:.3g}" for k, v in sorted(b["scales"].items()))
            lines.append(f"| {base} | {b['what']} | {scales} ({b['ridge']}) | {b['cv']['rmspe']:.1%} | "
                         f"{b['cv']['within']:.0%} |")
        labels = p1["devices"]
        lines += ["", "Published Pixel-1 latencies of networks none of them was fitted on (ms; error in brackets). "
                  "Each paper used its own TF-Lite build (MobileNetV1 is 123 ms in the AMC logs, 113 ms in Sandler "
                  "2018), so absolute errors mix the build with the model.", "",
                  "| network (paper) | published | " + " | ".join(labels) + " |",
                  "|---|---:|" + "---:|" * len(labels)]
        for row in p1["networks"]:
            cells = [f"{row['predicted'][lab]:.1f} ({row['predicted'][lab] / row['published_ms'] - 1:+.0%})"
                     for lab in labels]
            lines.append(f"| {row['network']} | {row['published_ms']:g} | " + " | ".join(cells) + " |")
        summary = {lab: _errors([r["predicted"][lab] for r in p1["networks"]], [r["published_ms"] for r in p1["networks"]])
                   for lab in labels}
        lines += ["| **RMSPE / Spearman** | | " + " | ".join(f"{s['rmspe']:.1%} / {s['spearman']:.2f}"
                                                      for s in summary.values()) + " |", "",
                  "The 72 ProxylessNAS table blocks (another build's per-block Pixel-1 latencies). Out of sample for "
                  "`pixel1` and the device on local_cpu_kernels; the device on pixel1_kernels keeps its base's "
                  "predictors, which were fitted on these very blocks, so its row is in-sample (a check that one "
                  "common scale fitted on the AMC totals leaves them intact, not an error on unseen blocks).", "",
                  "| device | within ±10% | RMSPE | Spearman |", "|---|---:|---:|---:|"]
        for lab, s in p1["blocks"].items():
            lines.append(f"| {lab} | {s['within_10']:.0%} | {s['rmspe']:.1%} | {s['spearman']:.3f} |")
        lines.append("")
    local = data.get("local_cpu")
    if local:
        n = len(data["measurements"])
        lines += ["## The goal: this CPU rebuilt from 10 whole-model measurements", "",
                  f"{n} timm CNNs measured here at {data['settings']['size']} px (one thread, thread-CPU clock, "
                  f"interleaved with {REFERENCE} and normalised by its drift; results/hardware_fit_local_cpu.csv). "
                  f"A device is fitted on {SHOTS} of them and predicts the other {n - SHOTS}; "
                  f"{data['draws']} seeded draws of {SHOTS}. Goal: Spearman >= 0.9. Two bases: local_cpu_kernels is "
                  "this CPU's own kernel predictor (fitted on kernels measured here), so 10 rows correct its bias "
                  "(eager per-call overheads it does not model); pixel1_kernels is a phone's (TF-Lite fusion, another "
                  "instruction set): the case of a device the base knows nothing of.", "",
                  "| base | Spearman median (min-max) | draws >= 0.9 | RMSPE median (min-max) | within ±10% median | "
                  "one common scale: Spearman / RMSPE median | base unadapted on all: Spearman / RMSPE |",
                  "|---|---|---:|---|---:|---|---|"]
        for base, r in local.items():
            s, c, u = r["summary"], r["common_summary"], r["unadapted"]
            lines.append(f"| {base} | {s['spearman']['median']:.3f} ({s['spearman']['min']:.3f}-"
                         f"{s['spearman']['max']:.3f}) | {s['spearman']['share_spearman_ge_0.9']:.0%} | "
                         f"{s['rmspe']['median']:.1%} ({s['rmspe']['min']:.1%}-{s['rmspe']['max']:.1%}) | "
                         f"{s['within_10']['median']:.0%} | {c['spearman']['median']:.3f} / {c['rmspe']['median']:.1%} "
                         f"| {u['spearman']:.3f} / {u['rmspe']:.1%} |")
        lines.append("")
        for base, r in local.items():
            s = r["summary"]["spearman"]
            verdict = "met" if s["median"] >= 0.9 else "not met"
            lines.append(f"- Goal with base {base}: **{verdict}** (median Spearman {s['median']:.3f}, "
                         f"{s['share_spearman_ge_0.9']:.0%} of draws >= 0.9; per-type scales against one common scale: "
                         f"RMSPE {r['summary']['rmspe']['median']:.1%} vs {r['common_summary']['rmspe']['median']:.1%}, "
                         f"Spearman {s['median']:.3f} vs {r['common_summary']['spearman']['median']:.3f}).")
        for base, r in local.items():
            d = r["draw0"]
            h = d["held_out"]
            lines += ["", f"Draw 0 through the command (`python -m hardware fit --name {d['device']} --base {base}` on "
                      f"its {SHOTS} rows, then the yaml built as `+hw` builds it): held-out Spearman {h['spearman']:.3f}, "
                      f"RMSPE {h['rmspe']:.1%}, {h['within_10']:.0%} within ±10%, bias {h['bias']:+.1%}; its stated "
                      f"(leave-one-model-out on the 10) RMSPE {d['fit_cv']['rmspe']:.1%}; scales "
                      + ", ".join(f"{k} {v:.3g}" for k, v in sorted(d["scales"].items()))
                      + f" (ridge {d['ridge']}); largest difference to the study's own prediction "
                      f"{d['max_difference_to_study']:.1e}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", choices=("pixel1", "local_cpu"), default=["pixel1", "local_cpu"],
                        help="parts to (re)compute; none: render results/hardware_fit.md from the JSON again")
    parser.add_argument("--size", type=int, default=160, help="input size of the measured networks")
    parser.add_argument("--draws", type=int, default=50, help="seeded draws of the 10 fitted networks")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    networks = list(registry.load_config("local_cpu_kernels")["validation"]["networks"])
    protocol = {"warmup": 2, "repeats": 6, "min_time_s": 0.2}
    path = args.out / "hardware_fit.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    runs = Runs(path, {"size": args.size, "networks": networks, "protocol": protocol, "reference": REFERENCE},
                collection="measurements")
    runs.data.update({k: previous[k] for k in ("pixel1", "local_cpu", "draws") if k in previous})
    runs.data["command"] = f"python -m benchmarks.studies.hardware_fit --size {args.size} --draws {args.draws}"
    with tempfile.TemporaryDirectory() as tmp:
        if "pixel1" in args.parts:
            runs.data["pixel1"] = pixel1_part(Path(tmp) / "pixel1")
            runs.write()
        if "local_cpu" in args.parts:
            rows = measure(runs, networks, args.size, protocol)
            csv_path = args.out / "hardware_fit_local_cpu.csv"
            write_csv(csv_path, rows, args.size)
            runs.data["local_cpu"], runs.data["draws"] = local_part(csv_path, args.draws, Path(tmp) / "local"), args.draws
            runs.write()
    (args.out / "hardware_fit.md").write_text(render(runs.data), encoding="utf-8")
    print(f"wrote {path} and {args.out / 'hardware_fit.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
