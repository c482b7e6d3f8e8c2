"""The ProxylessNAS authors' Pixel-1 table as a device (pixel1_proxyless_lut): exact entries, unit sums, on_missing."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from hardware import registry
from hardware.kernelcost import ProxylessTableTarget
from hardware.kernelcost.sources import proxylessnas_block, read_proxylessnas_lut
from hardware.target import HardwareError

LUT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "pixel1-proxylessnas-lut" / "mobile_trim.yaml"
pytestmark = pytest.mark.skipif(not LUT.is_file(), reason=f"{LUT} is absent")

# A ProxylessNAS-like mobile network at 224 px whose every unit is a key of the table.
CHAIN = [
    "Conv-input:224x224x3-output:112x112x32",
    "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
    "expanded_conv-input:112x112x16-output:56x56x24-expand:6-kernel:3-stride:2-idskip:0",
    "expanded_conv-input:56x56x24-output:56x56x24-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:56x56x24-output:28x28x40-expand:3-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:28x28x40-output:28x28x40-expand:3-kernel:3-stride:1-idskip:1",
    "expanded_conv-input:28x28x40-output:14x14x80-expand:6-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:14x14x80-output:14x14x80-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x80-output:14x14x96-expand:6-kernel:5-stride:1-idskip:0",
    "expanded_conv-input:14x14x96-output:14x14x96-expand:3-kernel:5-stride:1-idskip:1",
    "expanded_conv-input:14x14x96-output:7x7x192-expand:6-kernel:7-stride:2-idskip:0",
    "expanded_conv-input:7x7x192-output:7x7x192-expand:6-kernel:7-stride:1-idskip:1",
    "expanded_conv-input:7x7x192-output:7x7x320-expand:6-kernel:7-stride:1-idskip:0",
    "Conv_1-input:7x7x320-output:7x7x1280",
    "Logits-input:7x7x1280-output:1000",
]
#: a block the table lacks (expansion 4), in place of CHAIN[3]
UNKNOWN = "expanded_conv-input:56x56x24-output:56x56x24-expand:4-kernel:5-stride:1-idskip:1"
SHAPE = (1, 3, 224, 224)


def _cbr(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    """The NAS space's layout: Conv2d (no bias) + BatchNorm2d (+ ReLU6)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return [*layers, nn.ReLU6()] if act else layers


class _Block(nn.Module):
    """A MobileNetV2 inverted residual as one flat Sequential (not hardware.search_space's nesting)."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.ops = nn.Sequential(*(_cbr(cin, hidden) if expand != 1 else []),
                                 *_cbr(hidden, hidden, kernel, stride, hidden), *_cbr(hidden, cout, act=False))
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ops(x) if self.skip else self.ops(x)


def _net(keys: list[str]) -> nn.Sequential:
    return nn.Sequential(*(proxylessnas_block(key)[0] for key in keys)).eval()


@pytest.fixture(scope="module")
def means() -> dict[str, float]:
    return {key: float(entry["mean"]) for key, entry in read_proxylessnas_lut(LUT).items()}


@pytest.fixture(scope="module")
def lut() -> ProxylessTableTarget:
    return registry.instantiate("pixel1_proxyless_lut")


@pytest.fixture(scope="module")
def strict() -> ProxylessTableTarget:
    return registry.instantiate("pixel1_proxyless_lut", {"on_missing": "error"})


@torch.no_grad()
def test_every_table_key_is_one_unit_costing_its_entry(strict: ProxylessTableTarget, means: dict[str, float]) -> None:
    for key, mean in means.items():
        module, shape = proxylessnas_block(key)
        report = strict.latency(module.eval(), shape)
        assert [unit["unit"] for unit in report.provenance["units"]] == [key]
        assert report.latency_ms == mean and report.source == "table" and report.calibration == "published"
    entry = read_proxylessnas_lut(LUT)[key]
    assert report.spread_ms == pytest.approx(math.sqrt(entry["var"]))  # the table's own spread, not a fitted error
    assert "han-cai/files@a7c9bcd" in report.provenance["origin"]
    assert "a7c9bcd" in Path(report.provenance["readme"]).read_text(encoding="utf-8")


@torch.no_grad()
def test_nas_layout_blocks_and_head_are_found(strict: ProxylessTableTarget, means: dict[str, float]) -> None:
    block = _Block(24, 24, 3, 5, 1).eval()
    assert strict.latency(block, (1, 24, 56, 56)).latency_ms == means[CHAIN[3]]
    assert strict.latency(_Block(32, 16, 1, 3, 1).eval(), (1, 32, 112, 112)).latency_ms == means[CHAIN[1]]
    head = nn.Sequential(*_cbr(320, 1280), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(1280, 1000))
    report = strict.latency(head.eval(), (1, 320, 7, 7))
    assert [unit["unit"] for unit in report.provenance["units"]] == CHAIN[-2:]
    assert report.latency_ms == means[CHAIN[-2]] + means[CHAIN[-1]]
    assert strict.latency(nn.Identity(), (1, 24, 56, 56)).latency_ms == 0.0  # the zero (skip) op


@torch.no_grad()
def test_a_network_costs_the_sum_of_its_units(strict: ProxylessTableTarget, means: dict[str, float]) -> None:
    report = strict.latency(_net(CHAIN), SHAPE)
    assert [unit["unit"] for unit in report.provenance["units"]] == CHAIN
    assert report.latency_ms == pytest.approx(math.fsum(means[key] for key in CHAIN), rel=1e-12)
    assert report.provenance["units_table"] == len(CHAIN) and report.provenance["units_predicted"] == 0


@torch.no_grad()
def test_units_priced_one_by_one_sum_to_the_network_with_predicted_units(lut: ProxylessTableTarget,
                                                                         means: dict[str, float]) -> None:
    keys = [*CHAIN[:3], UNKNOWN, *CHAIN[4:]]
    whole = lut.latency(_net(keys), SHAPE)
    alone = [lut.latency(*proxylessnas_block(key)) for key in keys]
    assert whole.latency_ms == pytest.approx(sum(r.latency_ms for r in alone), rel=1e-9)
    assert whole.provenance["units_table"] == len(keys) - 1 and whole.provenance["units_predicted"] == 1
    predicted = lut.fallback().latency(*proxylessnas_block(UNKNOWN)).latency_ms
    assert whole.provenance["ms_predicted"] == pytest.approx(predicted)
    assert whole.provenance["ms_table"] == pytest.approx(math.fsum(means[key] for key in keys if key != UNKNOWN))
    assert any(f"1 predicted by pixel1_kernels ({predicted:.3f} ms): {UNKNOWN}" in note for note in whole.notes)


@torch.no_grad()
def test_a_missing_unit_is_refused_naming_it_and_the_nearest_keys(strict: ProxylessTableTarget) -> None:
    with pytest.raises(HardwareError) as error:
        strict.latency(_net([*CHAIN[:3], UNKNOWN, *CHAIN[4:]]), SHAPE)
    message = str(error.value)
    assert "\n" not in message and f"1 unit(s) not in mobile_trim.yaml: {UNKNOWN} (nearest in the table: " in message
    assert "expanded_conv-input:56x56x24-output:56x56x24-expand:" in message.split("nearest in the table: ")[1]
    with pytest.raises(HardwareError, match=r"1 unit\(s\) not in mobile_trim.yaml: not a table unit: pool\(c=8,h=16"):
        strict.latency(nn.MaxPool2d(2), (1, 8, 16, 16))  # no ProxylessNAS form at all


def test_a_bad_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HardwareError, match=r"hw.table .*absent.yaml does not exist.*COMPRESSBENCH_PIXEL1_LUT"):
        ProxylessTableTarget("lut", table=str(tmp_path / "absent.yaml"))
    bad = tmp_path / "bad.yaml"
    for text, problem in [("Conv-input:224x224x3-output:112x112x32: {count: 3}\n", "has no numeric 'mean'"),
                          ("conv3x3: {mean: 1.0}\n", "key 'conv3x3' is not a Conv"),
                          ("a: [1\n", "is not valid YAML"), ("!!python/object:os.system {}\n", "is not valid YAML")]:
        bad.write_text(text)
        with pytest.raises(HardwareError, match=problem):
            ProxylessTableTarget("lut", table=str(bad))
    copy = tmp_path / "mobile_trim.yaml"  # the env override of the yaml's table path
    shutil.copy(LUT, copy)
    copy.write_text(copy.read_text().replace("mean: 3.088623217922607", "mean: 7.5"))
    monkeypatch.setenv("COMPRESSBENCH_PIXEL1_LUT", str(copy))
    target = registry.instantiate("pixel1_proxyless_lut", {"on_missing": "error"})
    with torch.no_grad():
        assert target.latency(nn.Sequential(*_cbr(320, 1280)).eval(), (1, 320, 7, 7)).latency_ms == 7.5
    with pytest.raises(HardwareError, match="measured at batch 1"):
        target.latency(nn.Identity(), (2, 3, 224, 224))
