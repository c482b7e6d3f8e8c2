"""Kernel detection (fusion rules) and kernel predictors (issue 13)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

from hardware.kernelcost.predictor import KernelPredictor, KernelSample
from hardware.kernelcost.profiling import kernel_module
from hardware.kernelcost.sources import proxylessnas_block
from hardware.kernels import Kernel, model_kernels
from hardware.layers import describe_layers


class _SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.reduce, self.act, self.expand, self.gate = nn.Conv2d(c, 4, 1), nn.ReLU(), nn.Conv2d(4, c, 1), nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


class _Net(nn.Module):
    """Stem conv+BN+ReLU, a residual (conv+BN, add, ReLU), SE, h-swish, max pool, concat, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn, self.relu = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv, self.bn2, self.relu2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU()
        self.se, self.hswish = _SE(8), nn.Hardswish()
        self.pool, self.head = nn.MaxPool2d(2), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.stem(x)))
        x = self.relu2(self.bn2(self.conv(x)) + x)
        x = self.hswish(self.se(x))
        x = torch.cat([self.pool(x), self.pool(x)], 1)
        return self.head(x.mean((2, 3)))


def test_fusion_rules_give_the_kernels_a_runtime_executes():
    kernels = model_kernels(_Net().eval(), (1, 3, 16, 16), "tflite")
    assert [k.type for k in kernels] == ["conv", "dwconv", "add", "se", "act", "pool", "pool", "concat", "gpool", "linear"]
    conv, dwconv, add, se, act = kernels[:5]
    assert conv.layers == ["stem", "bn", "relu"] and conv.config["act"] == "ReLU"
    assert dwconv.layers == ["conv", "bn2"] and dwconv.config["act"] == ""  # the add comes before the ReLU
    assert add.config["act"] == "ReLU" and add.layers[-1] == "relu2"
    assert se.config == {"c": 8, "h": 16, "w": 16, "batch": 1, "mid": 4, "gate": "Hardsigmoid"}
    assert len(se.layers) == 6 and act.config["act"] == "Hardswish"  # TF-Lite runs h-swish as its own kernel
    assert kernels[7].config["c"] == 16 and kernels[7].config["inputs"] == 2


class _ShuffleUnit(nn.Module):
    """ShuffleNet's strided unit in miniature: grouped 1x1 conv, channel shuffle, concat with a pooled shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(8, 8, 1, groups=2), nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(self.conv(x), 2).contiguous()  # already contiguous: no second copy
        return torch.cat([self.pool(x), self.pool(out)], 1)


def test_channel_shuffle_and_concat_are_traced_as_the_copies_they_are():
    described = describe_layers(_ShuffleUnit().eval(), (1, 8, 6, 6))
    assert [layer.op for layer in described].count("transpose") == 1
    layers = {layer.op: layer for layer in described}
    transpose, concat = layers["transpose"], layers["concat"]
    assert transpose.input_shape == (1, 4, 2, 6, 6) and transpose.in_channels == 8
    assert concat.output_shape == (1, 16, 3, 3) and concat.extra["operand_shapes"] == [(1, 8, 3, 3), (1, 8, 3, 3)]
    kernels = model_kernels(_ShuffleUnit().eval(), (1, 8, 6, 6))
    assert [k.type for k in kernels] == ["conv", "transpose", "pool", "pool", "concat"]
    assert kernels[1].config == {"c": 8, "h": 6, "w": 6, "batch": 1} and kernels[1].layers == ["transpose"]
    module, inputs = kernel_module(kernels[1])  # the profiler can time it alone
    assert module(*inputs).numel() == 8 * 6 * 6


def test_pytorch_runtime_fuses_every_activation_and_unknown_runtime_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Hardswish()).eval()
    assert [k.type for k in model_kernels(model, (1, 3, 8, 8), "tflite")] == ["conv", "act"]
    (fused,) = model_kernels(model, (1, 3, 8, 8), "pytorch")
    assert fused.config["act"] == "Hardswish" and fused.layers == ["0", "1", "2"]
    with pytest.raises(ValueError, match="runtime 'tvm' is unknown"):
        model_kernels(model, (1, 3, 8, 8), "tvm")


def test_a_proxylessnas_table_key_becomes_its_block_kernels():
    block, shape = proxylessnas_block("expanded_conv-input:14x14x8-output:14x14x8-expand:3-kernel:5-stride:1-idskip:1")
    kernels = model_kernels(block, shape)
    assert [k.type for k in kernels] == ["conv", "dwconv", "conv", "add"]
    assert kernels[0].config["cout"] == 24 and kernels[1].config["k"] == 5
    with pytest.raises(Exception, match="shortcut"):
        proxylessnas_block("expanded_conv-input:14x14x8-output:14x14x8-expand:3-kernel:5-stride:1-idskip:0")


def _conv(rng: random.Random) -> Kernel:
    c_in, c_out, size, k = rng.choice([8, 16, 32, 64]), rng.choice([8, 16, 32, 64]), rng.choice([7, 14, 28]), rng.choice([1, 3])
    return Kernel("conv", {"cin": c_in, "cout": c_out, "h": size, "w": size, "ho": size, "wo": size, "k": k, "s": 1,
                           "groups": 1, "batch": 1, "act": "ReLU"})


def _known_cost(kernel: Kernel) -> float:
    """A device whose conv costs 0.3 ms per MMAC, 2 ms per million outputs and 0.05 ms per call."""
    c = kernel.config
    rows = c["ho"] * c["wo"]
    return 0.3 * rows * c["cin"] * c["k"] ** 2 * c["cout"] / 1e6 + 2.0 * rows * c["cout"] / 1e6 + 0.05


def test_a_predictor_fitted_on_a_known_cost_function_recovers_it():
    rng = random.Random(0)
    kernels = [_conv(rng) for _ in range(120)]
    singles = [KernelSample(f"k{i}", [k], _known_cost(k)) for i, k in enumerate(kernels[:60])]
    # blocks of three kernels measured together fit the same coefficients
    blocks = [KernelSample(f"b{i}", kernels[i : i + 3], sum(map(_known_cost, kernels[i : i + 3]))) for i in range(60, 90, 3)]
    predictor = KernelPredictor.fit(singles + blocks, trees=20, small_m_rows=0, cache_bytes=1e12)
    assert predictor.coefficients["gemm.macs"] == pytest.approx(0.3, rel=1e-3)
    assert predictor.coefficients["gemm.output"] == pytest.approx(2.0, rel=1e-3)
    held = kernels[90:]
    assert all(predictor.analytical(k) == pytest.approx(_known_cost(k), rel=1e-3) for k in held)
    forest = [predictor.forest(k) / _known_cost(k) - 1 for k in held]
    assert math.sqrt(sum(e * e for e in forest) / len(forest)) < 0.25  # in range, the forest is close too
    assert predictor.choice["conv"] == "analytical"  # the exact form wins the cross-validation


def test_kxk_convolutions_and_1x1_products_have_their_own_terms():
    """A device whose 3x3 (im2col) convolutions run at half the 1x1 products' rate: one family could not fit both."""
    rng = random.Random(2)
    kernels = [_conv(rng) for _ in range(80)]

    def cost(kernel: Kernel) -> float:
        return _known_cost(kernel) * (2.0 if kernel.config["k"] > 1 else 1.0)

    predictor = KernelPredictor.fit([KernelSample(str(i), [k], cost(k)) for i, k in enumerate(kernels[:60])],
                                    forest=False, small_m_rows=0, cache_bytes=1e12)
    assert predictor.coefficients["gemm.macs"] == pytest.approx(0.3, rel=1e-3)
    assert predictor.coefficients["im2col.macs"] == pytest.approx(0.6, rel=1e-3)
    assert all(predictor.analytical(k) == pytest.approx(cost(k), rel=1e-3) for k in kernels[60:])


def _dwconv(rng: random.Random) -> Kernel:
    c, size, k, stride = rng.choice([16, 32, 64]), rng.choice([14, 28, 56]), rng.choice([3, 5, 7]), rng.choice([1, 2])
    return Kernel("dwconv", {"cin": c, "cout": c, "h": size, "w": size, "ho": size // stride, "wo": size // stride,
                             "k": k, "s": stride, "groups": c, "batch": 1, "act": "ReLU"})


def test_each_build_has_its_own_products_and_a_term_it_lacks_is_the_shared_fit():
    """Two runtime builds of one device: build "new" runs 1x1 products twice as fast and measured nothing else."""
    rng = random.Random(3)
    kernels = [_conv(rng) for _ in range(120)]
    depthwise = [_dwconv(rng) for _ in range(30)]

    def dw_cost(kernel: Kernel) -> float:
        c = kernel.config
        return 0.5 * c["ho"] * c["wo"] * c["k"] ** 2 * c["cout"] / 1e6 + 0.02

    old = [KernelSample(f"o{i}", [k], _known_cost(k), build="old") for i, k in enumerate(kernels[:60])]
    old += [KernelSample(f"d{i}", [k], dw_cost(k), build="old") for i, k in enumerate(depthwise[:20])]
    new = [KernelSample(f"n{i}", [k], _known_cost(k) / 2, build="new") for i, k in enumerate(kernels[60:])
           if k.config["k"] == 1]
    predictor = KernelPredictor.fit(old + new, forest=False, small_m_rows=0, cache_bytes=1e12)
    assert predictor.coefficients["gemm.macs@old"] == pytest.approx(0.3, rel=1e-3)
    assert predictor.coefficients["gemm.macs@new"] == pytest.approx(0.15, rel=1e-3)
    pointwise, kxk = (next(k for k in kernels[60:] if k.config["k"] == size) for size in (1, 3))
    predictor.build = "new"
    assert predictor.analytical(pointwise) == pytest.approx(_known_cost(pointwise) / 2, rel=1e-3)
    assert predictor.analytical(kxk) == pytest.approx(_known_cost(kxk), rel=1e-3)  # im2col: one term for all builds
    # "new" measured no depthwise kernel: its depthwise terms are the fit of every build (here old's alone)
    assert not any(name.startswith("depthwise.") and name.endswith("@new") for name in predictor.coefficients)
    assert all(predictor.analytical(k) == pytest.approx(dw_cost(k), rel=1e-3) for k in depthwise[20:])


def test_the_table_is_an_exact_cache_and_misses_come_from_the_model():
    rng = random.Random(1)
    kernels = [_conv(rng) for _ in range(20)]
    predictor = KernelPredictor.fit([KernelSample(str(i), [k], _known_cost(k)) for i, k in enumerate(kernels)],
                                    forest=False, table={kernels[0].key: 1.2345})
    assert predictor.predict(kernels[0]) == (1.2345, "table")
    ms, source = predictor.predict(kernels[1])
    assert source == "analytical" and ms == pytest.approx(_known_cost(kernels[1]), rel=0.05)


def test_sampled_kernels_build_back_into_the_same_kernels():
    from hardware.kernelcost.profiling import kernel_module, sample_kernels

    kernels = sample_kernels(24, seed=3)
    assert len({k.type for k in kernels}) >= 8
    for kernel in kernels:
        module, inputs = kernel_module(kernel)
        if len(inputs) == 1:  # one-input kernels trace on their own
            (traced,) = model_kernels(module, tuple(inputs[0].shape), "pytorch")
            assert traced.key == kernel.key


def test_profiled_kernels_answer_for_a_model_the_unit_table_lacks(tmp_path):
    from hardware.kernelcost.profiling import measure_kernels, sample_kernels, save_table
    from hardware.lookup import LatencyTable, TableTarget
    from hardware.protocol import TimingProtocol

    protocol = TimingProtocol(warmup=1, repeats=3, min_time_s=0.0, clock="thread_cpu")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(), _SE(8)).eval()
    own = model_kernels(model, (1, 3, 16, 16), "pytorch")
    kernels = sample_kernels(16, seed=1) + own[:1]  # the model's conv is measured: a table hit
    table_path = save_table(tmp_path / "kernels.json", measure_kernels(kernels, protocol, progress=False), protocol, 1)
    LatencyTable().save(tmp_path / "units.json")  # an empty unit table: every unit is missing
    device = {"_target_": "hardware.kernelcost.KernelTarget", "name": "k", "device": "cpu", "citation": "test",
              "source": "table", "calibration": "measured", "runtime": "pytorch", "predictor": "analytical",
              "sources": [{"name": "kernels", "format": "kernel_table", "path": str(table_path), "cache": True}]}
    target = TableTarget(table=str(tmp_path / "units.json"), on_missing="kernels", kernels=device)
    report = target.latency(model, (1, 3, 16, 16))
    by_kernel = report.provenance["kernels"]
    assert [k["type"] for k in by_kernel] == ["conv", "se"] and report.provenance["answered_by"] == device
    assert by_kernel[0]["from"] == "table" and by_kernel[1]["from"] == "analytical"
    assert report.latency_ms == pytest.approx(sum(k["ms"] for k in by_kernel)) and report.hw == "local_cpu_table"
    assert any("kernel predictors" in note for note in report.notes)


def test_two_sources_are_cross_validated_and_left_out_in_turn(tmp_path):
    """Two kernel tables of one known cost function: every validation group predicts it closely."""
    import json

    from hardware.kernelcost import KernelTarget
    from hardware.kernelcost.profiling import TABLE_FORMAT

    rng, sources = random.Random(2), []
    for name in ("a", "b"):
        entries = [{"type": k.type, "config": k.config, "ms": _known_cost(k)} for k in (_conv(rng) for _ in range(30))]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"format": TABLE_FORMAT, "metadata": {}, "entries": entries}))
        sources.append({"name": name, "format": "kernel_table", "path": str(path)})
    target = KernelTarget("t", "cpu", "test", sources, runtime="pytorch", predictor="analytical", small_m_rows=0,
                          cache_bytes=1e12, validation={"cv_folds": 3})
    cases = target.validation_cases()
    groups = {(c.group, c.fit) for c in cases}
    assert groups == {("a", "in-sample"), ("b", "in-sample"), ("a-cv", "leave-one-out"), ("b-cv", "leave-one-out"),
                      ("a-from-other-sources", "held-out"), ("b-from-other-sources", "held-out")}
    assert max(abs(c.relative_error) for c in cases) < 0.02
    comparison = "\n".join(target.predictor_comparison())
    assert "| a | cross-validated | 100% / " in comparison and "| b | leave-one-source-out | 100% / " in comparison


def test_drift_normalisation_divides_out_the_reference_drift_per_input_size():
    from hardware.kernelcost.target import drift_normalised

    # at 128 px the reference takes 10 ms, at 160 px 20 ms; the second 128-px pair ran on a 20 % slower machine
    rows = [(128, [(5.0, 10.0)]), (128, [(6.0, 12.0)]), (128, [(5.0, 10.0)]), (160, [(8.0, 20.0)])]
    assert drift_normalised(rows) == [[5.0], [5.0], [5.0], [8.0]]


def test_a_published_figure_is_also_compared_within_its_paper():
    """The ratio to the paper's reference entry divides out the paper's own runtime build (20% slow here)."""
    from hardware.validation import same_paper_ratio_errors

    entries = [{"group": "a", "latency_ms": 100, "reference": True}, {"group": "a", "latency_ms": 50},
               {"group": "b", "latency_ms": 10}]
    errors = same_paper_ratio_errors(entries, [120.0, 66.0, 10.0])
    assert errors[0] == pytest.approx(0.0) and errors[1] == pytest.approx(0.1) and errors[2] is None


def test_a_held_out_network_says_which_of_its_units_a_fit_source_measured(tmp_path):
    """MobileNetV2's stem, first block and head are ProxylessNAS table keys: their measured sum travels with the
    held-out case (what the table alone says of the published whole), beside the same-paper ratio."""
    import yaml

    from hardware.kernelcost import KernelTarget

    means = {"Conv-input:224x224x3-output:112x112x32": 4.0, "Logits-input:7x7x1280-output:1000": 0.3,
             "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0": 3.9}
    (tmp_path / "lut.yaml").write_text(yaml.safe_dump({k: {"count": 1, "mean": v, "var": 0.0} for k, v in means.items()}))
    (tmp_path / "published.yaml").write_text(yaml.safe_dump({"models": [
        {"name": "v2", "timm": "mobilenetv2_100", "latency_ms": 75.0, "group": "p", "reference": True},
        {"name": "v2 again", "timm": "mobilenetv2_100", "latency_ms": 60.0, "group": "p"}]}))
    target = KernelTarget("t", "phone", "test", [{"name": "lut", "format": "proxylessnas_lut",
                                                  "path": str(tmp_path / "lut.yaml")}],
                          predictor="analytical", holdout_file=str(tmp_path / "published.yaml"))
    first, again = target.holdout_cases()
    assert first.info["units_measured"] == "3/20" and first.info["units_measured_ms"] == pytest.approx(8.2)
    assert again.info["same_paper_ratio_error"] == pytest.approx(75 / 60 - 1)
    assert any("3/20 of its units" in line for line in target.validation_lines([first, again]))


def test_an_adaptive_pool_on_a_1x1_map_is_a_global_pool_that_builds_and_measures():
    """A small input leaves a 1x1 map before the head: its adaptive pool was a windowed 'pool' kernel that
    the profiler could not build (AdaptiveAvgPool2d(k, s)), so measuring such a network's kernels failed."""
    from hardware.kernelcost.profiling import kernel_module

    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    kernels = model_kernels(model, (1, 3, 2, 2), "pytorch")
    assert [k.type for k in kernels] == ["conv", "gpool", "linear"]
    for kernel in kernels:
        module, inputs = kernel_module(kernel)
        module(*inputs)


@pytest.mark.slow
def test_measured_networks_also_time_their_kernels_alone_and_say_what_the_network_adds():
    from hardware.registry import build

    target = build("local_cpu_kernels")
    target.validation = {**target.validation, "networks": ["lcnet_050"], "sizes": [64], "repeat": 1,
                         "protocol": {"warmup": 1, "repeats": 3, "min_time_s": 0.0}}
    (case,) = target.network_cases()
    assert case.info["isolated_kernels_ms"] > 0 and "measured_again_ms" in case.info
    (line,) = [line for line in target.validation_lines([case]) if line.startswith("Kernels timed one by one")]
    alone = case.info["isolated_kernels_ms"]
    assert f"{case.info['raw_measured_ms'] / alone - 1:+.0%} (median;" in line
    assert f"{case.info['kernels_alone_predicted_ms'] / alone - 1:+.0%} (median;" in line


def test_in_network_terms_fitted_on_whole_networks_recover_known_ones():
    """Networks whose measured time is their kernels' predictions plus known per-kernel, per-weight and
    proportional terms give those terms back; no network measured gives none."""
    from hardware.kernelcost.composition import Composition, features, fit_composition

    rng = random.Random(0)
    truth = Composition({"per_kernel": 0.03, "per_mweight": 0.2, "per_ms": 0.1})
    networks = []
    for _ in range(12):
        kernels = [Kernel("conv", {"cin": rng.choice((16, 64)), "cout": rng.choice((32, 128)), "k": rng.choice((1, 3)),
                                   "groups": 1, "h": 14, "w": 14, "ho": 14, "wo": 14, "s": 1, "batch": 1, "act": ""})
                   for _ in range(rng.randint(5, 40))]
        alone = [0.01 * k.config["cin"] * k.config["k"] for k in kernels]
        networks.append((kernels, sum(a + truth.extra_ms(k, a) for k, a in zip(kernels, alone, strict=True))))

    def predict(kernels: list[Kernel]) -> list[float]:
        return [0.01 * k.config["cin"] * k.config["k"] for k in kernels]

    fitted = fit_composition(networks, predict)
    assert fitted.networks == 12
    assert fitted.coefficients == pytest.approx(truth.coefficients, rel=1e-6)
    assert features(networks[0][0], predict(networks[0][0]))[0] == len(networks[0][0])
    assert fit_composition([], predict).coefficients == dict.fromkeys(truth.coefficients, 0.0)


def test_extending_a_kernel_table_keeps_how_its_kernels_were_measured(tmp_path):
    """Adding networks to a table rewrote its metadata with the new call's protocol and date, misstating
    how the kernels already in it were measured; the first call's metadata stays, each later call is an extension."""
    from hardware.kernelcost.profiling import load_table, save_table
    from hardware.protocol import TimingProtocol

    first, second = (TimingProtocol(warmup=w, repeats=3, min_time_s=0.0, clock="thread_cpu") for w in (1, 2))
    entry = {"type": "act", "config": {"c": 8, "h": 4, "w": 4, "batch": 1, "act": "ReLU"}, "ms": 0.01}
    network = {"name": "resnet-000-s2@64", "config": {"space": "tiny"}, "input_size": 64, "ms": 1.0}
    path = save_table(tmp_path / "kernels.json", [entry], first, 1)
    table = load_table(save_table(path, [], second, 2, networks=[network]))
    assert table["metadata"]["seed"] == 1 and table["metadata"]["protocol"]["warmup"] == 1
    (extension,) = table["metadata"]["extensions"]
    assert (extension["seed"], extension["protocol"]["warmup"], extension["kernels"], extension["networks"]) == (2, 2, 0, 1)
    assert table["entries"] == [entry] and table["networks"] == [network]
