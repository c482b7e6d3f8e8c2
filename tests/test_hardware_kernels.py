"""Kernel detection (fusion rules) and kernel predictors (issue 13)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from hardware.kernelcost.predictor import KernelPredictor, KernelSample
from hardware.kernelcost.sources import proxylessnas_block
from hardware.kernels import Kernel, model_kernels


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
    predictor = KernelPredictor.fit(singles + blocks, small_m_rows=0, cache_bytes=1e12)
    assert predictor.coefficients["gemm.macs"] == pytest.approx(0.3, rel=1e-3)
    assert predictor.coefficients["gemm.output"] == pytest.approx(2.0, rel=1e-3)
    held = kernels[90:]
    assert all(predictor.analytical(k) == pytest.approx(_known_cost(k), rel=1e-3) for k in held)
    forest = [predictor.forest(k) / _known_cost(k) - 1 for k in held]
    assert math.sqrt(sum(e * e for e in forest) / len(forest)) < 0.25  # in range, the forest is close too
    assert predictor.choice["conv"] == "analytical"  # the exact form wins the cross-validation


def test_the_table_is_an_exact_cache_and_misses_come_from_the_model():
    rng = random.Random(1)
    kernels = [_conv(rng) for _ in range(20)]
    predictor = KernelPredictor.fit([KernelSample(str(i), [k], _known_cost(k)) for i, k in enumerate(kernels)],
                                    forest=False, table={kernels[0].key: 1.2345})
    assert predictor.predict(kernels[0]) == (1.2345, "table")
    ms, source = predictor.predict(kernels[1])
    assert source == "analytical" and ms == pytest.approx(_known_cost(kernels[1]), rel=0.05)
