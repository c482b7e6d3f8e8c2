"""Aging evolution with network morphism (methods/nas/evolution.py, methods/nas/morphism.py).

What is checked is what the methods promise: grow_kernel, widen and deepen leave the network's
function unchanged while changing the architecture as named; the lossy mutations inherit what fits and
say so; the population loses its oldest member, not its worst; and a real run (tiny learnable images,
an analytical target) breeds, ages, scores and stores as it records.
"""

from __future__ import annotations

import argparse
import json
import random

import pytest
import torch
from torch import nn

from benchmarks.studies.nas_evolution import ARMS, method_settings, trained_epochs
from methods import create_method
from methods.base import MethodConfigError
from methods.nas.evolution import aging_evolution, smallest
from methods.nas.morphism import applicable, blocks_by_slot, morph, mutate
from methods.nas.space import Architecture, SearchedNet
from tests.test_nas_proxyless import TINY, tiny_context, tiny_space


def randomised(ops: tuple[str, ...]) -> SearchedNet:
    """A net of ``ops`` in the tiny space with every weight and BN statistic random (no zero-initialised part)."""
    torch.manual_seed(0)
    net = SearchedNet(Architecture(tiny_space(), ops))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.5)
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.5)
    return net.eval()


def outputs(net: nn.Module) -> torch.Tensor:
    return net.eval()(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(("ops", "mutation", "block", "expected", "shape"), [
    (("k3e3", "k3e3", "zero"), "grow_kernel", 1, ("k3e3", "k5e3", "zero"), lambda b: b.depthwise[0].weight.shape[-1] == 5),
    (("k3e3", "k5e6", "zero"), "grow_kernel", 1, ("k3e3", "k7e6", "zero"), lambda b: b.depthwise[0].weight.shape[-1] == 7),
    (("k3e3", "k3e3", "zero"), "widen", 0, ("k3e6", "k3e3", "zero"), lambda b: b.project[0].weight.shape[1] == 48),
    (("k3e3", "k5e3", "k3e3"), "widen", 1, ("k3e3", "k5e6", "k3e3"), lambda b: b.expand[0].weight.shape[0] == 48),
    (("zero", "k3e3", "zero"), "deepen", 2, ("zero", "k3e3", "k3e3"), lambda b: b.shortcut),
])
def test_a_function_preserving_mutation_changes_the_architecture_and_keeps_the_outputs(ops, mutation, block, expected,
                                                                                        shape) -> None:
    parent = randomised(ops)
    child, transfers = morph(parent, mutate(parent.arch, mutation, block))
    assert child.arch.ops == expected
    assert shape(blocks_by_slot(child)[block])
    assert all(t.preserving for t in transfers)
    assert torch.allclose(outputs(child), outputs(parent), atol=1e-5, rtol=1e-4)


def test_the_lossy_mutations_inherit_what_fits_and_say_they_do_not_preserve() -> None:
    parent = randomised(("k5e6", "k7e6", "k3e3"))
    old = blocks_by_slot(parent)
    shrunk, transfers = morph(parent, mutate(parent.arch, "shrink_kernel", 1))
    assert shrunk.arch.ops[1] == "k5e6" and transfers[1].how == ("kernel_shrink",) and not transfers[1].preserving
    assert torch.equal(blocks_by_slot(shrunk)[1].depthwise[0].weight, old[1].depthwise[0].weight[..., 1:6, 1:6])
    narrowed, transfers = morph(parent, mutate(parent.arch, "narrow", 0))
    assert narrowed.arch.ops[0] == "k5e3" and transfers[0].how == ("narrow",) and not transfers[0].preserving
    assert torch.equal(blocks_by_slot(narrowed)[0].expand[0].weight, old[0].expand[0].weight[:24])
    removed, transfers = morph(parent, mutate(parent.arch, "remove", 2))
    assert removed.arch.ops[2] == "zero" and len(removed.blocks) == 2 and not transfers[2].preserving
    for child in (shrunk, narrowed, removed):
        assert not torch.allclose(outputs(child), outputs(parent), atol=1e-5, rtol=1e-4)


def test_deepen_with_noise_is_close_to_the_parent_but_not_exact_and_says_so() -> None:
    parent = randomised(("zero", "k3e3", "zero"))
    child, transfers = morph(parent, mutate(parent.arch, "deepen", 0), noise=1e-3,
                             generator=torch.Generator().manual_seed(0))
    assert not transfers[0].preserving
    difference = (outputs(child) - outputs(parent)).abs().max()
    assert 0 < difference < 0.05 * outputs(parent).abs().max()


def test_mutations_apply_only_where_they_can() -> None:
    arch = smallest(tiny_space())
    assert arch.ops == ("zero", "k3e3", "zero")  # the smallest network: skipped where allowed
    assert applicable(arch, ["grow_kernel", "widen", "deepen", "shrink_kernel", "narrow", "remove"]) == {
        "grow_kernel": [1], "widen": [1], "deepen": [0, 2]}
    with pytest.raises(MethodConfigError, match="'remove' does not apply to block 1"):
        mutate(arch, "remove", 1)


def test_aging_evolution_removes_the_oldest_not_the_worst() -> None:
    """Toy individuals whose fitness is their value: the fittest founder dies first; the worse children live."""
    dead: list[tuple[int, int]] = []
    children = aging_evolution([10, 1, 2, 3], cycles=3, sample=2, fitness=float,
                               breed=lambda parent, cycle: -cycle,  # every child worse than everyone
                               died=lambda member, cycle: dead.append((member, cycle)), rng=random.Random(0))
    assert children == [-1, -2, -3]
    assert dead == [(10, 1), (1, 2), (2, 3)]  # oldest first, the best included; the children (worst) survive


def test_the_parent_is_the_fittest_of_the_sample() -> None:
    parents: list[int] = []

    def breed(parent: int, cycle: int) -> int:
        parents.append(parent)
        return -cycle

    # 40 draws with replacement from 4 members: every member is drawn (all but surely), so the fittest alive wins
    aging_evolution([10, 1, 2, 3], cycles=3, sample=40, fitness=float, breed=breed, died=lambda *_: None,
                    rng=random.Random(0))
    assert parents == [10, 3, 3]


def test_an_evolution_run_breeds_ages_scores_and_stores_the_fittest(tmp_path) -> None:
    """64 images the tiny nets can learn within a few steps (MNIST at this size stays at chance: every birth check
    would pass whatever the weights), the V100 roofline (deterministic costs)."""
    # T in ms on the V100 roofline: the smallest net (0.55) is within it, a net with a block more (0.78) above
    population, cycles, target = 3, 4, 0.6
    method = create_method("evolution", space=TINY, population=population, sample=2, cycles=cycles,
                           seed_epochs=4, child_epochs=1, reward={"target": target, "alpha": -0.07, "beta": -0.5},
                           final="inherit", finetune={"epochs": 0})
    ctx = tiny_context(tmp_path)
    result = method.compress(nn.Identity(), ctx)
    history = json.loads((tmp_path / "evolution_history.json").read_text())
    assert len(history) == result.metrics["individuals_trained"] == population + cycles
    assert result.metrics["search_epochs"] == 4 + (population - 1 + cycles) * 1
    assert len({row["val_top1"] for row in history}) > 1  # the nets learn: the scores below say something
    space = tiny_space()
    assert history[0]["ops"] == list(smallest(space).ops) and history[0]["parent"] is None
    for row in history[1:]:  # every child is its parent with its one mutation
        parent = Architecture(space, tuple(history[row["parent"]]["ops"]))
        assert list(mutate(parent, row["mutation"], row["block"]).ops) == row["ops"]
        if row["preserving"]:  # the inherited weights score what the parent scored (one val image of slack)
            assert row["birth_top1"] == pytest.approx(history[row["parent"]]["val_top1"], abs=100 / 64)
    # aging: the initial population dies at cycles 1..P in age order, children P cycles after their birth
    assert [row["died"] for row in history] == [1, 2, 3, 4, None, None, None]
    assert min(row["cost"] for row in history) <= target < max(row["cost"] for row in history)
    for row in history:
        w = -0.07 if row["cost"] <= target else -0.5
        assert row["fitness"] == pytest.approx(row["val_top1"] * (row["cost"] / target) ** w)
    best = max(history, key=lambda row: row["fitness"])
    arch = Architecture.load(tmp_path / "arch.json")
    assert list(arch.ops) == best["ops"] and result.metrics["best_fitness"] == best["fitness"]
    assert isinstance(result.model, SearchedNet) and result.model.arch == arch
    # final: inherit with no more training: the stored net is the search's own, scoring what it scored
    assert ctx.evaluate(result.model, "val")["top1"] == pytest.approx(best["val_top1"])
    assert any(row["preserving"] for row in history)
    assert {p.name for p in result.artifacts} >= {"evolution_history.json", "evolution_fitness.png", "arch.json"}
    # every individual becomes a child run of the search's run (benchmarks.pipeline)
    assert [c["params"]["ops"] for c in result.candidates] == [" ".join(row["ops"]) for row in history]
    assert [c["metrics"]["fitness"] for c in result.candidates] == [row["fitness"] for row in history]


def test_children_from_scratch_do_not_inherit_their_parents_weights(tmp_path) -> None:
    """Real et al.'s own setting (the ablation of the morphism): a child starts from a fresh initialisation."""
    method = create_method("evolution", space=TINY, population=2, sample=1, cycles=1, seed_epochs=6, child_epochs=1,
                           children="scratch", final="inherit", finetune={"epochs": 0})
    result = method.compress(nn.Identity(), tiny_context(tmp_path))
    history = json.loads((tmp_path / "evolution_history.json").read_text())
    assert [row["preserving"] for row in history] == [None, None, None] and "birth_drop_scratch" in result.metrics
    seed = history[0]
    for row in history[1:]:
        parent = history[row["parent"]]
        assert row["birth_top1"] < parent["val_top1"] == seed["val_top1"]  # the seed learnt; the fresh child did not


@pytest.mark.parametrize(("options", "key"), [
    ({"sample": 9, "population": 4}, "method.sample"),
    ({"mutations": []}, "method.mutations"),
    ({"final": "scratch", "finetune": {"epochs": 0}}, "method.finetune.epochs"),
])
def test_impossible_settings_are_refused_naming_the_key(options, key) -> None:
    with pytest.raises(MethodConfigError, match=key):
        create_method("evolution", space=TINY, **options)


def test_a_latency_target_below_the_fastest_network_is_refused(tmp_path) -> None:
    method = create_method("evolution", space=TINY, reward={"target": 1e-9})
    with pytest.raises(MethodConfigError, match=r"method.reward.target .* below the cheapest network"):
        method.compress(nn.Identity(), tiny_context(tmp_path))


def test_the_study_settings_build_the_method_and_count_inherited_epochs() -> None:
    """benchmarks/studies/nas_evolution.py: both arms are valid configs; a morphism child holds its ancestors' epochs."""
    args = argparse.Namespace(population=5, sample=2, cycles=20, seed_epochs=2.0, child_epochs=1.0)
    for children in ARMS:
        assert create_method("evolution", **method_settings(args, children)).config.children == children
    history = [{"parent": None}, {"parent": 0}, {"parent": 1}, {"parent": 0}]
    settings = {"seed_epochs": 2.0, "child_epochs": 1.0}
    assert [trained_epochs(history, i, settings, inherits=True) for i in range(4)] == [2.0, 3.0, 4.0, 3.0]
    assert [trained_epochs(history, i, settings, inherits=False) for i in range(4)] == [2.0, 1.0, 1.0, 1.0]
