"""Aging evolution with and without network morphism (issue 14): at the same training per child, does a child that
starts from its parent's weights make the search find better networks? CIFAR-10 JPEG, the cifar_small space.

    python -m benchmarks.studies.nas_evolution --arms morphism scratch   # results/nas_evolution.json and .png
    python -m benchmarks.studies.report nas_evolution                    # results/nas_evolution.md

Two runs of the ``evolution`` method with the same seed, population, sample, cycles, mutations and epochs per
individual: ``children: morphism`` (each child built from its parent's weights, :mod:`methods.nas.morphism`) and
``children: scratch`` (Real et al.'s: each child from a fresh initialisation). Fitness is val top-1 alone (no
latency term: the question is what inherited weights buy); the V100 roofline only prices the architectures.
Each arm records every individual (ops, parent, mutation, val top-1 at birth and after its training), the
fittest found and its test top-1 as the search left it (``final: inherit`` with no more training: what the
search's own training bought), and the search's wall time. Departures for a 2-core machine (all in the
JSON): a subset of the training split, an epoch or two per individual, a few cycles, one seed; accuracies
are far below a full CIFAR-10 training, so compare the arms with each other only. Resumable per arm.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.context import make_context
from benchmarks.schema import TrainerConfig
from benchmarks.studies.cifar_subsets import PATH_ARGUMENTS, add_subset_arguments, command, subset_datamodule
from benchmarks.studies.recipes import conf_recipe
from benchmarks.studies.runs import Runs
from benchmarks.training import evaluate
from hardware.registry import build
from methods import create_method
from methods.reporting import save_figure

FIGURES = "nas_evolution.json"
ARMS = ("morphism", "scratch")


def method_settings(args: argparse.Namespace, children: str) -> dict[str, Any]:
    return {"space": {"preset": "cifar_small"}, "cost": "latency", "population": args.population,
            "sample": args.sample, "cycles": args.cycles, "seed_epochs": args.seed_epochs,
            "child_epochs": args.child_epochs, "children": children, "final": "inherit", "finetune": {"epochs": 0}}


def arm(children: str, study: Runs, args: argparse.Namespace, work: Path) -> None:
    def run() -> dict[str, Any]:
        dm = subset_datamodule(args)
        recipe = conf_recipe("cifar_sgd", epochs=args.seed_epochs, lr=args.lr)
        ctx = make_context(dm, build("v100"), recipe, TrainerConfig(progress_bar=False, limit_val_batches=0), 42,
                           work / children)
        result = create_method("evolution", **method_settings(args, children)).compress(nn.Identity(), ctx)
        history = json.loads((ctx.workdir / "evolution_history.json").read_text())
        return {"metrics": result.metrics, "history": history,
                "best_test_top1": evaluate(result.model.eval(), dm, "test")["top1"]}

    study.get(f"arm/{children}", run)


def plot(rows: dict[str, Any], path: Path) -> list[Path]:
    """Val top-1 of every individual at its birth cycle, and the best so far, per arm."""

    def draw(ax: Any) -> None:
        for (name, row), colour in zip(sorted(rows.items()), ("tab:blue", "tab:orange"), strict=False):
            history = row["history"]
            ax.scatter([r["born"] for r in history], [r["val_top1"] for r in history], s=14, color=colour, alpha=0.6)
            best, running = [], float("-inf")
            for r in history:
                running = max(running, r["val_top1"])
                best.append(running)
            ax.step([r["born"] for r in history], best, where="post", color=colour, label=f"{name.split('/')[1]} children")
        ax.set_xlabel("cycle (birth)")
        ax.set_ylabel("val top-1 (%)")
        ax.set_title("aging evolution: children from their parent's weights vs from scratch", fontsize=9)
        ax.legend(fontsize=8)

    return save_figure(path, (6.5, 4.0), draw, what="evolution")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_subset_arguments(parser)
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--population", type=int, default=5)
    parser.add_argument("--sample", type=int, default=2)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--seed-epochs", type=float, default=1.0, help="the founder's training from scratch")
    parser.add_argument("--child-epochs", type=float, default=1.0, help="every other individual's training")
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k not in ("arms", *PATH_ARGUMENTS)}
    settings.update(method={children: method_settings(args, children) for children in ARMS})
    study = Runs(args.out / FIGURES, settings, hidden=("metrics", "history"), collection="rows")
    study.data["command"] = command("nas_evolution", args)
    work = Path(tempfile.mkdtemp(prefix="nas_evolution_"))
    for children in args.arms:
        arm(children, study, args, work)
    plot(study.data["rows"], args.out / "nas_evolution.png")
    print(f"wrote {study.path}; render the report: python -m benchmarks.studies.report nas_evolution")
    return 0


def trained_epochs(history: list[dict[str, Any]], index: int, settings: dict[str, Any], inherits: bool) -> float:
    """Epochs of training in an individual's weights: its own, plus its ancestors' where children inherit."""
    row, total = history[index], 0.0
    while row["parent"] is not None:
        total += settings["child_epochs"]
        if not inherits:
            return total
        row = history[row["parent"]]
    return total + settings["seed_epochs"]


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "-"


def render(figures: dict[str, Any]) -> str:
    """results/nas_evolution.md from its JSON."""
    rows, s = figures["rows"], figures["settings"]
    out = ["# Aging evolution: children from their parent's weights (network morphism) vs from scratch", "",
           f"Written by `python -m benchmarks.studies.report nas_evolution` from `results/{FIGURES}`, whose runs "
           f"`{figures.get('command', '')}` wrote. CIFAR-10 JPEG, `cifar_small` space, one seed; a {s['train_subset']}-image "
           f"cut of the training split; population {s['population']}, sample {s['sample']}, {s['cycles']} cycles; the "
           f"founder (the smallest net) trained {s['seed_epochs']:g} epochs from scratch, every other individual "
           f"{s['child_epochs']:g} epoch(s) (from its parent's weights, or from scratch) at lr {s['lr']:g}. Fitness: val "
           f"top-1 on {s['val_subset']} images; the fittest's test top-1 ({s['test_subset']} images) as the search left it. "
           "Accuracies are far below a full training: compare the two arms only. Machine: "
           + str(figures.get("machine", {}).get("cpu", "")) + ".", "",
           "| children | individuals | best val top-1 | its test top-1 | epochs in its weights | mean val top-1 of children | "
           "val top-1 lost at birth: preserving / lossy / scratch | best architecture | the founder's? | search wall (min) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(rows):
        row, m = rows[key], rows[key]["metrics"]
        children = [r for r in row["history"] if r["parent"] is not None]
        best = max(row["history"], key=lambda r: r["fitness"])
        drops = " / ".join(f"{m[k]:.2f}" if k in m else "-"
                           for k in ("birth_drop_preserving", "birth_drop_lossy", "birth_drop_scratch"))
        epochs = trained_epochs(row["history"], best["id"], s, key == "arm/morphism")
        out.append(f"| {key.split('/')[1]} | {int(m['individuals_trained'])} | {m['best_val_top1']:.2f} | "
                   f"{row['best_test_top1']:.2f} | {epochs:g} | {_mean([r['val_top1'] for r in children])} | {drops} | "
                   f"`{' '.join(best['ops'])}` | {'yes' if best['ops'] == row['history'][0]['ops'] else 'no'} | "
                   f"{m['search_wall_s'] / 60:.1f} |")
    out += ["", "Lost at birth: parent's val top-1 minus the child's before its own training (0 for a function-"
            "preserving morphism up to numerics; a fresh initialisation starts at chance). Epochs in its weights: "
            "every individual costs the same training, but a morphism child's weights also hold its ancestors' epochs, "
            "so its fitness mixes architecture and accumulated training (the confound of weight inheritance); "
            "from scratch, fitness compares architectures at equal training. Figure: "
            "`results/nas_evolution.png` (every individual's val top-1 at its birth cycle; lines: best so far).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
