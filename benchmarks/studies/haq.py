"""HAQ (issue 15): hardware specialization, HAQ against fixed precision, and the agent against random search.

    OMP_NUM_THREADS=1 python -m benchmarks.studies.haq --parts specialization uniform   # results/haq.json
    OMP_NUM_THREADS=1 python -m benchmarks.studies.haq --parts curve --out results/haq_curve.json
    python -m benchmarks.studies.report haq                                             # results/haq.md

The model is akamaster's pretrained ResNet-20 (20 conv/linear layers, 40 steps per episode in
linear mode) on ``cifar10_jpeg``, scaled to a shared 2-core CPU: training subset ``--train-subset``
images, rewards on ``--reward-batches`` validation batches of 256, every fine-tuning a fraction
of an epoch of that subset (``--reward-finetune`` per episode, ``--finetune`` for the best
policy), ``--warmup`` random + ``--episodes`` learning episodes (the paper: 20 + 600 on
ImageNet-100). Test top-1 on ``--test-subset`` test images. Every searched layer is searched
(first and last included), bits 2..8 for weights and activations, uniform quantizers.

- ``specialization``: the same relative latency budget (``--ratio`` x the all-8-bit model's
  latency) on the edge (``zynq7020``) and the cloud (``vu9p``) accelerator; each policy's
  latency on both and on ``bitfusion`` (the cross-hardware matrix), its accuracy, its bits.
- ``uniform``: uniform 4-, 6- and 8-bit QAT (the same fine-tuning), and HAQ searched on
  ``vu9p`` at the 4-bit and at the 6-bit model's latency: accuracy at equal latency, and the
  latency ratio to 8-bit at HAQ's accuracy change.
- ``curve``: on ``vu9p`` at ``--ratio``, the DDPG agent (``--warmup`` random, then ``--episodes``
  learning) against random search (``episodes: 0``, the same number of random episodes) over
  ``--seeds``, both with the same evaluation; for speed, that evaluation is post-training (no
  fine-tuning per episode, ``--curve-finetune``), which the two arms share.

Resumable: every finished run is written to the JSON at once and skipped on a rerun with the
same settings (a changed setting starts the file afresh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from benchmarks.context import make_context
from benchmarks.data import CIFAR10JPEGDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from benchmarks.studies import search_curve
from benchmarks.studies.runs import Runs
from benchmarks.training import evaluate
from methods import create_method
from methods.base import CompressionContext
from methods.quantization.haq import HAQ
from methods.search.resource import make_resource
from methods.search.threads import search_threads

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
WEIGHTS = SHARED / "weights" / "akamaster-resnet-cifar10" / "resnet20-12fca82f.th"
TARGETS = ("zynq7020", "vu9p", "bitfusion")
SEARCHED_ON = ("zynq7020", "vu9p")
UNIFORM_BITS = (4, 6, 8)
#: ``--pin-ends``: the reference's wall re-pins the first layer to 8-bit weights on the float input and the
#: classifier to 8/8 bits; here the same widths are held outside the search (HAQ's and uniform QAT's alike)
PINNED = {"conv1": [8, 32], "linear": [8, 8]}
#: the paper's claims this study checks (Wang et al. 2019, abstract and Table 1; Han et al. 2019, Sec. 4)
PAPER = {"latency_vs_8bit": "1.4-1.95x", "claim": "policies differ per accelerator and each is best on its own"}


class Setup:
    """The model, data, targets and contexts every part shares."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dm = CIFAR10JPEGDataModule(
            data_dir=ROOT / "data", source_dir=SHARED, name="cifar10_jpeg", batch_size=64, eval_batch_size=256,
            seed=42, val_size=5000, train_subset=args.train_subset, val_subset=args.reward_batches * 256,
            test_subset=args.test_subset, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], augment=False)
        self.dm.prepare_data()
        self.dm.setup("fit")
        self.model = build_model("resnet20_cifar", 10, 3, WEIGHTS).eval()
        self.targets = {name: instantiate(OmegaConf.load(ROOT / "conf" / "hw" / f"{name}.yaml")) for name in TARGETS}
        self.layers = [n for n, m in self.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        self.work = Path(tempfile.mkdtemp(prefix="haq_study_"))

    def ctx(self, target: str, name: str, seed: int = 0) -> CompressionContext:
        recipe = RecipeConfig(epochs=1, lr=self.args.lr, weight_decay=0.0)
        return make_context(self.dm, self.targets[target], recipe, TrainerConfig(progress_bar=False), seed,
                            self.work / name)

    def latencies(self, model: nn.Module, bits: dict[str, Any]) -> dict[str, dict[str, float]]:
        """ms of ``model`` at ``bits`` on every target, and the ratio to the all-8-bit model HAQ's budget refers to."""
        out = {}
        eight = {**{n: (8, 8) for n in self.layers}, **self.pins}
        for name, target in self.targets.items():
            cost = make_resource("latency", target, (target.batch_size, 3, 32, 32))
            ms = cost(model, {n: (int(b[0]), int(b[1])) for n, b in bits.items()})
            out[name] = {"ms": ms, "ratio_to_8bit": ms / cost(self.model, eight)}
        return out

    def ratio_to_8bit(self, target: str, bits: int) -> float:
        """The uniform ``bits`` model's latency (pinned layers at their widths) over the all-8-bit reference HAQ uses."""
        cost = make_resource("latency", self.targets[target], (self.targets[target].batch_size, 3, 32, 32))
        return (cost(self.model, {**{n: (bits, bits) for n in self.layers}, **self.pins})
                / cost(self.model, {**{n: (8, 8) for n in self.layers}, **self.pins}))

    @property
    def pinned(self) -> dict[str, list[int]]:
        return PINNED if self.args.pin_ends else {}

    @property
    def pins(self) -> dict[str, tuple[int, int]]:
        return {n: (w, a) for n, (w, a) in self.pinned.items()}

    def haq_options(self, target_ratio: float, **extra: Any) -> dict[str, Any]:
        a = self.args
        return {"target_ratio": target_ratio, "layer_bits": self.pinned, "warmup_episodes": a.warmup, "episodes": a.episodes,
                "reward_batches": a.reward_batches, "calibration_batches": 2,
                "reward_finetune": {"epochs": a.reward_finetune, "lr": a.lr}, "finetune": {"epochs": a.finetune, "lr": a.lr},
                **extra}

    def scored(self, result: Any) -> dict[str, Any]:
        bits = {n: list(b) for n, b in result.layer_bits.items()}
        return {"test_top1": evaluate(result.model, self.dm, "test")["top1"], "layer_bits": bits,
                "latency": self.latencies(result.model, bits), "stored_bytes": result.stored_bytes}


def _search(s: Setup, target: str, ratio: float) -> dict[str, Any]:
    ctx = s.ctx(target, f"haq_{target}_{ratio:.4f}")
    result = create_method("haq", **s.haq_options(ratio)).compress(s.model, ctx)
    policy = json.loads((ctx.workdir / "haq_policy.json").read_text())
    return {"target": target, "target_ratio": ratio, **s.scored(result), "budget_met": policy["budget_met"],
            "search_top1": policy["search_top1"], "best_episode": policy["best_episode"], "kinds": policy["kinds"],
            "rewards": [e["reward"] for e in policy["history"]], "search_seconds": result.metrics["search_seconds"]}


def specialization(runs: Runs, s: Setup) -> None:
    for target in SEARCHED_ON:
        runs.get(f"search/{target}/r{s.args.ratio:g}", partial(_search, s, target, s.args.ratio))


def uniform(runs: Runs, s: Setup) -> None:
    runs.get("float", lambda: {"test_top1": evaluate(s.model, s.dm, "test")["top1"]})
    for bits in UNIFORM_BITS:
        def qat(bits: int = bits) -> dict[str, Any]:
            method = create_method("qat", bits=bits, act_bits=bits, layer_bits=s.pinned, calibration_batches=2, onnx=False,
                                   reduce_range=False, finetune={"epochs": s.args.finetune, "lr": s.args.lr})
            return {"bits": bits, **s.scored(method.compress(s.model, s.ctx("vu9p", f"qat{bits}")))}
        runs.get(f"uniform/{bits}", qat)
    for bits in (4, 6):
        ratio = s.ratio_to_8bit("vu9p", bits)
        runs.get(f"equal/{bits}", partial(_search, s, "vu9p", ratio))


def curve(runs: Runs, s: Setup) -> None:
    a = s.args
    for seed in a.seeds:
        for arm, (warmup, episodes) in search_curve.arms(a.warmup, a.episodes).items():
            def play(seed: int = seed, warmup: int = warmup, episodes: int = episodes) -> dict[str, Any]:
                options = s.haq_options(a.ratio, warmup_episodes=warmup, episodes=episodes,
                                        reward_finetune={"epochs": a.curve_finetune, "lr": a.lr})
                haq = create_method("haq", **options)
                assert isinstance(haq, HAQ)
                with search_threads(1):
                    history = haq.search_policy(haq.environment(s.model, s.ctx("vu9p", f"curve_{seed}", seed)), seed)
                return search_curve.record(seed, history, mean_bits=[float(np.mean([b for wa in e.bits.values() for b in wa]))
                                                                     for e in history])
            runs.get(f"curve/{arm}/s{seed}", play)


PARTS: dict[str, Callable[[Runs, Setup], None]] = {"specialization": specialization, "uniform": uniform, "curve": curve}


# -- figures and report ----------------------------------------------------------------------------------------------

def draw(data: dict[str, Any], curve_data: dict[str, Any] | None, out: Path) -> list[Path]:
    """results/haq_policies.png (the searched policies side by side) and results/haq_curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from methods.reporting import draw_layer_bits

    written = []
    searches = {k: v for k, v in data["runs"].items() if k.startswith(("search/", "equal/"))}
    if searches:
        fig, axes = plt.subplots(len(searches), 1, figsize=(9, 3.2 * len(searches)), squeeze=False)
        for ax, (key, run) in zip(axes[:, 0], sorted(searches.items()), strict=True):
            draw_layer_bits(ax, {n: tuple(b) for n, b in run["layer_bits"].items()}, run["kinds"],
                            f"{key}: searched on {run['target']} at {run['target_ratio']:.3f} x the 8-bit latency, "
                            f"test top-1 {run['test_top1']:.2f}")
        fig.tight_layout()
        fig.savefig(out / "haq_policies.png", dpi=110)
        plt.close(fig)
        written.append(out / "haq_policies.png")
    if curve_data and curve_data["runs"]:
        written.append(search_curve.draw(curve_data, out / "haq_curve.png"))
    return written


def _latency_row(name: str, run: dict[str, Any]) -> str:
    cells = " | ".join(f"{run['latency'][t]['ms']:.3f} ({run['latency'][t]['ratio_to_8bit']:.3f})" for t in TARGETS)
    mean_w = statistics.mean(b[0] for b in run["layer_bits"].values() if b[0] < 32)
    mean_a = statistics.mean(b[1] for b in run["layer_bits"].values() if b[1] < 32)  # a float input is no width
    return f"| {name} | {mean_w:.2f} / {mean_a:.2f} | {cells} | {run['test_top1']:.2f} |"


def render(data: dict[str, Any], curve_data: dict[str, Any] | None = None) -> str:
    runs, st = data["runs"], data["settings"]
    lines = ["# HAQ: hardware-aware mixed precision (issue 15)", "",
             "Generated by `python -m benchmarks.studies.report haq` from `results/haq.json` (and `results/haq_curve.json`), "
             "written by `python -m benchmarks.studies.haq` (see its docstring for the method). Pretrained ResNet-20 "
             f"(akamaster) on cifar10_jpeg; {st['train_subset']} training images, {st['reward_batches'] * 256} validation "
             f"images for the rewards, {st['test_subset']} test images; {st['warmup']} random + {st['episodes']} learning "
             f"episodes per search; per-episode fine-tuning {st['reward_finetune']:g} epoch, the best policy fine-tuned "
             f"{st['finetune']:g} epoch at lr {st['lr']:g}; one torch thread, a shared 2-core CPU "
             f"({data['machine'].get('cpu', '')}). Latencies are the emulated targets' (analytical rooflines of "
             "conf/hw), never measured here. Scaled far below the paper (600 episodes, ImageNet, full fine-tuning): "
             "read the accuracies as relative."
             + (f" First and last layers held at {PINNED} outside the search, as the reference does, in HAQ and "
                "uniform QAT alike." if st.get("pin_ends") else ""), ""]
    float_run = runs.get("float")
    searches = {k: v for k, v in runs.items() if k.startswith("search/")}
    if searches:
        lines += ["## Hardware specialization", "",
                  f"Policies searched under the same relative latency budget, {st['ratio']:g} x the all-8-bit model's "
                  "latency on the target searched for, each evaluated on every target: ms (ratio to the all-8-bit "
                  "model on that target). Bits: mean weight / activation bits over the 20 layers (the float input "
                  "of the first layer left out). Both searches use the same agent seed: their warm-up proposals "
                  "are the same, the budget's wall and the rewards make the policies differ.", "",
                  "| policy | bits w / a | " + " | ".join(TARGETS) + " | test top-1 |",
                  "|---|---|" + "---|" * len(TARGETS) + "---|"]
        lines += [_latency_row(f"searched for {r['target']}", r) for _, r in sorted(searches.items())]
        lines += ["", "![policies](haq_policies.png)", ""]
        verdict = _specialization_verdict(searches)
        if verdict:
            lines += [verdict, ""]
    uniform_runs = {k: v for k, v in runs.items() if k.startswith(("uniform/", "equal/"))}
    if uniform_runs:
        base = float_run["test_top1"] if float_run else float("nan")
        eight = runs.get("uniform/8")
        lines += ["## HAQ against fixed precision on vu9p", "",
                  f"Float model: test top-1 {base:.2f}. Uniform QAT and HAQ get the same fine-tuning. HAQ's budget is "
                  "the uniform model's vu9p latency.", "",
                  "| model | bits w / a | " + " | ".join(TARGETS) + " | test top-1 | change vs 8-bit |",
                  "|---|---|" + "---|" * len(TARGETS) + "---|---|"]
        for key in ("uniform/8", "uniform/6", "equal/6", "uniform/4", "equal/4"):
            run = runs.get(key)
            if run:
                name = f"uniform {run['bits']}-bit QAT" if key.startswith("uniform") else f"HAQ at the {key[-1]}-bit latency"
                change = f"{run['test_top1'] - eight['test_top1']:+.2f}" if eight else "-"
                lines.append(_latency_row(name, run) + f" {change} |")
        if eight:
            for bits in (6, 4):
                run = runs.get(f"equal/{bits}")
                if run:
                    speedup = 1 / run["latency"]["vu9p"]["ratio_to_8bit"]
                    lines.append(f"\nHAQ at the {bits}-bit latency: {speedup:.2f}x faster than 8-bit on vu9p at "
                                 f"{run['test_top1'] - eight['test_top1']:+.2f} points of top-1 (the paper: "
                                 f"{PAPER['latency_vs_8bit']} on MobileNets, ImageNet). Its search's best reward "
                                 f"came at episode {run['best_episode']} of {len(run['rewards'])}, validation top-1 "
                                 f"{run['search_top1']:.1f} after the per-episode fine-tuning.")
        lines.append("")
    if curve_data and curve_data["runs"]:
        lines += _curve_section(curve_data)
    return "\n".join(lines) + "\n"


def _specialization_verdict(searches: dict[str, Any]) -> str:
    by = {r["target"]: r for r in searches.values()}
    if set(by) != set(SEARCHED_ON):
        return ""
    layers = list(by["vu9p"]["layer_bits"])
    differ = sum(by["zynq7020"]["layer_bits"][n] != by["vu9p"]["layer_bits"][n] for n in layers)
    fastest = {t: min(by, key=lambda p: by[p]["latency"][t]["ratio_to_8bit"]) for t in TARGETS}
    best = max(by, key=lambda p: by[p]["test_top1"])
    return (f"The two policies differ in {differ} of {len(layers)} layers. Fastest policy on each target: "
            + ", ".join(f"{t}: the one searched for {p}" for t, p in fastest.items())
            + f"; the more accurate one is the one searched for {best}. The same relative budget is not the same "
            "constraint on both boards: zynq7020's fitted per-layer overhead (1 ms, host-driven dispatch) does not "
            "shrink with bits, so low bits save only a few percent of its latency and a budget near 1 already forces "
            "them, while on vu9p the same ratio leaves room for wide layers (the uniform rows below give each "
            "target's ratio at 4, 6 and 8 bits). The paper compares policies at equal accuracy; here each policy "
            "only has to meet its own budget.")


def _curve_section(curve_data: dict[str, Any]) -> list[str]:
    cs = curve_data["settings"]
    total = cs["warmup"] + cs["episodes"]
    lines = ["## The agent against random search", "",
             f"vu9p at {cs['ratio']:g} x the 8-bit latency; {total} episodes each; DDPG: {cs['warmup']} random warm-up "
             f"episodes then {cs['episodes']} learning ones; random search: {total} random episodes; the same "
             f"evaluation for both (fine-tuning per episode: {cs['curve_finetune']:g} epoch). Best reward so far, per "
             "seed; reward = 0.1 x (top-1 - float top-1).", ""]
    lines += search_curve.comparison(curve_data, {"mean bits, last 10": lambda r: f"{np.mean(r['mean_bits'][-10:]):.2f}"})
    if search_curve.pairs(curve_data):
        lines[-1] += (f" Pin-ends: {cs.get('pin_ends', False)} (without pinning, a random policy often puts 2 bits on the "
                      "input image or the classifier, which alone costs most of the accuracy).")
    lines += ["", "![learning curves](haq_curve.png)", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=sorted(PARTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--ratio", type=float, default=0.95, help="relative latency budget (zynq7020's floor at 2 bits "
                        "is ~0.925 of the 8-bit model: its 1 ms per-layer overhead does not shrink with bits)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--train-subset", type=int, default=2048)
    parser.add_argument("--test-subset", type=int, default=1000)
    parser.add_argument("--reward-batches", type=int, default=1, help="validation batches of 256 per reward")
    parser.add_argument("--reward-finetune", type=float, default=0.0625, help="epochs per episode (2 batches of 64)")
    parser.add_argument("--curve-finetune", type=float, default=0.0, help="epochs per episode in the curve part")
    parser.add_argument("--finetune", type=float, default=0.5, help="epochs for the best policy and uniform QAT")
    parser.add_argument("--lr", type=float, default=0.001)
    parser.add_argument("--pin-ends", action=argparse.BooleanOptionalAction, default=True,
                        help=f"hold {PINNED} outside the search, as the reference does (uniform QAT too)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "haq.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = {k: v for k, v in vars(args).items() if k not in ("parts", "out")}
    runs = Runs(args.out, settings, hidden=("history", "layer_bits", "kinds"))
    runs.data["command"] = "python -m benchmarks.studies.haq " + " ".join(sys.argv[1:] if argv is None else argv)
    setup = Setup(args)
    for part in args.parts:
        PARTS[part](runs, setup)
    folder = args.out.parent  # the figures read haq.json and haq_curve.json beside each other
    loaded = {name: json.loads((folder / name).read_text()) for name in ("haq.json", "haq_curve.json")
              if (folder / name).exists()}
    draw(loaded.get("haq.json", {"runs": {}}), loaded.get("haq_curve.json"), folder)
    print(f"wrote {args.out}; render the report: python -m benchmarks.studies.report haq")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
