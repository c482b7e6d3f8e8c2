"""CompactNet's platform-exchange experiment (Li et al. 2019, section 4.2, Table 7).

Models trimmed for different hardware targets (same target speedup) are each evaluated
on every target: a model is platform-specific when it reaches its speedup on the target
it was trimmed for and less on the other. Every figure comes from the targets
themselves (their own provenance label is in the table), accuracy from the test split.

    python -m benchmarks.platform_exchange --baseline BASE.pt \\
        --trimmed pixel1=outputs/work/<run>/model.pruned.cbm --trimmed local_cpu=outputs/work/<run>/model.pruned.cbm \\
        --hw pixel1 --hw local_cpu --out results/pruning_platform_exchange.md [hydra overrides ...]

The stored files are decoded exactly as the run pipeline decodes them: the baseline
with :func:`methods.baseline.load_dense`, the trimmed models with
:func:`methods.storage.load_model` onto the unpruned architecture of the
composed config (``model=...``, ``dataset=...`` overrides select it).
"""

from __future__ import annotations

import argparse
import datetime as _dt
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from benchmarks.models import build_model
from benchmarks.training import evaluate
from hardware.speedup import NO_DIFFERENCE, speedup_between
from hardware.target import HardwareTarget
from methods.baseline import load_dense
from methods.storage import load_model


def exchange_rows(baseline: nn.Module, trimmed: dict[str, nn.Module], targets: dict[str, HardwareTarget],
                  input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """One row per (target evaluated on, model trimmed for): latency and speedup on that target.

    A measured target times the baseline and every trimmed model together, interleaved over its
    ``hw.rounds`` rounds (``HardwareTarget.latencies``): a VM whose speed drifts by tens of percent
    over a minute then moves every model alike, and each speedup is the median of the per-round
    ratios with its interval (``hardware.speedup``). An emulated target's speedup is a predicted point.
    """
    models = {"baseline": baseline, **trimmed}
    rows = []
    for hw, target in targets.items():
        reports = target.latencies(models, input_shape)
        base = reports["baseline"]
        for trimmed_for in trimmed:
            report = reports[trimmed_for]
            speedup = speedup_between(base, report)
            rows.append({"evaluated_on": hw, "trimmed_for": trimmed_for, "latency_ms": report.latency_ms,
                         "spread_ms": report.spread_ms, "baseline_ms": base.latency_ms, "speedup": speedup.value,
                         "speedup_low": speedup.low, "speedup_high": speedup.high, "verdict": speedup.verdict,
                         "noisy": speedup.noisy, "source": report.label, "rounds": speedup.rounds})
    return rows


def exchange_markdown(rows: list[dict[str, Any]], top1: dict[str, float], channels: dict[str, dict[str, int]],
                      header: str) -> str:
    """Table 7 as markdown: the exchange rows, then the filters each model kept per layer."""
    lines = [header, "",
             "| evaluated on | trimmed for | latency (ms) | baseline (ms) | speedup | top-1 (%) | source |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        mark = "**" if r["evaluated_on"] == r["trimmed_for"] else ""
        lines.append(f"| {r['evaluated_on']} | {r['trimmed_for']} | {r['latency_ms']:.4f} ± {r['spread_ms']:.4f} | "
                     f"{r['baseline_ms']:.4f} | {mark}{r['speedup']:.2f}x{mark}{_interval(r)} | "
                     f"{top1[r['trimmed_for']]:.2f} | {r['source']} |")
    lines += ["", f"Baseline top-1: {top1['baseline']:.2f}%.", "", "Filters kept per layer:", "",
              "| layer | baseline | " + " | ".join(f"trimmed for {k}" for k in channels if k != "baseline") + " |",
              "|---|---:|" + "---:|" * (len(channels) - 1)]
    for layer in channels["baseline"]:
        lines.append(f"| {layer} | {channels['baseline'][layer]} | "
                     + " | ".join(str(channels[k][layer]) for k in channels if k != "baseline") + " |")
    return "\n".join(lines) + "\n"


def _interval(row: dict[str, Any]) -> str:
    """A measured speedup's interval and verdict (rows written before pairing have none)."""
    if row.get("verdict") in (None, "predicted"):
        return ""
    text = f" [{row['speedup_low']:.2f}, {row['speedup_high']:.2f}]"
    if row["verdict"] == NO_DIFFERENCE:
        text += f" {NO_DIFFERENCE}"
    return text + (" (noisy)" if row["noisy"] else "")


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every conv and linear layer: what a trimming kept."""
    return {n: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, type=Path, help="the dense baseline file")
    parser.add_argument("--trimmed", action="append", required=True, help="NAME=model.pruned.cbm, once per trimmed model")
    parser.add_argument("--hw", action="append", required=True, help="a conf/hw option to evaluate on (repeat)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--title", default="CompactNet platform exchange")
    parser.add_argument("--note", default="")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides selecting model and dataset")
    args = parser.parse_args(argv)

    conf_dir = Path(__file__).resolve().parents[1] / "conf"
    targets: dict[str, HardwareTarget] = {}
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(args.overrides))
        for hw in args.hw:
            targets[hw] = instantiate(compose(config_name="config", overrides=[*args.overrides, f"+hw={hw}"]).hw)
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    template = build_model(cfg.model.name, num_classes=datamodule.num_classes, in_chans=datamodule.input_shape[0],
                           **(cfg.model.get("kwargs") or {}))
    baseline = load_dense(template, args.baseline)
    trimmed = {}
    for item in args.trimmed:
        name, path = item.split("=", 1)
        trimmed[name] = load_model(Path(path), template)
    input_shape = (1, *datamodule.input_shape)
    rows = exchange_rows(baseline, trimmed, targets, input_shape)
    top1 = {"baseline": evaluate(baseline, datamodule, "test")["top1"],
            **{name: evaluate(m, datamodule, "test")["top1"] for name, m in trimmed.items()}}
    channels = {"baseline": layer_widths(baseline), **{name: layer_widths(m) for name, m in trimmed.items()}}
    header = (f"# {args.title}\n\nModel `{cfg.model.name}` on `{cfg.dataset.name}` (test split), batch 1; "
              f"generated {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC by "
              "`python -m benchmarks.platform_exchange`. Bold: the model on the target it was trimmed for. "
              "Measured latency: median over the target's interleaved rounds (hw.rounds), ± IQR; speedup: median "
              "per-round ratio [the central hw.coverage share of the per-round ratios: their IQR by default]."
              + (f"\n\n{args.note}" if args.note else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(exchange_markdown(rows, top1, channels, header))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
