"""Render the studies' markdown reports in results/ from their JSON figures; never edit them by hand.

    python -m benchmarks.studies.report                    # every report below
    python -m benchmarks.studies.report quantization_ptq   # one
    python -m benchmarks.studies.report --check            # exit 1 when a committed report differs

Each report names its JSON sources (in results/) and the study function that renders them, so a
figure changes in a report only when a study's run changed its JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.studies import quantization_ptq, scaleout

RESULTS = Path(__file__).resolve().parents[2] / "results"


@dataclass(frozen=True)
class Report:
    """results/<name>.md = render(*the JSON sources, in order); a missing optional source is passed as None."""

    sources: tuple[str, ...]
    render: Callable[..., str]
    optional: tuple[str, ...] = ()


REPORTS: dict[str, Report] = {
    "scaleout": Report(("scaleout.json",), scaleout.scaleout_markdown),
    "quantization_ptq": Report(("quantization_ptq.json", "quantization_ptq_vnni.json", "quantization_ptq_lowbit.json"),
                               quantization_ptq.render,
                               optional=("quantization_ptq_vnni.json", "quantization_ptq_lowbit.json")),
}


def render(name: str, results: Path = RESULTS) -> str:
    """The markdown of report ``name`` from the JSON files in ``results``."""
    report = REPORTS[name]
    figures: list[Any] = []
    for source in report.sources:
        path = results / source
        if not path.exists() and source not in report.optional:
            raise FileNotFoundError(f"{path}: the figures of report {name!r}; run its study first "
                                    f"(python -m benchmarks.studies.{name} --help)")
        figures.append(json.loads(path.read_text()) if path.exists() else None)
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
