"""Emulated hardware targets: roofline devices, the Pixel-1 cost model, the profile parser."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from hardware import registry, validation
from hardware.layers import LayerSpec, describe_layers
from hardware.opcost import OpCostModel
from hardware.roofline import Roofline, anchor_layers, calibrate
from hardware.target import HardwareError, LatencyReport, ValidationCase
from hardware.tflite_profiles import load_reference, mobilenetv1_layers, parse_channel_plans, parse_profile

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite"
# Every device yaml in conf/hw is tested by kind: a new yaml joins these lists by itself.
DEVICES = {name: OmegaConf.load(entry.path) for name, entry in registry.discover().items()}
EMULATED = sorted(name for name, raw in DEVICES.items() if raw.get("source") == "analytical")
ROOFLINES = [name for name in EMULATED if DEVICES[name]["_target_"] == "hardware.roofline.Roofline"]
BIT_SERIAL = [name for name in ROOFLINES if DEVICES[name].get("compute") == "bit_serial"]
FITTED = [name for name in ROOFLINES if DEVICES[name].get("anchors")]
# Fitted devices whose anchors are channel plans (no timm model to build: fast).
PLAN_FITTED = [name for name in FITTED if all("plan" in anchor for anchor in DEVICES[name].anchors)]
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
    layers = describe_layers(model, shape)
    return model, shape, layers


@pytest.fixture(scope="module")
def pixel1():
    if not REFERENCE.is_dir():
        pytest.skip("pixel1 reference profiles are absent")
    return registry.instantiate("pixel1", {"reference_dir": str(REFERENCE)})


# --------------------------------------------------------------------------- roofline
def test_the_device_lists_come_from_conf_hw():
    assert "pixel1" in EMULATED and {"titanxp", "zynq7020", "xeon_e5_2640v4"} <= set(ROOFLINES)
    assert {"zynq7020", "vu9p", "bitfusion"} <= set(BIT_SERIAL) and PLAN_FITTED
    assert not {"local_cpu", "local_cpu_table"} & set(EMULATED)


@pytest.mark.parametrize("name", ROOFLINES)
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
    for name in ROOFLINES:
        target = _roofline(name)
        assert target.report([sparse_layer]).latency_ms == target.report([dense_layer]).latency_ms


def test_bad_roofline_config_names_the_key():
    with pytest.raises(ValueError, match="hw.efficiency.gpu"):
        Roofline(name="x", efficiency={"gpu": 0.5})
    with pytest.raises(ValueError, match="hw.compute"):
        Roofline(name="x", compute="analog")


@pytest.mark.parametrize("name", PLAN_FITTED)
def test_fitted_devices_state_the_leave_one_out_error_of_their_anchors(name):
    target = instantiate(_config(name).hw)
    cases = target.validation_cases()
    in_sample = [c for c in cases if c.fit == "in-sample"]
    left_out = [c for c in cases if c.fit == "leave-one-out"]
    assert [c.name for c in in_sample] == [c.name for c in left_out] == [a["name"] for a in target.anchors]
    # The yaml holds the fit on every anchor: in-sample errors are small by construction.
    assert all(abs(c.relative_error) < 0.05 for c in in_sample)
    # The error every report states is the stored leave-one-out RMSPE, and it is this one.
    assert target.stated_error is not None, f"run `python -m hardware validate --hw {name}`"
    fresh = validation.summarise(left_out)["rmspe"]
    assert target.stated_error.rmspe == pytest.approx(fresh, rel=1e-3)
    assert target.stated_error.rmspe > validation.summarise(in_sample)["rmspe"]
    report = target.report(anchor_layers(target.anchors[0]))
    assert report.spread_ms == pytest.approx(report.latency_ms * fresh, rel=1e-3)
    assert report.provenance["stated_error"]["rmspe_out_of_sample"] == target.stated_error.rmspe
    assert any("not fitted on" in note for note in report.notes)
    assert not any("fitted domain" in note for note in report.notes)  # its own anchor is inside


def _synthetic_plan(width: float) -> dict:
    c = lambda channels: max(8, int(channels * width))  # noqa: E731
    return {"first_conv": c(32), "blocks": [c(64), [c(128), 2], c(128), [c(256), 2], c(512), [c(1024), 2], c(1024)]}


@pytest.mark.parametrize(
    ("base", "truth", "parameters"),
    [
        (  # a GPU-like device: GEMM and depthwise efficiency, per-op overhead and bandwidth
            dict(compute="fixed", peak_macs_per_s={32: 1e12}, memory_bandwidth_gb_s=100.0, overhead_us=5.0,
                 efficiency={"conv": 0.3, "pointwise": 0.3, "dwconv": 0.05, "linear": 0.1, "elementwise": 1.0}),
            {"efficiency.gemm": 0.6, "efficiency.dwconv": 0.02, "overhead_us": 30.0, "bandwidth": 0.4},
            ["efficiency.gemm", "efficiency.dwconv", "overhead_us", "bandwidth"],
        ),
        (  # a bit-serial accelerator: compute scale, bandwidth and overhead (zynq7020's parameters)
            dict(compute="bit_serial", granularity=1, peak_macs_per_s={1: 3e12}, memory_bandwidth_gb_s=4.0,
                 overhead_us=100.0, efficiency={"dwconv": 0.035}),
            {"compute_scale": 0.3, "bandwidth": 0.1, "overhead_us": 1000.0},
            ["compute_scale", "bandwidth", "overhead_us"],
        ),
    ],
)
def test_roofline_calibration_recovers_known_parameters(base, truth, parameters):
    def device(values: dict) -> dict:
        config = {**base, "efficiency": dict(base["efficiency"])}
        if "compute_scale" in values:
            config["peak_macs_per_s"] = {k: v * values["compute_scale"] for k, v in base["peak_macs_per_s"].items()}
        if "bandwidth" in values:
            config["memory_bandwidth_gb_s"] = base["memory_bandwidth_gb_s"] * values["bandwidth"]
        if "efficiency.gemm" in values:
            config["efficiency"]["conv"] = config["efficiency"]["pointwise"] = values["efficiency.gemm"]
        if "efficiency.dwconv" in values:
            config["efficiency"]["dwconv"] = values["efficiency.dwconv"]
        config["overhead_us"] = values.get("overhead_us", base["overhead_us"])
        return config

    true_device = Roofline(name="truth", **device(truth))
    anchors = []
    for width, batch, size, bits in [(0.5, 1, 224, 8), (1.0, 1, 160, 4), (0.75, 8, 224, 6), (1.0, 32, 224, 8),
                                     (1.25, 16, 192, 5)]:
        anchor = {"name": f"w{width}-b{batch}", "plan": _synthetic_plan(width), "batch_size": batch,
                  "input_size": size, "bits": bits}
        anchor["latency_ms"] = true_device.report(anchor_layers(anchor)).latency_ms
        anchors.append(anchor)
    start = Roofline(name="start", **base)
    assert max(abs(start.report(anchor_layers(a)).latency_ms / a["latency_ms"] - 1) for a in anchors) > 0.3
    result = calibrate({"name": "fitted", **base, "anchors": anchors}, parameters)
    assert result["parameters"] == pytest.approx(truth, rel=1e-3)
    assert max(abs(e) for e in result["errors_after"]) < 1e-6


def test_a_model_outside_the_fitted_domain_is_flagged():
    target = instantiate(_config("titanxp").hw)
    domain = target.fitted_domain
    assert domain.resolutions == (224, 224) and domain.batch == (50, 50) and domain.bits == (32, 32)
    inside = target.report(anchor_layers(target.anchors[1]))
    assert not any("fitted domain" in note for note in inside.notes)
    # A LeNet-like network: 28x28 grayscale input, batch 1, fully connected classifier.
    lenet = [_conv(1, 6, 28, 5), _conv(6, 16, 10, 5)]
    lenet.append(LayerSpec(name="fc", op="linear", module_type="Linear", input_shape=(1, 400), output_shape=(1, 10),
                           in_channels=400, out_channels=10, params=4000, nonzero_params=4000, macs=4000))
    outside = target.report(lenet)
    (note,) = [note for note in outside.notes if "fitted domain" in note]
    assert note.startswith("outside titanxp's fitted domain (4 published anchors: 224 px, batch 50")
    for reason in ("input 28x28 px (fitted 224 px)", "batch 1 (fitted 50)", "channels 1-400 (fitted 3-1024)",
                   "operator kinds not in the fit data: linear"):
        assert reason in note
    # Spec-sheet devices were fitted on nothing: no domain, no stated error.
    spec = instantiate(_config("xeon_e5_2640v4").hw)
    assert spec.stated_error is None and spec.report(lenet).spread_ms == 0.0
    assert not any("fitted domain" in note or "stated error" in note for note in spec.report(lenet).notes)


def test_a_validation_report_never_headlines_in_sample_figures(tmp_path):
    # In-sample cases are perfect, the held-out ones 30% off: the report must lead with 30%.
    fitted = [ValidationCase(f"fit{i}", 10.0, 10.0, group="fit", fit="in-sample") for i in range(20)]
    held = [ValidationCase(f"new{i}", 13.0, 10.0, group="new", fit="held-out") for i in range(2)]
    left = [ValidationCase("loo", 10.5, 10.0, group="fit", fit="leave-one-out")]
    stated = tmp_path / "device.validation.json"
    md, png = validation.write_report("device", fitted + held + left, {"hw": "device"}, tmp_path, (), stated)
    section = md.read_text().split("## device", 1)[1]
    head = section.split("Target:", 1)[0]
    bold = [line for line in head.splitlines() if "**" in line]
    assert bold and all("Out of sample" in line for line in bold)
    assert "**33.3% within ±10%**" in head  # 2 of the 3 out-of-sample cases are 30% off
    assert "100.0%" not in "".join(bold)  # the in-sample figure (20 perfect cases) is never in bold
    assert "In sample, networks (20, the fit data" in head
    # The stored error is the out-of-sample RMSPE, and a target reading it states that.
    expected = validation.summarise(held + left)["rmspe"]
    loaded = validation.StatedError.load(stated)
    assert loaded.rmspe == pytest.approx(expected) and loaded.measured_on == {"held-out (new)": 2, "leave-one-out (fit)": 1}
    device = Roofline(name="device", stated_error_file=stated, anchors=[{"name": "a", "latency_ms": 1.0,
                                                                        "plan": _synthetic_plan(0.5)}])
    report = device.report(anchor_layers(device.anchors[0]))
    assert report.spread_ms == pytest.approx(report.latency_ms * expected)
    # Only in-sample cases: no figure is headlined at all.
    md, _ = validation.write_report("device", fitted, {"hw": "device"}, tmp_path, (), stated)
    head = md.read_text().split("## device", 1)[1].split("Target:", 1)[0]
    assert "No out-of-sample cases" in head and "within ±10%**" not in head
    assert validation.StatedError.load(stated).rmspe is None
    assert [c.fit for c in validation.read_cases(tmp_path / "hardware_validation.device.csv")] == ["in-sample"] * 20


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
    cases = pixel1.validation_cases(lomo=False, per_layer=False, holdout=False)
    assert {c.name for c in cases} == {
        f"mobilenetv1-{p}" for p in ("mobilenet", "0.75mobilenet", "0.5flops", "0.5time")
    }
    for case in cases:
        assert abs(case.relative_error) <= 0.05, case
    # Leave-one-model-out: each model predicted by a fit that never saw it.
    lomo = [c for c in pixel1.validation_cases(lomo=True, per_layer=False, holdout=False) if c.name.endswith("(lomo)")]
    assert len(lomo) == 4
    for case in lomo:
        assert abs(case.relative_error) <= 0.05, case
    fit = pixel1.fit_report
    assert fit.per_layer_rmspe < 0.10 and fit.per_layer_rmspe_lomo < 0.10
    per_layer = pixel1.validation_cases(lomo=False, per_layer=True, holdout=False)
    assert len(per_layer) == 4 + sum(len(ref.layers()) for ref in pixel1.references)


@needs_reference
def test_pixel1_tags_its_cases_and_states_its_out_of_sample_error(pixel1):
    cases = pixel1.validation_cases(lomo=True, per_layer=True, holdout=False)
    tags = {(c.group, c.fit, c.scope) for c in cases}
    assert tags == {
        ("amc-profiles", "in-sample", "network"),
        ("amc-profiles-lomo", "leave-one-out", "network"),
        ("per-layer", "in-sample", "operator"),
        ("per-layer-lomo", "leave-one-out", "operator"),
    }
    # The stored error was measured on networks the fit never saw, this fit's among them.
    stated = pixel1.stated_error
    assert stated is not None, "run `python -m hardware validate --hw pixel1`"
    assert stated.measured_on["leave-one-out (amc-profiles-lomo)"] == 4
    assert any(label.startswith("held-out (holdout-") for label in stated.measured_on)
    record = json.loads(pixel1.stated_error_file.read_text())
    lomo = [c for c in cases if c.group == "amc-profiles-lomo"]
    assert record["by_group"]["leave-one-out (amc-profiles-lomo)"]["rmspe"] == pytest.approx(
        validation.summarise(lomo)["rmspe"], rel=1e-6
    )
    # In-sample figures are never what a report states.
    assert stated.rmspe > validation.summarise([c for c in cases if c.group == "amc-profiles"])["rmspe"]


@needs_reference
def test_pixel1_flags_a_lenet_at_28_pixels_as_outside_its_fitted_domain(pixel1):
    lenet = [_conv(1, 6, 28, 5), _conv(6, 16, 10, 5)]
    (note,) = [note for note in pixel1.report(lenet).notes if "fitted domain" in note]
    assert note.startswith("outside pixel1's fitted domain (4 profiled models (mobilenetv1-")
    assert "input 28x28 px (fitted 224 px)" in note and "channels 1-16 (fitted 3-1024)" in note
    zoo = [pixel1.report(ref.layers()) for ref in pixel1.references]
    assert not any("fitted domain" in note for report in zoo for note in report.notes)


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
    if name in ROOFLINES:
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
    assert report.provenance["fit_error"]["whole_model_max_abs"] <= 0.05
    assert report.spread_ms == pytest.approx(report.latency_ms * pixel1.stated_error.rmspe)
    assert any("operator kinds not in the fit data: add" in note for note in report.notes)


# --------------------------------------------------------------------------- lookup table
def test_a_table_profiled_on_another_cpu_warns_and_states_no_typed_error(tmp_path, caplog):
    import logging

    import torch

    from hardware.lookup import LatencyTable, TableTarget
    from hardware.protocol import cpu_model

    quick = {"warmup": 1, "repeats": 3, "min_time_s": 0.0}
    other = LatencyTable({"threads": 1, "device": "Imaginary CPU 9000", "protocol": quick}).save(tmp_path / "other.json")
    with caplog.at_level(logging.WARNING, logger="hardware.lookup.target"):
        target = TableTarget(table=str(other))
    assert "'Imaginary CPU 9000'" in caplog.text and repr(cpu_model()) in caplog.text
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    report = target.latency(model, (1, 1, 8, 8))
    assert any("measured on 'Imaginary CPU 9000'" in note for note in report.notes)
    # No validation stored beside this table: the report says so and states no error.
    assert report.spread_ms == 0.0 and any("stated error: none stored" in note for note in report.notes)
    assert target.stated_error_file == tmp_path / "other.validation.json"
    same = LatencyTable({"threads": 1, "device": cpu_model(), "protocol": quick}).save(tmp_path / "same.json")
    assert TableTarget(table=str(same)).cpu_warning is None
    # No device yaml types an error in: every stated error is measured by `validate`.
    assert not [name for name, raw in DEVICES.items() if {"known_error", "known_rmspe"} & set(raw)]
