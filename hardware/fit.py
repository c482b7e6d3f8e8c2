"""``python -m hardware fit``: a device we do not have, from what a user can measure on it (issue 13, item 5).

    python -m hardware fit --name my_phone --measurements rows.csv --base pixel1_kernels
    python -m hardware fit --name pixel1_from_totals --measurements ../shared/reference/pixel1-amc-tflite \\
        --format tflite_totals --base local_cpu_kernels
    python -m hardware fit --name my_phone_ops --measurements profiles/     # per-operator profiles, from scratch

Measurements (``hardware.kernelcost.measurements.FORMATS``): whole-model rows (CSV ``model,
input_size,latency_ms``), TF-Lite ``benchmark_model`` profiles (per operator, or their
whole-model totals), or ONNX Runtime profiler JSONs (their whole-model runs). With ``--base`` (a kernel device), the base's predictors are adapted by
per-kernel-type scales fitted on the measurements (``hardware.kernelcost.fewshot``, HELP's few-shot
idea): ten whole-model rows are enough. Without it, per-operator profiles fit the analytical
kernel form from scratch. It writes ``conf/hw/<name>.yaml`` (a ``KernelTarget``), the fitted
parameters ``<out-dir>/<name>.fit.json`` and the stated error ``<out-dir>/<name>.validation.json``
(leave-one-model-out), and prints the cross-validated error.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from hardware import validation
from hardware.kernelcost import measurements
from hardware.kernelcost.fewshot import FIT_FORMAT, fit_scales, model_groups, scale_cases, type_sums
from hardware.kernelcost.target import KernelTarget
from hardware.paths import project_root
from hardware.registry import default_conf_dir, instantiate, load_config, parse_overrides
from hardware.target import HardwareError, ValidationCase

KERNEL_TARGET = f"{KernelTarget.__module__.rsplit('.', 1)[0]}.{KernelTarget.__name__}"  # as conf/hw yamls name it
DEFAULT_OUT = project_root() / "hardware" / "devices"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _shown(path: Path) -> str:
    """``path`` as given when relative, else relative to the project root when inside it (``resolve_path`` finds
    both from the working directory or the root)."""
    if not path.is_absolute():
        return str(path)
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path.resolve())


def cv_summary(cases: list[ValidationCase]) -> dict[str, Any]:
    """Leave-one-model-out error of the whole-model cases: RMSPE, share within ±10 %, Spearman rank correlation."""
    from scipy.stats import spearmanr

    held = [c for c in cases if c.out_of_sample and c.scope == "network"]
    if not held:
        return {"n": 0}
    summary = validation.summarise(held)
    if len({c.measured_ms for c in held}) > 2:
        summary["spearman"] = float(spearmanr([c.predicted_ms for c in held], [c.measured_ms for c in held])[0])
    return summary


def _adapt(name: str, base: str, overrides: dict[str, Any], conf_dir: Path | None, samples_of: Any,
           progress: Any) -> tuple[dict[str, Any], dict[str, Any], list[ValidationCase]]:
    """(yaml, parameters, cases) of ``base``'s predictors scaled per kernel type to the measurements."""
    config = load_config(base, overrides, conf_dir)
    if config.get("_target_") != KERNEL_TARGET or config.get("fitted"):
        raise HardwareError(f"--base {base} is a {config.get('_target_')}{' already fitted' if config.get('fitted') else ''}; "
                            f"the scales adapt a kernel device's own predictors ({KERNEL_TARGET}, e.g. pixel1_kernels, "
                            "local_cpu_kernels)")
    samples = samples_of(config.get("runtime", "tflite"))  # the measurements' problems before the base's fit
    progress(f"building the base device {base} (fits its kernel predictors)")
    target = instantiate(base, overrides, conf_dir)
    groups = model_groups(samples)
    fitted = fit_scales(type_sums(target.predictor, samples), [s.ms for s in samples], groups)
    cases = scale_cases(target.predictor, samples, fitted=fitted)
    config = {k: v for k, v in config.items() if k not in ("holdout_file", "validation")}
    config.update(source="analytical", validation={"holdout": False})
    return config, {"kind": "scales", "base": base, "base_overrides": overrides, "runtime": target.runtime,
                    "models": len(set(groups)), **fitted.as_dict()}, cases


def _from_scratch(name: str, where: str, fmt: str, progress: Any) -> tuple[dict[str, Any], dict[str, Any],
                                                                         list[ValidationCase]]:
    """(yaml, parameters, cases) of the analytical kernel form fitted on per-operator profiles alone."""
    if fmt != "tflite_benchmark_model":
        raise HardwareError(f"--format {fmt}: whole-model measurements cannot fit every kernel coefficient from scratch; "
                            "give --base <a kernel device, e.g. pixel1_kernels> to adapt its predictors by per-type scales")
    config: dict[str, Any] = {"_target_": KERNEL_TARGET, "runtime": "tflite", "predictor": "analytical",
                              "sources": [{"name": "measurements", "format": fmt, "path": where}],
                              "validation": {"cv_folds": 10, "holdout": False}}
    progress("fitting the analytical kernel form on the per-operator profiles")
    target = KernelTarget(name=name, device=name, citation="", source="analytical",
                          **{k: v for k, v in config.items() if k != "_target_"})
    predictor = target.predictor
    return config, {"kind": "analytical", "base": None, "runtime": target.runtime,
                    "models": len(set(model_groups(target.all_samples()))), "coefficients": predictor.coefficients,
                    "settings": predictor.settings, "build": predictor.build}, target.validation_cases()


def fit_device(name: str, measured: Path, fmt: str | None = None, base: str | None = None,
               overrides: dict[str, Any] | None = None, conf_dir: Path | None = None, out_dir: Path | None = None,
               imports: list[str] | None = None, calibration: str = "measured", device: str | None = None,
               force: bool = False, progress: Any = _log) -> dict[str, Any]:
    """Fit device ``name`` on the measurements at ``measured``; write its yaml, parameters and stated error.

    Returns the parameter file's content (with the cross-validated error under ``cv``)."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise HardwareError(f"--name {name!r}: use letters, digits and _ (it becomes conf/hw/<name>.yaml and +hw=<name>)")
    yaml_path = Path(conf_dir or default_conf_dir()) / f"{name}.yaml"
    if yaml_path.exists() and not force:
        raise HardwareError(f"{yaml_path} exists; choose another --name, or --force to replace it")
    if base == name:
        raise HardwareError(f"--base {base} is the device being written; name the new device otherwise")
    fmt = fmt or measurements.detect_format(measured)
    imports = list(imports or [])

    def samples_of(runtime: str) -> list:
        return measurements.read(measured, fmt, runtime, imports)

    if base:
        config, parameters, cases = _adapt(name, base, dict(overrides or {}), conf_dir, samples_of, progress)
    else:
        samples_of("tflite")  # the checks of every file, as one-line errors
        config, parameters, cases = _from_scratch(name, _shown(measured), fmt, progress)
    out = Path(out_dir or DEFAULT_OUT)
    out.mkdir(parents=True, exist_ok=True)
    fit_path = out / f"{name}.fit.json"
    rows = [c for c in cases if c.fit == "in-sample"]
    cv = cv_summary(cases)
    command = " ".join([f"python -m hardware fit --name {name} --measurements {_shown(measured)} --format {fmt}",
                        *([f"--base {base}"] if base else []), f"--calibration {calibration}",
                        *(f"--set '{key}={json.dumps(value)}'" for key, value in (overrides or {}).items())])
    parameters = {"format": FIT_FORMAT, "device": name, "command": command, **parameters,
                  "measurements": {"path": _shown(measured), "format": fmt, "imports": imports, "rows": len(rows),
                                   "models": parameters.pop("models")},
                  "cv": {"how": "leave-one-model-out (nested: the ridge chosen without the held-out model)", **cv},
                  "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    fit_path.write_text(json.dumps(parameters, indent=1) + "\n", encoding="utf-8")
    what = f"{base}'s kernel predictors scaled per kernel type" if base else "the analytical kernel form fitted from scratch"
    config.update(name=name, device=device or f"{name} (fitted by python -m hardware fit)", calibration=calibration,
                  citation=f"measurements {_shown(measured)} ({fmt}), fitted by `python -m hardware fit`",
                  fitted=_shown(fit_path))
    header = (f"# {name}: {what} on {len(rows)} measurements ({_shown(measured)}, {fmt}),\n"
              f"# written by `python -m hardware fit` ({parameters['date'][:10]}); parameters in {_shown(fit_path)};\n"
              f"# its stated error is the leave-one-model-out error of those measurements ({name}.validation.json).\n")
    yaml_path.parent.mkdir(parents=True, exist_ok=True)
    yaml_path.write_text(header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    validation.store_stated_error(validation.stated_error_path(name, out), name, cases,
                                  {"name": name, "base": base or "", "fitted": _shown(fit_path)}, command)
    return parameters


def cmd_fit(args: argparse.Namespace) -> int:
    result = fit_device(args.name, Path(args.measurements), args.format, args.base, parse_overrides(args.set),
                        args.conf_dir, args.out_dir, args.imports, args.calibration, args.device, args.force)
    if result["kind"] == "scales":
        scales = ", ".join(f"{k} {v:.3g}" for k, v in sorted(result["scales"].items()))
        _log(f"{args.name}: {args.base}'s predictions x per-type scales (ridge {result['ridge']}): {scales}; "
             f"other types {result['default_scale']:.3g}")
    cv = result["cv"]
    if cv.get("n"):
        spearman = f", Spearman {cv['spearman']:.3f}" if "spearman" in cv else ""
        _log(f"cross-validated ({cv['how']}), {cv['n']} whole-model rows: RMSPE {cv['rmspe']:.1%}, "
             f"{cv['within']:.0%} within ±10%, mean error {cv['bias']:+.1%}{spearman}")
    else:
        _log("cross-validated error: none (fewer than two models measured); its reports state it as unknown")
    _log(f"wrote {Path(args.conf_dir or default_conf_dir()) / (args.name + '.yaml')} and "
         f"{Path(args.out_dir or DEFAULT_OUT) / (args.name + '.fit.json')}; use it with "
         f"`python -m hardware predict --hw {args.name} ...` or +hw={args.name}")
    return 0


def add_parser(sub: Any, import_help: str) -> None:
    p = sub.add_parser("fit", help="a new device from its measurements: conf/hw/<name>.yaml and its fitted parameters")
    p.add_argument("--name", required=True, help="the new device (conf/hw/<name>.yaml, +hw=<name>)")
    p.add_argument("--measurements", required=True,
                   help="whole-model CSV (model,input_size,latency_ms), a folder of TF-Lite benchmark_model profiles, "
                        "or ONNX Runtime profiler JSONs named <timm model>@<input size>.json")
    p.add_argument("--format", choices=sorted(measurements.FORMATS), default=None,
                   help="default: from the name (a .csv, a .json or a folder of them, else TF-Lite profiles)")
    p.add_argument("--base", default=None,
                   help="a kernel device whose predictors are scaled per kernel type (needed for whole-model rows)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the base device's yaml")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help=import_help)
    p.add_argument("--out-dir", type=Path, default=None, help=f"where the fitted parameters go (default {_shown(DEFAULT_OUT)})")
    p.add_argument("--calibration", choices=("measured", "published"), default="measured",
                   help="measured by you (default) or published figures")
    p.add_argument("--device", default=None, help="a description of the device (the yaml's device)")
    p.add_argument("--force", action="store_true", help="replace an existing conf/hw/<name>.yaml")
    p.set_defaults(func=cmd_fit)

