"""A device emulated by kernel predictors fitted on several public sources of its latencies.

``conf/hw/pixel1_kernels.yaml``: the Pixel-1 fitted on the AMC per-layer TF-Lite profiles
and the ProxylessNAS per-block table together. A model's latency is the sum of its
kernels' (``hardware.kernels``, the runtime's fusion rules) predicted latencies.
Validation replays every source in-sample, cross-validated (k folds of each per-block
source, leave-one-model-out of each profiled network) and leave-one-source-out (fit on the
other sources only), plus published whole-network figures never fitted (``holdout_file``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hardware import validation as _validation
from hardware.kernelcost.composition import Composition, fit_composition
from hardware.kernelcost.fewshot import DeviceFit, scale_cases
from hardware.kernelcost.predictor import PREDICTORS, KernelPredictor, KernelSample
from hardware.kernelcost.profiling import table_networks
from hardware.kernelcost.sources import SOURCES
from hardware.kernelcost.units import table_units
from hardware.kernels import FUSIBLE_ACTIVATIONS, Kernel, detect_kernels
from hardware.layers import LayerSpec, memory_footprint, trace_model
from hardware.paths import resolve_path
from hardware.target import HardwareError, LatencyReport, LayerCostTarget, ValidationCase, rmspe


@functools.lru_cache(maxsize=8)
def _load(fmt: str, path: str, build: str) -> tuple[KernelSample, ...]:
    """A source's samples, once per process (tracing the ProxylessNAS blocks takes seconds)."""
    samples = SOURCES[fmt](Path(path))
    for sample in samples:
        sample.build = build
    return tuple(samples)


class KernelTarget(LayerCostTarget):
    """Latency = sum of the kernels' predictions, from predictors fitted on ``sources``.

    ``sources``: list of {name, format (a key of SOURCES), path, build, cache}; a source with
    ``cache: true`` is also the exact cache (its single-kernel samples are returned as measured); ``build``: the
    runtime build predictions stand for (a source's build); ``predictor``: analytical,
    forest, or auto (per kernel type, the lower cross-validated error); ``fitted``: the parameter file
    ``python -m hardware fit`` wrote (``hardware.kernelcost.fewshot.DeviceFit``): per-kernel-type scales
    applied to the sources' predictors, or analytical coefficients used as fitted.
    """

    def __init__(self, name: str, device: str, citation: str, sources: list[dict[str, str]], build: str = "",
                 runtime: str = "tflite", predictor: str = "auto", calibration: str = "published",
                 batch_size: int = 1, cache_bytes: float = 1.0e6, small_m_rows: int = 100, simd_channels: int = 16,
                 holdout_file: str | None = None, validation: dict[str, Any] | None = None, fitted: str | None = None,
                 **kwargs: Any) -> None:
        source = kwargs.pop("source", "analytical")
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if source not in ("analytical", "table"):
            raise ValueError(f"hw.source {source!r}: a kernel target is 'table' (fitted on kernels measured here) "
                             "or 'analytical' (fitted on published figures)")
        self.source = source
        if runtime not in FUSIBLE_ACTIVATIONS:
            raise ValueError(f"hw.runtime {runtime!r} is unknown; use one of {sorted(FUSIBLE_ACTIVATIONS)}")
        if predictor not in (*PREDICTORS, "auto"):
            raise ValueError(f"hw.predictor {predictor!r} is unknown; use auto or one of {PREDICTORS}")
        self.device, self.citation, self.runtime, self.predictor_kind = device, citation, runtime, predictor
        self.settings: dict[str, Any] = {"cache_bytes": float(cache_bytes), "small_m_rows": int(small_m_rows),
                         "simd_channels": int(simd_channels)}
        self.samples: dict[str, list[KernelSample]] = {}
        self.cached: set[str] = set()
        networks: list[tuple[list[Kernel], float]] = []
        for index, source in enumerate(sources):
            missing = {"name", "format", "path"} - set(source)
            if missing:
                raise ValueError(f"hw.sources[{index}] lacks {sorted(missing)}; give name, format, path (and build)")
            if source["format"] not in SOURCES:
                raise ValueError(f"hw.sources[{index}].format {source['format']!r} is unknown; use one of {sorted(SOURCES)}")
            path = resolve_path(source["path"])
            try:
                self.samples[source["name"]] = list(_load(source["format"], str(path), source.get("build", "")))
            except FileNotFoundError as err:
                raise HardwareError(f"hw.sources[{index}].path: {err}") from err
            if source.get("cache"):
                self.cached.add(source["name"])
            if source["format"] == "kernel_table":
                networks += table_networks(path)
        builds = {s.build for group in self.samples.values() for s in group}
        if build and build not in builds:
            raise ValueError(f"hw.build {build!r} is not the build of any source; use one of {sorted(builds)}")
        self.build = build
        self.holdout_file = resolve_path(holdout_file) if holdout_file else None
        self.validation = {"cv_folds": 10, "holdout": False, **dict(validation or {})}
        # a device written by `python -m hardware fit`: its predictor as fitted there, or the sources' scaled
        self.fitted = DeviceFit.load(resolve_path(fitted)) if fitted else None
        if self.fitted is not None and self.fitted.kind == "analytical":
            self.predictor = self.fitted.predictor()
        else:
            self.predictor = self.fit(self.all_samples())
        self.scales = self.fitted.scales() if self.fitted else None
        # the in-network cost of kernels, from the sources' whole networks (a few-shot device's scales absorb it)
        self.composition = (fit_composition(networks, lambda ks: [ms for ms, _ in self.predictor.predict_all(ks)])
                            if self.fitted is None else Composition())
        self.stated_error_file = _validation.stated_error_path(name, self.fitted.path.parent if self.fitted else None)
        self.stated_error = _validation.StatedError.load(self.stated_error_file)

    def all_samples(self) -> list[KernelSample]:
        return [s for group in self.samples.values() for s in group]

    def fit(self, samples: list[KernelSample], predictor: str | None = None) -> KernelPredictor:
        """Predictors fitted on ``samples``, standing for this target's build (else the samples' first)."""
        kind = predictor or self.predictor_kind
        cache = {id(s) for name in self.cached for s in self.samples[name]}
        table = {s.kernels[0].key: s.ms for s in samples if id(s) in cache and len(s.kernels) == 1}
        fitted = KernelPredictor.fit(samples, table=table, forest=kind != "analytical", folds=5 if kind == "auto" else 0,
                                     **self.settings)
        if kind == "forest":
            fitted.choice = {t: "forest" for t in fitted.forests}
        builds = sorted({s.build for s in samples})
        fitted.build = self.build if self.build in builds else builds[0]
        return fitted

    # ----- the target interface
    def latency(self, model: nn.Module, input_shape: tuple[int, ...], layers: list[LayerSpec] | None = None,
                deployables: Any = None) -> LatencyReport:
        trace = trace_model(model, tuple(int(s) for s in input_shape))
        return self.kernel_report(detect_kernels(trace, self.runtime), layers if layers is not None else trace.layers)

    def report(self, layers: list[LayerSpec]) -> LatencyReport:
        raise HardwareError(f"hw {self.name!r} prices kernels, which need the model's execution order: call latency()")

    def kernel_report(self, kernels: list[Kernel], layers: list[LayerSpec]) -> LatencyReport:
        predicted = self.predictor.predict_all(kernels)
        if self.scales is not None:
            predicted = [(ms * self.scales.scale(k.type), how) for k, (ms, how) in zip(kernels, predicted, strict=True)]
        predicted = [(ms + self.composition.extra_ms(k, ms), how) for k, (ms, how) in zip(kernels, predicted, strict=True)]
        per_layer = {layer.name: 0.0 for layer in layers}
        last = layers[0].name if layers else ""
        for kernel, (ms, _) in zip(kernels, predicted, strict=True):
            last = next((name for name in kernel.layers if name in per_layer), last)
            per_layer[last] = per_layer.get(last, 0.0) + ms
        by_source = {s: sum(1 for _, how in predicted if how == s) for s in ("table", "forest", "analytical")}
        fitted = {k.type for s in self.all_samples() for k in s.kernels}
        kinds = sorted({k.type for k in kernels} - fitted - {"conv", "dwconv", "linear"})
        notes = [f"{len(kernels)} kernels ({self.runtime} fusion rules); predicted by " +
                 ", ".join(f"{n} {s}" for s, n in by_source.items() if n),
                 "energy: not modelled", _validation.stated_error_note(self.name, self.stated_error)]
        if kinds:
            notes.append(f"kernel types without measurements of their own, priced by the elementwise terms: {kinds}")
        if self.composition.networks:
            notes.append(f"each kernel's in-network cost added ({self.composition.networks} whole networks): " +
                         ", ".join(f"{k} {v:.3g}" for k, v in self.composition.coefficients.items()))
        if self.scales is not None and self.fitted is not None:
            notes.append(f"{self.fitted.data.get('base')}'s predictions scaled per kernel type "
                         f"(hw.fitted {self.fitted.path.name})")
        return self.new_report(
            math.fsum(ms for ms, _ in predicted),
            error_fraction=self.stated_error.fraction() if self.stated_error else 0.0,
            memory=memory_footprint(layers), per_layer_ms=per_layer,
            provenance={"reference": self.citation, "device": self.device, "build": self.predictor.build,
                        "kernels": [{"type": k.type, "layers": k.layers, "ms": ms, "from": how}
                                    for k, (ms, how) in zip(kernels, predicted, strict=True)],
                        "kernels_from": by_source, "choice": self.predictor.choice,
                        "composition": {**self.composition.coefficients, "networks": self.composition.networks},
                        "stated_error": self.stated_error.provenance() if self.stated_error else None},
            notes=notes,
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "sources": ", ".join(self.samples),
                "build": self.build, "predictor": self.predictor_kind}

    # ----- validation
    def validation_cases(self, cv_folds: int | None = None, holdout: bool | None = None, seed: int | None = None,
                         progress: Any = None, **_: Any) -> list[ValidationCase]:
        """In-sample, k-fold / leave-one-model-out, leave-one-source-out, (``holdout``) published networks,
        and (``validation.networks``) timm networks measured here against a reference."""
        if self.fitted is not None and self.scales is not None:  # its measurements, in-sample and cross-validated
            return scale_cases(self.predictor, self.fitted.samples(self.runtime), fitted=self.scales)
        folds = int(cv_folds or self.validation["cv_folds"])
        holdout = self.validation["holdout"] if holdout is None else holdout
        cases = [self._case(s, self.predictor, "in-sample", name) for name, group in self.samples.items() for s in group]
        for name, group in self.samples.items():
            for held, train in _folds(group, folds, seed or 0):
                fitted = self.fit(train + [s for other, g in self.samples.items() if other != name for s in g])
                fitted.build = held[0].build
                cases += [self._case(s, fitted, "leave-one-out", f"{name}-cv") for s in held]
        if len(self.samples) > 1:
            for name, group in self.samples.items():
                fitted = self.fit([s for other, g in self.samples.items() if other != name for s in g])
                cases += [self._case(s, fitted, "held-out", f"{name}-from-other-sources") for s in group]
        if holdout:
            cases += self.holdout_cases()
        if self.validation.get("networks"):
            cases += self.network_cases(progress)
        return cases

    def network_cases(self, progress: Any = None) -> list[ValidationCase]:
        """Whole timm networks never profiled, predicted and measured here (``validation.networks`` at
        ``validation.sizes``), each timed in interleaved rounds with ``validation.reference``.

        The machine drifts (other jobs, clocks): a network's measurement is normalised by its
        reference's, ``measured * median(reference at that size over the run) / reference in its rounds``; the
        case compares that normalised figure, the raw one travels in its info. The first
        ``validation.repeat`` networks are measured twice (the repeatability floor), and their kernels are
        also timed one by one as the profiler times them (``isolated_kernels_ms``): how much of a network's
        error is the predictors' and how much is what running inside the network adds.
        """
        import timm

        from hardware.kernelcost.profiling import measure_kernels
        from hardware.measured import LocalCPU

        v = self.validation
        timer = LocalCPU(threads=1, clock="thread_cpu", per_layer=False, **v.get("protocol", {}))
        rows = []
        for size in v.get("sizes", [224]):
            shape = (1, 3, int(size), int(size))
            reference = timm.create_model(v.get("reference", "resnet18"), pretrained=False).eval()
            reference_layers = trace_model(reference, shape).layers
            for index, name in enumerate(v["networks"]):
                model = timm.create_model(name, pretrained=False).eval()
                trace = trace_model(model, shape)  # once: for the prediction and the measured report
                kernels = detect_kernels(trace, self.runtime)
                predicted = self.kernel_report(kernels, trace.layers)
                passes = 2 if index < int(v.get("repeat", 5)) else 1
                layers = {"reference": reference_layers, "network": trace.layers}
                timed = [timer.latencies({"reference": reference, "network": model}, shape, layers) for _ in range(passes)]
                isolated = ((sum(e["ms"] for e in measure_kernels(kernels, timer.protocol, progress=False)),
                             self.predictor.total(kernels)) if passes > 1 else None)
                rows.append((f"{name}@{size}", size, predicted, [(t["network"].latency_ms, t["reference"].latency_ms)
                                                                 for t in timed], isolated))
                if progress is not None:
                    progress(f"{name}@{size}: predicted {predicted.latency_ms:.2f} ms, measured "
                             f"{timed[0]['network'].latency_ms:.2f} ms (reference {timed[0]['reference'].latency_ms:.2f})")
        normalised_of = drift_normalised([(size, pairs) for _, size, _, pairs, _ in rows])
        cases = []
        for (name, _size, predicted, pairs, isolated), normalised in zip(rows, normalised_of, strict=True):
            info: dict[str, Any] = {"raw_measured_ms": pairs[0][0], "reference_ms": pairs[0][1],
                                    "raw_error": predicted.latency_ms / pairs[0][0] - 1,
                                    "kernels_from_table": predicted.provenance["kernels_from"]["table"]}
            if len(normalised) > 1:
                info["measured_again_ms"] = normalised[1]
            if isolated is not None:  # the kernels timed alone, and predicted alone (no in-network terms)
                info["isolated_kernels_ms"], info["kernels_alone_predicted_ms"] = isolated
            cases.append(ValidationCase(name, predicted.latency_ms, normalised[0], "timm-networks", info,
                                        fit="held-out"))
        return cases

    def _case(self, sample: KernelSample, predictor: KernelPredictor, fit: str, group: str) -> ValidationCase:
        scope = "operator" if ":network" not in sample.source else "network"
        if any(key.endswith(f"@{sample.build}") for key in predictor.coefficients):  # a build it was fitted on
            predictor = dataclasses.replace(predictor, build=sample.build)
        return ValidationCase(sample.name, predictor.total(sample.kernels), sample.ms, group,
                              {"kernels": len(sample.kernels)}, fit=fit, scope=scope)

    def validation_lines(self, cases: list[ValidationCase]) -> list[str]:
        """What `validate` adds to the section: the raw figures beside the drift-normalised ones, and
        the predictors compared."""
        if self.scales is not None:  # a few-shot device: its scales, not the base's predictors, are what it fitted
            scales = ", ".join(f"{kind} {scale:.3g}" for kind, scale in sorted(self.scales.scales.items()))
            return [f"Per-kernel-type scales of the base device's predictors (ridge {self.scales.ridge:g}): {scales}; "
                    f"other types {self.scales.default:.3g}.", ""]
        lines = []
        measured = [c for c in cases if "raw_measured_ms" in c.info]
        if measured:
            raw = [dataclasses.replace(c, measured_ms=float(c.info["raw_measured_ms"])) for c in measured]
            normalised, plain = _validation.summarise(measured), _validation.summarise(raw)
            lines += [f"Measured networks: drift-normalised by the interleaved reference network "
                      f"({self.validation.get('reference', 'resnet18')}), {normalised['within']:.1%} within ±10% "
                      f"(RMSPE {normalised['rmspe']:.1%}); raw, {plain['within']:.1%} within ±10% "
                      f"(RMSPE {plain['rmspe']:.1%}). One thread, thread-CPU clock, on a shared loaded machine.", ""]
            lines += _composition_lines(measured)
        lines += [f"Held-out {c.name}: {c.info['units_measured']} of its units measured as such in a fit source, "
                  f"together {c.info['units_measured_ms']:.1f} ms ({c.info['units_measured_ms'] / c.measured_ms:.0%} of "
                  f"the published {c.measured_ms:g} ms; predicted in all {c.predicted_ms:.1f} ms)."
                  for c in cases if int(c.info.get("units_measured", "0/").split("/")[0]) >= 3]  # beyond stem and head
        lines += [""] if lines and lines[-1] else []
        ratios = [c.info["same_paper_ratio_error"] for c in cases if "same_paper_ratio_error" in c.info]
        if ratios:  # the held-out error with each paper's own TF-Lite build divided out
            within = sum(abs(r) <= 0.1 for r in ratios)
            lines += [f"Published networks within their paper (predicted/measured relative to the paper's `reference` "
                      f"entry, which divides out that paper's TF-Lite build): {within} of {len(ratios)} within ±10%, "
                      f"worst {max(ratios, key=abs):+.1%} (the {len(ratios) - sum(r != 0 for r in ratios)} references "
                      "are 0 by construction).", ""]
        return lines + self.predictor_comparison()

    def predictor_comparison(self, folds: int | None = None) -> list[str]:
        """Analytical against forest on data neither was fitted on: the lines `validate` adds to the section.

        Per source, cross-validated as the section's leave-one-out rows (``folds`` folds or one profiled network
        held out, the other sources in the fit) and, with several sources, leave-one-source-out (fit on the others)."""
        folds = int(folds or self.validation["cv_folds"])
        lines = ["Predictors compared on data neither was fitted on: share within ±10% / RMSPE", "",
                 "| predicted source | held out | analytical | forest (where fitted, else analytical) |",
                 "|---|---|---|---|"]
        for name, group in self.samples.items():
            others = [s for other, g in self.samples.items() if other != name for s in g]
            splits = {("cross-validated", "leave-one-out"): [(held, train + others) for held, train in _folds(group, folds, 0)]}
            if others:
                splits[("leave-one-source-out", "held-out")] = [(group, others)]
            for (split, fit), pairs in splits.items():
                cells = []
                for kind in PREDICTORS:
                    errors = []
                    for held, train in pairs:
                        fitted = self.fit(train, kind)
                        errors += [self._case(s, fitted, fit, name).relative_error for s in held]
                    cells.append(f"{np.mean(np.abs(np.array(errors)) <= 0.1):.0%} / {rmspe(errors):.1%}")
                lines.append(f"| {name} | {split} | {cells[0]} | {cells[1]} |")
        return [*lines, ""]

    def holdout_cases(self) -> list[ValidationCase]:
        """Published whole-network latencies (``holdout_file``), never fitted."""
        import timm
        import yaml

        if self.holdout_file is None or not self.holdout_file.is_file():
            raise HardwareError(f"hw {self.name!r}: hold-out file {self.holdout_file} is missing; set hw.holdout_file")
        entries = [e for e in yaml.safe_load(self.holdout_file.read_text(encoding="utf-8"))["models"] if e.get("timm")]
        measured = {s.name: s.ms for s in self.all_samples()}  # a unit (block) a fit source measured as such
        predicted, units = [], []
        for entry in entries:
            size = int(entry.get("input_size", 224))
            model = timm.create_model(entry["timm"], pretrained=False, **entry.get("kwargs", {}))
            trace = trace_model(model, (1, 3, size, size))
            kernels = detect_kernels(trace, self.runtime)
            predicted.append(self.kernel_report(kernels, trace.layers).latency_ms)
            units.append([unit.key for unit in table_units(kernels)])
        cases = []
        for entry, ms, ratio, keys in zip(entries, predicted, _validation.same_paper_ratio_errors(entries, predicted), units,
                                          strict=True):
            info: dict[str, Any] = {"timm": entry["timm"]}
            if ratio is not None:  # the error with the paper's own TF-Lite build divided out
                info["same_paper_ratio_error"] = ratio
            known = [key for key in keys if key in measured]
            # the units a fit source measured exactly: their measured sum, to set against the published whole
            info["units_measured"], info["units_measured_ms"] = f"{len(known)}/{len(keys)}", sum(measured[k] for k in known)
            cases.append(ValidationCase(entry["name"], ms, float(entry["latency_ms"]),
                                        f"holdout-{entry.get('group', 'published')}", info, fit="held-out"))
        return cases


def _composition_lines(cases: list[ValidationCase]) -> list[str]:
    """The networks whose kernels were also timed one by one: whole network against that sum (what running
    inside the network adds) and the prediction against it (the predictors' own error)."""
    timed = [c for c in cases if "isolated_kernels_ms" in c.info]
    if not timed:
        return []
    alone = [float(c.info["isolated_kernels_ms"]) for c in timed]
    whole = [float(c.info["raw_measured_ms"]) / a - 1 for c, a in zip(timed, alone, strict=True)]
    predicted = [float(c.info["kernels_alone_predicted_ms"]) / a - 1 for c, a in zip(timed, alone, strict=True)]
    return [f"Kernels timed one by one, as profiled ({len(timed)} networks): the whole network took "
            f"{np.median(whole):+.0%} (median; {min(whole):+.0%} to {max(whole):+.0%}) against the sum of its kernels "
            f"alone, and the kernels' predictions (without in-network terms) are {np.median(predicted):+.0%} (median; "
            f"{min(predicted):+.0%} to {max(predicted):+.0%}) from that sum: the first is what running inside the "
            "network adds, which predictors fitted on kernels timed alone cannot see; the second is their own error.",
            ""]


def drift_normalised(rows: list[tuple[Any, list[tuple[float, float]]]]) -> list[list[float]]:
    """Each (group, [(network ms, reference ms) per measurement]) row's network times, normalised by its
    reference: ``network * median(reference in the group) / reference``. The group is the input size:
    the reference's level differs per size, only its drift within a size is divided out."""
    references: dict[Any, list[float]] = {}
    for group, pairs in rows:
        references.setdefault(group, []).extend(ref for _, ref in pairs)
    baseline = {group: float(np.median(values)) for group, values in references.items()}
    return [[net * baseline[group] / ref for net, ref in pairs] for group, pairs in rows]


def _folds(samples: list[KernelSample], folds: int, seed: int) -> list[tuple[list[KernelSample], list[KernelSample]]]:
    """(held, train) pairs: one per profiled network when the source has networks (leave-one-model-out),
    else ``folds`` random folds of its samples."""
    networks = sorted({s.source.removesuffix(":network") for s in samples})
    if len(networks) > 1:
        return [([s for s in samples if s.source.removesuffix(":network") == n],
                 [s for s in samples if s.source.removesuffix(":network") != n]) for n in networks]
    order = np.random.default_rng(seed).permutation(len(samples)) % max(2, folds)
    return [([s for s, f in zip(samples, order, strict=True) if f == k],
             [s for s, f in zip(samples, order, strict=True) if f != k]) for k in range(max(2, folds))]
