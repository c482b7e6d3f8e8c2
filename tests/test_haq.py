"""HAQ (methods/quantization/haq.py): mixed precision searched by the shared DDPG agent under a hardware budget.

Real pieces: LeNet-5 from the zoo, MNIST on a few hundred samples of the shared data, the
roofline targets of conf/hw (``bitfusion``, ``zynq7020``, ``vu9p``, ``titanxp``), the fake-quant
and k-means storage. What is checked is what the paper promises: every policy the search
evaluates, and the stored model, meet the budget on the target searched for; the search is
reproducible by its seed; impossible requests are refused naming the key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import benchmarks.models  # noqa: F401  (registers the zoo into timm)
from benchmarks.context import make_context
from benchmarks.data import MNISTDataModule
from benchmarks.models import build_model
from benchmarks.schema import RecipeConfig, TrainerConfig
from hardware.measured import LocalCPU
from hardware.target import HardwareTarget
from methods import create_method
from methods.base import MethodConfigError
from methods.search.resource import make_resource
from methods.search.threads import search_threads
from methods.storage import load_model
from tests.conftest import REPO_ROOT, needs_shared_data, tiny_mnist

pytestmark = needs_shared_data

#: a search small enough for CI: 1 random + 1 learning episode, no fine-tuning per episode
FAST = {"warmup_episodes": 1, "episodes": 1, "reward_batches": 1, "calibration_batches": 1,
        "reward_finetune": {"epochs": 0}, "finetune": {"epochs": 0.25}}


def _hw(name: str) -> HardwareTarget:
    return instantiate(OmegaConf.load(REPO_ROOT / "conf" / "hw" / f"{name}.yaml"))


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> MNISTDataModule:
    return tiny_mnist(tmp_path_factory.mktemp("mnist"), val_size=256, val_subset=128)


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("lenet5", num_classes=10, in_chans=1).eval()


def _ctx(mnist: MNISTDataModule, target: HardwareTarget, workdir: Path):
    return make_context(mnist, target, RecipeConfig(epochs=1, lr=0.01), TrainerConfig(progress_bar=False), seed=0,
                        workdir=workdir)


@pytest.mark.parametrize(("hw", "options"), [
    # LeNet-5's latency on the BISMO boards is mostly their per-layer overhead: budgets near 1
    ("zynq7020", {"resource": "latency", "target_ratio": 0.97}),
    ("vu9p", {"resource": "latency", "target_ratio": 0.9}),
    ("bitfusion", {"resource": "energy", "target_ratio": 0.8}),
    ("bitfusion", {"mode": "kmeans", "resource": "size", "target_ratio": 0.1, "b_min": 1, "kmeans_iterations": 5}),
])
def test_every_policy_and_the_stored_model_meet_the_budget(lenet, mnist, tmp_path, hw, options):
    target = _hw(hw)
    haq = create_method("haq", **FAST, **options)
    ctx = _ctx(mnist, target, tmp_path)
    env = haq.environment(lenet, ctx)
    # the budget binds: the agent's widest policy is over it, so the wall had to lower bits
    assert env.cost(env.uniform(haq.config.b_max)) > env.budget
    result = haq.compress(lenet, ctx)
    fresh = make_resource(options["resource"], target, ctx.input_shape)
    assert fresh(result.model, result.layer_bits) <= env.budget * (1 + 1e-9)
    policy = __import__("json").loads((ctx.workdir / "haq_policy.json").read_text())
    assert policy["budget_met"] and len(policy["history"]) == 2
    assert all(e["cost"] <= env.budget * (1 + 1e-9) for e in policy["history"])
    searched = [(w, a) for n, (w, a) in result.layer_bits.items() if n in env.layers]
    assert all(haq.config.b_min <= w <= haq.config.b_max for w, _ in searched)
    assert {tuple(b) for b in policy["layer_bits"].values()} == {tuple(b) for b in result.layer_bits.values()}
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(load_model(result.stored_file, lenet)(x), result.model(x))  # the evaluated model is the file's
    assert (ctx.workdir / "haq_policy.png").is_file()


def test_the_wall_lowers_the_last_layers_first_and_stops_at_the_budget(lenet, mnist, tmp_path):
    """The reference's order: passes from the last layer back, activation then weight, one bit each."""
    haq = create_method("haq", **FAST, target_ratio=0.9)
    env = haq.environment(lenet, _ctx(mnist, _hw("vu9p"), tmp_path))
    walled = env.wall(env.uniform(8))
    assert env.cost(walled) <= env.budget
    order = [(n, role) for n in reversed(env.layers) for role in (1, 0)]  # a_L, w_L, a_L-1, ...
    lowered = [8 - walled[n][role] for n, role in order]
    assert lowered == sorted(lowered, reverse=True) and lowered[0] - lowered[-1] <= 1 and lowered[0] > 0
    # no further than needed: one bit back on the step lowered last breaks the budget
    last = max(i for i, d in enumerate(lowered) if d == lowered[0])
    name, role = order[last]
    undone = {**walled, name: [b + (i == role) for i, b in enumerate(walled[name])]}
    assert env.cost(undone) > env.budget


def test_actions_map_onto_bits_as_the_reference_does():
    config = create_method("haq", b_min=2, b_max=8).config
    assert [config.to_bits(a) for a in (0.0, 0.1, 0.5, 0.99, 1.0)] == [2, 2, 5, 8, 8]


def test_the_shared_ddpg_gives_the_same_policy_for_the_same_seed(lenet, mnist, tmp_path):
    haq = create_method("haq", **{**FAST, "episodes": 2}, target_ratio=0.5)
    env = haq.environment(lenet, _ctx(mnist, _hw("bitfusion"), tmp_path))
    with search_threads(1):
        first, second, other = (haq.search_policy(env, seed) for seed in (0, 0, 1))
    assert [e.bits for e in first] == [e.bits for e in second]
    assert [e.bits for e in first] != [e.bits for e in other]
    assert [e.warmup for e in first] == [True, False, False]


@pytest.mark.parametrize(("options", "key"), [
    ({"b_min": 0}, "method.b_min"),
    ({"b_max": 9}, "method.b_max"),
    ({"b_min": 6, "b_max": 4}, "method.b_min"),
    ({"b_min": 1}, "method.b_min"),  # symmetric weights have no 1-bit grid
    ({"resource": "flops"}, "method.resource"),
    ({"mode": "ternary"}, "method.mode"),
])
def test_impossible_settings_are_refused_naming_the_key(options, key):
    with pytest.raises(MethodConfigError, match=rf"{key}\b"):
        create_method("haq", **options)


@pytest.mark.parametrize(("hw", "options", "message"), [
    ("zynq7020", {"target_ratio": 0.9}, r"method.target_ratio=0.9: unreachable.*lower b_min"),
    ("titanxp", {}, r"method.resource=latency: hw 'titanxp' does not model bit-widths"),
    ("local_cpu", {}, r"method.resource=latency: hw 'local_cpu' is measured"),
    ("bitfusion", {"layer_bits": {"conv9": [8, 8]}}, r"method.layer_bits names \['conv9'\]"),
])
def test_impossible_budgets_and_targets_are_refused(lenet, mnist, tmp_path, hw, options, message):
    target = LocalCPU(warmup=1, repeats=3, min_time_s=0) if hw == "local_cpu" else _hw(hw)
    with pytest.raises(MethodConfigError, match=message):
        create_method("haq", **FAST, **options).environment(lenet, _ctx(mnist, target, tmp_path))


def test_a_fake_quantized_model_is_costed_like_its_float_model(lenet):
    """The tracer costs a fake-quantized layer as one layer: its weight dequantization is not an op of the device."""
    from hardware.layers import describe_layers
    from methods.quantization.ptq import quantize_for_inference

    quantized, _, _ = quantize_for_inference(lenet, create_method("ptq").config, [torch.randn(2, 1, 28, 28)])
    assert [s.name for s in describe_layers(quantized, (1, 1, 28, 28))] == [
        s.name for s in describe_layers(lenet, (1, 1, 28, 28))]
