"""Lookup tables: tracing units, interpolation, profiling round-trip, prediction as an exact sum."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from hardware import lookup, search_space
from hardware.cli import main as cli_main
from hardware.layers import describe_layers, trace_model
from hardware.lookup import LatencyTable, TableTarget, Unit, bracket_units, interpolate, trace_units, units_of
from hardware.measured import LocalCPU
from hardware.protocol import TimingProtocol
from hardware.target import HardwareError

FAST = TimingProtocol(warmup=1, repeats=3, min_time_s=0.0)


# -- interpolation ------------------------------------------------------------------------
def test_interpolation_is_exact_on_table_points_and_monotone_between() -> None:
    points = {(16,): 1.0, (32,): 3.0, (64,): 2.0}
    for (c,), ms in points.items():
        assert interpolate(points, (c,)) == ms
    rising = [interpolate(points, (c,)) for c in range(16, 33)]
    assert all(a <= b for a, b in zip(rising, rising[1:], strict=False))
    assert rising[0] == 1.0 and rising[-1] == 3.0
    falling = [interpolate(points, (c,)) for c in range(32, 65)]
    assert all(a >= b for a, b in zip(falling, falling[1:], strict=False))
    assert interpolate(points, (24,)) == pytest.approx(2.0)
    # no extrapolation
    assert interpolate(points, (8,)) is None
    assert interpolate(points, (65,)) is None


def test_bilinear_interpolation_between_four_corners() -> None:
    points = {(16, 16): 1.0, (16, 32): 2.0, (32, 16): 3.0, (32, 32): 6.0}
    for corner, ms in points.items():
        assert interpolate(points, corner) == ms
    assert interpolate(points, (24, 24)) == pytest.approx((1 + 2 + 3 + 6) / 4)
    assert interpolate(points, (16, 24)) == pytest.approx(1.5)  # along an exact row
    inside = [interpolate(points, (a, b)) for a in range(16, 33, 4) for b in range(16, 33, 4)]
    assert min(inside) == 1.0 and max(inside) == 6.0
    # a missing corner: no value rather than a wrong one
    assert interpolate({(16, 16): 1.0, (32, 32): 6.0}, (24, 24)) is None


def test_bracket_units_replace_off_grid_counts_by_their_grid_neighbours() -> None:
    unit = Unit("conv", {"h": 8}, {"cin": 40, "cout": 64})
    keys = {u.axes["cin"]: u for u in bracket_units([unit], (16, 32, 48, 64, 96))}
    assert sorted(keys) == [32, 48]
    assert all(u.axes["cout"] == 64 for u in keys.values())
    beyond = bracket_units([Unit("dwconv", {"h": 8}, {"channels": 200})], (16, 32))
    assert [u.axes["channels"] for u in beyond] == [200]


# -- tracing ------------------------------------------------------------------------------
def test_trace_fuses_conv_bn_act_and_keeps_residual_adds() -> None:
    block = search_space.InvertedResidual(16, 16, kernel=3, stride=1, expansion=4)
    units, unmodelled = trace_units(block, (1, 16, 8, 8))
    assert not unmodelled
    convs = [u for u in units if u.kind in ("conv", "dwconv")]
    assert [u.kind for u in convs] == ["conv", "dwconv", "conv"]
    assert [u.fields["act"] for u in convs] == ["ReLU6", "ReLU6", None]
    assert all(u.fields["bn"] for u in convs)
    assert convs[0].axes == {"cin": 16, "cout": 64} and convs[1].axes == {"channels": 64}
    adds = [u for u in units if u.kind == "func" and u.fields["op"] == "aten::add.Tensor"]
    assert len(adds) == 1 and adds[0].axes == {"channels": 16}
    # per-op granularity: every leaf is its own unit
    op_units, _ = trace_units(block, (1, 16, 8, 8), granularity="op")
    assert sum(u.kind == "bn" for u in op_units) == 3 and sum(u.kind == "act" for u in op_units) == 2


def test_trace_reads_timm_batchnorm_with_nested_activation() -> None:
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), BatchNormAct2d(16, act_layer=nn.ReLU6))
    units, unmodelled = trace_units(model, (1, 8, 8, 8))
    conv = [u for u in units if u.kind == "conv"]
    assert len(conv) == 1 and conv[0].fields["bn"] and conv[0].fields["act"] == "ReLU6"
    assert not [u for u in units if u.kind in ("bn", "act")]
    assert not unmodelled


def test_one_trace_gives_the_layer_description_and_the_table_units() -> None:
    """The cost models' layers and the table's units come from the same forward pass."""
    from timm.layers import BatchNormAct2d

    class SqueezeExcite(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(16, 16, 3, padding="same", dilation=2, bias=False)
            self.bn = BatchNormAct2d(16, act_layer=nn.ReLU6)
            self.pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pool(self.bn(self.conv(x)))
            return x + y * y.mean((2, 3), keepdim=True)

    trace = trace_model(SqueezeExcite(), (1, 16, 8, 8), {"conv": (4, 8)})
    layers = {layer.name: layer for layer in trace.layers}
    assert list(layers) == ["conv", "bn.act", "bn", "pool", "mean", "mul", "add"]  # leaves as they finish, then ops
    conv = layers["conv"]
    assert conv.padding == (2, 2) and conv.dilation == (2, 2) and not conv.bias and conv.macs == 64 * 16 * 16 * 9
    assert (conv.weight_bits, conv.act_bits) == (4, 8) and layers["add"].act_bits == 32  # the root block: no scope
    assert layers["bn.act"].nested_in == "bn" and layers["bn.act"].inplace  # timm builds it in place
    assert layers["pool"].ceil_mode and layers["pool"].padding == (1, 1) and layers["pool"].kernel == (3, 3)
    assert layers["mul"].module_type == "functional" and layers["mul"].extra["operand_shapes"] == [(1, 16, 8, 8), (1, 16, 1, 1)]
    assert describe_layers(SqueezeExcite(), (1, 16, 8, 8)) == [
        dataclasses.replace(layer, weight_bits=32, act_bits=32) for layer in trace.layers
    ]
    units, unmodelled = units_of(trace)
    assert not unmodelled
    (conv_unit,) = [u for u in units if u.kind == "conv"]
    assert conv_unit.layers == ["conv", "bn"] and conv_unit.fields["act"] == "ReLU6"
    assert conv_unit.fields["p"] == [2, 2] and conv_unit.fields["d"] == [2, 2]
    (pool,) = [u for u in units if u.kind == "pool"]
    assert pool.fields | pool.axes == {"type": "MaxPool2d", "shape": [1, "C", 8, 8], "k": [3, 3], "s": [1, 1],
                                       "p": [1, 1], "ceil": True, "channels": 16}
    funcs = [u.fields["op"] for u in units if u.kind == "func"]
    assert funcs == ["aten::mean.dim", "aten::mul.Tensor", "aten::add.Tensor"]
    assert lookup.unit_callable(pool)().shape == (1, 16, 8, 8)


def test_unit_callable_rebuilds_the_traced_work() -> None:
    conv = nn.Conv2d(8, 24, 3, stride=2, padding=1, bias=False)
    units, _ = trace_units(nn.Sequential(conv, nn.BatchNorm2d(24), nn.ReLU()), (1, 8, 16, 16))
    (unit,) = [u for u in units if u.kind == "conv"]
    out = lookup.unit_callable(unit)()
    assert out.shape == (1, 24, 8, 8)
    add = trace_units(search_space.InvertedResidual(8, 8, 3, 1, 2), (1, 8, 4, 4))[0]
    func = [u for u in add if u.kind == "func"][0]
    assert lookup.unit_callable(func.with_axes((32,)))().shape == (1, 32, 4, 4)  # channel template


# -- profile, file round-trip and prediction ------------------------------------------------
def _tiny_models(count: int = 2, seed: int = 3) -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [
        (search_space.build(config), search_space.input_shape_of(config))
        for _, config in search_space.sample_architectures(["tiny"], count, seed)
    ]


def test_prediction_of_a_model_built_from_table_entries_is_their_exact_sum(tmp_path: Path) -> None:
    reference = LocalCPU(threads=1, per_layer=False)
    table = LatencyTable({"granularity": "block"})
    models = _tiny_models()
    for model, shape in models:
        lookup.profile(lookup.model_units(model, shape), reference, FAST, table)
    path = table.save(tmp_path / "table.json")
    target = TableTarget(table=str(path), on_missing="error")
    for model, shape in models:
        units = lookup.model_units(model, shape)
        entries = json.loads(path.read_text())["entries"]
        expected = math.fsum(entries[u.key]["ms"] for u in units)
        report = target.latency(model, shape)
        assert report.latency_ms == expected
        assert report.source == "table" and report.calibration == "measured"
        assert report.provenance["units_exact"] == len(units)
        assert report.provenance["units_measured_now"] == 0
        assert report.memory["weight_bytes"] == 4 * sum(p.numel() for p in model.parameters())


def test_profile_of_a_tiny_space_round_trips_through_its_file(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    argv = [
        "profile",
        "--hw",
        "local_cpu",
        "--threads",
        "1",
        "--space",
        "tiny",
        "--samples",
        "3",
        "--out",
        str(out),
        "--warmup",
        "1",
        "--repeats",
        "3",
        "--min-time",
        "0",
        "--grid",
        "8,16,32",
    ]
    assert cli_main(argv) == 0
    table = LatencyTable.load(out)
    meta = table.metadata
    for key in (
        "device",
        "runtime",
        "threads",
        "versions",
        "date",
        "protocol",
        "channel_grid",
        "granularity",
        "sources",
    ):
        assert key in meta, key
    assert meta["threads"] == 1 and meta["runtime"] == "pytorch-eager" and meta["protocol"]["repeats"] == 3
    assert "torch" in meta["versions"]
    assert len(table) > 0 and all(e["ms"] > 0 for e in table.entries.values())
    # save -> load gives the same table, and every unit rebuilds from its stored description
    again = LatencyTable.load(table.save(tmp_path / "copy.json"))
    assert again.entries == table.entries and again.metadata == table.metadata
    for entry in again.entries.values():
        assert Unit.from_json(entry["unit"]).key in again.entries
    # the profiled architectures are predicted from the table alone
    target = TableTarget(table=str(out), on_missing="error")
    for model, shape in _tiny_models(count=3, seed=0):
        report = target.latency(model, shape)
        assert report.latency_ms > 0 and report.provenance["units_measured_now"] == 0
    # profiling again adds nothing new
    before = dict(table.entries)
    assert cli_main(argv) == 0
    assert LatencyTable.load(out).entries == before


def test_interpolated_prediction_lies_between_its_profiled_neighbours(tmp_path: Path) -> None:
    table = LatencyTable({"channel_grid": [16, 32]})
    template = Unit(
        "dwconv",
        {
            "batch": 1,
            "h": 8,
            "w": 8,
            "k": [3, 3],
            "s": [1, 1],
            "p": [1, 1],
            "d": [1, 1],
            "bias": False,
            "bn": True,
            "act": "ReLU6",
            "inplace": True,
        },
        {"channels": 16},
    )
    table.add(template, {"ms": 0.010})
    table.add(template.with_axes((32,)), {"ms": 0.020})
    assert table.lookup(template) == (0.010, "exact")
    value, how = table.lookup(template.with_axes((24,)))
    assert how == "interpolated" and value == pytest.approx(0.015)
    assert table.lookup(template.with_axes((40,))) == (None, "missing")


def test_missing_table_file_names_the_path_and_the_profile_command(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "table.json"
    with pytest.raises(HardwareError, match="does not exist") as info:
        TableTarget(table=str(missing))
    assert str(missing) in str(info.value) and "python -m hardware profile" in str(info.value)


def test_configuration_outside_the_table_is_refused_or_measured(tmp_path: Path) -> None:
    table = LatencyTable({"threads": 1, "protocol": {"warmup": 1, "repeats": 3, "min_time_s": 0.0}})
    path = table.save(tmp_path / "empty.json")
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU())
    with pytest.raises(HardwareError, match="not in"):
        TableTarget(table=str(path), on_missing="error").latency(model, (1, 3, 8, 8))
    report = TableTarget(table=str(path), on_missing="profile").latency(model, (1, 3, 8, 8))
    assert report.latency_ms > 0 and report.provenance["units_measured_now"] == report.provenance["units"]
    assert any("measured now" in note for note in report.notes)


def test_table_yaml_composes_with_hydra(tmp_path: Path) -> None:
    from hardware.registry import instantiate

    table = LatencyTable({"threads": 1})
    path = table.save(tmp_path / "t.json")
    target = instantiate("local_cpu_table", {"table": str(path)})
    assert isinstance(target, TableTarget) and target.source == "table" and target.table_path == path
    with torch.no_grad():
        assert target.describe()["table"] == str(path)


def test_calibrated_scale_and_overhead_are_fitted_on_profile_architectures(tmp_path: Path) -> None:
    reference = LocalCPU(threads=1, per_layer=False)
    table = LatencyTable({"spaces": ["tiny"], "sources": [{"space": "tiny", "seed": 0}]})
    models = _tiny_models(count=2, seed=0)
    for model, shape in models:
        lookup.profile(lookup.model_units(model, shape), reference, FAST, table)
    path = table.save(tmp_path / "table.json")
    target = TableTarget(
        table=str(path), on_missing="error", validation={"reference": {"warmup": 1, "repeats": 3, "min_time_s": 0.0}}
    )
    result = target.calibrate(n=2)
    assert result["seed"] == 0 and len(result["architectures"]) == 2
    assert result["per_unit_overhead_ms"] >= 0 and result["sequence_scale"] >= 0
    stored = LatencyTable.load(path).metadata["calibration"]
    assert stored["per_unit_overhead_ms"] == result["per_unit_overhead_ms"]
    # the fit is the least-squares relative error: no (scale, overhead) near it does better
    def cost(scale: float, overhead: float) -> float:
        return sum(((scale * a["sum_of_entries_ms"] + overhead * a["units"]) / a["measured_ms"] - 1) ** 2
                   for a in result["architectures"])
    best = cost(result["sequence_scale"], result["per_unit_overhead_ms"])
    for step in ((0.01, 0), (-0.01, 0), (0, 1e-4), (0, -1e-4)):
        scale, overhead = result["sequence_scale"] + step[0], result["per_unit_overhead_ms"] + step[1]
        if scale >= 0 and overhead >= 0:
            assert cost(scale, overhead) >= best - 1e-12
    # prediction = scale x sum of entries + units x overhead, exactly
    stored["sequence_scale"], stored["per_unit_overhead_ms"] = 1.25, 0.001
    LatencyTable(LatencyTable.load(path).metadata | {"calibration": stored}, LatencyTable.load(path).entries).save(path)
    model, shape = models[0]
    units = lookup.model_units(model, shape)
    entries = LatencyTable.load(path).entries
    report = TableTarget(table=str(path), on_missing="error").latency(model, shape)
    assert report.latency_ms == 1.25 * math.fsum(entries[u.key]["ms"] for u in units) + 0.001 * len(units)


def test_profile_of_a_grayscale_model_predicts_its_narrower_variants(tmp_path: Path) -> None:
    """``--model lenet5 --in-chans 1``: the table then prices every width CompactNet may try."""
    out = tmp_path / "lenet5.json"
    argv = ["profile", "--hw", "local_cpu", "--threads", "1", "--model", "lenet5", "--input-size", "28",
            "--in-chans", "1", "--out", str(out), "--warmup", "1", "--repeats", "3", "--min-time", "0",
            "--grid", "1,8,16,32,64,512", "--narrower"]
    assert cli_main(argv) == 0
    assert LatencyTable.load(out).metadata["sources"] == [{"model": "lenet5", "input_size": 28, "in_chans": 1}]
    target = TableTarget(table=str(out), on_missing="error")
    from benchmarks.models.lenet import LeNet5

    for widths in (((20, 50), 500), ((9, 5), 316)):  # lenet5, and a width CompactNet found
        report = target.latency(LeNet5(conv_channels=widths[0], hidden_features=widths[1]), (1, 1, 28, 28))
        assert report.latency_ms > 0 and report.provenance["units_measured_now"] == 0
