"""MnasNet-style search (methods/nas/mnasnet_search.py): the reward, the REINFORCE controller, resumable Optuna studies.

Real pieces: a tiny space of the ProxylessNAS family, its supernet trained on a few hundred MNIST
images of the shared data, the V100 roofline (deterministic) pricing the candidates, Optuna's
sqlite storage. A kill is a KeyboardInterrupt raised from the context's evaluation (what Ctrl-C
does) plus a trial left running (what SIGKILL leaves).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.trial import TrialState

from benchmarks.context import make_context
from benchmarks.schema import RecipeConfig, TrainerConfig
from methods import create_method
from methods.base import CompressionContext, MethodConfigError
from methods.nas.mnasnet_search import ReinforceConfig, ReinforceSampler, block_param, recalibrate_batch_norm, reward
from methods.nas.space import Architecture, SpaceConfig
from methods.storage import load_model
from tests.conftest import REPO_ROOT, needs_shared_data, tiny_mnist

#: 3 searched blocks (8->8 s1 with zero, 8->16 s2, 16->16 s1 with zero): 7 x 6 x 7 architectures
TINY = {"preset": "cifar_small", "widths": [8, 16], "depths": [1, 2], "strides": [1, 2], "first_channels": 8,
        "stem_channels": 8, "head_channels": 32, "input_size": 16}
#: one-shot evaluation and training cut to the bone
FAST = {"space": TINY, "supernet_epochs": 1.0, "calibration_batches": 1, "eval_batches": 1,
        "finetune": {"epochs": 0.25}}


def test_the_reward_is_mnasnets_soft_and_hard_form() -> None:
    assert reward(0.8, 5.0, 5.0, "soft") == pytest.approx(0.8)
    assert reward(0.8, 10.0, 5.0, "soft") == pytest.approx(0.8 * 2 ** -0.07)  # twice as slow: ~4.7 % less
    assert reward(0.8, 2.5, 5.0, "soft") == pytest.approx(0.8 * 0.5 ** -0.07)  # faster than T still pays a little
    assert reward(0.8, 2.5, 5.0, "hard") == pytest.approx(0.8)  # alpha = 0: nothing for being under T
    assert reward(0.8, 10.0, 5.0, "hard") == pytest.approx(0.4)  # beta = -1: acc x T/LAT above T


def test_reinforce_raises_the_probability_of_the_rewarded_op_and_smooths_its_baseline_as_stated() -> None:
    slots = SpaceConfig(**TINY).resolved().slots()
    config = ReinforceConfig(lr=0.1, batch=4, decay=0.9)
    sampler = ReinforceSampler(slots, config, seed=0)
    study = optuna.create_study(sampler=sampler, direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        ops = [trial.suggest_categorical(block_param(s), s.candidates) for s in slots]
        r = 1.0 if ops[1] == "k7e6" else 0.2
        trial.set_user_attr("reward", r)
        return r

    study.optimize(objective, n_trials=60)
    sampler.catch_up(study)
    k7e6 = slots[1].candidates.index("k7e6")
    assert sampler.probabilities()[1][k7e6] > 0.5  # from 1/6
    rewards = [t.value for t in sorted(study.trials, key=lambda t: t.number)]
    history = sampler.history
    assert len(history) == 15
    first, second = (sum(rewards[i:i + 4]) / 4 for i in (0, 4))
    assert history[0]["baseline"] == pytest.approx(first)  # started at the first batch's mean
    assert history[1]["baseline"] == pytest.approx(0.9 * first + 0.1 * second)
    # the other blocks' rewards do not depend on their op: their policies stay near uniform
    assert max(sampler.probabilities()[0]) < 0.5


def test_batch_norm_recalibration_sets_the_plain_average_of_the_calibration_batches() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    net[1].running_mean.fill_(5.0)  # stale statistics (another path's, after many steps) that must not survive
    net[1].num_batches_tracked.fill_(100)
    batches = [torch.randn(8, 3, 6, 6) * (i + 1) + i for i in range(3)]
    recalibrate_batch_norm(net, batches)
    with torch.no_grad():
        outputs = [net[0](x).transpose(0, 1).flatten(1) for x in batches]
    expected_mean = torch.stack([o.mean(1) for o in outputs]).mean(0)
    expected_var = torch.stack([o.var(1) for o in outputs]).mean(0)  # unbiased per batch, as BatchNorm keeps it
    assert torch.allclose(net[1].running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(net[1].running_var, expected_var, rtol=1e-4)
    assert not net.training and net[1].momentum == 0.1  # mode and momentum handed back


def _roofline() -> Any:
    return instantiate(OmegaConf.load(REPO_ROOT / "conf" / "hw" / "v100.yaml"))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return tiny_mnist(tmp_path_factory.mktemp("mnist"), val_size=256, val_subset=128)


def _ctx(mnist: Any, workdir: Path) -> CompressionContext:
    return make_context(mnist, _roofline(), RecipeConfig(epochs=1, lr=0.05), TrainerConfig(progress_bar=False),
                        seed=0, workdir=workdir)


class Killed(KeyboardInterrupt):
    pass


def _counting(ctx: CompressionContext, calls: list[str], kill_after: int | None = None) -> CompressionContext:
    """The same context, its evaluations and fine-tunings counted; the search killed at evaluation kill_after + 1."""

    def evaluate(model: Any, split: str = "val", max_batches: int | None = None) -> dict[str, float]:
        if kill_after is not None and calls.count("evaluate") == kill_after:
            raise Killed
        calls.append("evaluate")
        return ctx.evaluate(model, split, max_batches)

    def finetune(model: Any, epochs: float, **kwargs: Any) -> Any:
        calls.append("finetune")
        return ctx.finetune(model, epochs, **kwargs)

    return dataclasses.replace(ctx, evaluate=evaluate, finetune=finetune)


def test_an_impossible_target_is_refused_naming_the_key_before_any_training(tmp_path: Path) -> None:
    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("the search must stop before it trains or evaluates anything")

    ctx = CompressionContext(SimpleNamespace(num_classes=10), _roofline(), (1, 3, 16, 16), tmp_path, 0, never, never)
    with pytest.raises(MethodConfigError, match=r"method.target is 1e-09 ms, below the cheapest network of the space"):
        create_method("mnasnet_search", space=TINY, target=1e-9).compress(torch.nn.Identity(), ctx)


@needs_shared_data
@pytest.mark.parametrize("controller", ["tpe", "reinforce"])
def test_a_killed_search_resumes_keeping_its_finished_candidates(mnist: Any, tmp_path: Path, controller: str) -> None:
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    options = {**FAST, "controller": controller, "candidates": 6, "top_k": 0, "storage": storage,
               "study_name": "resume", "reinforce": {"batch": 2}}
    method = create_method("mnasnet_search", **options)
    ctx = _ctx(mnist, tmp_path / "run1")
    first: list[str] = []
    with pytest.raises(Killed):
        method.compress(torch.nn.Identity(), _counting(ctx, first, kill_after=3))
    study = optuna.load_study(study_name="resume", storage=storage)
    done = {t.number: (t.params, t.values, t.datetime_complete)
            for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(done) >= 3  # repeats of an architecture are finished without a new evaluation
    study.ask()  # a trial a SIGKILL would leave running

    again: list[str] = []
    result = create_method("mnasnet_search", **options).compress(torch.nn.Identity(),
                                                                 _counting(_ctx(mnist, tmp_path / "run2"), again))
    study = optuna.load_study(study_name="resume", storage=storage)
    complete = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(complete) == 6
    assert {n: (t.params, t.values, t.datetime_complete) for n, t in complete.items() if n in done} == done
    assert all(t.state == TrialState.FAIL for t in study.trials if t.number not in complete)
    # the rerun evaluated only new candidates and reused the saved supernet (one training: the derived net's)
    assert again.count("finetune") == 1
    assert again.count("evaluate") == result.metrics["candidates_evaluated"] <= 6 - len(done)
    assert result.metrics["candidates_resumed"] == len(done)
    if controller == "reinforce":  # the policy replayed from every finished batch of both runs
        history = json.loads((tmp_path / "run2" / "arch_history.json").read_text())
        assert len(history) == 6 // 2
        replayed = ReinforceSampler(SpaceConfig(**TINY).resolved().slots(), ReinforceConfig(batch=2))
        replayed.catch_up(study)
        assert all(p == pytest.approx(q) for p, q in zip(replayed.probabilities(), history[-1]["probabilities"], strict=True))

    with pytest.raises(MethodConfigError, match=r"method.study_name 'resume' holds a search with other settings "
                                                r"\(differing: \['constraint'\]\)"):
        create_method("mnasnet_search", **{**options, "constraint": "hard"}).compress(
            torch.nn.Identity(), _ctx(mnist, tmp_path / "run3"))


@needs_shared_data
def test_an_nsga2_search_records_its_candidates_and_front_and_stores_the_chosen_net(mnist: Any, tmp_path: Path) -> None:
    method = create_method("mnasnet_search", **FAST, controller="nsga2", candidates=8, population=4, top_k=2,
                           rerank={"epochs": 0.25}, constraint="hard")
    ctx = _ctx(mnist, tmp_path / "run")
    result = method.compress(torch.nn.Identity(), ctx)
    candidates = json.loads((ctx.workdir / "candidates.json").read_text())
    search = json.loads((ctx.workdir / "search.json").read_text())
    assert len(candidates) == 8 and result.metrics["candidates_total"] == 8
    # each candidate also goes to the pipeline as a child run, with what candidates.json says of it
    assert [(r["params"]["ops"], r["metrics"]["reward"]) for r in result.candidates] == \
        [(" ".join(c["ops"]), c["reward"]) for c in candidates]
    front = [c for c in candidates if c["pareto"]]
    assert front and len(front) == result.metrics["pareto_size"]
    for c in front:  # nothing on the front is dominated by another candidate
        assert not any(o["acc"] >= c["acc"] and o["lat"] <= c["lat"] and (o["acc"], o["lat"]) != (c["acc"], c["lat"])
                       for o in candidates)
    target = search["target"]
    for c in candidates:
        expected = c["acc"] / 100 * (min(1.0, target / c["lat"]))
        assert math.isclose(c["reward"], expected, rel_tol=1e-9)
    chosen = next(c for c in candidates if c["trial"] == search["chosen_trial"])
    assert chosen["pareto"] and len(search["reranked"]) == min(2, len(front))  # NSGA-II's choice is on its front
    assert chosen["trial"] == max(search["reranked"], key=lambda r: r["reward"])["trial"]
    arch = Architecture.load(ctx.workdir / "arch.json")
    assert list(arch.ops) == chosen["ops"]
    assert {p.name for p in result.artifacts} >= {"candidates.json", "search.json", "arch.json", "cost_table.json",
                                                 "search_candidates.png"}
    reloaded = load_model(result.stored_file, torch.nn.Identity())
    assert reloaded(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
