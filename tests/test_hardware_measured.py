"""Measured targets and the timing protocol: reports, provenance, clear refusals (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hardware.measured import CUDA, LocalCPU, OnnxRuntimeCPU, export_onnx
from hardware.protocol import TimingProtocol, summarise, time_callable
from hardware.target import HardwareError

FAST = {"warmup": 1, "repeats": 5, "min_time_s": 0.0}
PROVENANCE_KEYS = (
    "cpu",
    "device",
    "threads",
    "runtime",
    "torch",
    "repeats",
    "warmup",
    "cv",
    "iqr_ms",
    "median_ms",
    "protocol",
    "measured_at",
)


def _tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )


# -- protocol -----------------------------------------------------------------------------
def test_summary_statistics_of_known_samples() -> None:
    result = summarise([1.0, 2.0, 3.0, 4.0, 5.0], warmup=2)
    assert result.median_ms == 3.0 and result.q1_ms == 2.0 and result.q3_ms == 4.0 and result.iqr_ms == 2.0
    assert result.cv == pytest.approx(1.5811388 / 3.0)
    assert result.robust_cv == pytest.approx(2.0 / (1.349 * 3.0))
    assert result.noisy and "too noisy" in result.notes()[0]
    steady = summarise([10.0, 10.1, 9.9, 10.0])
    assert not steady.noisy and steady.notes() == []
    # a stable bulk with two preempted calls: the CV is large, the median (and the verdict) is not moved
    preempted = summarise([10.0, 10.1, 9.9, 10.0, 10.05, 9.95, 10.0, 10.1, 9.9, 10.0, 30.0, 35.0])
    assert preempted.cv > 0.4 and not preempted.noisy and preempted.median_ms == 10.0
    spread = summarise([8.0, 9.0, 10.0, 11.0, 12.0, 8.5, 11.5, 9.5, 10.5, 10.0])  # the bulk itself spreads
    assert spread.noisy
    assert steady.provenance()["repeats"] == 4


def test_protocol_warms_up_then_meets_repeats_and_minimum_time() -> None:
    calls = []
    result = time_callable(lambda: calls.append(1), TimingProtocol(warmup=4, repeats=7, min_time_s=0.0))
    assert len(calls) == 4 + 7 and result.repeats == 7 and result.warmup == 4
    # a minimum time longer than `repeats` calls take keeps timing past the repeats
    clock = iter(range(1000))
    result = time_callable(
        lambda: None,
        TimingProtocol(warmup=0, repeats=3, min_time_s=0.02),
        time_one_ms=lambda fn: float(next(clock) % 2 + 1),
    )
    assert result.repeats > 3 and sum(result.samples_ms) >= 20.0


def test_protocol_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="repeats"):
        TimingProtocol(repeats=1)
    with pytest.raises(ValueError, match="clock"):
        TimingProtocol(clock="sundial")
    with pytest.raises(ValueError, match="threads=1"):
        LocalCPU(threads=2, clock="thread_cpu")
    with pytest.raises(ValueError, match="threads"):
        LocalCPU(threads=0)


# -- local_cpu ------------------------------------------------------------------------------
def test_local_cpu_report_carries_its_provenance() -> None:
    model = _tiny_cnn()
    target = LocalCPU(threads=1, per_layer=True, per_layer_repeats=3, **FAST)
    report = target.latency(model, (1, 3, 16, 16))
    assert report.source == "measured" and report.label == "measured" and report.hw == "local_cpu"
    assert report.latency_ms > 0 and report.spread_ms >= 0
    for key in PROVENANCE_KEYS:
        assert key in report.provenance, key
    assert report.provenance["threads"] == 1 and report.provenance["runtime"] == "pytorch-eager"
    assert report.provenance["repeats"] >= 5 and report.provenance["warmup"] == 1
    # the largest layer input + output: BatchNorm's 8x16x16 fp32 in and out
    assert report.memory == {
        "peak_activation_bytes": 2 * 4 * 8 * 16 * 16,
        "weight_bytes": 4 * sum(p.numel() for p in model.parameters()),
    }
    assert set(report.per_layer_ms) == {"0", "1", "2", "3", "5"}  # Flatten is not a described layer
    assert model.training  # the caller's mode is restored
    assert torch.get_num_threads() >= 1


def test_local_cpu_yaml_instantiates_with_hydra() -> None:
    from hardware.registry import instantiate

    target = instantiate("local_cpu", {"threads": 1, "repeats": 7})
    assert isinstance(target, LocalCPU) and target.threads == 1 and target.protocol.repeats == 7
    assert target.batch_size == 1 and target.calibration == "measured"


# -- onnxruntime_cpu ----------------------------------------------------------------------
def test_onnxruntime_report_carries_its_provenance() -> None:
    import onnxruntime

    target = OnnxRuntimeCPU(threads=1, **FAST)
    report = target.latency(_tiny_cnn(), (1, 3, 16, 16))
    for key in PROVENANCE_KEYS:
        assert key in report.provenance, key
    assert report.provenance["runtime"] == "onnxruntime" and report.provenance["onnxruntime"] == onnxruntime.__version__
    assert report.provenance["threads"] == 1 and report.provenance["exported"] is True
    assert report.latency_ms > 0 and report.memory["weight_bytes"] > 0


def test_onnxruntime_runs_the_onnx_deployable(tmp_path: Path) -> None:
    model = _tiny_cnn()
    onnx_file = export_onnx(model, (1, 3, 16, 16), tmp_path / "m.onnx")
    target = OnnxRuntimeCPU(threads=1, **FAST)
    report = target.latency(model, (1, 3, 16, 16), deployables={"torchscript": tmp_path / "x.pt", "onnx": onnx_file})
    assert report.provenance["exported"] is False and report.provenance["deployable"] == str(onnx_file)
    with pytest.raises(HardwareError, match="does not exist"):
        target.latency(model, (1, 3, 16, 16), deployables={"onnx": tmp_path / "absent.onnx"})


# -- cuda ---------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_refused_with_a_clear_message() -> None:
    with pytest.raises(HardwareError, match="needs an NVIDIA GPU") as info:
        CUDA()
    assert "local_cpu" in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_report_carries_its_provenance() -> None:
    report = CUDA(**FAST).latency(_tiny_cnn(), (1, 3, 16, 16))
    assert report.provenance["runtime"] == "pytorch-cuda" and report.provenance["cuda"]
    assert report.latency_ms > 0
