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
import statistics
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from benchmarks.models import build_model
from benchmarks.training import evaluate
from hardware.protocol import summarise
from hardware.target import HardwareTarget
from methods.baseline import load_dense
from methods.storage import load_model


def exchange_rows(baseline: nn.Module, trimmed: dict[str, nn.Module], targets: dict[str, HardwareTarget],
                  input_shape: tuple[int, ...], rounds: int = 1) -> list[dict[str, Any]]:
    """One row per (target evaluated on, model trimmed for): latency and speedup on that target.

    With ``rounds`` > 1 every model is measured that many times, the models interleaved
    (baseline, trimmed..., baseline, ...), and the row holds the median over the rounds with
    their IQR as the spread: a VM whose speed drifts by tens of percent over a minute then
    moves every model alike instead of favouring whichever was measured in a fast moment.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    models = {"baseline": baseline, **trimmed}
    rows = []
    for hw, target in targets.items():
        reports: dict[str, list[Any]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, model in models.items():
                reports[name].append(target.latency(model, input_shape))
        base_ms = statistics.median(r.latency_ms for r in reports["baseline"])
        for trimmed_for in trimmed:
            first = reports[trimmed_for][0]
            if rounds > 1:
                over_rounds = summarise([r.latency_ms for r in reports[trimmed_for]])
                latency_ms, spread = over_rounds.median_ms, over_rounds.iqr_ms
            else:
                latency_ms, spread = first.latency_ms, first.spread_ms
            rows.append({"evaluated_on": hw, "trimmed_for": trimmed_for, "latency_ms": latency_ms,
                         "spread_ms": spread, "baseline_ms": base_ms, "speedup": base_ms / latency_ms,
                         "source": first.label, "rounds": rounds})
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
                     f"{r['baseline_ms']:.4f} | {mark}{r['speedup']:.2f}x{mark} | {top1[r['trimmed_for']]:.2f} | "
                     f"{r['source']} |")
    lines += ["", f"Baseline top-1: {top1['baseline']:.2f}%.", "", "Filters kept per layer:", "",
              "| layer | baseline | " + " | ".join(f"trimmed for {k}" for k in channels if k != "baseline") + " |",
              "|---|---:|" + "---:|" * (len(channels) - 1)]
    for layer in channels["baseline"]:
        lines.append(f"| {layer} | {channels['baseline'][layer]} | "
                     + " | ".join(str(channels[k][layer]) for k in channels if k != "baseline") + " |")
    return "\n".join(lines) + "\n"


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
    parser.add_argument("--rounds", type=int, default=5, help="interleaved measurements of every model per target")
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
    rows = exchange_rows(baseline, trimmed, targets, input_shape, args.rounds)
    top1 = {"baseline": evaluate(baseline, datamodule, "test")["top1"],
            **{name: evaluate(m, datamodule, "test")["top1"] for name, m in trimmed.items()}}
    channels = {"baseline": layer_widths(baseline), **{name: layer_widths(m) for name, m in trimmed.items()}}
    header = (f"# {args.title}\n\nModel `{cfg.model.name}` on `{cfg.dataset.name}` (test split), batch 1; "
              f"generated {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC by "
              "`python -m benchmarks.platform_exchange`. Bold: the model on the target it was trimmed for. "
              f"Latency: median of {args.rounds} interleaved rounds per model, ± their IQR."
              + (f"\n\n{args.note}" if args.note else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(exchange_markdown(rows, top1, channels, header))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
