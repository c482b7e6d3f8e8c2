"""Render the studies' markdown reports in results/ from their JSON figures; never edit them by hand.

    python -m benchmarks.studies.report                    # every report below
    python -m benchmarks.studies.report quantization_ptq   # one
    python -m benchmarks.studies.report --check            # exit 1 when a committed report differs

Each report names its sources in results/ (a study's JSON; a paper's figures as yaml) and the
study function that renders them, so a figure changes in a report only when its sources do.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from benchmarks.studies import (
    amc_curve,
    binary,
    deep_compression_selection,
    distillation,
    fail_fast,
    haq,
    hashing_hessian,
    hessian_quantization,
    lowrank,
    nas_evolution,
    nas_specialization,
    pruning_auto,
    quantization_codebook,
    quantization_ptq,
    scaleout,
    speedup_pairing,
)

RESULTS = Path(__file__).resolve().parents[2] / "results"


@dataclass(frozen=True)
class Report:
    """results/<name>.md = render(*the sources, in order); a missing optional source is passed as None."""

    sources: tuple[str, ...]
    render: Callable[..., str]
    optional: tuple[str, ...] = ()


def _reproductions(paper: dict[str, Any], dc_runs: dict[str, Any], distilled: dict[str, Any] | None,
                   binarized: dict[str, Any] | None = None, binarized_resnet: dict[str, Any] | None = None) -> str:
    """results/reproductions.md: each study's paper figures beside ours, one section per paper."""
    sections = [deep_compression_selection.reproductions(paper, dc_runs),
                distillation.reproduction(distilled) if distilled else "",
                binary.reproduction(binarized) if binarized else "",
                binary.resnet_reproduction(binarized_resnet) if binarized_resnet else ""]
    return "\n".join(section for section in sections if section)


REPORTS: dict[str, Report] = {
    "scaleout": Report(("scaleout.json",), scaleout.scaleout_markdown),
    "fail_fast": Report(("fail_fast.json",), fail_fast.render),
    "quantization_ptq": Report(("quantization_ptq.json", "quantization_ptq_vnni.json", "quantization_ptq_lowbit.json"),
                               quantization_ptq.render,
                               optional=("quantization_ptq_vnni.json", "quantization_ptq_lowbit.json")),
    "deep_compression_selection": Report(("deep_compression_mnist.json",),
                                         partial(deep_compression_selection.report,
                                                 goal=deep_compression_selection.COMPRESSION_GOAL)),
    "reproductions": Report(("deep_compression_paper.yaml", "deep_compression_mnist.json", "distillation.json",
                             "binary.json", "binary_resnet20.json"), _reproductions,
                            optional=("distillation.json", "binary.json", "binary_resnet20.json")),
    "quantization_fixed_point": Report(("quantization_fixed_point.json",), quantization_codebook.fixed_point_markdown),
    "pruning_amc": Report(("pruning_amc.json",), pruning_auto.amc_report),
    "pruning_amc_vs_uniform": Report(("pruning_amc_vs_uniform.json",), pruning_auto.amc_report),
    "pruning_platform_exchange": Report(("pruning_platform_exchange.json",), pruning_auto.exchange_report),
    "speedup_pairing": Report(("speedup_pairing.json",), speedup_pairing.report),
    "distillation": Report(("distillation.json",), distillation.render),
    "lowrank": Report(("lowrank.json",), lowrank.render),
    "hessian_quantization": Report(("hessian_quantization.json",), hessian_quantization.render),
    "hashing": Report(("hashing.json",), hashing_hessian.render_hashing),
    "hessian_pruning": Report(("hessian_pruning.json",), hashing_hessian.render_hessian),
    "binary": Report(("binary.json", "binary_resnet20.json"), binary.render, optional=("binary_resnet20.json",)),
    "nas_specialization": Report(("nas_specialization.json",), nas_specialization.render),
    "nas_evolution": Report(("nas_evolution.json",), nas_evolution.render),
    "haq": Report(("haq.json", "haq_curve.json"), haq.render, optional=("haq_curve.json",)),
    "amc_curve": Report(("amc_curve.json",), amc_curve.render),
}
#: how a source is read, by its suffix
READERS: dict[str, Callable[[str], Any]] = {".json": json.loads, ".yaml": yaml.safe_load}


def render(name: str, results: Path = RESULTS) -> str:
    """The markdown of report ``name`` from the JSON files in ``results``."""
    report = REPORTS[name]
    figures: list[Any] = []
    for source in report.sources:
        path = results / source
        if not path.exists() and source not in report.optional:
            study = getattr(report.render, "func", report.render).__module__
            raise FileNotFoundError(f"{path}: the figures of report {name!r}; run its study first "
                                    f"(python -m {study} --help)")
        figures.append(READERS[path.suffix](path.read_text()) if path.exists() else None)
    return report.render(*figures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"reports to render (default: all of {', '.join(REPORTS)})")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON sources and reports are")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a report differs")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(REPORTS))
    if unknown:
        parser.error(f"no report {unknown}; reports: {', '.join(REPORTS)}")
    stale = []
    for name in args.names or REPORTS:
        text, target = render(name, args.results), args.results / f"{name}.md"
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(name)
        else:
            target.write_text(text)
            print(f"wrote {target}")
    if stale:
        print(f"reports that differ from their JSON: {', '.join(stale)}; run python -m benchmarks.studies.report")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
