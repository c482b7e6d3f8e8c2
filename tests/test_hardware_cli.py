"""``python -m hardware``: list, predict (subprocess, JSON on stdout), validate report, registry errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardware import registry, validation
from hardware.cli import main as cli_main
from hardware.lookup import LatencyTable
from hardware.target import HardwareError, ValidationCase

REPO_ROOT = Path(__file__).resolve().parent.parent
MEASURED = ("local_cpu", "onnxruntime_cpu", "cuda")


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "hardware", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_list_shows_every_device_yaml_with_kind_and_calibration(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["list", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    yamls = {p.stem for p in (REPO_ROOT / "conf" / "hw").glob("*.yaml")}
    assert yamls <= set(rows)
    for name in MEASURED:
        assert rows[name]["kind"] == "measured" and rows[name]["calibration"] == "measured"
    assert rows["local_cpu_table"]["kind"] == "table"
    assert cli_main(["list"]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split()[:3] == ["name", "kind", "calibration"] and "local_cpu_table" in text


def test_registry_reads_kind_from_the_class_when_a_yaml_omits_it(tmp_path: Path) -> None:
    (tmp_path / "my_cpu.yaml").write_text(
        yaml.safe_dump(
            {
                "_target_": "hardware.lookup.TableTarget",
                "name": "my_cpu",
                "calibration": "measured",
                "table": "absent.json",
            }
        )
    )
    (tmp_path / "notes.yaml").write_text("just: a note\n")  # not a device
    devices = registry.discover(tmp_path)
    assert list(devices) == ["my_cpu"] and devices["my_cpu"].kind == "table"


def test_unknown_device_lists_the_known_ones(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(HardwareError, match="unknown hw 'pixel9'") as info:
        registry.instantiate("pixel9")
    assert "local_cpu" in str(info.value) and "onnxruntime_cpu" in str(info.value)
    assert cli_main(["predict", "--hw", "pixel9", "--model", "mobilenetv2_100", "--input-size", "32"]) == 2
    assert "unknown hw 'pixel9'" in capsys.readouterr().err


def test_overrides_parse_as_yaml() -> None:
    assert registry.parse_overrides(["threads=1", "per_layer=false", "threads_x=null", "a.b=[1, 2]"]) == {
        "threads": 1,
        "per_layer": False,
        "threads_x": None,
        "a.b": [1, 2],
    }
    with pytest.raises(HardwareError, match="key=value"):
        registry.parse_overrides(["threads"])


def test_predict_prints_one_json_object_for_a_timm_model() -> None:
    result = _run(
        "predict",
        "--hw",
        "local_cpu",
        "--model",
        "mobilenetv2_100",
        "--input-size",
        "64",
        "--set",
        "threads=1",
        "--set",
        "warmup=1",
        "--set",
        "repeats=3",
        "--set",
        "min_time_s=0",
        "--set",
        "per_layer=false",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    assert {"hw", "model", "input_size", "batch_size", "latency_ms", "source", "calibration"} <= set(data)
    assert data["hw"] == "local_cpu" and data["model"] == "mobilenetv2_100" and data["input_size"] == 64
    assert data["batch_size"] == 1 and data["latency_ms"] > 0 and data["source"] == "measured"
    assert data["memory"]["weight_bytes"] > 10_000_000  # 3.5 M parameters in fp32


def test_a_zoo_model_needs_the_module_that_registers_it() -> None:
    # hardware imports nothing above it: the project's zoo comes in by --import, named by the caller
    args = ("predict", "--hw", "titanxp", "--model", "lenet5", "--in-chans", "1", "--input-size", "28")
    unknown = _run(*args)
    assert unknown.returncode == 2 and "unknown model 'lenet5'" in unknown.stderr
    assert "--import benchmarks.models" in unknown.stderr
    known = _run(*args, "--import", "benchmarks.models")
    assert known.returncode == 0, known.stderr
    data = json.loads(known.stdout)
    assert data["model"] == "lenet5" and data["latency_ms"] > 0 and data["source"] == "analytical"
    missing = _run(*args, "--import", "no_such_package.models")
    assert missing.returncode == 2 and "--import no_such_package.models" in missing.stderr


def test_predict_with_a_table_device(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    table = LatencyTable({"threads": 1, "protocol": {"warmup": 1, "repeats": 3, "min_time_s": 0.0}})
    path = table.save(tmp_path / "empty.json")
    assert (
        cli_main(
            [
                "predict",
                "--hw",
                "local_cpu_table",
                "--model",
                "mobilenetv2_050",
                "--input-size",
                "32",
                "--batch-size",
                "2",
                "--set",
                f"table={path}",
                "--set",
                "on_missing=profile",
            ]
        )
        == 0
    )
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "table" and data["batch_size"] == 2 and data["latency_ms"] > 0
    assert any("measured now" in note for note in data["notes"])  # an empty table measures every unit


def test_validation_report_keeps_other_targets_sections(tmp_path: Path) -> None:
    other = [ValidationCase(f"m{i}", 10.0 + i, 10.0, group="model") for i in range(3)]
    validation.write_report("pixel1", other, {"hw": "pixel1"}, tmp_path)
    cases = [
        ValidationCase("a", 1.05, 1.0, "resnet"),
        ValidationCase("b", 0.8, 1.0, "mobilenetv2"),
        ValidationCase("c", 2.0, 2.0, "resnet"),
    ]
    md, png = validation.write_report("local_cpu_table", cases, {"hw": "local_cpu_table"}, tmp_path, ["extra line"])
    text = md.read_text()
    assert "## pixel1" in text and "## local_cpu_table" in text and "extra line" in text
    assert "66.7% within ±10%" in text  # 2 of 3 cases
    summary = validation.summarise(cases)
    assert summary["within"] == pytest.approx(2 / 3)
    assert summary["rmspe"] == pytest.approx(((0.05**2 + 0.2**2 + 0) / 3) ** 0.5)
    # validating pixel1 again replaces its section only
    validation.write_report("pixel1", other[:1], {"hw": "pixel1"}, tmp_path)
    text = md.read_text()
    assert text.count("## pixel1") == 1 and "## local_cpu_table" in text and "1 cases" in text
    assert png.is_file() and png.stat().st_size > 10_000
    assert (tmp_path / "hardware_validation.local_cpu_table.csv").is_file()


def test_validate_command_on_a_tiny_profiled_table(tmp_path: Path) -> None:
    conf = tmp_path / "hw"
    conf.mkdir()
    table = tmp_path / "tiny.json"
    assert (
        cli_main(
            [
                "profile",
                "--hw",
                "local_cpu",
                "--threads",
                "1",
                "--space",
                "tiny",
                "--samples",
                "2",
                "--out",
                str(table),
                "--warmup",
                "1",
                "--repeats",
                "3",
                "--min-time",
                "0",
            ]
        )
        == 0
    )
    (conf / "local_cpu.yaml").write_text((REPO_ROOT / "conf" / "hw" / "local_cpu.yaml").read_text())
    (conf / "tiny_table.yaml").write_text(
        yaml.safe_dump(
            {
                "_target_": "hardware.lookup.TableTarget",
                "name": "tiny_table",
                "calibration": "measured",
                "table": str(table),
                "on_missing": "profile",
                "validation": {"spaces": ["tiny"], "reference": {"warmup": 1, "repeats": 3, "min_time_s": 0.0}},
            }
        )
    )
    results = tmp_path / "results"
    assert (
        cli_main(
            [
                "--conf-dir",
                str(conf),
                "validate",
                "--hw",
                "tiny_table",
                "--n",
                "3",
                "--results",
                str(results),
                "--no-stability",
            ]
        )
        == 0
    )
    text = (results / "hardware_validation.md").read_text()
    assert "## tiny_table" in text and "RMSPE" in text and "Worst cases" in text
    assert len((results / "hardware_validation.tiny_table.csv").read_text().splitlines()) == 4
    assert (results / "hardware_validation.png").is_file()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_cuda_device_without_gpu_fails_cleanly_from_the_cli(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(HardwareError, match="needs an NVIDIA GPU"):
        registry.instantiate("cuda")
    assert cli_main(["predict", "--hw", "cuda", "--model", "mobilenetv2_100", "--input-size", "32"]) == 2
    assert "needs an NVIDIA GPU" in capsys.readouterr().err
