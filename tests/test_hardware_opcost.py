"""The per-operator profile cost model as a generic device: a second phone is a yaml and its data."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
import yaml
from torch import nn
from torchvision.models.shufflenetv2 import channel_shuffle

from hardware import registry
from hardware.target import HardwareError

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite"
pytestmark = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/pixel1-amc-tflite is absent")

#: A "Run Order" row: node type, then the start, first and average ms columns.
_ROW = re.compile(r"^(\s*[A-Z][A-Z_0-9]+\s+)([0-9.]+)(\s+)([0-9.]+)(\s+)([0-9.]+)", re.M)


def _slower_phone_profiles(folder: Path, factor: float) -> Path:
    """The Pixel-1 profiles as a phone ``factor`` times slower would have written them."""
    folder.mkdir()
    (folder / "README.md").write_text((REFERENCE / "README.md").read_text())
    for path in REFERENCE.glob("*_run*.txt"):
        text = _ROW.sub(
            lambda m: "".join(
                [m[1], f"{float(m[2]) * factor:.3f}", m[3], f"{float(m[4]) * factor:.3f}", m[5],
                 f"{float(m[6]) * factor:.3f}"]
            ),
            path.read_text(),
        )
        text = re.sub(r"no stats:\s*([0-9.]+)", lambda m: f"no stats: {float(m[1]) * factor:.0f}", text)
        (folder / path.name).write_text(text)
    return folder


def _phone(conf_dir: Path, profiles: Path, **overrides) -> dict:
    config = {
        "_target_": "hardware.opcost.OpProfileTarget",
        "name": "phone2",
        "device": "A phone twice as slow, TF-Lite float32, 1 thread, batch 1",
        "citation": "profiles rescaled from the AMC Pixel-1 profiles (test data)",
        "profiled": "TF-Lite float32, 1 thread",
        "profile_format": "tflite_benchmark_model",
        "profile_set": "phone2-profiles",
        "source": "analytical",
        "calibration": "published",
        "reference_dir": str(profiles),
        **overrides,
    }
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "phone2.yaml").write_text(yaml.safe_dump(config))
    return config


def test_a_second_phone_is_a_yaml_and_its_profiles(tmp_path: Path) -> None:
    profiles = _slower_phone_profiles(tmp_path / "phone2-tflite", 2.0)
    _phone(tmp_path / "hw", profiles)
    phone = registry.instantiate("phone2", conf_dir=tmp_path / "hw")
    pixel1 = registry.instantiate("pixel1", {"reference_dir": str(REFERENCE)})
    model = timm.create_model("mobilenetv1_100", pretrained=False)
    report = phone.latency(model, (1, 3, 224, 224))
    # NNLS on relative error: profiles twice as slow give coefficients exactly twice as large
    assert report.latency_ms == pytest.approx(2 * pixel1.latency(model, (1, 3, 224, 224)).latency_ms, rel=1e-6)
    assert report.hw == "phone2" and report.provenance["profile"].startswith("A phone twice as slow")
    assert report.provenance["reference"] == "profiles rescaled from the AMC Pixel-1 profiles (test data)"
    assert report.provenance["calibration_source"] == str(profiles)
    assert any("no phone2 power measurements" in note for note in report.notes)
    assert not any("Pixel" in note for note in report.notes)
    cases = phone.validation_cases(lomo=True, per_layer=False)
    assert {case.group for case in cases} == {"phone2-profiles", "phone2-profiles-lomo"}
    assert {case.name for case in cases if case.group == "phone2-profiles"} == {
        f"mobilenetv1-{prefix}" for prefix in ("mobilenet", "0.75mobilenet", "0.5flops", "0.5time")
    }
    with pytest.raises(HardwareError, match="hold-out file"):
        phone.holdout_cases()


def test_an_unknown_profile_format_names_the_key_and_the_known_ones(tmp_path: Path) -> None:
    _phone(tmp_path / "hw", REFERENCE, profile_format="nnmeter")
    with pytest.raises(HardwareError, match=r"hw.profile_format 'nnmeter' is unknown; use one of \['tflite_benchmark_model'\]"):
        registry.instantiate("phone2", conf_dir=tmp_path / "hw")


def test_pixel1_prices_a_channel_shuffle_and_a_concat_as_streaming_copies() -> None:
    """The profiles have no TRANSPOSE or CONCATENATION: both cost what the fitted elementwise rate says."""
    class Unit(nn.Module):
        def __init__(self, shuffle: bool) -> None:
            super().__init__()
            self.conv, self.shuffle = nn.Conv2d(64, 64, 1, groups=4), shuffle

        def forward(self, x):
            out = self.conv(x)
            return torch.cat([x, channel_shuffle(out, 4)], 1) if self.shuffle else out

    pixel1 = registry.instantiate("pixel1")
    shape = (1, 64, 28, 28)
    with_copies, without = pixel1.latency(Unit(True), shape), pixel1.latency(Unit(False), shape)
    copies = {name: ms for name, ms in with_copies.per_layer_ms.items() if name in ("transpose", "concat")}
    assert set(copies) == {"transpose", "concat"} and all(ms > 0 for ms in copies.values())
    assert copies["concat"] > copies["transpose"]  # twice the elements moved
    assert with_copies.latency_ms == pytest.approx(without.latency_ms + sum(copies.values()))
