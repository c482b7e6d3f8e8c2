"""Issue 11's goal, measured: how fast ``python -m benchmarks`` refuses a configuration that cannot run.

Each case is a bad command line run ``--repeats`` times in a fresh project root (its own store,
caches and data folder; the source data from $COMPRESSBENCH_SOURCE_DATA or ../shared/data). For
each: the exit code, the error line, the wall and CPU seconds (median), and whether a store was
opened (it must not be: no FAILED run). The machine's load average is recorded beside them,
since a shared 2-core machine stretches wall time. Writes results/fail_fast.{json,md}
(``python -m benchmarks.studies.report fail_fast`` renders the markdown again from the JSON).

    python -m benchmarks.studies.fail_fast [--repeats 5] [--results results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
#: (case, overrides, what it checks). The first group needs no torch; the second builds method/model/data.
CASES = [
    ("seed=abc", ["seed=abc"], "settings (no torch)"),
    ("recipe.lr=-1", ["recipe.lr=-1"], "settings (no torch)"),
    ("unwritable store", ["logger.tracking_uri=sqlite:///{file}/mlflow.db"], "settings (no torch)"),
    ("server refuses", ["logger.tracking_uri=http://127.0.0.1:9"], "settings (no torch)"),
    ("server silent", ["logger.tracking_uri=http://127.0.0.1:{port}"], "settings (no torch): logger.timeout_s=10"),
    ("method.sparsity=1.5", ["+method=magnitude", "method.sparsity=1.5"], "method schema (torch)"),
    ("method.criterion=l3", ["+method=filter", "method.criterion=l3"], "method schema (torch)"),
    ("method.episodes=-1", ["+method=amc", "method.episodes=-1"], "method schema (torch)"),
    ("unknown timm model", ["model=timm", "model.name=nosuchnet"], "model name (cached names: no torch)"),
    ("lenet5 on cifar10_jpeg", ["dataset=cifar10_jpeg"], "model vs dataset (torch, timm, Lightning data)"),
]


@dataclass(frozen=True)
class Try:
    """One invocation: seconds, exit code, the last stderr line, whether a traceback was printed."""

    wall_s: float
    cpu_s: float
    exit_code: int
    line: str
    traceback: bool


def _time_one(overrides: list[str], env: dict[str, str]) -> Try:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "benchmarks", *overrides], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return Try(wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done.returncode,
               lines[-1] if lines else "", "Traceback" in done.stderr)


def measure(repeats: int) -> list[dict[str, object]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # connections complete in the backlog, no request is ever answered
        root = Path(tmp)
        not_a_folder = root / "a_file"
        not_a_folder.write_text("a file where a folder is expected")
        env = {**os.environ, "COMPRESSBENCH_ROOT": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root}/mlflow.db"}
        env.setdefault("COMPRESSBENCH_SOURCE_DATA", str(REPO_ROOT.parent / "shared" / "data"))
        for case, overrides, what in CASES:
            resolved = [o.format(file=not_a_folder, port=silent.getsockname()[1]) for o in overrides]
            _time_one(resolved, env)  # warm: the data folder is prepared once, the OS caches the imports
            tries = [_time_one(resolved, env) for _ in range(repeats)]
            rows.append({
                "case": case, "checks": what, "command": "python -m benchmarks " + " ".join(overrides),
                "wall_s_median": statistics.median(t.wall_s for t in tries),
                "cpu_s_median": statistics.median(t.cpu_s for t in tries),
                "exit_codes": sorted({t.exit_code for t in tries}), "traceback": any(t.traceback for t in tries),
                "store_opened": (root / "mlflow.db").exists(), "line": tries[-1].line,
            })
            print(f"{case}: wall {rows[-1]['wall_s_median']:.2f} s, cpu {rows[-1]['cpu_s_median']:.2f} s", file=sys.stderr)
    return rows


def render(report: dict[str, Any]) -> str:
    """results/fail_fast.md from the JSON figures (benchmarks.studies.report renders it too)."""
    lines = [
        "# Failing fast: a configuration that cannot run (issue 11)",
        "",
        f"`python -m benchmarks.studies.fail_fast --repeats {report['repeats']}` on {report['machine']}, "
        f"{report['date']}; load average before / after: {report['load_before']} / {report['load_after']} "
        f"({report['cores']} cores). Median of {report['repeats']} runs after one warm-up; CPU = user + system "
        "seconds of the process (what the wall time would be on an idle machine, about).",
        "",
        "| case | what refuses it | wall s | CPU s | exit | traceback | store opened | the line |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        line = str(row["line"]).replace("|", "\\|")
        line = line if len(line) <= 160 else line[:157] + "..."
        lines.append(f"| `{row['case']}` | {row['checks']} | {row['wall_s_median']:.2f} | {row['cpu_s_median']:.2f} | "
                     f"{','.join(map(str, row['exit_codes']))} | {'yes' if row['traceback'] else 'no'} | "
                     f"{'yes' if row['store_opened'] else 'no'} | {line} |")
    lines += ["", "Goal: under 3 s for a typo. A settings error imports neither torch, Lightning nor MLflow; a method "
              "error imports torch but neither Lightning, timm nor MLflow (methods reach the training loop through "
              "Lightning-free hooks, `methods.hooks`); a model name is checked against the names cached per timm version and "
              "zoo source (`benchmarks.model_names`; the warm-up run wrote them, as any earlier run does), without timm; "
              "only the model-against-dataset check builds the data (Lightning). All of them end before any MLflow run "
              "exists.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.studies.fail_fast", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "results")
    args = parser.parse_args()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = measure(args.repeats)
    report = {"repeats": args.repeats, "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_before": load_before,
              "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()), "cores": os.cpu_count(), "rows": rows}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "fail_fast.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / "fail_fast.md").write_text(render(report))
    print(f"wrote {args.results / 'fail_fast.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
