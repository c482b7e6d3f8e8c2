"""``python -m hardware fit``: a device from a few measurements (issue 13, item 5)."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from hardware import cli, registry
from hardware.kernelcost import measurements
from hardware.kernelcost.fewshot import type_sums

ROOT = Path(__file__).resolve().parents[1]
AMC = ROOT.parent / "shared" / "reference" / "pixel1-amc-tflite"
needs_amc = pytest.mark.skipif(not AMC.is_dir(), reason="the AMC Pixel-1 profiles are absent")
#: small timm CNNs of different kernel mixes (depthwise, squeeze-excitation, residual adds, plain convs)
MODELS = ("mobilenetv2_050", "mobilenetv3_small_050", "lcnet_050", "resnet10t", "regnetx_002", "mnasnet_small",
          "tinynet_e", "ghostnet_050", "efficientnet_lite0", "repvgg_a0", "mobilenetv3_small_100", "regnety_002")
SIZE = 64
#: the synthetic device: these scales times the base's per-kernel-type time, every other type (each under
#: fewshot.MIN_SHARE of these networks' time: one shared scale) x 1.5
TRUE_SCALES = {"conv": 2.0, "dwconv": 0.5}
OTHER = 1.5


@pytest.fixture(scope="module")
def conf(tmp_path_factory) -> Path:
    """A conf dir with one small kernel device (``base``: sampled kernels of a known cost) and ``pixel1``."""
    from hardware.kernelcost.predictor import kernel_terms
    from hardware.kernelcost.profiling import TABLE_FORMAT, sample_kernels

    root = tmp_path_factory.mktemp("fit")
    entries = [{"type": k.type, "config": k.config, "ms": 1e-3 + 1e-2 * math.fsum(kernel_terms(k).values())}
               for k in sample_kernels(80, seed=0)]
    (root / "base.json").write_text(json.dumps({"format": TABLE_FORMAT, "metadata": {}, "entries": entries}))
    conf = root / "conf"
    conf.mkdir()
    base = {"_target_": "hardware.kernelcost.KernelTarget", "name": "base", "device": "a test CPU", "citation": "test",
            "source": "table", "calibration": "measured", "runtime": "pytorch", "predictor": "analytical",
            "sources": [{"name": "kernels", "format": "kernel_table", "path": str(root / "base.json")}]}
    (conf / "base.yaml").write_text(yaml.safe_dump(base))
    shutil.copy(ROOT / "conf" / "hw" / "pixel1.yaml", conf / "pixel1.yaml")
    return conf


def _fit(conf: Path, *args: str) -> int:
    return cli.main(["--conf-dir", str(conf), "fit", "--out-dir", str(conf.parent / "out"), *args])


def _error(capsys, conf: Path, *args: str) -> str:
    assert _fit(conf, *args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("error: ")
    return lines[-1]


def _write_rows(path: Path, rows: list[tuple[str, int, float]]) -> Path:
    path.write_text("model,input_size,latency_ms\n" + "".join(f"{m},{s},{ms!r}\n" for m, s, ms in rows))
    return path


def test_fit_on_a_synthetic_device_recovers_its_per_type_scales(conf, tmp_path):
    base = registry.instantiate("base", conf_dir=conf)
    dummy = _write_rows(tmp_path / "dummy.csv", [(m, SIZE, 1.0) for m in MODELS])
    sums = type_sums(base.predictor, measurements.read(dummy, None, base.runtime))
    truth = [math.fsum(TRUE_SCALES.get(kind, OTHER) * ms for kind, ms in row.items()) for row in sums]
    rows = _write_rows(tmp_path / "rows.csv", [(m, SIZE, ms) for m, ms in zip(MODELS[:-1], truth, strict=False)])
    assert _fit(conf, "--name", "synthetic", "--measurements", str(rows), "--base", "base") == 0

    fitted = json.loads((conf.parent / "out" / "synthetic.fit.json").read_text())
    assert fitted["kind"] == "scales" and fitted["ridge"] == 0.0 and fitted["measurements"]["models"] == len(MODELS) - 1
    assert {"conv", "dwconv", "se", "add", "linear"} <= set(fitted["scales"])
    for kind, scale in fitted["scales"].items():
        assert scale == pytest.approx(TRUE_SCALES.get(kind, OTHER), rel=1e-6), kind
    # leave-one-model-out: a type only the held-out model has falls back to the common scale
    assert fitted["cv"]["rmspe"] < 0.02 and fitted["cv"]["spearman"] > 0.99

    # the written yaml builds as +hw builds it and predicts a model it was not fitted on, with its stated error
    device = registry.instantiate("synthetic", conf_dir=conf)
    import timm

    report = device.latency(timm.create_model(MODELS[-1], pretrained=False).eval(), (1, 3, SIZE, SIZE))
    assert report.latency_ms == pytest.approx(truth[-1], rel=1e-6)
    assert device.stated_error is not None and device.stated_error.rmspe == pytest.approx(fitted["cv"]["rmspe"])
    assert any("scaled per kernel type" in note for note in report.notes)
    cases = device.validation_cases()
    assert {c.fit for c in cases} == {"in-sample", "leave-one-out"} and len(cases) == 2 * (len(MODELS) - 1)


@pytest.mark.parametrize(("content", "expected"), [
    ("model,latency_ms\nresnet10t,3.0\n", "missing column(s) ['input_size']"),
    ("model,input_size,latency_ms\nresnet10t,64,3.0\nlcnet_050,64,-2\n", "line 3: latency_ms -2 must be > 0"),
    ("model,input_size,latency_ms\nresnet10t,64,0\n", "line 2: latency_ms 0 must be > 0"),
    ("model,input_size,latency_ms\nresnet10t,64,fast\n", "line 2: latency_ms 'fast' is not a number"),
    ("model,input_size,latency_ms\nresnet10t,64,3\nnot_a_net,64,3\n", "line 3: unknown model 'not_a_net'"),
    ("model,input_size,latency_ms\nresnet10t,0,3\n", "line 2: input_size 0 must be > 0"),
])
def test_a_malformed_measurement_file_is_one_line_naming_the_row(conf, tmp_path, capsys, content, expected):
    path = tmp_path / "rows.csv"
    path.write_text(content)
    line = _error(capsys, conf, "--name", "bad", "--measurements", str(path), "--base", "base")
    assert expected in line and str(path) in line


def test_whole_model_rows_need_a_kernel_base(conf, tmp_path, capsys):
    rows = _write_rows(tmp_path / "rows.csv", [("resnet10t", SIZE, 3.0)])
    assert "give --base" in _error(capsys, conf, "--name", "x", "--measurements", str(rows))
    assert "kernel device" in _error(capsys, conf, "--name", "x", "--measurements", str(rows), "--base", "pixel1")
    assert "exists" in _error(capsys, conf, "--name", "base", "--measurements", str(rows), "--base", "base")


@needs_amc
@pytest.mark.parametrize(("old", "new", "expected"), [
    ("SOFTMAX", "FANCY_NEW_OP", "line 58: unknown operator 'FANCY_NEW_OP'"),
    ("DEPTHWISE_CONV_2D", "CONV_2D", "line 29: operator MobilenetV1/MobilenetV1/Conv2d_1_depthwise/Relu6 is CONV_2D"),
])
def test_an_operator_profile_that_does_not_fit_its_model_names_the_line(conf, tmp_path, capsys, old, new, expected):
    folder = tmp_path / "profiles"
    shutil.copytree(AMC, folder)
    broken = folder / "mobilenet_run2.txt"
    broken.write_text(broken.read_text().replace(old, new, 1))
    line = _error(capsys, conf, "--name", "x", "--measurements", str(folder), "--format", "tflite_totals",
                  "--base", "base")
    assert "mobilenet_run2.txt" in line and expected in line


@needs_amc
def test_per_operator_profiles_fit_a_device_from_scratch(conf):
    assert _fit(conf, "--name", "phone", "--measurements", str(AMC), "--calibration", "published") == 0
    fitted = json.loads((conf.parent / "out" / "phone.fit.json").read_text())
    assert fitted["kind"] == "analytical" and fitted["coefficients"]["gemm.macs"] > 0
    assert fitted["cv"]["n"] == 4 and fitted["cv"]["rmspe"] < 0.1  # leave-one-model-out on the 4 AMC networks
    device = registry.instantiate("phone", conf_dir=conf)
    assert device.predictor.coefficients == fitted["coefficients"]  # used as fitted, not refitted
    assert device.stated_error is not None and device.stated_error.rmspe == pytest.approx(fitted["cv"]["rmspe"])


def test_an_onnxruntime_profile_is_read_and_one_of_another_model_is_refused(conf, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    import timm
    import torch

    onnx = tmp_path / "lcnet.onnx"
    torch.onnx.export(timm.create_model("lcnet_050", pretrained=False).eval(), (torch.zeros(1, 3, SIZE, SIZE),), str(onnx),
                      dynamo=False)
    options = ort.SessionOptions()
    options.enable_profiling, options.profile_file_prefix, options.intra_op_num_threads = True, str(tmp_path / "p"), 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {session.get_inputs()[0].name: torch.zeros(1, 3, SIZE, SIZE).numpy()})
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    profile = Path(shutil.move(session.end_profiling(), profiles / f"lcnet_050@{SIZE}.json"))
    events = json.loads(profile.read_text())
    runs = sorted(e["dur"] / 1e3 for e in events if e["name"] == "model_run")
    *nodes, sample = measurements.read(profiles, None, "onnxruntime")
    assert sample.name == f"lcnet_050@{SIZE}" and sample.ms == runs[1] and sample.kernels
    # one sample per node that runs a known kernel, read off its profiled shapes: every convolution of the
    # model, configured as the tracer configures it (plus the two 1x1 convolutions of each squeeze-excitation,
    # one `se` kernel for the tracer), timed by the median of its three durations
    convs = Counter(n.kernels[0].key for n in nodes if n.kernels[0].type in ("conv", "dwconv"))
    traced = Counter(k.key for k in sample.kernels if k.type in ("conv", "dwconv"))
    extra = convs - traced
    assert not traced - convs and extra.total() == 2 * sum(k.type == "se" for k in sample.kernels) > 0
    assert all(json.loads(key)["h"] == 1 and json.loads(key)["k"] == 1 for key in extra)
    first = next(e for e in events if e.get("cat") == "Node" and e["args"]["op_name"] == "Conv")
    durations = sorted(e["dur"] / 1e3 for e in events if e["name"] == first["name"])
    assert nodes[0].ms == durations[1] and all(n.source == sample.name for n in nodes)
    assert {n.kernels[0].type for n in nodes} >= {"conv", "dwconv", "linear", "gpool"}
    other = profile.rename(profiles / f"resnet10t@{SIZE}.json")
    line = _error(capsys, conf, "--name", "x", "--measurements", str(other), "--base", "base")
    assert str(other) in line and "convolution nodes per run, but resnet10t" in line
