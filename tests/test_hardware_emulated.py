"""Emulated hardware targets: roofline devices, the Pixel-1 cost model, the profile parser."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hardware.layers import LayerSpec, describe_elementwise, describe_layers
from hardware.opcost import OpCostModel
from hardware.roofline import Roofline, anchor_layers
from hardware.target import HardwareError, LatencyReport
from hardware.tflite_profiles import load_reference, mobilenetv1_layers, parse_channel_plans, parse_profile

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite"
EMULATED = [
    "pixel1",
    "xeon_e5_2640v4",
    "titanxp",
    "v100",
    "bitfusion",
    "zynq7020",
    "vu9p",
    "mate10_cpu",
    "cambricon_npu",
]
BIT_SERIAL = ["bitfusion", "zynq7020", "vu9p"]
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="../shared/reference/pixel1-amc-tflite is absent")


def _config(name: str):
    """conf/hw/<name>.yaml as the pipeline composes it (pixel1 pointed at the reference explicitly)."""
    cfg = OmegaConf.create({"paths": {"source_data_dir": str(ROOT.parent / "shared" / "data")}})
    cfg.hw = OmegaConf.load(ROOT / "conf" / "hw" / f"{name}.yaml")
    if name == "pixel1":
        cfg.hw.reference_dir = str(REFERENCE)
    return cfg


def _roofline(name: str, **overrides) -> Roofline:
    cfg = OmegaConf.to_container(_config(name).hw, resolve=True)
    cfg.pop("_target_")
    cfg.update(overrides)
    return Roofline(**cfg)


def _conv(cin=64, cout=64, size=28, kernel=1, groups=1, w_bits=32, a_bits=32, nonzero=None, batch=1) -> LayerSpec:
    params = cout * (cin // groups) * kernel * kernel
    return LayerSpec(
        name="conv",
        op="dwconv" if groups > 1 and groups == cin else "conv",
        module_type="Conv2d",
        input_shape=(batch, cin, size, size),
        output_shape=(batch, cout, size, size),
        in_channels=cin,
        out_channels=cout,
        kernel=(kernel, kernel),
        groups=groups,
        params=params,
        nonzero_params=params if nonzero is None else nonzero,
        macs=batch * size * size * params,
        weight_bits=w_bits,
        act_bits=a_bits,
    )


@pytest.fixture(scope="module")
def mobilenetv2():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv2_100", pretrained=False)
    shape = (1, 3, 224, 224)
    layers = describe_layers(model, shape) + describe_elementwise(model, shape)
    return model, shape, layers


@pytest.fixture(scope="module")
def pixel1():
    if not REFERENCE.is_dir():
        pytest.skip("pixel1 reference profiles are absent")
    return registry.instantiate("pixel1", {"reference_dir": str(REFERENCE)})


# --------------------------------------------------------------------------- roofline
@pytest.mark.parametrize("name", [n for n in EMULATED if n != "pixel1"])
def test_roofline_is_monotone_in_macs_bytes_and_bits(name):
    target = _roofline(name)
    # MACs: same shapes, more multiply-accumulates per output.
    times = []
    for macs in (1e6, 1e7, 1e8, 1e9):
        layer = _conv(w_bits=8, a_bits=8)
        layer.macs = int(macs)
        times.append(target.report([layer]).latency_ms)
    assert times == sorted(times) and times[-1] > times[0]
    # Bytes: a depthwise layer (little compute) on larger and larger feature maps.
    times = [
        target.report([_conv(256, 256, size, 3, groups=256, w_bits=8, a_bits=8)]).latency_ms
        for size in (7, 14, 28, 56, 112)
    ]
    assert times == sorted(times) and times[-1] > times[0]
    # Bit-widths: never faster with more bits.
    times = [target.report([_conv(256, 256, 28, 3, w_bits=b, a_bits=b)]).latency_ms for b in (2, 4, 8, 16, 32)]
    assert times == sorted(times)


def test_roofline_memory_bound_time_is_bytes_over_bandwidth():
    target = Roofline(name="t", peak_macs_per_s=1e15, memory_bandwidth_gb_s=1.0, overhead_us=0.0)
    layer = _conv(64, 64, 28, 1)
    cost = target.op_cost(layer)
    expected_bytes = (2 * 64 * 28 * 28 + 64 * 64) * 4
    assert cost.bound == "memory"
    assert cost.bytes == expected_bytes
    assert cost.time_s == pytest.approx(expected_bytes / 1e9)


@pytest.mark.parametrize("name", BIT_SERIAL)
def test_bit_serial_devices_scale_with_the_product_of_bit_widths(name):
    # Compute-bound (infinite bandwidth, no overhead): time is proportional to ceil(w/g) x ceil(a/g).
    target = _roofline(name, memory_bandwidth_gb_s=1e9, overhead_us=0.0)
    g = target.granularity

    def t(w, a):
        return target.report([_conv(256, 256, 28, 3, w_bits=w, a_bits=a)]).latency_ms

    base = t(g, g)
    for w, a in [(8, 8), (8, 2), (2, 8), (4, 8), (8, 4), (4, 4)]:
        assert t(w, a) / base == pytest.approx((w // g) * (a // g), rel=1e-9)
    if target.operand_bits:  # Bit Fusion: only 2/4/8/16-bit operands exist
        assert t(6, 6) == t(8, 8) and t(3, 8) == t(4, 8)
    else:  # BISMO: any width, one pass per bit of each operand
        assert t(6, 5) / base == pytest.approx(30, rel=1e-9) and t(3, 7) / base == pytest.approx(21, rel=1e-9)
    # A fixed-precision device rounds up to the precision it supports instead.
    cpu = _roofline("xeon_e5_2640v4", memory_bandwidth_gb_s=1e9, overhead_us=0.0)
    layer = lambda b: _conv(256, 256, 28, 3, w_bits=b, a_bits=b)  # noqa: E731
    assert cpu.report([layer(4)]).latency_ms == cpu.report([layer(8)]).latency_ms
    assert cpu.report([layer(8)]).latency_ms < cpu.report([layer(32)]).latency_ms


def test_unstructured_sparsity_counts_only_on_a_sparse_capable_device():
    dense_layer = _conv(256, 256, 14, 3)
    sparse_layer = _conv(256, 256, 14, 3, nonzero=dense_layer.params // 10)
    common = dict(peak_macs_per_s={8: 1e11}, memory_bandwidth_gb_s=10.0, overhead_us=0.0)
    dense_device = Roofline(name="dense", **common)
    eie = Roofline(name="eie", exploits_sparsity=True, **common)

    dense_on_dense = dense_device.report([dense_layer])
    sparse_on_dense = dense_device.report([sparse_layer])
    assert sparse_on_dense.latency_ms == dense_on_dense.latency_ms
    assert any("sparsity ignored" in note for note in sparse_on_dense.notes)

    sparse_on_eie = eie.report([sparse_layer])
    assert sparse_on_eie.latency_ms < 0.2 * eie.report([dense_layer]).latency_ms
    assert any("sparsity exploited" in note for note in sparse_on_eie.notes)
    # Every yaml device is dense: a pruned model costs what the dense one costs there.
    for name in [n for n in EMULATED if n != "pixel1"]:
        target = _roofline(name)
        assert target.report([sparse_layer]).latency_ms == target.report([dense_layer]).latency_ms


def test_bad_roofline_config_names_the_key():
    with pytest.raises(ValueError, match="hw.efficiency.gpu"):
        Roofline(name="x", efficiency={"gpu": 0.5})
    with pytest.raises(ValueError, match="hw.compute"):
        Roofline(name="x", compute="analog")


@pytest.mark.parametrize("name", ["titanxp", "zynq7020"])
def test_published_devices_reproduce_their_anchors_within_their_known_error(name):
    target = instantiate(_config(name).hw)
    cases = target.validation_cases()
    assert len(cases) == len(target.anchors) >= 4
    for case in cases:
        assert abs(case.relative_error) <= target.known_error * 1.05, case


def test_anchor_plan_builds_the_mobilenetv1_layers_at_its_batch_and_bits():
    anchor = {"plan": {"first_conv": 32, "blocks": [64, [128, 2]]}, "batch_size": 4, "bits": [4, 6]}
    layers = anchor_layers(anchor)
    assert [layer.op for layer in layers] == ["conv", "dwconv", "conv", "dwconv", "conv", "pool", "conv"]
    assert all(layer.input_shape[0] == 4 for layer in layers)
    assert {(layer.weight_bits, layer.act_bits) for layer in layers} == {(4, 6)}
    assert layers[3].stride == (2, 2) and layers[4].output_shape == (4, 128, 56, 56)


# --------------------------------------------------------------------------- profiles
@needs_reference
def test_profiles_parse_into_ops_aligned_with_the_channel_plans():
    profile = parse_profile(REFERENCE / "mobilenet_run1.txt")
    assert profile.num_threads == 1 and profile.input_shape == (1, 224, 224, 3)
    assert len(profile.ops) == 31
    assert profile.ops[0].node_type == "CONV_2D" and profile.ops[1].node_type == "DEPTHWISE_CONV_2D"
    assert profile.whole_model_ms == pytest.approx(123.161)
    assert sum(op.avg_ms for op in profile.ops) == pytest.approx(123.3, abs=1.0)

    plans, published = parse_channel_plans(REFERENCE / "README.md")
    assert set(plans) == {"mobilenet", "0.75mobilenet", "0.5flops", "0.5time"}
    assert plans["mobilenet"][0] == 32 and len(plans["mobilenet"][1]) == 13
    assert plans["0.5time"][1][-2] == (768, 2)
    assert published["0.5time"] == 63.2

    refs = {ref.prefix: ref for ref in load_reference(REFERENCE)}
    assert len(refs["mobilenet"].profiles) == 3
    layers = refs["mobilenet"].layers()
    assert layers[-4].name == "AvgPool_1a" and layers[-3].out_channels == 1001
    assert layers[26].name == "Conv2d_13_pointwise" and layers[26].macs == 7 * 7 * 1024 * 1024


@needs_reference
def test_a_profile_that_does_not_match_its_plan_is_refused(tmp_path):
    for path in REFERENCE.iterdir():
        shutil.copy(path, tmp_path / path.name)
    broken = tmp_path / "mobilenet_run2.txt"
    text = broken.read_text()
    broken.write_text(text.replace("DEPTHWISE_CONV_2D", "CONV_2D", 1))
    with pytest.raises(ValueError, match="mobilenet_run2.txt"):
        load_reference(tmp_path)


# --------------------------------------------------------------------------- pixel1
@needs_reference
def test_pixel1_whole_model_error_on_the_amc_profiles_is_within_5_percent(pixel1):
    cases = pixel1.validation_cases(lomo=False, per_layer=False)
    assert {c.name for c in cases} == {
        f"mobilenetv1-{p}" for p in ("mobilenet", "0.75mobilenet", "0.5flops", "0.5time")
    }
    for case in cases:
        assert abs(case.relative_error) <= 0.05, case
    # Leave-one-model-out: each model predicted by a fit that never saw it.
    lomo = [c for c in pixel1.validation_cases(lomo=True, per_layer=False) if c.name.endswith("(lomo)")]
    assert len(lomo) == 4
    for case in lomo:
        assert abs(case.relative_error) <= 0.05, case
    fit = pixel1.fit_report
    assert fit.per_layer_rmspe < 0.10 and fit.per_layer_rmspe_lomo < 0.10
    per_layer = pixel1.validation_cases(lomo=False, per_layer=True)
    assert len(per_layer) == 4 + sum(len(ref.layers()) for ref in pixel1.references)


@needs_reference
def test_pixel1_cost_model_is_physical(pixel1):
    model = pixel1.cost_model
    for family in (model.gemm, model.depthwise):
        assert all(value >= 0 for value in family.values())
    # Wider MobileNetV1 plans never run faster; batch norm and ReLU6 are free (fused).
    plans = [(int(16 * w), [(int(64 * w), 1), (int(128 * w), 2), (int(128 * w), 1)]) for w in (0.5, 0.75, 1.0, 1.5)]
    times = [sum(model.predict(mobilenetv1_layers(c, b)).values()) for c, b in plans]
    assert times == sorted(times) and times[0] < times[-1]
    bn = LayerSpec(name="bn", op="bn", module_type="BatchNorm2d", input_shape=(1, 8, 4, 4), output_shape=(1, 8, 4, 4))
    relu6 = LayerSpec(name="a", op="act", module_type="ReLU6", input_shape=(1, 8, 4, 4), output_shape=(1, 8, 4, 4))
    hswish = LayerSpec(name="h", op="act", module_type="Hardswish", input_shape=(1, 8, 4, 4), output_shape=(1, 8, 4, 4))
    assert model.predict_layer(bn) == model.predict_layer(relu6) == 0.0
    assert model.predict_layer(hswish) > 0.0


def test_cost_model_fit_recovers_known_coefficients():
    # Synthetic layers timed by a known law: NNLS finds it back exactly.
    truth = {
        "macs": 0.2,
        "output": 1.5,
        "weights": 0.3,
        "im2col": 0.0,
        "input": 0.0,
        "small_m_macs": 0.1,
        "overhead": 0.01,
    }
    dw_truth = {"macs": 0.5, "input": 0.0, "output": 0.0, "spill_bytes": 0.0, "overhead": 0.02}
    probe = OpCostModel(gemm=truth, depthwise=dw_truth)
    samples = []
    for cin, cout, size, kernel in [
        (32, 64, 56, 1),
        (64, 128, 28, 1),
        (128, 256, 14, 1),
        (256, 512, 7, 1),
        (512, 1024, 7, 1),
        (3, 32, 112, 3),
        (96, 24, 56, 1),
        (24, 144, 56, 1),
    ]:
        layer = _conv(cin, cout, size, kernel)
        samples.append((layer, probe.predict_layer(layer)))
        dw = _conv(cout, cout, size, 3, groups=cout)
        samples.append((dw, probe.predict_layer(dw)))
    fitted = OpCostModel.fit(samples)
    for layer, ms in samples:
        assert fitted.predict_layer(layer) == pytest.approx(ms, rel=1e-6)


@needs_reference
def test_pixel1_yaml_finds_the_reference_without_the_run_config(monkeypatch, tmp_path):
    # `python -m hardware predict --hw pixel1` instantiates the yaml alone, from any directory.
    monkeypatch.delenv("COMPRESSBENCH_PIXEL1_PROFILES", raising=False)
    monkeypatch.chdir(tmp_path)
    target = instantiate(OmegaConf.load(ROOT / "conf" / "hw" / "pixel1.yaml"))
    assert target.reference_dir.resolve() == REFERENCE.resolve()


def test_pixel1_without_its_reference_folder_is_a_clear_error(tmp_path):
    with pytest.raises(HardwareError, match="reference_dir"):
        registry.instantiate("pixel1", {"reference_dir": str(tmp_path / "missing")})
    with pytest.raises(HardwareError, match="reference_dir"):
        registry.instantiate("pixel1", {"reference_dir": None})
    cfg = _config("pixel1")
    cfg.hw.reference_dir = str(tmp_path / "missing")
    with pytest.raises(Exception, match="reference_dir"):  # Hydra wraps the HardwareError
        instantiate(cfg.hw)


# --------------------------------------------------------------------------- every yaml
def test_elementwise_ops_are_described(mobilenetv2):
    _, _, layers = mobilenetv2
    adds = [layer for layer in layers if layer.op == "add"]
    assert len(adds) == 10  # MobileNetV2's residual connections
    assert all(layer.input_shape == layer.output_shape for layer in adds)


@needs_reference
@pytest.mark.parametrize("name", EMULATED)
def test_every_emulated_yaml_instantiates_and_reports(name, mobilenetv2):
    model, shape, layers = mobilenetv2
    cfg = _config(name)
    raw = OmegaConf.load(ROOT / "conf" / "hw" / f"{name}.yaml")
    assert raw.source == "analytical" and raw.calibration in ("published", "spec-sheet")
    target = instantiate(cfg.hw)
    report = target.latency(model, shape, layers=layers)
    assert isinstance(report, LatencyReport)
    assert report.hw == name and report.source == "analytical" and report.calibration == raw.calibration
    assert report.latency_ms > 0 and math.isfinite(report.latency_ms)
    assert report.latency_ms == pytest.approx(sum(report.per_layer_ms.values()))
    assert set(report.per_layer_ms) == {layer.name for layer in layers}
    assert report.memory["weight_bytes"] > 0 and report.memory["peak_activation_bytes"] > 0
    assert report.provenance["reference"]
    if raw.calibration == "spec-sheet":
        assert any("spec-sheet: uncalibrated" in note for note in report.notes)
    if name != "pixel1":
        assert report.energy_mj > 0


@needs_reference
def test_pixel1_on_the_zoo_mobilenetv1_matches_its_profile(pixel1):
    # End to end through a torch model: the AMC 50%-latency plan from the model zoo.
    timm = pytest.importorskip("timm")
    pytest.importorskip("benchmarks.models")
    model = timm.create_model("mobilenetv1_amc_0_5time", pretrained=False)
    report = pixel1.latency(model, (1, 3, 224, 224))
    measured = {ref.prefix: ref.measured_ms for ref in pixel1.references}["0.5time"]
    assert abs(report.latency_ms / measured - 1) <= 0.05


@needs_reference
def test_pixel1_latency_without_a_layer_list_describes_the_model(pixel1, mobilenetv2):
    model, shape, layers = mobilenetv2
    report = pixel1.latency(model, shape)
    assert report.latency_ms == pytest.approx(pixel1.latency(model, shape, layers=layers).latency_ms)
    assert report.provenance["known_error"]["whole_model_max_abs"] <= 0.05
    assert report.spread_ms > 0
