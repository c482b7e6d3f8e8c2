"""AMC's agent against random search on ResNet-56 / cifar10_jpeg (issue 15, "The agents must learn").

    OMP_NUM_THREADS=1 python -m benchmarks.studies.amc_curve        # results/amc_curve.json and amc_curve.png
    python -m benchmarks.studies.report amc_curve                   # results/amc_curve.md

akamaster's pretrained ResNet-56 (27 prunable channel groups: the inner channels of each residual
block; the identity shortcuts couple the rest) under AMC's FLOPs budget of the paper's CIFAR
experiment (``--ratio`` x the original MACs, the action wall, ``acc`` reward, least-squares refit),
per seed: the DDPG agent (``--warmup`` random, then ``--episodes`` learning episodes) and random
search (the same number of random episodes), both scored alike on ``--reward-batches`` validation
batches of 256 (a hold-out of the training set, never test) without fine-tuning, as the paper's
search does. Besides each episode's reward, every episode's preserve ratios are kept twice: what the
agent proposed for each layer and what the action wall let it keep, so the report can say whether
the agent's late episodes still differ (the action diversity).

Resumable: every finished run is written to the JSON at once and skipped on a rerun with the
same settings (a changed setting starts the file afresh).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.studies import search_curve
from benchmarks.studies.runs import Runs
from methods import create_method
from methods.pruning.amc import AMC, AMCEnvironment
from methods.search.ddpg import Policy, Transition
from methods.search.threads import search_threads

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "akamaster-resnet-cifar10" / "resnet56-4bfd9763.th"


def _recording(env: AMCEnvironment, proposed: list[list[float]]) -> None:
    """Keep what the policy asks for at each layer, before the action wall caps it, one list per episode."""
    walk = env.run_episode

    def run_episode(choose: Policy) -> tuple[list[int], list[Transition]]:
        asked: list[float] = []

        def ask(state: np.ndarray) -> float:
            asked.append(float(choose(state)))
            return asked[-1]

        result = walk(ask)
        proposed.append(asked)
        return result

    env.run_episode = run_episode  # type: ignore[method-assign]


def curve(runs: Runs, args: argparse.Namespace) -> None:
    dm = CIFAR10JPEGDataModule(
        data_dir=ROOT / "data", source_dir=SHARED, name="cifar10_jpeg", batch_size=64, eval_batch_size=256, seed=42,
        val_size=5000, train_subset=args.calibration_batches * 64, val_subset=args.reward_batches * 256, test_subset=256,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], augment=False)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model("resnet56_cifar", 10, 3, WEIGHTS).eval()
    target = instantiate(OmegaConf.load(ROOT / "conf" / "hw" / "pixel1.yaml"))
    work = Path(tempfile.mkdtemp(prefix="amc_curve_"))
    for seed in args.run_seeds or args.seeds:
        for arm, (warmup, episodes) in search_curve.arms(args.warmup, args.episodes).items():
            if args.run_arms and arm not in args.run_arms:
                continue

            def play(seed: int = seed, warmup: int = warmup, episodes: int = episodes, arm: str = arm) -> dict[str, Any]:
                amc = create_method("amc", resource="flops", target_ratio=args.ratio, reward_batches=args.reward_batches,
                                    calibration_batches=args.calibration_batches, episodes=episodes,
                                    warmup_episodes=warmup)
                assert isinstance(amc, AMC)
                # the resource is FLOPs: the target is never asked, it only fills the context
                ctx = make_context(dm, target, RecipeConfig(epochs=1), TrainerConfig(progress_bar=False), seed,
                                   work / f"{arm}_{seed}")
                proposed: list[list[float]] = []
                with search_threads(1):
                    env = amc.environment(model, ctx)
                    _recording(env, proposed)
                    history = amc.search_policy(env, seed).history
                return search_curve.record(seed, history, proposed=proposed,
                                           preserve=[e.preserve_ratios for e in history],
                                           mean_preserve=[float(np.mean(e.preserve_ratios)) for e in history])
            runs.get(f"curve/{arm}/s{seed}", play)


# -- report ----------------------------------------------------------------------------------------------------------

def _distinct(policies: list[list[float]]) -> int:
    """How many different policies (rounded to 0.01) a list of episodes played."""
    return len({tuple(np.round(p, 2)) for p in policies})


def diversity(run: dict[str, Any], last: int = search_curve.LAST) -> dict[str, float]:
    """The last episodes' action diversity: across layers within an episode, across episodes per layer, distinct ones."""
    kept, asked = np.asarray(run["preserve"][-last:]), np.asarray(run["proposed"][-last:])
    return {"layers_std": float(kept.std(axis=1).mean()), "episodes_std": float(kept.std(axis=0).mean()),
            "asked_episodes_std": float(asked.std(axis=0).mean()), "distinct": _distinct(run["preserve"][-last:]),
            "asked_at_rbound": float((asked >= 0.99).mean()), "asked_at_lbound": float((asked <= 0.21).mean()),
            "cut_by_wall": float((kept < asked - 1e-9).mean())}  # kept counts round up: below the request = the wall


def command(settings: dict[str, Any]) -> str:
    """The study's command line for these settings (every process of a run shares them)."""
    flags = " ".join(f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                     for k, v in settings.items())
    return f"OMP_NUM_THREADS=1 python -m benchmarks.studies.amc_curve {flags}"


def render(curve_data: dict[str, Any]) -> str:
    st, last = curve_data["settings"], search_curve.LAST
    total = st["warmup"] + st["episodes"]
    sigma = 0.5 * 0.95 ** st["episodes"]
    layers = len(next(iter(curve_data["runs"].values()))["preserve"][0]) if curve_data["runs"] else 0
    lines = ["# AMC: the agent against random search (issue 15)", "",
             "Generated by `python -m benchmarks.studies.report amc_curve` from `results/amc_curve.json`, written by "
             f"`{command(st)}` (see its docstring; `--run-seeds` and `--run-arms` split it over processes). Pretrained "
             f"ResNet-56 (akamaster) on cifar10_jpeg, AMC with a FLOPs budget of {st['ratio']:g} x the original MACs "
             "(the action wall, `acc` reward = validation top-1 x 0.01, least-squares refit on "
             f"{st['calibration_batches']} training batches of 64), rewards on {st['reward_batches'] * 256} validation "
             "images (a hold-out of the training set) without fine-tuning, as the paper's search. "
             f"{total} episodes per arm: DDPG {st['warmup']} random warm-up then {st['episodes']} learning episodes "
             f"(exploration sigma 0.5 x 0.95 per learning episode: {sigma:.3f} at the end); random search {total} "
             f"random episodes. One torch thread on a shared 2-core CPU ({curve_data['machine'].get('cpu', '')}). "
             "Scaled down from the paper's 100 + 800 episodes.", "",
             "## Best reward per seed", ""]
    lines += search_curve.comparison(curve_data, {
        "best episode": lambda r: f"{int(np.argmax(r['rewards']))}",
        f"mean preserve ratio, last {last}": lambda r: f"{np.mean(r['mean_preserve'][-last:]):.3f}"})
    done = search_curve.pairs(curve_data)
    if done:
        n = st["reward_batches"] * 256
        p = float(np.mean([max(run["rewards"]) for pair in done for run in pair]))  # reward = top-1 as a fraction
        lines += ["", f"One reward is the top-1 of one policy on the same {n} validation images: near the best rewards "
                  f"({p:.2f}) its binomial standard error is {np.sqrt(p * (1 - p) / n):.3f}, and the best of "
                  f"{total} such evaluations flatters both arms alike. The mean of the last {last} episodes is the "
                  "steadier figure: what the agent plays once it has learned against what random search keeps drawing."]
    lines += ["", "![learning curves](amc_curve.png)", "", f"## Action diversity in the last {last} episodes", "",
              f"Preserve ratios the wall let each layer keep: their spread across the {layers} layers within an episode "
              "(mean over the episodes), their spread across the episodes per layer (mean over the layers), the "
              "same for what the agent asked before the wall, how many different policies were played, and the "
              "share of the agent's requests at the bounds (>= 0.99 or <= 0.21) and cut by the action wall (kept below "
              "what was asked: the budget left no more).", "",
              "| seed | arm | std across layers | std across episodes | asked: std across episodes | distinct policies "
              "| asked at rbound | asked at lbound | cut by the wall |", "|---|---|---|---|---|---|---|---|---|"]
    for d, r in search_curve.pairs(curve_data):
        for arm, run in (("DDPG", d), ("random", r)):
            v = diversity(run)
            lines.append(f"| {run['seed']} | {arm} | {v['layers_std']:.3f} | {v['episodes_std']:.3f} | "
                         f"{v['asked_episodes_std']:.3f} | {v['distinct']} | {v['asked_at_rbound']:.0%} | "
                         f"{v['asked_at_lbound']:.0%} | {v['cut_by_wall']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--ratio", type=float, default=0.5, help="FLOPs budget, a fraction of the original MACs")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--reward-batches", type=int, default=2, help="validation batches of 256 per reward")
    parser.add_argument("--calibration-batches", type=int, default=4, help="training batches of 64 for the refit")
    parser.add_argument("--run-seeds", nargs="+", type=int, help="play only these of --seeds now (a second process "
                        "shares the file: Runs merges the runs each writes)")
    parser.add_argument("--run-arms", nargs="+", choices=("ddpg", "random"), help="play only these arms now")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "amc_curve.json")
    args = parser.parse_args(argv)
    if not set(args.run_seeds or ()) <= set(args.seeds):
        parser.error(f"--run-seeds {args.run_seeds} must be among --seeds {args.seeds}")
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "run_seeds", "run_arms")}
    runs = Runs(args.out, settings, hidden=("rewards", "best_so_far", "top1", "cost_ratio", "proposed", "preserve",
                                            "mean_preserve"))
    curve(runs, args)
    search_curve.draw(json.loads(args.out.read_text()), args.out.with_suffix(".png"))
    print(f"wrote {args.out}; render the report: python -m benchmarks.studies.report amc_curve")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
