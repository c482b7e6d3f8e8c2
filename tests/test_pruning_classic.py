"""Classic pruning: magnitude, AGP, filter (l1, l2, taylor, fpgm, thinet), SSL, their storage.

Tiny models and data: a learnable random-image datamodule (class prototypes plus noise) and
a real context from :func:`benchmarks.context.make_context` on the real local_cpu target.
"""

from __future__ import annotations

import copy
import csv
import json

import lightning as L
import numpy as np
import onnxruntime as ort
import pytest
import timm
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import benchmarks.models  # noqa: F401  (registers the zoo into timm)
from benchmarks.context import make_context
from benchmarks.schema import RecipeConfig, TrainerConfig
from hardware.layers import count_macs
from hardware.measured import LocalCPU
from methods.base import MethodConfigError
from methods.config import LayerSelection, select_layers
from methods.pruning.agp import AGPSchedule, AutomatedGradualPruning
from methods.pruning.criteria import CRITERIA, greedy_removal_scores, make_criterion
from methods.pruning.filter import FilterPruning
from methods.pruning.magnitude import MagnitudePruning, store_sparse
from methods.pruning.masks import WeightMasks, magnitude_masks
from methods.pruning.ssl import GroupLasso, StructuredSparsityLearning, dead_channels, group_lasso_terms
from methods.pruning.structured import (
    ChannelPruner,
    channels_to_remove,
    prune_counts,
    prune_layers,
    read_pruned,
    save_pruned,
)
from methods.storage import load_model, part_sizes, read_state
from methods.storage.sparse import FORMATS

torch.set_num_threads(1)  # tiny tensors: threads only contend on the shared cores


class PrototypeImages(L.LightningDataModule):
    """Learnable tiny data: each class is a fixed random image, samples add noise to it."""

    def __init__(self, shape: tuple[int, ...], samples: int = 64, classes: int = 10, batch_size: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.input_shape = shape
        prototypes = torch.randn(classes, *shape, generator=g)
        labels = torch.arange(samples) % classes
        self.data = TensorDataset(prototypes[labels] + 0.5 * torch.randn(samples, *shape, generator=g), labels)
        self.batch_size = batch_size

    def _loader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=False)

    train_dataloader = val_dataloader = test_dataloader = _loader


def context(tmp_path, shape=(3, 32, 32), samples=64):
    recipe = RecipeConfig(epochs=1, lr=0.02, scheduler="none", weight_decay=0.0)
    trainer = TrainerConfig(progress_bar=False, limit_val_batches=0, deterministic=False)
    target = LocalCPU(warmup=1, repeats=3, min_time_s=0.0, max_time_s=2.0, threads=1)  # short: timing is not tested
    return make_context(PrototypeImages(shape, samples), target, recipe, trainer, seed=0, workdir=tmp_path)


class SmallConvNet(nn.Module):
    """conv-bn-relu x2, pool, linear: a model small enough for end-to-end method runs."""

    def __init__(self, in_chans: int = 3, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(self.pool(x).flatten(1))


def run_onnx(model: nn.Module, x: torch.Tensor, path) -> np.ndarray:
    model.eval()
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["output"], opset_version=17,
                      dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


# -- sparse storage (the codec itself: tests/test_storage.py) -------------------------------------
def test_sparse_file_round_trips_and_its_size_is_the_sum_of_its_tensors(tmp_path) -> None:
    model = SmallConvNet()
    masks = WeightMasks(select_layers(model, (1, 3, 8, 8), LayerSelection()))
    masks.update(0.8)
    path = tmp_path / "model.sparse.cbm"
    decoded, report = store_sparse(model, SmallConvNet(), path, FORMATS)
    assert all(torch.equal(decoded.state_dict()[k], v) for k, v in model.state_dict().items())
    sizes = part_sizes(path)
    assert path.stat().st_size == sizes["header"] + sum(r["bytes"] for r in report.values())
    assert report["conv2.weight"]["format"] in ("csr", "rel4", "rel8")
    assert report["conv2.weight"]["bytes"] < report["conv2.weight"]["dense_bytes"] / 2


# -- unstructured masks, magnitude, AGP -------------------------------------------------------------
def test_magnitude_masks_meet_the_sparsity_layerwise_and_globally() -> None:
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(100, generator=g), "b": 10 * torch.randn(300, generator=g)}
    layer = magnitude_masks(weights, 0.7, "layer")
    assert [int((~m).sum()) for m in layer.values()] == [70, 210]
    kept_a = weights["a"][layer["a"]].abs()
    assert kept_a.min() >= weights["a"][~layer["a"]].abs().max()
    glob = magnitude_masks(weights, 0.7, "global")
    assert sum(int((~m).sum()) for m in glob.values()) == 280
    # one threshold: the small-weight layer loses more than its share
    assert int((~glob["a"]).sum()) / 100 > 0.7 > int((~glob["b"]).sum()) / 300


def test_magnitude_pruning_reaches_the_sparsity_and_masks_survive_finetuning(tmp_path) -> None:
    ctx = context(tmp_path, shape=(3, 8, 8))
    model = SmallConvNet()
    method = MagnitudePruning(sparsity=0.75, iterations=2, finetune={"epochs": 2.0}, layers={"last": False})
    before = copy.deepcopy(model.state_dict())
    result = method.compress(model, ctx)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # baseline untouched
    pruned = result.model
    for name in ("conv1", "conv2"):
        w = getattr(pruned, name).weight
        assert int((w == 0).sum()) == round(0.75 * w.numel())
        assert result.metrics[f"sparsity/{name}"] == pytest.approx(0.75, abs=1 / w.numel())
    assert int((pruned.fc.weight == 0).sum()) == 0  # layers.last=False
    # trained after pruning: the surviving weights moved away from the pruned baseline's values
    one_shot = copy.deepcopy(model)
    WeightMasks({"conv2": one_shot.conv2}).update(0.75)
    assert not torch.equal(one_shot.conv2.weight, pruned.conv2.weight)
    # the returned model is the stored file decoded, and the file is smaller than dense fp32
    decoded = read_state(result.stored_file).tensors
    assert all(torch.equal(decoded[k], v) for k, v in pruned.state_dict().items())
    assert result.stored_bytes == result.stored_file.stat().st_size < result.metrics["dense_bytes"]
    assert result.metrics["macs_after"] == result.metrics["macs_before"]  # no speedup on dense hardware
    assert result.metrics["macs_nonzero_after"] < result.metrics["macs_before"]
    for key in ("top1_before_finetune", "top1_after_finetune", "params_before", "params_after"):
        assert key in result.metrics
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert len(policy["steps"]) == 2 and policy["steps"][0]["sparsity"] < policy["steps"][1]["sparsity"]


def test_agp_schedule_is_zhu_and_gupta_cubic() -> None:
    s = AGPSchedule(initial_sparsity=0.1, final_sparsity=0.9, start_step=5, frequency=3, num_pruning_steps=4)
    assert s.update_steps() == [5, 8, 11, 14, 17]
    for t in s.update_steps():
        assert s.sparsity_at(t) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - (t - 5) / 12) ** 3)
    assert s.sparsity_at(5) == pytest.approx(0.1) and s.sparsity_at(17) == pytest.approx(0.9)
    assert s.is_update_step(8) and not s.is_update_step(9) and not s.is_update_step(20)


def test_agp_masks_follow_the_formula_during_finetuning(tmp_path) -> None:
    ctx = context(tmp_path, shape=(3, 8, 8))  # 64 samples / 16 = 4 steps per epoch
    method = AutomatedGradualPruning(final_sparsity=0.8, initial_sparsity=0.0, start_step=1, frequency=2,
                                     num_pruning_steps=4, finetune={"epochs": 3.0})  # 12 steps; schedule ends at 9
    result = method.compress(SmallConvNet(), ctx)
    rows = list(csv.DictReader((tmp_path / "agp_schedule.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 3, 5, 7, 9]
    layers = {"conv1": 8 * 3 * 9, "conv2": 16 * 8 * 9, "fc": 10 * 16}
    for row in rows:
        t = int(row["step"])
        expected = 0.8 + (0.0 - 0.8) * (1 - (t - 1) / 8) ** 3
        assert float(row["target_sparsity"]) == pytest.approx(expected)
        # measured from the weights right after the update: each layer rounds s_t * n
        zeros = sum(round(expected * n) for n in layers.values())
        assert float(row["measured_sparsity"]) == pytest.approx(zeros / sum(layers.values()))
    assert result.metrics["sparsity"] == pytest.approx(0.8, abs=2e-3)
    assert (tmp_path / "agp_schedule.png").exists()


# -- structured: physical removal, criteria, file ----------------------------------------------------
@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    for m in model.modules():  # non-trivial batch-norm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_cifar_resnet_keeps_the_padded_residual_streams_and_prunes_block_convs(resnet20) -> None:
    pruner = ChannelPruner(copy.deepcopy(resnet20), (1, 3, 32, 32))
    names = [layer.name for layer in pruner.layers()]
    assert names == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]


def _zero_channels(model: nn.Module, conv: str, bn: str, channels: list[int]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        modules[conv].weight[channels] = 0
        modules[bn].bias[channels] = 0
        modules[bn].running_mean[channels] = 0


def test_physically_pruned_model_equals_the_masked_model(resnet20) -> None:
    masked = copy.deepcopy(resnet20)
    removal = {"layer1.0.conv1": [1, 5, 6], "layer2.1.conv1": [0, 31], "layer3.2.conv1": list(range(0, 64, 3))}
    for conv, channels in removal.items():
        _zero_channels(masked, conv, conv.replace("conv1", "bn1"), channels)  # zero filter, BN shift 0
    pruned = copy.deepcopy(masked)
    pruner = ChannelPruner(pruned, (1, 3, 32, 32))
    for conv, channels in removal.items():
        pruner.prune(conv, channels)
    assert pruned.layer3[2].conv1.out_channels == 64 - 22 and pruned.layer3[2].conv2.in_channels == 64 - 22
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(masked(x), pruned(x), atol=1e-5)
    assert count_macs(pruned, (1, 3, 32, 32)) < count_macs(masked, (1, 3, 32, 32))


def test_pruned_mobilenetv2_equals_masked_through_depthwise_and_residuals() -> None:
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv2_050", num_classes=10).eval()
    masked = copy.deepcopy(model)
    block = "blocks.2.1"  # an inverted residual with a skip connection
    channels = [0, 2, 7]
    _zero_channels(masked, f"{block}.conv_pw", f"{block}.bn1", channels)
    modules = dict(masked.named_modules())
    with torch.no_grad():  # the depthwise conv's BN: zero shift for the dead channels too
        modules[f"{block}.bn2"].bias[channels] = 0
        modules[f"{block}.bn2"].running_mean[channels] = 0
    pruned = copy.deepcopy(masked)
    ChannelPruner(pruned, (1, 3, 32, 32)).prune(f"{block}.conv_pw", channels)
    assert dict(pruned.named_modules())[f"{block}.conv_dw"].out_channels == modules[f"{block}.conv_dw"].out_channels - 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(masked(x), pruned(x), atol=1e-5)


@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_each_criterion_gives_a_smaller_resnet_that_runs_and_exports(criterion, resnet20, tmp_path) -> None:
    model = copy.deepcopy(resnet20)
    pruner = ChannelPruner(model, (1, 3, 32, 32))
    importance = make_criterion(criterion, **({"max_batches": 1} if CRITERIA[criterion].requires_data else {}))
    data = PrototypeImages((3, 32, 32), samples=8, batch_size=8)
    if importance.requires_data:
        importance.calibrate(model, pruner.groups(), data.train_dataloader())
    removed = prune_layers(pruner, importance, {layer.name: 0.5 for layer in pruner.layers()})
    assert all(len(v) == layer_channels // 2 for v, layer_channels in
               zip(removed.values(), [16] * 3 + [32] * 3 + [64] * 3, strict=True))
    assert count_macs(model, (1, 3, 32, 32)) < 0.6 * count_macs(resnet20, (1, 3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(model, x, tmp_path / "m.onnx"), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, criterion", [("mobilenetv2_050", "thinet"), ("mobilenetv3_small_050", "taylor")])
def test_timm_mobilenets_prune_and_export(arch, criterion, tmp_path) -> None:
    torch.manual_seed(0)
    base = timm.create_model(arch, num_classes=10).eval()
    model = copy.deepcopy(base)
    pruner = ChannelPruner(model, (1, 3, 32, 32))
    importance = make_criterion(criterion, max_batches=1)
    if importance.requires_data:
        importance.calibrate(model, pruner.groups(), PrototypeImages((3, 32, 32), 4, batch_size=4).train_dataloader())
    prune_layers(pruner, importance, {layer.name: 0.4 for layer in pruner.layers()})
    assert count_macs(model, (1, 3, 32, 32)) < 0.7 * count_macs(base, (1, 3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(model, x, tmp_path / "m.onnx"), expected, rtol=1e-4, atol=1e-4)
    # and the stored file rebuilds the same network from a fresh unpruned one
    path = save_pruned(model, pruner.history, (1, 3, 32, 32), tmp_path / "m.pt")
    with torch.no_grad():
        assert torch.allclose(load_model(path, base).eval()(x), model(x), atol=1e-6)


def test_thinet_greedy_removes_the_channels_that_cancel_or_vanish() -> None:
    g = torch.Generator().manual_seed(0)
    terms = torch.randn(200, 4, generator=g)
    terms[:, 2] = 0.01 * terms[:, 2]  # nearly no contribution: removed first
    terms[:, 3] = -terms[:, 0]  # channel 3 cancels channel 0: removing both costs ~nothing
    scores = greedy_removal_scores(terms, [0, 1, 2, 3], 4)
    assert int(scores.argmin()) == 2
    assert sorted(scores.argsort()[:3].tolist()) == [0, 2, 3]  # then the cancelling pair, never channel 1 alone


def test_criterion_taylor_sums_weight_times_mean_gradient_over_the_group() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 1), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5))
    batches = [(torch.randn(6, 2, 5, 5), torch.randint(0, 5, (6,))) for _ in range(3)]
    pruner = ChannelPruner(model, (1, 2, 5, 5))
    taylor = make_criterion("taylor", max_batches=2)  # the third batch is not seen
    taylor.calibrate(model, pruner.groups(), batches)
    assert all(p.grad is None for p in model.parameters())  # the gradients it used are gone
    reference = copy.deepcopy(model)
    for x, y in batches[:2]:
        torch.nn.functional.cross_entropy(reference(x), y).backward()
    conv, reader = reference[0], reference[2]
    # Molchanov et al. 2019: |w * mean dC/dw| summed over the channel's filter and the next layer's input slice
    expected = (conv.weight * conv.weight.grad / 2).abs().flatten(1).sum(1)
    expected += (reader.weight * reader.weight.grad / 2).abs().transpose(0, 1).flatten(1).sum(1)
    assert torch.allclose(taylor(pruner.group("0")), expected.detach(), rtol=1e-5, atol=1e-9)


def test_thinet_contributions_sum_to_the_next_layers_output() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(5, 1, 3, bias=True)  # a 3x3 input gives one output position
    x = torch.randn(4, 5, 3, 3)
    terms = make_criterion("thinet", samples_per_image=2)._contributions(conv, x, torch.Generator().manual_seed(0))
    assert terms.shape == (8, 5)
    with torch.no_grad():
        y = (conv(x) - conv.bias).flatten()
    assert torch.allclose(terms.sum(dim=1), y.repeat_interleave(2), atol=1e-5)


def test_global_scope_ranks_all_channels_together(tmp_path) -> None:
    ctx = context(tmp_path, shape=(3, 8, 8))
    model = SmallConvNet()
    with torch.no_grad():
        model.conv2.weight[:12] *= 1e-3  # conv2 holds the 12 least important filters, after normalisation too
    result = FilterPruning(criterion="l1", scope="global", pruning_ratio=0.5, finetune={"epochs": 0}).compress(model, ctx)
    assert result.model.conv1.out_channels + result.model.conv2.out_channels == 12  # half of 24 channels
    assert result.model.conv2.out_channels == 4 and result.model.conv1.out_channels == 8


def test_criterion_fpgm_scores_the_filter_nearest_the_others_lowest() -> None:
    conv, reader = nn.Conv2d(1, 5, 1, bias=False), nn.Conv2d(5, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0, 9.0]).reshape(5, 1, 1, 1))
        reader.weight.zero_()  # the next layer's slices are all alike: only the filters tell channels apart
    pruner = ChannelPruner(nn.Sequential(conv, nn.ReLU(), reader), (1, 1, 4, 4))
    scores = make_criterion("fpgm")(pruner.group("0"))
    assert int(scores.argmin()) == 2  # 2 is the geometric median of {0.5, 1, 2, 3, 9}
    assert torch.allclose(scores, torch.tensor([13.0, 11.5, 10.5, 11.5, 29.5]))  # sum_j |F_i - F_j|
    assert int(make_criterion("l1")(pruner.group("0")).argmin()) == 0


class ResidualBlockNet(nn.Module):
    """stem -> bn0 -> (conv -> bn) + identity -> head: stem's and conv's output channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 6, 1)
        self.fc = nn.Linear(6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        r = torch.relu(self.bn(self.conv(s)) + s)
        return self.fc(self.head(r).mean(dim=(2, 3)))


def test_criterion_l1_scores_the_whole_coupled_group_where_the_root_alone_would_mislead() -> None:
    torch.manual_seed(0)
    model = ResidualBlockNet().eval()
    with torch.no_grad():
        model.stem.weight[0] *= 1e-3  # the root's filter 0 is tiny ...
        model.conv.weight[0] *= 50.0  # ... but the residual branch added to channel 0 leans on it
    pruner = ChannelPruner(model, (1, 3, 8, 8))
    assert list(pruner.groups()) == ["stem", "head"]
    group = pruner.group("stem")
    root_only = make_criterion("l1", group_reduction="first")(group)
    assert torch.allclose(root_only, model.stem.weight.abs().flatten(1).sum(1))  # Li et al.'s filter norm
    scores = make_criterion("l1")(group)
    with torch.no_grad():  # every weight a removed channel takes with it: filters, BN scales, input slices
        expected = sum(m.weight.abs().flatten(1).sum(1) for m in (model.stem, model.conv))
        expected += model.bn0.weight.abs() + model.bn.weight.abs()
        expected += sum(m.weight.abs().transpose(0, 1).flatten(1).sum(1) for m in (model.conv, model.head))
    assert torch.allclose(scores, expected)
    assert int(root_only.argmin()) == 0 and int(scores.argmin()) != 0  # the group keeps channel 0
    x = torch.randn(2, 3, 8, 8)
    removed = prune_counts(pruner, make_criterion("l1"), {"stem": 1})
    assert removed == {"stem": [int(scores.argmin())]}
    assert model.conv.out_channels == 3 and model.head.in_channels == 3 and model(x).shape == (2, 10)


def test_pruned_checkpoint_round_trips_through_its_weights_only_file(resnet20, tmp_path) -> None:
    model = copy.deepcopy(resnet20)
    pruner = ChannelPruner(model, (1, 3, 32, 32))
    prune_layers(pruner, make_criterion("l2"), {"layer1.0.conv1": 0.25, "layer3.1.conv1": 0.75})
    path = save_pruned(model, pruner.history, (1, 3, 32, 32), tmp_path / "pruned.cbm")
    payload = read_pruned(path)  # the JSON header: no pickle
    assert payload["channels"]["layer3.1.conv1"] == 16
    loaded = load_model(path, resnet20)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(ValueError, match="other widths|not a pruned-model"):
        load_model(path, timm.create_model("resnet32_cifar", num_classes=10))


@pytest.mark.parametrize("criterion", ["l1", "taylor"])
def test_filter_method_meets_a_macs_target_and_returns_the_decoded_model(criterion, tmp_path) -> None:
    ctx = context(tmp_path, samples=32)
    torch.manual_seed(0)
    base = timm.create_model("resnet20_cifar", num_classes=10)
    method = FilterPruning(criterion=criterion, target_macs_ratio=0.6, iterations=1, finetune={"epochs": 0.5},
                           calibration_batches=1)
    result = method.compress(base, ctx)
    m = result.metrics
    assert m["macs_after"] <= 0.6 * m["macs_before"] and m["macs_after"] > 0.4 * m["macs_before"]
    assert m["params_after"] < m["params_before"] and 0 < m["sparsity"] < 1
    assert result.stored_file.exists() and m["stored_bytes"] == result.stored_bytes
    stored = load_model(result.stored_file, base)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(stored.eval()(x), result.model.eval()(x))
    report = ctx.target.latency(result.model, ctx.input_shape)  # the decoded, smaller model runs on the target
    assert report.source == "measured" and report.latency_ms > 0
    policy = json.loads((tmp_path / "policy.json").read_text())
    assert set(policy["layers"]) == {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)}
    assert {"top1_before_finetune", "top1_after_finetune", "top1_baseline"} <= set(m)


def test_filter_method_iterative_layerwise_ratios(tmp_path) -> None:
    ctx = context(tmp_path, shape=(3, 8, 8))
    method = FilterPruning(criterion="l1", pruning_ratio=0.25, layer_ratios={"conv2": 0.5}, iterations=2,
                           finetune={"epochs": 1.0})
    result = method.compress(SmallConvNet(), ctx)
    assert result.model.conv1.out_channels == 6 and result.model.conv2.out_channels == 8
    assert result.model.fc.in_features == 8 and result.model.fc.out_features == 10
    steps = json.loads((tmp_path / "policy.json").read_text())["steps"]
    assert len(steps) == 2 and steps[0]["macs"] > steps[1]["macs"]


# -- SSL ------------------------------------------------------------------------------------------
def test_group_lasso_is_the_sum_of_filter_and_channel_norms() -> None:
    model = SmallConvNet()
    pruner = ChannelPruner(model, (1, 3, 8, 8))
    filters, channels = group_lasso_terms(pruner)
    assert {id(m) for m in filters} == {id(model.conv1), id(model.conv2)}
    assert {id(m) for m in channels} == {id(model.conv2), id(model.fc)}
    value = GroupLasso(filters, channels, 0.1, 0.01)()
    expected = 0.1 * sum(m.weight.flatten(1).norm(dim=1).sum() for m in (model.conv1, model.conv2))
    expected = expected + 0.01 * sum(m.weight.transpose(0, 1).flatten(1).norm(dim=1).sum() for m in (model.conv2, model.fc))
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


def test_ssl_removes_zeroed_filters_and_dead_input_channels() -> None:
    model = SmallConvNet()
    with torch.no_grad():
        model.conv1.weight[[1, 4]] = 0  # dead filters
        model.conv2.weight[:, 6] = 0  # channel 6 of conv1 is read by no one
        model.conv2.weight[[0, 1, 2]] = 1e-5
    pruner = ChannelPruner(model, (1, 3, 8, 8))
    dead = dead_channels(pruner, threshold=1e-3, min_channels=1)
    assert dead == {"conv1": [1, 4, 6], "conv2": [0, 1, 2]}
    everything = dead_channels(pruner, threshold=1e9, min_channels=2)
    assert len(everything["conv1"]) == 6 and len(everything["conv2"]) == 14  # keeps min_channels


def test_ssl_method_shrinks_group_norms_and_returns_a_consistent_model(tmp_path) -> None:
    ctx = context(tmp_path, shape=(3, 8, 8))
    method = StructuredSparsityLearning(filter_decay=0.05, channel_decay=0.05, sparsify={"epochs": 2.0}, threshold=0.05,
                                        finetune={"epochs": 0.5})
    result = method.compress(SmallConvNet(), ctx)
    m = result.metrics
    assert m["group_lasso_after"] < m["group_lasso_before"]
    model = result.model
    assert model.conv2.in_channels == model.conv1.out_channels and model.fc.in_features == model.conv2.out_channels
    assert m["channels_removed"] == (8 - model.conv1.out_channels) + (16 - model.conv2.out_channels)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


# -- impossible requests --------------------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: MagnitudePruning(sparsity=1.0), r"method.sparsity must be in \[0, 1\)"),
    (lambda: MagnitudePruning(sparsity=-0.1), r"method.sparsity must be in \[0, 1\)"),
    (lambda: MagnitudePruning(layer_sparsity={"conv1": 1.2}), r"layer_sparsity.conv1"),
    (lambda: MagnitudePruning(scope="row"), r"method.scope"),
    (lambda: AutomatedGradualPruning(final_sparsity=1.0), r"final_sparsity"),
    (lambda: AutomatedGradualPruning(initial_sparsity=0.6, final_sparsity=0.5), r"must not exceed"),
    (lambda: FilterPruning(pruning_ratio=1.0), r"would remove every channel"),
    (lambda: FilterPruning(layer_ratios={"conv1": 1.0}), r"layer_ratios.conv1"),
    (lambda: FilterPruning(criterion="hrank"), r"method.criterion must be one of .*'hrank'"),
    (lambda: FilterPruning(criterion_options={"group_reduction": "mean"}), r"criterion_options.group_reduction"),
    (lambda: FilterPruning(criterion="l2", criterion_options={"seed": 1}), r"criterion_options: l2 does not take"),
    (lambda: FilterPruning(target_macs_ratio=0.0), r"target_macs_ratio must be in \(0, 1\]"),
    (lambda: FilterPruning(scope="global", target_macs_ratio=0.5), r"scope=global"),
    (lambda: StructuredSparsityLearning(min_channels=0), r"min_channels"),
])
def test_impossible_configurations_are_refused_with_the_key(build, match) -> None:
    with pytest.raises(MethodConfigError, match=match):
        build()


def test_impossible_requests_on_a_model_name_the_layer(tmp_path) -> None:
    with pytest.raises(MethodConfigError, match="removes every one of the 4 channels of layer 'x'"):
        channels_to_remove(4, 0.9, "x")
    model = SmallConvNet()
    pruner = ChannelPruner(model, (1, 3, 8, 8))
    with pytest.raises(MethodConfigError, match="leaves none"):
        pruner.prune("conv1", list(range(8)))
    with pytest.raises(MethodConfigError, match="not prunable"):
        pruner.group("fc")  # the classifier's outputs are the classes
    ctx = context(tmp_path, shape=(3, 8, 8))
    with pytest.raises(MethodConfigError, match="not prunable"):
        FilterPruning(layer_ratios={"fc": 0.5}).compress(SmallConvNet(), ctx)
    with pytest.raises(MethodConfigError, match="cannot be reached"):
        FilterPruning(target_macs_ratio=0.01, finetune={"epochs": 0}).compress(SmallConvNet(), ctx)
    with pytest.raises(MethodConfigError, match="fine-tuning has only"):
        AutomatedGradualPruning(frequency=5, num_pruning_steps=10, finetune={"epochs": 1.0}).compress(SmallConvNet(), ctx)


@pytest.mark.parametrize("arch, shape", [("lenet_300_100", (1, 1, 28, 28)), ("mobilenetv1", (1, 3, 32, 32))])
def test_registered_models_prune_round_trip_and_export(arch, shape, tmp_path) -> None:
    torch.manual_seed(0)
    base = timm.create_model(arch, num_classes=10).eval()
    model = copy.deepcopy(base)
    pruner = ChannelPruner(model, shape)
    prune_layers(pruner, make_criterion("l1"), {layer.name: 0.5 for layer in pruner.layers()})
    assert count_macs(model, shape) < 0.6 * count_macs(base, shape)
    path = save_pruned(model, pruner.history, shape, tmp_path / "m.pt")
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(load_model(path, base).eval()(x), expected)
    np.testing.assert_allclose(run_onnx(model, x, tmp_path / "m.onnx"), expected.numpy(), rtol=1e-4, atol=1e-4)
