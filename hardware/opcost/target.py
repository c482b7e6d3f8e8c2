"""A device emulated by a per-operator cost model fitted to its per-layer profiles.

ProxylessNAS (Cai et al., ICLR 2019) and AMC (He et al., ECCV 2018) steer by the latency
of a phone CPU. Without the phone, a folder of its real per-operator profiles is enough:
the target fits :class:`~hardware.opcost.model.OpCostModel` on them at construction
(milliseconds) and predicts any network from its layer description. Everything about the
device (its name, the profiles, their format, the hold-out figures, the citation) comes
from its yaml (``conf/hw/pixel1.yaml``): a second phone is a yaml and its data.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hardware import validation as _validation
from hardware.domain import FittedDomain
from hardware.layers import FUSED_ACTIVATIONS, LayerSpec, memory_footprint
from hardware.opcost.fit import FitReport, fit_report, samples
from hardware.opcost.model import OpCostModel
from hardware.paths import resolve_path
from hardware.target import HardwareError, LatencyReport, LayerCostTarget, ValidationCase


def _tflite_benchmark_model(folder: Path) -> list[Any]:
    from hardware.tflite_profiles import load_reference

    return load_reference(folder)


#: Profile formats a device's ``profile_format`` names: a loader of profiled models from a folder.
PROFILE_FORMATS: dict[str, Callable[[Path], list[Any]]] = {"tflite_benchmark_model": _tflite_benchmark_model}


class OpProfileTarget(LayerCostTarget):
    """A device emulated by a per-operator cost model fitted on its per-layer profiles.

    ``reference_dir`` holds the profiles in ``profile_format`` (one of PROFILE_FORMATS);
    ``device`` and ``citation`` say what they measured and where they come from (every
    report's provenance carries them); ``holdout_file`` lists published whole-model
    latencies of other networks, never fitted, that ``validation_cases(holdout=True)``
    replays; ``profile_set`` names the validation groups of the profiled models.
    """


    def __init__(
        self,
        name: str,
        device: str,
        citation: str,
        reference_dir: str | Path | None,
        profile_format: str = "tflite_benchmark_model",
        profile_set: str = "profiles",
        profiled: str = "",
        calibration: str = "published",
        batch_size: int = 1,
        cache_bytes: float = 1.0e6,
        simd_channels: int = 16,
        small_m_rows: int = 100,
        holdout_file: str | Path | None = None,
        validation: dict[str, bool] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("source", None)
        super().__init__(name=name, calibration=calibration, batch_size=batch_size, **kwargs)
        if profile_format not in PROFILE_FORMATS:
            raise ValueError(f"hw.profile_format {profile_format!r} is unknown; use one of {sorted(PROFILE_FORMATS)}")
        self.device, self.citation, self.profiled, self.profile_set = device, citation, profiled, profile_set
        self.reference_dir = _resolve_reference_dir(name, reference_dir)
        try:
            self.references = PROFILE_FORMATS[profile_format](self.reference_dir)
        except FileNotFoundError as err:
            raise HardwareError(f"hw.reference_dir: {err}") from err
        self.settings = {"cache_bytes": cache_bytes, "simd_channels": simd_channels, "small_m_rows": small_m_rows}
        self.holdout_file = resolve_path(holdout_file) if holdout_file else None
        self.validation = {"lomo": True, "per_layer": True, "holdout": False}
        for key, value in dict(validation or {}).items():
            if key not in self.validation:
                raise ValueError(f"hw.validation.{key} is unknown; use {sorted(self.validation)}")
            self.validation[key] = bool(value)
        self.cost_model = OpCostModel.fit(samples(self.references), **self.settings)
        self.fit_report: FitReport = fit_report(self.references, self.cost_model, self.settings)
        self.stated_error_file = _validation.stated_error_path(name)
        self.stated_error = _validation.StatedError.load(self.stated_error_file)

    def domain_kind(self, layer: LayerSpec) -> str | None:
        """Operator kind for the fitted domain: the cost-model family of a matrix product or
        depthwise conv, the op itself for the elementwise family (None: free, folded or fused)."""
        family = self.cost_model.family(layer)
        if family in (None, "gemm", "depthwise"):
            return family
        return f"act:{layer.module_type}" if layer.op == "act" else layer.op

    @functools.cached_property
    def fitted_domain(self) -> FittedDomain:
        names = ", ".join(ref.name for ref in self.references)
        label = f"{len(self.references)} profiled models ({names})"
        return FittedDomain.of(label, [ref.layers() for ref in self.references], self.domain_kind)

    # ----- the LayerCostTarget interface
    def report(self, layers: list[LayerSpec]) -> LatencyReport:
        """The latency report of a layer list (no torch model needed)."""
        per_layer = self.cost_model.predict(layers)
        total = float(sum(per_layer.values()))
        notes = [
            f"calibrated on {self.profiled or 'per-operator'} profiles; batch > 1 scales the activation terms only",
            f"energy: not modelled (no {self.name} power measurements to calibrate on)",
        ]
        if any(layer.weight_bits < 32 or layer.act_bits < 32 for layer in layers if self.cost_model.family(layer)):
            notes.append("bit-widths < 32 shrink the byte terms only: integer kernels were not profiled")
        if any(layer.sparsity > 0.05 for layer in layers if layer.op in ("conv", "dwconv", "linear")):
            notes.append("unstructured sparsity ignored: the profiled kernels are dense")
        unfused = sorted(
            {layer.module_type for layer in layers if layer.op == "act" and layer.module_type not in FUSED_ACTIVATIONS}
        )
        if unfused:
            notes.append(f"{', '.join(unfused)} costed as streaming elementwise ops (not in the profiles)")
        if input_shape_batch(layers) > 1:
            notes.append("profiles are batch 1: larger batches are extrapolated")
        notes += _validation.fitted_notes(self.name, self.stated_error, self.fitted_domain, layers, self.domain_kind)
        return self.new_report(
            total,
            error_fraction=self.stated_error.fraction() if self.stated_error else 0.0,
            energy_mj=None,
            memory=memory_footprint(layers),
            per_layer_ms=per_layer,
            provenance=self.provenance(),
            notes=notes,
        )

    def provenance(self) -> dict[str, Any]:
        fit = self.fit_report
        return {
            "profile": f"{self.device} (per-operator cost model)",
            "calibration_source": str(self.reference_dir),
            "reference": self.citation,
            "fit": "NNLS on relative per-layer error; families gemm / depthwise / elementwise",
            "coefficients": self.cost_model.as_dict(),
            "stated_error": self.stated_error.provenance() if self.stated_error else None,
            "fitted_domain": self.fitted_domain.as_dict(),
            "fit_error": {  # on the profiles themselves: in-sample, and leave-one-model-out
                "whole_model_max_abs": fit.max_whole_model_error,
                "whole_model_max_abs_leave_one_model_out": fit.max_whole_model_error_lomo,
                "per_layer_rmspe": fit.per_layer_rmspe,
                "per_layer_rmspe_leave_one_model_out": fit.per_layer_rmspe_lomo,
            },
        }

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "reference_dir": str(self.reference_dir)}

    # ----- validation
    def validation_cases(
        self,
        lomo: bool | None = None,
        per_layer: bool | None = None,
        holdout: bool | None = None,
        **_: Any,
    ) -> list[ValidationCase]:
        """Whole-model predicted against measured latency of each profiled model (group
        ``<profile_set>``, in-sample), and by default (``hw.validation``) also:

        ``lomo``: each model predicted by a fit without it (group ``<profile_set>-lomo``, leave-one-out);
        ``per_layer``: one case per profiled operator (group ``per-layer``, in-sample; with ``lomo``
        also ``per-layer-lomo``, each operator predicted by the fit without its model);
        ``holdout``: the published figures of ``holdout_file`` (held-out; builds timm models).
        """
        lomo = self.validation["lomo"] if lomo is None else lomo
        per_layer = self.validation["per_layer"] if per_layer is None else per_layer
        holdout = self.validation["holdout"] if holdout is None else holdout
        cases = []
        names = {ref.prefix: ref.name for ref in self.references}
        for prefix, row in self.fit_report.whole_model.items():
            cases.append(
                ValidationCase(names[prefix], row["predicted_ms"], row["measured_ms"], self.profile_set, fit="in-sample")
            )
        if lomo:
            for prefix, row in self.fit_report.whole_model.items():
                cases.append(
                    ValidationCase(
                        f"{names[prefix]} (lomo)",
                        row["lomo_predicted_ms"],
                        row["measured_ms"],
                        f"{self.profile_set}-lomo",
                        fit="leave-one-out",
                    )
                )
        if per_layer:
            for row in self.fit_report.per_layer:
                fits = [("", "per-layer", row["predicted_ms"], "in-sample")]
                if lomo:
                    lomo_ms = row["measured_ms"] * (1 + row["lomo_error"])
                    fits.append((" (lomo)", "per-layer-lomo", lomo_ms, "leave-one-out"))
                cases += [ValidationCase(f"{row['model']}/{row['layer']}{suffix}", predicted, row["measured_ms"], group,
                                         {"op": row["op"]}, fit=fit, scope="operator")
                          for suffix, group, predicted, fit in fits]
        if holdout:
            cases.extend(self.holdout_cases())
        return cases

    def per_layer_validation(self) -> list[dict[str, Any]]:
        """Per-operator rows: model, layer, op, measured and predicted ms, error (in-sample and LOMO)."""
        return list(self.fit_report.per_layer)

    def holdout_cases(self) -> list[ValidationCase]:
        """Published whole-model latencies of other networks on this device, never used in the fit."""
        import timm
        import yaml

        if self.holdout_file is None or not self.holdout_file.is_file():
            raise HardwareError(
                f"hw {self.name!r}: hold-out file {self.holdout_file} is missing; set hw.holdout_file to a yaml of "
                "published latencies (the format of hardware/devices/*_published.yaml)"
            )
        entries = [e for e in yaml.safe_load(self.holdout_file.read_text())["models"] if e.get("timm")]
        predicted = []
        for entry in entries:
            size = int(entry.get("input_size", 224))
            model = timm.create_model(entry["timm"], pretrained=False, **entry.get("kwargs", {}))
            predicted.append(self.latency(model, (1, 3, size, size)).latency_ms)
        cases = []
        for entry, pred, ratio in zip(entries, predicted, _validation.same_paper_ratio_errors(entries, predicted), strict=True):
            measured = float(entry["latency_ms"])
            info: dict[str, Any] = {"source": entry.get("source", ""), "timm": entry["timm"]}
            if ratio is not None:
                info["same_paper_ratio_error"] = ratio
            group = f"holdout-{entry.get('group', 'published')}"
            cases.append(ValidationCase(entry["name"], pred, measured, group, info, fit="held-out"))
        return cases


def _resolve_reference_dir(name: str, reference_dir: str | Path | None) -> Path:
    """The profile folder: absolute as given; relative from the working directory, else the project root."""
    if reference_dir is None or not str(reference_dir).strip() or str(reference_dir).startswith("None"):
        raise HardwareError(
            f"hw.reference_dir of {name!r} is unset ({reference_dir!r}): point it at the folder of the device's "
            f"profiles (conf/hw/{name}.yaml says which), e.g. +hw.reference_dir=/path/to/profiles"
        )
    return resolve_path(reference_dir)


def input_shape_batch(layers: list[LayerSpec]) -> int:
    return int(layers[0].input_shape[0]) if layers and layers[0].input_shape else 1
